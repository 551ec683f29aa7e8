"""The run configuration of both trainers: :class:`TrainConfig`, one field per command-line flag.

Stage scripts add the shared flags with :func:`add_train_arguments` (stage defaults as
keyword arguments) and build the config with :meth:`TrainConfig.from_args`; the trainer
records it, resolved, in ``train_config.json`` and in every checkpoint (:func:`plain`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

FROZEN, UNFROZEN = "frozen", "unfrozen"
PLATEAU_ON = ("train_loss", "val_loss")


@dataclass
class TrainConfig:
    """Training settings; each field is one CLI flag (``--warmup-epochs`` for ``warmup_epochs``).

    ``monitor`` names a validation quantity (``val_loss``, ``val_iou``, ``val_patient_auc``;
    the ``val_`` prefix may be left out). ``mode`` is ``min``, ``max`` or ``auto`` (min for
    names containing "loss", max otherwise); it picks ``best.pt`` and drives early stopping
    (``patience``). The learning rate follows ReduceLROnPlateau stepped once per epoch on
    ``plateau_on`` (``train_loss``, the published choice, or ``val_loss``), with
    ``plateau_factor`` / ``plateau_patience`` given per phase as (warm-up, unfrozen): each phase
    starts a fresh AdamW and a fresh scheduler. A single value serves both phases.
    ``progress`` None = bars on a TTY. ``accumulate``: micro-batches per optimiser step (the
    loaders' batch size times processes times ``accumulate`` is the global batch). ``sync_bn``:
    SyncBatchNorm over the processes of a torchrun job (no effect in a single process).
    """

    epochs: int = 10
    warmup_epochs: int = 0
    lr: float = 1e-4
    weight_decay: float = 1e-2
    patience: int = 10
    plateau_on: str = "train_loss"
    plateau_factor: tuple[float, float] = (0.1, 0.1)
    plateau_patience: tuple[int, int] = (10, 10)
    monitor: str = "val_loss"
    mode: str = "auto"
    amp: bool = True
    device: str = "auto"
    out_dir: str = "runs/train"
    seed: int = 42
    grad_clip: float | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool | None = None
    accumulate: int = 1
    sync_bn: bool = False
    tensorboard: bool = True
    image_every: int = 5

    def __post_init__(self) -> None:
        self.out_dir = str(self.out_dir)
        self.monitor = self.monitor if self.monitor.startswith(("val_", "train_")) else f"val_{self.monitor}"
        if self.mode == "auto":
            self.mode = "min" if "loss" in self.monitor else "max"
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be min, max or auto, got {self.mode!r}")
        if self.epochs < 1 or self.warmup_epochs < 0 or self.patience < 1:
            raise ValueError("need epochs >= 1, warmup_epochs >= 0, patience >= 1")
        if self.plateau_on not in PLATEAU_ON:
            raise ValueError(f"plateau_on must be one of {', '.join(PLATEAU_ON)}, got {self.plateau_on!r}")
        self.plateau_factor = _per_phase(self.plateau_factor, float, "plateau_factor")
        self.plateau_patience = _per_phase(self.plateau_patience, int, "plateau_patience")
        if self.lr < 0 or self.weight_decay < 0:
            raise ValueError("need lr >= 0, weight_decay >= 0")
        if not all(0 < f < 1 for f in self.plateau_factor) or min(self.plateau_patience) < 0:
            raise ValueError("need 0 < plateau_factor < 1 and plateau_patience >= 0")
        if self.accumulate < 1:
            raise ValueError(f"need accumulate >= 1, got {self.accumulate}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            self.grad_clip = None
        if self.image_every < 0:
            raise ValueError("need image_every >= 0 (0 = no preview images)")

    def plateau(self, phase: str) -> tuple[float, int]:
        """(factor, patience) of the ReduceLROnPlateau of ``phase`` (frozen = warm-up)."""
        i = 0 if phase == FROZEN else 1
        return self.plateau_factor[i], self.plateau_patience[i]

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> TrainConfig:
        """Build from parsed CLI flags (attributes with field names); ``overrides`` win."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        values.update(overrides)
        return cls(**values)


def _per_phase(value: Any, kind: type, name: str) -> tuple[Any, Any]:
    """One value or (warm-up, unfrozen) -> a (warm-up, unfrozen) tuple of ``kind``."""
    values = list(value) if isinstance(value, list | tuple) else [value]
    if len(values) == 1:
        values *= 2
    if len(values) != 2:
        raise ValueError(f"{name} takes one value or two (warm-up, unfrozen), got {value!r}")
    return kind(values[0]), kind(values[1])


def add_train_arguments(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """Add the shared training flags (not --device / --out-dir, which scripts add themselves).

    ``defaults`` override the TrainConfig defaults per stage, e.g. ``plateau_factor=(0.67, 0.1)``.
    """
    base = {f.name: f.default for f in fields(TrainConfig)}
    base.update(defaults)
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=base["epochs"], help="maximum number of epochs")
    g.add_argument("--warmup-epochs", type=int, default=base["warmup_epochs"],
                   help="epochs with the encoder/backbone frozen (then unfrozen with a fresh AdamW)")
    g.add_argument("--lr", type=float, default=base["lr"], help="AdamW learning rate")
    g.add_argument("--weight-decay", type=float, default=base["weight_decay"], help="AdamW weight decay")
    g.add_argument("--patience", type=int, default=base["patience"], help="early-stopping patience (epochs)")
    warm_f, unfrozen_f = _per_phase(base["plateau_factor"], float, "plateau_factor")
    warm_p, unfrozen_p = _per_phase(base["plateau_patience"], int, "plateau_patience")
    g.add_argument("--plateau-on", default=base["plateau_on"], choices=PLATEAU_ON,
                   help=f"the epoch quantity ReduceLROnPlateau steps on (default {base['plateau_on']}, as published)")
    g.add_argument("--plateau-factor", type=float, nargs="+", metavar=("WARMUP", "UNFROZEN"),
                   default=[warm_f, unfrozen_f],
                   help=f"ReduceLROnPlateau factor of the warm-up and the unfrozen phase; one value for both "
                        f"(default {warm_f:g} {unfrozen_f:g})")
    g.add_argument("--plateau-patience", type=int, nargs="+", metavar=("WARMUP", "UNFROZEN"),
                   default=[warm_p, unfrozen_p],
                   help=f"ReduceLROnPlateau patience of the warm-up and the unfrozen phase; one value for both "
                        f"(default {warm_p} {unfrozen_p})")
    g.add_argument(
        "--monitor", default=base["monitor"], help="validation quantity for best checkpoint and early stopping"
    )
    g.add_argument("--mode", default=base["mode"], choices=("auto", "min", "max"), help="direction of --monitor")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=base["amp"],
                   help="mixed precision (CUDA only)")
    g.add_argument("--seed", type=int, default=base["seed"], help="seed of initialisation, shuffling, augmentation")
    g.add_argument("--accumulate", type=int, default=base["accumulate"], metavar="K",
                   help="gradient accumulation: K micro-batches per optimiser step (--batch-size stays the global "
                        "batch; each forward pass takes batch-size / (processes x K) samples)")
    g.add_argument("--grad-clip", type=float, default=base["grad_clip"], help="clip gradient norm (off by default)")
    g.add_argument("--resume", action="store_true", help="continue the run in the output folder from last.pt")
    g.add_argument("--overwrite", action="store_true", help="start afresh even if the output folder holds a run")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=base["progress"],
                   help="progress bars (default: only on a terminal)")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=base["tensorboard"],
                   help="log curves and preview images to <run folder>/tensorboard/")
    g.add_argument("--image-every", type=int, default=base["image_every"],
                   help="TensorBoard validation images every N epochs (0 = never)")


def plain(obj: Any) -> Any:
    """Config values as JSON-like primitives (loadable with weights_only=True)."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, Path | torch.device):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"config value of type {type(obj).__name__} is not a plain value")
