"""torchrun plumbing: process group, rank, who writes, gathering results, samplers and loaders.

A script started by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment)
joins the process group in :func:`init_distributed` (nccl on CUDA, gloo on CPU); a plain
``python script.py`` runs as the single process of a world of one, through the same code.

* ``--batch-size`` is the GLOBAL batch: each optimiser step sees ``batch_size`` samples over
  all processes and ``--accumulate`` micro-batches, so one GPU and eight train the same recipe.
* Training samples come from :class:`ResumableDistributedSampler` (torch's DistributedSampler,
  re-seeded by ``set_epoch``, able to start part-way into an epoch). Optimiser step ``s`` of an
  epoch covers samples ``perm[s*B:(s+1)*B]`` of that epoch's permutation whatever the number of
  processes, which is what lets a checkpoint written by N processes continue on M.
* Validation batches are those of a single-process loader, dealt in contiguous blocks to the
  ranks (:class:`BlockBatchSampler`): every sample exactly once, no padded duplicates; the
  per-batch results are gathered in rank order (:func:`concat_over_ranks`), so the metrics
  equal a single-process evaluation.
* Only the main process (rank 0) writes: every write decision goes through :func:`is_main`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from mgmt2d.device import resolve_device
from mgmt2d.training.seeding import loader_options

log = logging.getLogger(__name__)

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` processes (1 when not under torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """More than one process: gradients and results must be exchanged."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The one process that writes checkpoints, history, plots, logs and configuration."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in TORCHRUN_ENV)


def context() -> DistContext:
    """The current process group's view, or a world of one when there is none."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistContext()


def is_main() -> bool:
    """True in the process that writes (rank 0, or the only process)."""
    return context().is_main


def init_distributed(device: str = "auto") -> tuple[DistContext, torch.device]:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU) and pick this rank's device.

    Under torchrun, ``--device auto|cuda`` means ``cuda:LOCAL_RANK`` (one GPU per process); a
    fixed ``cuda:N`` would put every process on one GPU and is refused. Without torchrun this
    is :func:`mgmt2d.device.resolve_device` and a world of one.
    """
    if not launched_by_torchrun():
        return context(), resolve_device(device)
    local_rank = int(os.environ["LOCAL_RANK"])
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        if str(device).startswith("cuda:") and int(os.environ["WORLD_SIZE"]) > 1:
            raise ValueError(f"--device {device} under torchrun would put every process on one GPU; "
                             "use --device cuda (each process takes cuda:LOCAL_RANK)")
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    ctx = context()
    if not ctx.is_main:  # one log: the other ranks only report warnings and errors
        logging.getLogger().setLevel(logging.WARNING)
    log.info("torchrun: rank %d of %d (local %d) on %s, backend %s", ctx.rank, ctx.world_size, local_rank,
             chosen, backend)
    return ctx, chosen


def shutdown() -> None:
    """Leave the process group (at the end of a script; a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- collectives


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_gather_json(value: Any) -> list[Any]:
    """Every rank's JSON-able ``value`` (one per rank, rank order) on every rank.

    Sent as UTF-8 JSON bytes (floats round-trip exactly), never pickled.
    """
    if not context().active:
        return [value]
    raw = np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)
    return [json.loads(part.tobytes().decode()) for part in _gather_arrays(raw)]


def concat_over_ranks(values: Sequence[Any]) -> list[Any]:
    """Every rank's list, concatenated in rank order, on every rank (lengths may differ)."""
    return [v for part in all_gather_json(list(values)) for v in part]


def _gather_arrays(array: np.ndarray) -> list[np.ndarray]:
    """all_gather of a 1-D array whose length differs between ranks: pad to the longest, trim."""
    device = _comm_device()
    world = dist.get_world_size()
    length = torch.tensor([array.size], dtype=torch.int64, device=device)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    dist.all_gather(lengths, length)
    sizes = [int(t.item()) for t in lengths]
    values = torch.from_numpy(np.array(array))  # a writable copy
    padded = torch.zeros(max(max(sizes), 1), dtype=values.dtype, device=device)
    padded[: array.size] = values.to(device)
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return [p[:n].cpu().numpy() for p, n in zip(parts, sizes, strict=True)]


def max_over_ranks(value: int) -> int:
    """The largest ``value`` of all ranks, on every rank (e.g. a stop signal's number, 0 for none)."""
    if not context().active:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


# --------------------------------------------------------------------------- samplers and loaders


class ResumableDistributedSampler(DistributedSampler):
    """torch's DistributedSampler (``set_epoch`` re-shuffles) that can start ``start`` samples
    into this rank's share of the epoch: the mid-epoch resume skips without loading data."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of this rank's share (until the next ``set_epoch``)."""
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


class BlockBatchSampler(Sampler[list[int]]):
    """The batches of a sequential single-process loader (``batch_size``), this rank's contiguous
    block of them: over all ranks every sample once, in single-process order, nothing padded."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        starts = list(range(0, n, batch_size))
        mine = np.array_split(np.arange(len(starts)), world_size)[rank]
        self.batches = [list(range(starts[i], min(starts[i] + batch_size, n))) for i in mine]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def micro_batch_size(batch_size: int, accumulate: int, world_size: int) -> int:
    """Samples per process per forward pass for a GLOBAL ``batch_size``; refuses uneven splits."""
    if batch_size < 1 or accumulate < 1:
        raise ValueError(f"need --batch-size >= 1 and --accumulate >= 1 (got {batch_size}, {accumulate})")
    parts = world_size * accumulate
    if batch_size % parts:
        raise ValueError(
            f"--batch-size {batch_size} is the global batch: it must be a multiple of processes ({world_size}) "
            f"x --accumulate ({accumulate}) = {parts}; pick e.g. --batch-size {math.ceil(batch_size / parts) * parts}"
        )
    return batch_size // parts


def make_train_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    accumulate: int = 1,
    ctx: DistContext | None = None,
    **kwargs: Any,
) -> DataLoader:
    """Shuffled training loader of this rank: micro-batches of ``batch_size / (processes x accumulate)``.

    :func:`~mgmt2d.training.seeding.loader_options` as every engine loader; a last micro-batch of
    one sample is dropped (BatchNorm).
    """
    ctx = ctx or context()
    micro = micro_batch_size(batch_size, accumulate, ctx.world_size)
    sampler = ResumableDistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=seed)
    drop_last = micro > 1 and sampler.num_samples > 1 and sampler.num_samples % micro == 1
    if drop_last:
        log.warning("%d samples per process with micro-batch %d leave a last batch of 1: it is dropped each epoch "
                    "(BatchNorm cannot train on a single sample)", sampler.num_samples, micro)
    return DataLoader(dataset, batch_size=micro, sampler=sampler, num_workers=num_workers, drop_last=drop_last,
                      **loader_options(device), **kwargs)


def make_eval_loader(
    dataset: Dataset,
    batch_size: int,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    ctx: DistContext | None = None,
    **kwargs: Any,
) -> DataLoader:
    """Validation loader of this rank: its block of the single-process batches (see module doc)."""
    ctx = ctx or context()
    sampler = BlockBatchSampler(len(dataset), batch_size, ctx.rank, ctx.world_size)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, **loader_options(device), **kwargs)
