"""Whole-volume evaluation of the segmenter: every axial slice, volumetric BraTS Dice.

``python -m mgmt2d evaluate-segmentation --settings S --task1-dir DIR --out OUT``
writes ``OUT/<case>_pred.nii.gz`` (0 background, 2 whole tumour outside ET, ET in the
TASK1_DIR layout's label: 4 for BraTS 2021, 3 for 2023+; the input's affine) and
``OUT/metrics.csv`` (case,dice_wt,dice_et).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mgmt2d.data import brats
from mgmt2d.data.intensity import minmax_uint8
from mgmt2d.data.io import atomic_path, write_csv_atomic, write_run_config
from mgmt2d.data.settings import SettingsError, add_settings_argument, load_settings
from mgmt2d.device import add_device_argument, resolve_device
from mgmt2d.engines import BackendOptions, add_backend_arguments, backend_from_args
from mgmt2d.segmentation import model as segmenter
from mgmt2d.training.checkpoint import checkpoint_config, read_weights_file

log = logging.getLogger(__name__)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Volumetric Dice; an empty prediction of an empty truth scores 1 (BraTS convention)."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    total = pred.sum() + truth.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(pred, truth).sum() / total)


def labels_from_masks(wt: np.ndarray, et: np.ndarray, et_label: int = 4) -> np.ndarray:
    """[WT, ET] binary maps -> BraTS-style labels: ``et_label`` for ET (4 in 2021, 3 in 2023+), 2 for the rest."""
    out = np.zeros(wt.shape, dtype=np.uint8)
    out[wt.astype(bool)] = 2
    out[et.astype(bool)] = et_label
    return out


def segment_volume(
    model: torch.nn.Module,
    volumes: dict[str, np.ndarray],
    device: torch.device,
    image_size: int,
    batch_size: int,
    threshold: float = 0.5,
) -> np.ndarray:
    """Probabilities of every axial slice, averaged over modalities -> uint8 (2, X, Y, Z) masks."""
    shape = next(iter(volumes.values())).shape
    probs = np.zeros((shape[2], 2, image_size, image_size), dtype=np.float32)
    used = 0
    for name, volume in volumes.items():
        scaled = minmax_uint8(volume)
        if scaled is None:
            log.warning("modality %s is constant: left out of the average", name)
            continue
        axial = np.ascontiguousarray(np.moveaxis(scaled, 2, 0))  # (Z, X, Y)
        probs += segmenter.predict_probs(model, segmenter.to_input(axial, image_size), device, batch_size)
        used += 1
    if used == 0:
        raise ValueError("every modality of this case is constant")
    probs /= used
    masks = np.stack([segmenter.from_output(p, shape[:2]) for p in probs]) > threshold  # (Z, 2, X, Y)
    return np.moveaxis(masks, 0, -1).astype(np.uint8)  # (2, X, Y, Z)


@dataclass
class EvalOptions:
    """How :func:`evaluate` runs."""

    modalities: tuple[str, ...] = brats.MODALITIES
    device: torch.device = torch.device("cpu")
    image_size: int | None = None          # default: the checkpoint's, else 224
    batch_size: int = 16
    cases: set[str] | None = None          # only these BraTS 2021 IDs (a stage-1 fold)
    label_map: tuple[tuple[int, int], ...] = ()
    backend: BackendOptions | None = None  # None: torch as loaded


def evaluate(model_path: Path, task1: brats.Task1Folder, out_dir: Path,
             options: EvalOptions | None = None) -> pd.DataFrame:
    """Dice per case of ``task1`` (:func:`mgmt2d.data.brats.find_task1`; only ``options.cases`` when given)."""
    o = options or EvalOptions()
    model = segmenter.load_segmenter(model_path, o.device)
    image_size = o.image_size or _checkpoint_image_size(model_path) or 224
    if o.backend is not None:
        model = segmenter.with_backend(model, model_path, image_size, o.backend)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    log.info("%s", task1.describe())
    case_dirs = [c for cid, c in task1.cases.items() if o.cases is None or cid in o.cases]
    if o.cases is not None and len(case_dirs) < len(o.cases):
        absent = sorted(o.cases - set(task1.cases))
        log.warning("%d fold case(s) not in %s: %s", len(absent), task1.root, ", ".join(absent[:5]))
    for case_dir in tqdm(case_dirs, desc="evaluate", unit="case"):
        try:
            case = brats.read_case(case_dir, o.modalities, label_map=o.label_map)
            masks = segment_volume(model, case.volumes, o.device, image_size, o.batch_size)
        except (brats.BratsCaseError, ValueError) as err:
            log.error("%s: %s (skipped)", case_dir.name, err)
            continue
        with atomic_path(out_dir / f"{case_dir.name}_pred.nii.gz", suffix=".nii.gz") as tmp:
            nib.save(nib.Nifti1Image(labels_from_masks(*masks, task1.layout.et_label), case.affine), str(tmp))
        rows.append(
            {"case": case_dir.name, "dice_wt": dice(masks[0], case.masks[0]), "dice_et": dice(masks[1], case.masks[1])}
        )
    metrics = pd.DataFrame(rows, columns=["case", "dice_wt", "dice_et"])
    write_csv_atomic(out_dir / "metrics.csv", metrics)
    return metrics


def fold_cases(folds_csv: Path, fold: int) -> set[str]:
    """BraTS case ids of one stage-1 fold, from the folds.csv prepare_segmentation_data.py wrote."""
    if not folds_csv.is_file():
        raise SettingsError(f"{folds_csv} not found: --fold reads the stage-1 folds of prepare_segmentation_data.py")
    folds = pd.read_csv(folds_csv, dtype={"case": str})
    cases = set(folds.loc[folds.fold == fold, "case"])
    if not cases:
        raise SettingsError(f"{folds_csv} has no case in fold {fold} (folds {sorted(folds.fold.unique())})")
    return cases


def _checkpoint_image_size(path: Path) -> int | None:
    config = checkpoint_config(read_weights_file(path))
    return int(config["image_size"]) if "image_size" in config else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_argument(parser)
    parser.add_argument("--model", type=Path, help="checkpoint (default: SEGMENT_MODEL_DIR/fold0/best.pt)")
    parser.add_argument("--task1-dir", type=Path, help="BraTS case folders with seg files (default TASK1_DIR)")
    parser.add_argument("--fold", type=int,
                        help="score only the cases of this stage-1 fold (SEGMENT_DATA_DIR/folds.csv; 0 = the "
                             "validation fold train_segmentation.py held out)")
    parser.add_argument("--label-map", nargs="+", metavar="FROM:TO", default=[], help="as prepare_segmentation_data.py")
    parser.add_argument("--modalities", nargs="+", default=list(brats.MODALITIES))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=None, help="default: the checkpoint's, else 224")
    parser.add_argument("--batch-size", type=int, default=16)
    add_device_argument(parser)
    add_backend_arguments(parser)


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.settings)
    model_path = args.model or settings["SEGMENT_MODEL_DIR"] / f"fold{args.fold or 0}" / "best.pt"
    task1_dir = args.task1_dir or settings.existing("TASK1_DIR")
    cases = fold_cases(settings["SEGMENT_DATA_DIR"] / "folds.csv", args.fold) if args.fold is not None else None
    if not model_path.is_file():
        raise SettingsError(f"model {model_path} not found; train with train_segmentation.py or pass --model")
    label_map = brats.parse_label_map(args.label_map)
    task1 = brats.find_task1(task1_dir, label_map)   # a wrong folder is refused before any output
    device = resolve_device(args.device)
    backend = backend_from_args(args, device)
    write_run_config(args.out, "evaluate_config.json", {**vars(args), "model": str(model_path), **backend.to_dict()})
    metrics = evaluate(model_path, task1, args.out, EvalOptions(
        brats.parse_modalities(args.modalities), device, args.image_size, args.batch_size, cases, label_map, backend))
    if metrics.empty:
        print("error: no case could be evaluated", file=sys.stderr)
        return 1
    print(metrics.to_string(index=False))
    print(f"mean dice_wt {metrics.dice_wt.mean():.4f}  dice_et {metrics.dice_et.mean():.4f}  ({len(metrics)} cases)")
    print(f"predictions and metrics.csv in {args.out}")
    return 0
