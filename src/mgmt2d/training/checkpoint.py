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

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mgmt2d.data.io import atomic_path

STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict")


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """torch.save through a temp file + os.replace: a killed run never leaves a half file."""
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by the engine, loaded with ``weights_only=True`` (no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    return torch.load(path, map_location=map_location, weights_only=True)


def read_weights_file(path: str | Path) -> Mapping[str, Any]:
    """A weights file as stored, on the CPU: a ``.safetensors`` file's tensors, or
    ``torch.load(weights_only=True)`` of anything else (a checkpoint dict or a state dict)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise TypeError(f"{path}: expected a state dict or a checkpoint dict, got {type(obj).__name__}")
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
        raise ValueError(f"{path}: not a state dict (non-tensor entries such as {others})")
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


def load_model_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load only the model weights of ``path`` (engine checkpoint or raw state dict), strictly."""
    model.load_state_dict(read_state_dict(path), strict=strict)
    return model
