"""One training engine for both stages: warm-up freeze, AMP, early stopping, exact resume.

Stage 1 (segmentation) and stage 2 (classification) differ only in the model, the loaders,
the loss function and the metric object they plug in; everything else lives here once.

Plug-in contract
----------------
* ``loss_fn(outputs, batch) -> Tensor``: a scalar loss. ``batch`` is what the loader yields,
  already moved to the device (tensors only; strings such as patient IDs stay as they are).
* ``metrics``: any object with ``reset()``, ``update(outputs, batch)`` and
  ``compute() -> dict[str, float]`` (see :class:`Metrics`). ``compute`` must not change
  the state. An optional ``names`` attribute lets the engine check ``--monitor`` up front.
* Batches are dicts (inputs under ``input_key``, default ``"image"``) or tuples/lists whose
  first item is the input. Extra fields (e.g. ``"patient_id"``) are passed through.

Randomness and exact resume
---------------------------
At the start of every epoch the engine re-seeds Python's ``random``, NumPy's global RNG and
torch (CPU and CUDA) with :func:`epoch_seed` ``(seed, epoch)``, re-seeds the loader's
``generator`` when it has one and calls ``sampler.set_epoch(epoch)`` when the sampler has
it. So shuffling, dropout and augmentation depend only on (seed, epoch), and a run resumed
from ``last.pt`` replays exactly what the uninterrupted run would have done. Datasets should
draw augmentation randomness from those global RNGs (``random``, ``np.random``, ``torch``)
in ``__getitem__``; in loader workers torch seeds each worker from the (per-epoch) loader
seed, and :func:`seed_worker` (used by :func:`make_loader`) derives ``random``/NumPy seeds
from ``torch.initial_seed()``. Do not use ``persistent_workers=True`` (workers would keep
their RNG across epochs and resume would no longer be exact).
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mgmt2d.device import resolve_device
from mgmt2d.io import atomic_path, check_writable, write_csv_atomic, write_run_config

log = logging.getLogger(__name__)

BEST = "best.pt"
LAST = "last.pt"
HISTORY_CSV = "history.csv"
CURVES_PNG = "curves.png"
RUN_CONFIG = "train_config.json"
FROZEN, UNFROZEN = "frozen", "unfrozen"
CHECKPOINT_FORMAT = 1

Batch = Any  # dict[str, Any] | tuple | list, as yielded by a DataLoader
LossFn = Callable[[Tensor, Batch], Tensor]


# --------------------------------------------------------------------------- seeding


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


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 32-bit seed for ``epoch`` of a run seeded with ``seed``.

    Mixed (not ``seed + epoch``) so that runs with neighbouring seeds do not share epochs.
    """
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed ``random`` and NumPy from the worker's torch seed.

    torch gives every worker ``base_seed + worker_id`` where ``base_seed`` comes from the
    loader's (per-epoch re-seeded) generator, so worker randomness follows (seed, epoch).
    """
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    drop_last: bool = False,
    **kwargs: Any,
) -> DataLoader:
    """A DataLoader set up for the engine: own generator (re-seeded per epoch), pinned memory
    on CUDA, seeded workers, no persistent workers (exact resume).

    A shuffled (training) loader never hands the model a last batch of one sample: BatchNorm
    cannot train on it ("Expected more than 1 value per channel"), so that batch is dropped
    each epoch (a different sample each time) and the log says so.
    """
    device = torch.device(device)
    n = len(dataset)  # type: ignore[arg-type]
    if shuffle and not drop_last and batch_size > 1 and n > 1 and n % batch_size == 1:
        log.warning("%d training samples with batch size %d leave a last batch of 1: it is dropped each epoch "
                    "(BatchNorm cannot train on a single sample)", n, batch_size)
        drop_last = True
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=device.type == "cuda",
        worker_init_fn=seed_worker,
        generator=torch.Generator(),
        persistent_workers=False,
        **kwargs,
    )


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
        (npst["kind"], np.asarray(npst["keys"], dtype=np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        for i, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), i)


# --------------------------------------------------------------------------- batches


def batch_to_device(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of a (nested) batch to ``device``; non-blocking to CUDA (pinned memory)."""
    non_blocking = device.type == "cuda"
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: batch_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(batch_to_device(v, device) for v in batch)
    return batch


