"""The stages' plug-ins for the trainer: how a batch is read, the losses and the metrics.

Also the one place for ROC AUC and the patient score (mean chunk probability): the patient
AUC reported in training is :func:`patient_auc`'s computation.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

Batch = Any  # dict[str, Any] | tuple | list, as yielded by a DataLoader


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

@functools.lru_cache(maxsize=8)
def _smp_dice(eps: float, smooth: float) -> nn.Module:
    from segmentation_models_pytorch.losses import DiceLoss  # local: keep this module light

    return DiceLoss(mode="binary", from_logits=False, smooth=smooth, eps=eps)


def dice_loss(probs: Tensor, target: Tensor, eps: float = 1e-7, smooth: float = 0.0) -> Tensor:
    """Binary soft Dice loss on probabilities: smp ``DiceLoss(mode="binary", from_logits=False)``.

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
    return _smp_dice(float(eps), float(smooth))(p, t)


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


class GatherableMetrics(Metrics, Protocol):
    """Metrics that distributed training can merge over processes: ``state()`` returns lists
    (floats or strings) whose concatenation over ranks, passed to ``load_state``, is the state
    of one process that saw every batch (also how a mid-epoch checkpoint carries them)."""

    def state(self) -> dict[str, list[Any]]: ...

    def load_state(self, state: Mapping[str, Sequence[Any]]) -> None: ...


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
        # Per-batch terms (not running sums): merged over ranks, they sum in single-process order.
        self._n: list[float] = []
        self._dice: list[float] = []
        self._iou: list[float] = []

    @torch.no_grad()
    def update(self, outputs: Tensor, batch: Batch) -> None:
        probs = outputs.detach().float()
        if self.activation == "sigmoid":
            probs = probs.sigmoid()
        target = batch_field(batch, self.target_key, 1)
        n = int(probs.shape[0])
        self._dice.append(float(dice_loss(probs, target, eps=self.eps)) * n)
        self._iou.append(float(iou_score(probs, target, self.threshold, eps=self.eps)) * n)
        self._n.append(float(n))

    def compute(self) -> dict[str, float]:
        n = sum(self._n)
        if n == 0:
            return {"dice_loss": math.nan, "iou": math.nan}
        return {"dice_loss": sum(self._dice) / n, "iou": sum(self._iou) / n}

    def state(self) -> dict[str, list[Any]]:
        return {"n": list(self._n), "dice": list(self._dice), "iou": list(self._iou)}

    def load_state(self, state: Mapping[str, Sequence[Any]]) -> None:
        self._n, self._dice, self._iou = ([float(v) for v in state[k]] for k in ("n", "dice", "iou"))


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

    def state(self) -> dict[str, list[Any]]:
        return {"probs": list(self._probs), "labels": list(self._labels), "patients": list(self._patients)}

    def load_state(self, state: Mapping[str, Sequence[Any]]) -> None:
        self._probs = [float(v) for v in state["probs"]]
        self._labels = [float(v) for v in state["labels"]]
        self._patients = [str(v) for v in state["patients"]]

    def patient_table(self) -> Any:
        """One row per patient: patient_id, label, prob (mean chunk probability), n_chunks."""
        import pandas as pd

        labels: dict[str, set[float]] = {}
        for pid, label in zip(self._patients, self._labels, strict=True):
            labels.setdefault(pid, set()).add(label)
        mixed = sorted(pid for pid, values in labels.items() if len(values) > 1)
        if mixed:
            raise ValueError(f"patients with chunks of different labels: {mixed[:5]}")
        scores = patient_scores(self._patients, self._probs)
        counts = Counter(self._patients)
        ids = sorted(scores)
        return pd.DataFrame({
            "patient_id": ids,
            "label": [labels[pid].pop() for pid in ids],
            "prob": [scores[pid] for pid in ids],
            "n_chunks": [counts[pid] for pid in ids],
        })

    def compute(self) -> dict[str, float]:
        if not self._probs:
            return {"chunk_auc": math.nan, "patient_auc": math.nan}
        table = self.patient_table()
        return {
            "chunk_auc": roc_auc(self._labels, self._probs),
            "patient_auc": roc_auc(table["label"].tolist(), table["prob"].tolist()),
        }


def roc_auc(labels: Sequence[float], scores: Sequence[float]) -> float:
    """ROC AUC, NaN (no warning) when only one class is present."""
    from sklearn.metrics import roc_auc_score  # local: keep this module light

    if len(set(labels)) < 2:
        return math.nan
    return float(roc_auc_score(labels, scores))


def patient_scores(patient_ids: Sequence[Hashable], chunk_probs: Sequence[float] | np.ndarray) -> dict[Hashable, float]:
    """Mean chunk probability per patient (the published patient score), first-seen order.

    pandas' grouped mean (compensated summation), the arithmetic training has always used.
    """
    import pandas as pd

    probs = np.asarray(chunk_probs, dtype=np.float64).reshape(-1)
    ids = list(patient_ids)
    if len(ids) != probs.shape[0]:
        raise ValueError(f"{len(ids)} patient ids but {probs.shape[0]} chunk probabilities")
    means = pd.Series(probs).groupby(pd.Series(ids, dtype=object), sort=False).mean()
    return {pid: float(v) for pid, v in means.items()}


def patient_auc(
    patient_ids: Sequence[Hashable],
    chunk_probs: Sequence[float] | np.ndarray,
    labels_by_patient: Mapping[Hashable, int],
) -> float:
    """ROC AUC over patients of the mean chunk probability (the metric; chunk AUC is not).

    Every patient in ``patient_ids`` must have a label; both classes must be present.
    """
    scores = patient_scores(patient_ids, chunk_probs)
    missing = [pid for pid in scores if pid not in labels_by_patient]
    if missing:
        raise KeyError(f"no label for patient(s) {missing[:5]}{'...' if len(missing) > 5 else ''}")
    y_true = np.array([int(labels_by_patient[pid]) for pid in scores])
    if np.unique(y_true).size < 2:
        raise ValueError("patient AUC needs both classes among the scored patients")
    return roc_auc(y_true.tolist(), [scores[pid] for pid in scores])


def _check_activation(activation: str | None) -> None:
    if activation not in (None, "sigmoid"):
        raise ValueError(f"activation must be None or 'sigmoid', got {activation!r}")
