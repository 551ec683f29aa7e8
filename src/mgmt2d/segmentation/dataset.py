"""Reading the stage-1 slice store (written by :mod:`mgmt2d.segmentation.prepare`): its index,
the fold split and the training dataset."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from mgmt2d.data.intensity import normalise_gray
from mgmt2d.data.task2 import format_id
from mgmt2d.segmentation.store import SegDataError, decode_masks
from mgmt2d.training import augment


def load_index(segment_data_dir: str | Path) -> pd.DataFrame:
    """The store's index.csv (case IDs as 5-digit strings); refuses an unfinished store."""
    root = Path(segment_data_dir)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise SegDataError(f"{meta_path} not found; run prepare_segmentation_data.py first")
    status = json.loads(meta_path.read_text()).get("status")
    if status != "complete" or not (root / "index.csv").is_file():
        raise SegDataError(
            f"{root} is an unfinished segmentation store; re-run prepare_segmentation_data.py to finish it"
        )
    index = pd.read_csv(
        root / "index.csv",
        dtype={"case": str, "modality": str, "plane": str, "image_file": str, "mask_file": str},
    )
    index["case"] = index["case"].map(format_id)
    return index


def split_by_fold(index: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, validation rows) for one fold; raises unless the two share no patient."""
    folds_per_case = index.groupby("case")["fold"].nunique()
    if (folds_per_case > 1).any():
        bad = folds_per_case[folds_per_case > 1].index[0]
        raise SegDataError(f"case {bad} appears in more than one fold; the index is not patient-grouped")
    if fold not in set(index["fold"].astype(int)):
        raise SegDataError(f"fold {fold} has no slice (folds present: {sorted(set(index['fold']))})")
    is_val = index["fold"].astype(int) == fold
    train, val = index[~is_val].reset_index(drop=True), index[is_val].reset_index(drop=True)
    overlap = set(train["case"]) & set(val["case"])
    if overlap:  # cannot happen after the check above; kept as the stated guarantee
        raise SegDataError(f"train and validation share case(s) {sorted(overlap)[:5]}")
    return train, val


normalise_slice = normalise_gray  # kept name: the training input transform


class SegmentationSliceDataset(Dataset):
    """Slices of the store by index rows: (image float32 (3, S, S), mask float32 (2, S, S)).

    Arrays are memory-mapped lazily in each worker process (a bounded cache of open maps).
    Order per sample: augment (native size), resize (image linear, mask nearest), normalise.

    Augmentation seeding, per sample: after :meth:`set_epoch` ``(e)``, sample ``i`` is
    augmented with a seed derived from (seed, e, i), so results depend on neither worker
    count nor order; call it before each epoch's DataLoader iterator is created (workers
    copy the dataset then; not with ``persistent_workers=True``). Until ``set_epoch`` is
    called, the per-sample key is drawn from NumPy's global RNG instead, which the
    engine re-seeds every epoch (and ``seed_worker`` in each worker): reproducible for
    a given (seed, epoch, worker count) and different from epoch to epoch.
    """

    def __init__(
        self,
        root: str | Path,
        rows: pd.DataFrame,
        image_size: int = 224,
        transform: Any | None = None,
        seed: int = 42,
        max_open: int = 64,
    ) -> None:
        missing = {"case", "image_file", "image_row", "mask_file", "mask_row"} - set(rows.columns)
        if missing:
            raise SegDataError(f"index rows lack column(s) {', '.join(sorted(missing))}")
        self.root = Path(root)
        self.image_files = rows["image_file"].astype(str).tolist()
        self.image_rows = rows["image_row"].to_numpy(np.int64)
        self.mask_files = rows["mask_file"].astype(str).tolist()
        self.mask_rows = rows["mask_row"].to_numpy(np.int64)
        self.cases = rows["case"].astype(str).tolist()
        self.image_size = int(image_size)
        self.transform = transform
        self.seed = int(seed)
        self.epoch: int | None = None
        self.max_open = int(max_open)
        self._maps: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.image_rows)

    def set_epoch(self, epoch: int) -> None:
        """Seed augmentation from (seed, epoch, index) from now on."""
        self.epoch = int(epoch)

    def _array(self, rel: str) -> np.ndarray:
        if self._pid != os.getpid():  # a forked worker opens its own maps
            self._maps = OrderedDict()
            self._pid = os.getpid()
        arr = self._maps.get(rel)
        if arr is None:
            arr = np.load(self.root / rel, mmap_mode="r", allow_pickle=False)
            self._maps[rel] = arr
            if len(self._maps) > self.max_open:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(rel)
        return arr

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored slice: image uint8 (H, W) and mask uint8 (2, H, W), no resize."""
        image = np.array(self._array(self.image_files[i])[self.image_rows[i]])
        mask = decode_masks(np.array(self._array(self.mask_files[i])[self.mask_rows[i]]))
        return image, mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.raw(i)
        mask = np.ascontiguousarray(mask.transpose(1, 2, 0))
        if self.transform is not None:  # at the native slice size, as the published recipe
            image, mask = augment.apply(self.transform, self.seed, self.epoch, i, image, mask)
        size = (self.image_size, self.image_size)
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        if mask.ndim == 2:  # OpenCV drops a trailing axis of size 1
            mask = mask[..., None]
        x = normalise_slice(image)
        y = np.ascontiguousarray(mask.transpose(2, 0, 1), dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