def batch_field(batch: Batch, key: str, index: int) -> Any:
    """``batch[key]`` for dict batches, ``batch[index]`` for tuple/list batches."""
    if isinstance(batch, Mapping):
        if key not in batch:
            raise KeyError(f"batch has no field {key!r} (fields: {sorted(batch)})")
        return batch[key]
    if len(batch) <= index:
        raise IndexError(f"tuple batch of length {len(batch)} has no item {index} ({key})")
    return batch[index]


# --------------------------------------------------------------------------- losses and metrics


def dice_loss(probs: Tensor, target: Tensor, eps: float = 1e-7, smooth: float = 0.0) -> Tensor:
    """Binary soft Dice loss on probabilities, as smp ``DiceLoss(mode="binary", from_logits=False)``.

    Like smp's binary mode, every channel and every sample of the batch are pooled into one
    Dice score (``1 - 2*sum(p*t) / max(sum(p) + sum(t), eps)``); the loss is 0 when the
    target has no positive pixel. Computed in float32 (an fp16 sum over a batch overflows).
    """
    if probs.shape[0] != target.shape[0]:
        raise ValueError(f"batch sizes differ: {tuple(probs.shape)} vs {tuple(target.shape)}")
    p = probs.float().reshape(probs.shape[0], 1, -1)
    t = target.float().reshape(target.shape[0], 1, -1)
    if p.shape != t.shape:
        raise ValueError(f"shapes differ: {tuple(probs.shape)} vs {tuple(target.shape)}")
    dims = (0, 2)
    intersection = (p * t).sum(dims)
    cardinality = (p + t).sum(dims)
    score = (2.0 * intersection + smooth) / (cardinality + smooth).clamp_min(eps)
    loss = (1.0 - score) * (t.sum(dims) > 0).to(score.dtype)
    return loss.mean()


def iou_score(probs: Tensor, target: Tensor, threshold: float = 0.5, eps: float = 1e-7) -> Tensor:
    """IoU of ``probs > threshold`` with the target, pooled over the batch and channels.

    Same formula as smp's (0.2) ``utils.metrics.IoU``: ``(I + eps) / (U + eps)``, so an
    empty prediction of an empty target scores 1.
    """
    p = (probs.float() > threshold).float()
    t = target.float()
    intersection = (p * t).sum()
    union = p.sum() + t.sum() - intersection + eps
    return (intersection + eps) / union


@runtime_checkable
class Metrics(Protocol):
    """What the engine needs from a stage's metric object."""

    def reset(self) -> None: ...

    def update(self, outputs: Tensor, batch: Batch) -> None: ...

    def compute(self) -> dict[str, float]: ...


class SegmentationLoss:
    """Stage-1 loss: :func:`dice_loss` of the model's probabilities against ``batch[target_key]``.

    ``activation="sigmoid"`` applies a sigmoid first (for a model that outputs logits); the
    UNet++ is built with ``activation="sigmoid"`` so the default is ``None``.
    """

    def __init__(self, target_key: str = "mask", activation: str | None = None, eps: float = 1e-7) -> None:
        _check_activation(activation)
        self.target_key, self.activation, self.eps = target_key, activation, eps

    def __call__(self, outputs: Tensor, batch: Batch) -> Tensor:
        probs = outputs.float().sigmoid() if self.activation == "sigmoid" else outputs
        return dice_loss(probs, batch_field(batch, self.target_key, 1), eps=self.eps)


