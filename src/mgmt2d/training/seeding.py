"""Seeding for repeatable runs and exact resume (see :mod:`mgmt2d.training.trainer`).

Every epoch the trainer re-seeds the global RNGs with :func:`epoch_seed` ``(seed, epoch)``;
:func:`loader_options` sets up loaders whose generator and workers follow that seed, and
:func:`rng_state` / :func:`set_rng_state` carry the RNG states through a checkpoint.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, NumPy and torch (CPU + all CUDA devices) so a run can be repeated.

    ``deterministic`` also makes cuDNN pick deterministic kernels (slower on GPU); CPU runs
    are deterministic without it.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def epoch_seed(seed: int, epoch: int, *more: int) -> int:
    """A well-mixed 32-bit seed for ``epoch`` of a run seeded with ``seed`` (``more``: e.g. the
    rank of a torchrun process, so ranks draw different dropout).

    Mixed (not ``seed + epoch``) so that runs with neighbouring seeds do not share epochs.
    """
    return int(np.random.SeedSequence([int(seed), int(epoch), *map(int, more)]).generate_state(1)[0])


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed ``random`` and NumPy from the worker's torch seed.

    torch gives every worker ``base_seed + worker_id`` where ``base_seed`` comes from the
    loader's (per-epoch re-seeded) generator, so worker randomness follows (seed, epoch).
    """
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def loader_options(device: torch.device | str) -> dict[str, Any]:
    """DataLoader settings of every engine loader: its own generator (re-seeded per epoch), seeded
    workers, no persistent workers (exact resume), pinned memory on CUDA."""
    return {"pin_memory": torch.device(device).type == "cuda", "worker_init_fn": seed_worker,
            "generator": torch.Generator(), "persistent_workers": False}


def rng_state() -> dict[str, Any]:
    """All global RNG states as tensors/lists/ints, loadable with ``weights_only=True``."""
    py_version, py_state, py_gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": int(py_version), "state": [int(v) for v in py_state], "gauss_next": py_gauss},
        "numpy": {
            "kind": str(kind),
            "keys": [int(v) for v in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only for devices present)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            np.asarray(npst["keys"], dtype=np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        for i, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), i)
