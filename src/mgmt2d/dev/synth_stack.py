"""Stage-2 training data from synthetic ground truth: segment-and-stack with the *true* masks.

Why: to check that stage 2 learns on its own (the learning test in tests/test_learning.py),
stage 1 is bypassed. For each synthetic Task 2 series the true BraTS labels written by
``mgmt2d.dev.synth.generate(..., series_seg=True)`` (``truth/series_seg/<id>/<type>.npz``, key
``seg``, (S, H, W) in the reading order of :func:`mgmt2d.data.dicom.read_series`) replace the
segmenter's output; everything else is what :mod:`mgmt2d.classification.stack` does: drop near-empty
slices, min-max scale the rest to uint8, keep a slice by the reference's tumour filter and
stack ``[slice, WT*255, ET*255]``. WT = labels {1, 2, 4}, ET = label 4.

The output is the layout ``train_classification.py`` reads (see
``mgmt2d.classification.prepare``): ``<out>/series/<patient>_<type>.npy`` ((K, H, W, 3) uint8)
and ``<out>/index.csv`` (``patient,type,kept,total,file,label,fold,note``). Labels come
from the generator's ``synth.json``; both its Task 2 splits (train and test) are used,
since every synthetic patient has a known label.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mgmt2d.classification.prepare import INDEX_COLUMNS, make_folds
from mgmt2d.classification.stack import StackedSeries, prepare_series, stack_series
from mgmt2d.data import dicom
from mgmt2d.data.contract import InputContract
from mgmt2d.data.io import save_npy_atomic, write_csv_atomic, write_json_atomic

__all__ = ["true_masks", "stack_with_truth", "prepare_from_synth"]

WT_LABELS = (1, 2, 4)
ET_LABEL = 4


def true_masks(seg: np.ndarray) -> np.ndarray:
    """BraTS labels (..., H, W) -> {0, 1} uint8 masks (2, ..., H, W): WT {1, 2, 4}, ET {4}."""
    seg = np.asarray(seg)
    return np.stack([np.isin(seg, WT_LABELS), seg == ET_LABEL]).astype(np.uint8)


def stack_with_truth(
    volume: np.ndarray,
    seg: np.ndarray,
    fractions: np.ndarray | None = None,
    contract: InputContract = InputContract(),
) -> StackedSeries:
    """What ``stack.segment_and_stack`` returns, with true labels ``seg`` as the segmentation.

    ``volume`` (S, H, W) as read by ``dicom.read_series`` (``fractions``: its
    ``meta.positive_fraction``); ``seg`` (S, H, W) BraTS labels on the same grid and in the
    same slice order. The keep rules and stacking are ``mgmt2d.classification.stack``'s own.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if seg.shape != volume.shape:
        raise ValueError(f"labels {seg.shape} do not match the series {volume.shape}")
    prepared = prepare_series(volume, fractions, contract)
    masks = true_masks(seg[prepared[0]])
    return stack_series(volume, prepared, (masks[:, i] for i in range(masks.shape[1])), contract)


def prepare_from_synth(
    synth_dir: str | Path,
    out_dir: str | Path,
    mri_types: tuple[str, ...] = ("FLAIR", "T1w", "T1wCE", "T2w"),
    n_folds: int = 4,
    seed: int = 42,
    splits: tuple[str, ...] = ("train", "test"),
) -> pd.DataFrame:
    """Write the stage-2 prepared layout for the labelled Task 2 patients of a synthetic set.

    ``synth_dir`` holds a dataset generated with ``series_seg=True``; ``splits`` picks its
    Task 2 train and/or test patients (every synthetic patient has a known label), so a
    learning check can keep the test patients out of training and model selection alike.
    Folds come from ``classification.prepare.make_folds`` (stratified by label, one fold per
    patient). Returns the index (also written to ``out_dir/index.csv``).
    """
    synth_dir, out_dir = Path(synth_dir), Path(out_dir)
    meta = json.loads((synth_dir / "synth.json").read_text())
    if not meta.get("series_seg"):
        raise ValueError(f"{synth_dir} was generated without series_seg: no true series labels")
    unknown = sorted(set(splits) - {"train", "test"})
    if unknown or not splits:
        raise ValueError(f"splits must be a non-empty subset of ('train', 'test'), got {splits}")
    split_of = {p: split for split in splits for p in meta[f"task2_{split}_ids"]}
    labels = {p: int(meta["labels"][p]) for p in split_of}
    fold_table = make_folds(labels, n_folds=n_folds, seed=seed)
    folds = dict(zip(fold_table.BraTS21ID, fold_table.fold.astype(int)))
    rows: list[dict[str, Any]] = []
    for patient in sorted(split_of):
        for mri_type in mri_types:
            row = {"patient": patient, "type": mri_type, "kept": 0, "total": 0, "file": "",
                   "label": labels[patient], "fold": int(folds[patient]), "note": ""}
            folder = synth_dir / "task2" / split_of[patient] / patient / mri_type
            volume, meta = dicom.read_series(folder)
            seg = np.load(synth_dir / "truth" / "series_seg" / patient / f"{mri_type}.npz")["seg"]
            res = stack_with_truth(volume, seg, meta.positive_fraction)
            row["total"], row["kept"], row["note"] = res.total, res.kept, res.reason
            if res.kept:
                row["file"] = f"series/{patient}_{mri_type}.npy"
                save_npy_atomic(out_dir / row["file"], res.images)
            rows.append(row)
    frame = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    write_csv_atomic(out_dir / "index.csv", frame)
    write_json_atomic(out_dir / "dataset.json", {
        "source": str(synth_dir), "segmentation": "ground truth (truth/series_seg)",
        "splits": list(splits), "mri_types": list(mri_types), "n_folds": n_folds, "seed": seed,
        "counts": {"patients": len(split_of), "series": len(frame),
                   "series_with_slices": int((frame.kept > 0).sum()), "kept_slices": int(frame.kept.sum())},
    })
    return frame