class ClassificationLoss:
    """Stage-2 loss: BCE-with-logits of ``(B,)`` or ``(B, 1)`` logits against float labels."""

    def __init__(self, target_key: str = "label") -> None:
        self.target_key = target_key

    def __call__(self, outputs: Tensor, batch: Batch) -> Tensor:
        target = batch_field(batch, self.target_key, 1)
        return nn.functional.binary_cross_entropy_with_logits(
            outputs.float().reshape(-1), target.float().reshape(-1).to(outputs.device)
        )


class SegmentationMetrics:
    """Mean Dice loss and IoU at ``threshold`` over batches (weighted by batch size).

    ``activation=None``: outputs already are probabilities (UNet++ with sigmoid);
    ``"sigmoid"``: outputs are logits. Both values are computed per batch (batch pooled,
    as smp does) and averaged, which is how the published numbers were logged.
    """

    names = ("dice_loss", "iou")

    def __init__(
        self, threshold: float = 0.5, activation: str | None = None, target_key: str = "mask", eps: float = 1e-7
    ) -> None:
        _check_activation(activation)
        self.threshold, self.activation, self.target_key, self.eps = threshold, activation, target_key, eps
        self.reset()

    def reset(self) -> None:
        self._n = 0
        self._dice = 0.0
        self._iou = 0.0

    @torch.no_grad()
    def update(self, outputs: Tensor, batch: Batch) -> None:
        probs = outputs.detach().float()
        if self.activation == "sigmoid":
            probs = probs.sigmoid()
        target = batch_field(batch, self.target_key, 1)
        n = int(probs.shape[0])
        self._dice += float(dice_loss(probs, target, eps=self.eps)) * n
        self._iou += float(iou_score(probs, target, self.threshold, eps=self.eps)) * n
        self._n += n

    def compute(self) -> dict[str, float]:
        if self._n == 0:
            return {"dice_loss": math.nan, "iou": math.nan}
        return {"dice_loss": self._dice / self._n, "iou": self._iou / self._n}


class ClassificationMetrics:
    """Chunk AUC and patient AUC (patient score = mean chunk probability).

    ``activation="sigmoid"`` (default) turns logits into probabilities; ``None`` if the model
    already outputs probabilities. Patient IDs come from ``batch[patient_key]`` (dict) or
    ``batch[2]`` (tuple). An AUC is NaN when only one class is present.
    """

    names = ("chunk_auc", "patient_auc")

    def __init__(
        self, activation: str | None = "sigmoid", target_key: str = "label", patient_key: str = "patient_id"
    ) -> None:
        _check_activation(activation)
        self.activation, self.target_key, self.patient_key = activation, target_key, patient_key
        self.reset()

    def reset(self) -> None:
        self._probs: list[float] = []
        self._labels: list[float] = []
        self._patients: list[str] = []

    @torch.no_grad()
    def update(self, outputs: Tensor, batch: Batch) -> None:
        probs = outputs.detach().float().reshape(-1)
        if self.activation == "sigmoid":
            probs = probs.sigmoid()
        labels = batch_field(batch, self.target_key, 1)
        labels = labels.detach().float().reshape(-1).cpu().tolist() if isinstance(labels, Tensor) else list(labels)
        patients = batch_field(batch, self.patient_key, 2)
        if isinstance(patients, Tensor):
            patients = patients.reshape(-1).cpu().tolist()
        patients = [str(p) for p in patients]
        if not (len(patients) == len(labels) == probs.numel()):
            raise ValueError(f"{probs.numel()} outputs, {len(labels)} labels, {len(patients)} patient ids")
        self._probs.extend(probs.cpu().tolist())
        self._labels.extend(float(v) for v in labels)
        self._patients.extend(patients)

    def patient_table(self) -> Any:
        """One row per patient: patient_id, label, prob (mean chunk probability), n_chunks."""
        import pandas as pd

        frame = pd.DataFrame({"patient_id": self._patients, "label": self._labels, "prob": self._probs})
        grouped = frame.groupby("patient_id", sort=True)
        mixed = grouped["label"].nunique()
        if (mixed > 1).any():
            raise ValueError(f"patients with chunks of different labels: {list(mixed[mixed > 1].index)[:5]}")
        table = grouped.agg(label=("label", "first"), prob=("prob", "mean"), n_chunks=("prob", "size"))
        return table.reset_index()

    def compute(self) -> dict[str, float]:
        if not self._probs:
            return {"chunk_auc": math.nan, "patient_auc": math.nan}
        table = self.patient_table()
        return {
            "chunk_auc": _auc(self._labels, self._probs),
            "patient_auc": _auc(table["label"].tolist(), table["prob"].tolist()),
        }


