"""The one reader and writer of weight files: engine checkpoints, raw state dicts, safetensors.

* :func:`save_checkpoint` / :func:`load_checkpoint`: the trainer's own ``best.pt`` / ``last.pt``
  (atomic write; ``torch.load(weights_only=True)``, no pickled code).
* :func:`read_weights_file`: a ``.pt``/``.pth`` (``weights_only=True``) or ``.safetensors`` file as
  it is stored (a checkpoint dict or a state dict).
* :func:`unwrap_state_dict` / :func:`read_state_dict`: the state dict inside (under ``model``,
  ``state_dict`` or ``model_state_dict``), a DataParallel ``module.`` prefix removed.
* :func:`checkpoint_config`: the run configuration a checkpoint of ours carries (``{}`` if none).

Every error names the file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mgmt2d.data.io import atomic_path

STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict")


class CheckpointError(ValueError):
    """A weights file that cannot be used: truncated, not plain weights, or of another model.

    Its message is one line naming the file and what to do (cli.run prints it, exit status 2).
    """


def _torch_load(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """torch.load(weights_only=True) whose failures name the file and say what to do.

    A file holding pickled objects other than tensors (possibly code) is refused by
    ``weights_only`` and reported as such; we never suggest loading it anyway.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:   # torch raises RuntimeError, OSError, EOFError, UnpicklingError...
        if type(err).__name__ == "UnpicklingError":
            raise CheckpointError(
                f"{path} is not a plain weights file: it holds pickled Python objects, which mgmt2d never "
                "loads; use a state dict or .safetensors file from a source you trust"
            ) from None
        if isinstance(err, (RuntimeError, OSError, EOFError, ValueError)):
            reason = " ".join(str(err).split())[:160]
            raise CheckpointError(
                f"{path} cannot be read ({reason}): truncated or not a PyTorch file; copy or download it again"
            ) from None
        raise


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path, what: str) -> None:
    """``module.load_state_dict(state)``, strictly; a mismatch is one line naming the file.

    The usual cause is a checkpoint of the other stage (or another backbone) in this place.
    """
    try:
        module.load_state_dict(state)   # strict by default (smp encoders take no strict argument)
    except RuntimeError as err:
        own, theirs = set(module.state_dict()), set(state)
        missing, unexpected = sorted(own - theirs), sorted(theirs - own)
        if missing or unexpected:
            detail = (f"{len(missing)} missing keys (e.g. {missing[:2]}), "
                      f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")
        else:
            detail = " ".join(str(err).split())[:200]
        raise CheckpointError(f"{path} does not fit {what}: {detail}; is it a checkpoint of the other stage?") from None


def save_checkpoint(
    path: str | Path, state: Mapping[str, Any], before_rename: Callable[[], None] | None = None
) -> None:
    """torch.save through a temp file + os.replace: a killed run never leaves a half file.

    ``before_rename`` runs once the temp file is complete (the fault-injection point of the tests).
    """
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)
        if before_rename is not None:
            before_rename()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A checkpoint written by the engine, loaded with ``weights_only=True`` (no pickled code).

    ``mmap``: map the tensors instead of reading them (to look at a large checkpoint's epoch or config).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    obj = _torch_load(path, map_location, mmap)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} is not a checkpoint written by mgmt2d's trainer; move it away or pass --overwrite"
        )
    return dict(obj)


def read_weights_file(path: str | Path) -> Mapping[str, Any]:
    """A weights file as stored, on the CPU: a ``.safetensors`` file's tensors, or
    ``torch.load(weights_only=True)`` of anything else (a checkpoint dict or a state dict)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    return obj


def unwrap_state_dict(
    obj: Mapping[str, Any], path: str | Path, keys: tuple[str, ...] = STATE_DICT_KEYS
) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint dict (the first of ``keys`` present) or ``obj`` itself,
    minus a DataParallel ``module.`` prefix; ``path`` names the file in errors."""
    for key in keys:
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(state) != len(obj):
        others = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))[:5]
        raise CheckpointError(f"{path}: not a state dict (non-tensor entries such as {others})")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def read_state_dict(path: str | Path, keys: tuple[str, ...] = STATE_DICT_KEYS) -> dict[str, torch.Tensor]:
    """The model weights of any weights file we read (see :func:`read_weights_file`)."""
    return unwrap_state_dict(read_weights_file(path), path, keys)


def checkpoint_config(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The run configuration saved in a checkpoint of ours; ``{}`` for a raw state dict."""
    config = obj.get("config")
    return dict(config) if isinstance(config, Mapping) else {}
