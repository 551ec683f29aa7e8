"""Training samples of stage 2: 35-slice chunks of a prepared series, read from memory-mapped arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from mgmt2d.classification import frames
from mgmt2d.classification.chunks import SEQ_LEN, STRIDE, chunk_index
from mgmt2d.data.task2 import POOLED
from mgmt2d.training.augment import train_transform


def load_index(data_dir: Path, mri_type: str = POOLED) -> pd.DataFrame:
    """Series of a prepared split with at least one kept slice, of one MRI type or every type (``pooled``)."""
    path = Path(data_dir) / "index.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run prepare_classification.py first")
    frame = pd.read_csv(path, dtype={"patient": str}, keep_default_na=False)
    frame = frame[frame.kept > 0]
    if mri_type != POOLED:
        frame = frame[frame.type == mri_type]
    return frame.reset_index(drop=True)


def split_by_fold(index: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation) series; whole patients go to one side (folds are per patient)."""
    if (index.fold < 0).any():
        missing = sorted(index[index.fold < 0].patient.unique())
        raise ValueError(f"patients without a fold: {', '.join(missing[:5])}; check KFOLD_PATH")
    val = index[index.fold == fold].reset_index(drop=True)
    train = index[index.fold != fold].reset_index(drop=True)
    if val.empty or train.empty:
        raise ValueError(f"fold {fold} leaves an empty training or validation set")
    return train, val


class ChunkDataset(Dataset):
    """One sample per chunk: dict(image (T, 3, S, S) float32, label float32, patient_id str).

    Frames are gathered from the memory-mapped series array at their native size (pad
    positions are black frames), augmented with one draw for the whole chunk (the published
    order: augment, resize, normalise), resized and normalised. The draw is seeded from
    (``seed``, epoch, chunk index) after :meth:`set_epoch` (the engine calls it every epoch),
    so it depends on neither worker count nor order.
    """

    def __init__(
        self,
        index: pd.DataFrame,
        data_dir: Path,
        image_size: int = 224,
        seq_len: int = SEQ_LEN,
        stride: int = STRIDE,
        augment: bool = False,
        seed: int = 42,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.image_size, self.seq_len = image_size, seq_len
        self.files = index.file.tolist()
        self.labels = index.label.astype(np.float32).tolist()
        self.patients = index.patient.astype(str).tolist()
        self.samples: list[tuple[int, np.ndarray]] = []
        for i, kept in enumerate(index.kept.astype(int)):
            self.samples.extend((i, row) for row in chunk_index(kept, seq_len, stride))
        self.transform = train_transform() if augment else None
        self.seed = int(seed)
        self.epoch: int | None = None
        self._arrays: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _array(self, i: int) -> np.ndarray:
        if i not in self._arrays:  # opened lazily, so each loader worker maps its own
            self._arrays[i] = np.load(self.data_dir / self.files[i], mmap_mode="r", allow_pickle=False)
        return self._arrays[i]

    def set_epoch(self, epoch: int) -> None:
        """Seed augmentation from (seed, epoch, chunk index) from now on."""
        self.epoch = int(epoch)

    def chunk_frames(self, idx: int) -> np.ndarray:
        """The chunk's uint8 frames (T, H, W, 3) at the series' native size, before augmentation."""
        series, rows = self.samples[idx]
        arr = self._array(series)
        out = np.zeros((self.seq_len, *arr.shape[1:]), dtype=np.uint8)
        valid = rows >= 0
        out[: valid.sum()] = arr[rows[valid]]
        return out

    def __getitem__(self, idx: int) -> dict:
        chunk = self.chunk_frames(idx)
        if (self.samples[idx][1] < 0).any():
            # The published dataset appended float64 zero frames to a short chunk, so the whole
            # chunk was augmented and resized in float (no uint8 rounding); inference does the same.
            chunk = chunk.astype(np.float64)
        if self.transform is not None:
            chunk = frames.augment(chunk, self.transform, self.seed, self.epoch, idx)
        chunk = frames.resize(chunk, self.image_size)
        series = self.samples[idx][0]
        return {
            "image": torch.from_numpy(frames.normalise(chunk)),
            "label": torch.tensor(self.labels[series]),
            "patient_id": self.patients[series],
        }