def _auc(labels: Sequence[float], scores: Sequence[float]) -> float:
    """ROC AUC, NaN (no warning) when only one class is present."""
    from sklearn.metrics import roc_auc_score

    if len(set(labels)) < 2:
        return math.nan
    return float(roc_auc_score(labels, scores))


def _check_activation(activation: str | None) -> None:
    if activation not in (None, "sigmoid"):
        raise ValueError(f"activation must be None or 'sigmoid', got {activation!r}")


# --------------------------------------------------------------------------- checkpoints


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


def load_model_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load only the model weights of ``path`` (engine checkpoint or raw state dict), strictly."""
    obj = load_checkpoint(path)
    state = obj["model"] if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) else obj
    model.load_state_dict(state, strict=strict)
    return model


# --------------------------------------------------------------------------- one pass


def run_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    loss_fn: LossFn,
    metrics: Metrics,
    device: torch.device | str = "cpu",
    step: Callable[[Tensor], None] | None = None,
    input_key: str = "image",
    amp: bool = False,
    progress: bool | None = None,
    desc: str = "",
) -> dict[str, float]:
    """One pass over ``loader``: training when ``step`` (loss -> update) is given, else eval
    under no_grad. Returns ``{"loss": mean loss weighted by batch size, **metrics.compute()}``.
    ``amp`` only takes effect on CUDA."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    train = step is not None
    model.train(train)
    metrics.reset()
    total, count = 0.0, 0
    n_batches = len(loader) if hasattr(loader, "__len__") else 0
    every = max(1, n_batches // 10) if n_batches else 10
    disable = None if progress is None else not progress
    bar = tqdm(loader, desc=desc, total=n_batches or None, disable=disable, leave=False,
               dynamic_ncols=True, file=sys.stderr)
    autocast = torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp and device.type == "cuda")
    try:
        with torch.set_grad_enabled(train):
            for i, batch in enumerate(bar):
                batch = batch_to_device(batch, device)
                inputs = batch_field(batch, input_key, 0)
                with autocast:
                    outputs = model(inputs)
                    loss = loss_fn(outputs, batch)
                if step is not None:
                    step(loss)
                n = int(inputs.shape[0])
                total += float(loss.detach()) * n
                count += n
                metrics.update(outputs.detach(), batch)
                if not bar.disable:
                    post = {"loss": f"{total / count:.4f}"}
                    if (i + 1) % every == 0:
                        post.update({k: f"{v:.4f}" for k, v in metrics.compute().items()})
                    bar.set_postfix(post, refresh=False)
    finally:
        bar.close()
    if count == 0:
        raise ValueError(f"{desc or 'run_epoch'}: the loader yielded no batch")
    return {"loss": total / count, **{k: float(v) for k, v in metrics.compute().items()}}


def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    loss_fn: LossFn,
    metrics: Metrics,
    device: torch.device | str = "cpu",
    input_key: str = "image",
    amp: bool = False,
    progress: bool | None = False,
) -> dict[str, float]:
    """Validation loss and metrics of ``model`` on ``loader`` (eval mode, no gradient)."""
    model.to(device)
    return run_epoch(model, loader, loss_fn, metrics, device, None, input_key, amp, progress, "eval")


# --------------------------------------------------------------------------- configuration


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
    ``progress`` None = bars on a TTY.
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
        if self.grad_clip is not None and self.grad_clip <= 0:
            self.grad_clip = None

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


PLATEAU_ON = ("train_loss", "val_loss")


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
    g.add_argument("--monitor", default=base["monitor"], help="validation quantity for best checkpoint and early stopping")
    g.add_argument("--mode", default=base["mode"], choices=("auto", "min", "max"), help="direction of --monitor")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=base["amp"],
                   help="mixed precision (CUDA only)")
    g.add_argument("--seed", type=int, default=base["seed"], help="seed of initialisation, shuffling, augmentation")
    g.add_argument("--grad-clip", type=float, default=base["grad_clip"], help="clip gradient norm (off by default)")
    g.add_argument("--resume", action="store_true", help="continue the run in the output folder from last.pt")
    g.add_argument("--overwrite", action="store_true", help="start afresh even if the output folder holds a run")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=base["progress"],
                   help="progress bars (default: only on a terminal)")


def _plain(obj: Any) -> Any:
    """Config values as JSON-like primitives (loadable with weights_only=True)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path | torch.device):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"config value of type {type(obj).__name__} is not a plain value")


# --------------------------------------------------------------------------- trainer


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` reports."""

    best_epoch: int | None
    best_value: float | None
    monitor: str
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Train ``model`` on ``train_loader``, validate on ``val_loader``, keep best/last checkpoints.

    ``freeze_module`` (e.g. ``model.encoder`` / ``model.backbone``) is frozen for the first
    ``config.warmup_epochs`` epochs. ``metrics`` is used for both the training and the
    validation pass (reset in between). ``extra_config`` (data paths, fold, batch size...) is
    recorded with the training settings in ``train_config.json`` and in every checkpoint.
    ``on_epoch_end(trainer, record)`` is called after each epoch's outputs are written.
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: Iterable[Batch],
        val_loader: Iterable[Batch],
        loss_fn: LossFn,
        metrics: Metrics,
        config: TrainConfig,
        freeze_module: nn.Module | None = None,
        input_key: str = "image",
        extra_config: Mapping[str, Any] | None = None,
        on_epoch_end: Callable[[Trainer, dict[str, Any]], None] | None = None,
    ) -> None:
        train_ds, val_ds = getattr(train_loader, "dataset", None), getattr(val_loader, "dataset", None)
        if train_loader is val_loader or (train_ds is not None and train_ds is val_ds):
            raise ValueError("train and validation loaders share their data: validate on a held-out split")
        if config.warmup_epochs > 0 and freeze_module is None:
            raise ValueError("warmup_epochs > 0 needs freeze_module (e.g. model.encoder)")
        self.cfg = config
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.loss_fn, self.metrics = loss_fn, metrics
        self.freeze_module = freeze_module
        self.input_key = input_key
        self.on_epoch_end = on_epoch_end
        self.out_dir = Path(config.out_dir)
        self.use_amp = bool(config.amp) and self.device.type == "cuda"
        self.config: dict[str, Any] = _plain(
            {**asdict(config), "resolved_device": str(self.device), "amp_active": self.use_amp, **(extra_config or {})}
        )
        names = getattr(metrics, "names", None)
        if names is not None:
            known = {f"{split}_{n}" for split in ("train", "val") for n in ("loss", *names)}
            if config.monitor not in known:
                raise ValueError(f"--monitor {config.monitor} unknown; choose from {sorted(known)}")
        # Parameters this trainer freezes/unfreezes (only those trainable at start).
        self._freezable = [p for p in freeze_module.parameters() if p.requires_grad] if freeze_module else []
        self.phase = UNFROZEN
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.epoch = 0  # completed epochs
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.stopped_early = False
        self.history: list[dict[str, Any]] = []

    # ---- optimiser / phases

    def _set_phase(self, phase: str) -> None:
        """Freeze or unfreeze, then a fresh AdamW over the trainable params and a fresh scheduler."""
        for p in self._freezable:
            p.requires_grad_(phase == UNFROZEN)
        self.phase = phase
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters (is freeze_module the whole model?)")
        self.optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        factor, patience = self.cfg.plateau(phase)
        # plateau_on is a loss, so always "min" (whatever --monitor's direction is)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=factor, patience=patience
        )

    @property
    def lr(self) -> float:
        assert self.optimizer is not None
        return float(self.optimizer.param_groups[0]["lr"])

    # ---- checkpoint state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly; plain tensors/lists only (weights_only)."""
        assert self.optimizer is not None and self.scheduler is not None
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "phase": self.phase,
            "early_stopping": {
                "monitor": self.cfg.monitor,
                "mode": self.cfg.mode,
                "best_value": self.best_value,
                "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs,
                "stopped": self.stopped_early,
            },
            "rng": rng_state(),
            "config": self.config,
            "history": [dict(r) for r in self.history],
        }

    def load_state_dict(self, ckpt: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (the optimiser is rebuilt for the saved phase first)."""
        self.model.load_state_dict(ckpt["model"], strict=True)
        self._set_phase(ckpt["phase"])
        assert self.optimizer is not None and self.scheduler is not None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.use_amp and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt["epoch"])
        es = ckpt["early_stopping"]
        self.best_value, self.best_epoch = es["best_value"], es["best_epoch"]
        self.bad_epochs, self.stopped_early = int(es["bad_epochs"]), bool(es["stopped"])
        self.history = [dict(r) for r in ckpt["history"]]
        set_rng_state(ckpt["rng"])

    # ---- loops

    def _seed_epoch(self, epoch: int) -> None:
        s = epoch_seed(self.cfg.seed, epoch)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        for loader in (self.train_loader, self.val_loader):
            gen = getattr(loader, "generator", None)
            if isinstance(gen, torch.Generator):
                gen.manual_seed(s)
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            dataset = getattr(loader, "dataset", None)
            if hasattr(dataset, "set_epoch"):  # datasets that seed augmentation per (seed, epoch, index)
                dataset.set_epoch(epoch)
            if getattr(loader, "persistent_workers", False):
                log.warning("persistent_workers=True: resume will not be exact")

    def _run_epoch(self, loader: Iterable[Batch], train: bool, desc: str) -> dict[str, float]:
        return run_epoch(
            self.model, loader, self.loss_fn, self.metrics, self.device,
            step=self._step if train else None, input_key=self.input_key,
            amp=self.use_amp, progress=self.cfg.progress, desc=desc,
        )

    def _step(self, loss: Tensor) -> None:
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def evaluate(self, loader: Iterable[Batch]) -> dict[str, float]:
        """Loss and metrics of the current model on ``loader`` (eval mode, no gradient)."""
        return self._run_epoch(loader, train=False, desc="eval")

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if self.cfg.mode == "min" else value > self.best_value

    # ---- main entry

    def _start(self) -> None:
        last = self.out_dir / LAST
        if self.cfg.resume:
            if not last.is_file():
                raise FileNotFoundError(f"--resume: no {LAST} in {self.out_dir}")
            self.load_state_dict(load_checkpoint(last))
            log.info("resumed %s at epoch %d (%s)", last, self.epoch, self.phase)
        else:
            if last.exists() and not self.cfg.overwrite:
                raise FileExistsError(
                    f"{self.out_dir} already holds a run ({LAST}); pass --resume to continue or --overwrite"
                )
            if self.cfg.overwrite:  # only this engine's own outputs, never the folder
                for name in (BEST, LAST, HISTORY_CSV, CURVES_PNG):
                    (self.out_dir / name).unlink(missing_ok=True)
            self._set_phase(FROZEN if self.cfg.warmup_epochs > 0 else UNFROZEN)
        check_writable(self.out_dir, "training run")
        write_run_config(self.out_dir, RUN_CONFIG, {**self.config, "resumed_at_epoch": self.epoch})

    def fit(self) -> FitResult:
        """Train until ``epochs`` or early stopping; returns the best epoch and the history."""
        self._start()
        cfg = self.cfg
        while self.epoch < cfg.epochs and not self.stopped_early:
            epoch = self.epoch  # 0-based index of the epoch being run
            self._seed_epoch(epoch)
            if self.phase == FROZEN and epoch >= cfg.warmup_epochs:
                self._set_phase(UNFROZEN)
                # The unfrozen model gets a full patience to beat the best (the published code
                # kept counting across the unfreeze; a deliberate difference, see the README).
                self.bad_epochs = 0
                log.info("epoch %d: encoder unfrozen, fresh AdamW (lr %g)", epoch + 1, cfg.lr)
            t0 = time.perf_counter()
            lr = self.lr
            tag = f"epoch {epoch + 1}/{cfg.epochs}"
            train = self._run_epoch(self.train_loader, train=True, desc=f"{tag} train")
            val = self._run_epoch(self.val_loader, train=False, desc=f"{tag} val")
            record: dict[str, Any] = {"epoch": epoch + 1, "phase": self.phase, "lr": lr}
            record.update({f"train_{k}": v for k, v in train.items()})
            record.update({f"val_{k}": v for k, v in val.items()})
            if cfg.monitor not in record:
                raise KeyError(f"--monitor {cfg.monitor} not among {sorted(k for k in record if '_' in k)}")
            value = float(record[cfg.monitor])
            assert self.scheduler is not None
            self.scheduler.step(float(record[cfg.plateau_on]))  # once per epoch (GUIDE 2, 3)
            improved = self._improved(value)
            if improved:
                self.best_value, self.best_epoch, self.bad_epochs = value, epoch + 1, 0
            else:
                self.bad_epochs += 1
            self.epoch = epoch + 1
            if self.phase == UNFROZEN and self.bad_epochs >= cfg.patience:
                self.stopped_early = True
            record["time"] = round(time.perf_counter() - t0, 3)
            self.history.append(record)
            state = self.state_dict()
            if improved:
                save_checkpoint(self.out_dir / BEST, state)
            save_checkpoint(self.out_dir / LAST, state)
            self._write_history()
            log.info(
                "%s %s lr %.3g | %s%s", tag, self.phase, lr,
                " ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith(("train_", "val_"))),
                " *" if improved else "",
            )
            if self.on_epoch_end is not None:
                self.on_epoch_end(self, record)
        if self.stopped_early:
            log.info("early stop: no %s improvement for %d epochs (best %s at epoch %s)",
                     cfg.monitor, self.bad_epochs, self.best_value, self.best_epoch)
        return FitResult(
            best_epoch=self.best_epoch,
            best_value=self.best_value,
            monitor=cfg.monitor,
            epochs_run=self.epoch,
            stopped_early=self.stopped_early,
            history=[dict(r) for r in self.history],
        )

    def _write_history(self) -> None:
        import pandas as pd

        write_csv_atomic(self.out_dir / HISTORY_CSV, pd.DataFrame(self.history))
        plot_history(self.history, self.out_dir / CURVES_PNG, self.cfg.warmup_epochs, self.best_epoch, self.cfg.monitor)


def plot_history(
    history: Sequence[Mapping[str, Any]],
    path: str | Path,
    warmup_epochs: int = 0,
    best_epoch: int | None = None,
    monitor: str | None = None,
) -> None:
    """Loss and metric curves (train vs val) into a PNG, atomically; Agg canvas, no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    names = ["loss"] + sorted(
        {k[4:] for r in history for k in r if k.startswith("val_") and k != "val_loss"}
    )
    fig = Figure(figsize=(4.5 * len(names), 3.6))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.9, wspace=0.25)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        for split in ("train", "val"):
            key = f"{split}_{name}"
            if any(key in r for r in history):
                ax.plot(epochs, [r.get(key, math.nan) for r in history], marker=".", label=split)
        if 0 < warmup_epochs < (epochs[-1] if epochs else 0):
            ax.axvline(warmup_epochs + 0.5, color="grey", ls=":", label="unfreeze")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="tab:red", ls="--", lw=0.8, label=f"best ({monitor})")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
