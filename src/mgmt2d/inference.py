"""inference_on_test.py: DICOM test patients -> submission CSV, streaming one patient at a time.

For each patient: read the series (the next patient's reading overlaps this one's model
work) -> segment-and-stack (the stage-2 preparation itself) -> zoom TTA -> per-frame
embeddings reused across chunks -> chunk probabilities -> mean per MRI type (and fold
models) -> mean over the types present. A patient with nothing usable gets 0.5.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mgmt2d import dicom, frames, segmenter, task2
from mgmt2d.chunks import n_chunks
from mgmt2d.classifier import MGMTClassifier, load_trained_classifier, predict_series
from mgmt2d.device import add_device_argument, resolve_device
from mgmt2d.io import save_npy_atomic, write_csv_atomic, write_run_config
from mgmt2d.settings import SettingsError, add_settings_argument, load_settings
from mgmt2d.stack import StackedSeries, StackOptions, segment_and_stack_many

log = logging.getLogger(__name__)
FALLBACK = 0.5


@dataclass
class Models:
    segmenter: torch.nn.Module
    classifiers: dict[str, list[MGMTClassifier]]   # MRI type -> fold models
    image_size: int
    seq_len: int
    stride: int


@dataclass
class Timer:
    """Seconds per step, summed over patients (the benchmark reads it)."""

    seconds: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "segment": 0.0, "classify": 0.0})

    def add(self, step: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[step] = self.seconds.get(step, 0.0) + now - t0
        return now


def classifier_checkpoint(model_dir: Path, mri_type: str, fold: int) -> Path | None:
    """The type's own model, else the pooled model (all types); None when neither exists."""
    for name in (mri_type, "pooled"):
        path = model_dir / name / f"fold{fold}" / "best.pt"
        if path.is_file():
            return path
    return None


def load_models(
    seg_path: Path, cls_dir: Path, mri_types: list[str], folds: list[int], device: torch.device,
    backbone: str = "eca_nfnet_l0", channels_last: bool = False,
) -> Models:
    if not seg_path.is_file():
        raise SettingsError(f"segmentation model {seg_path} not found (train_segmentation.py or download_models.py)")
    seg = segmenter.load_segmenter(seg_path, device)
    if channels_last:
        seg = seg.to(memory_format=torch.channels_last)
    classifiers: dict[str, list[MGMTClassifier]] = {}
    cache: dict[Path, MGMTClassifier] = {}
    config: dict = {}
    for mri_type in mri_types:
        for fold in folds:
            path = classifier_checkpoint(cls_dir, mri_type, fold)
            if path is None:
                continue
            if path not in cache:
                cache[path], config = load_trained_classifier(path, device, channels_last, backbone)
            classifiers.setdefault(mri_type, []).append(cache[path])
    if not classifiers:
        raise SettingsError(f"no classifier checkpoint for types {mri_types} folds {folds} under {cls_dir}")
    missing = sorted(set(mri_types) - set(classifiers))
    if missing:
        log.warning("no classifier for %s: those types are left out", ", ".join(missing))
    return Models(seg, classifiers, int(config.get("image_size", 224)), int(config.get("seq_len", 35)), int(config.get("stride", 5)))


def series_frames(images: np.ndarray, image_size: int, zoom: float) -> torch.Tensor:
    """Stacked uint8 (K, H, W, 3) -> normalised (K, 3, S, S): zoom about the centre, resize, normalise."""
    return torch.from_numpy(frames.normalise(frames.resize(frames.zoom(images, zoom), image_size)))


def classify_series(
    models: list[MGMTClassifier], stacked: StackedSeries, image_size: int, seq_len: int, stride: int,
    zoom: float, batch_size: int, autocast_dtype: torch.dtype | None,
) -> float:
    """Mean chunk probability over the series' chunks and the fold models."""
    x = series_frames(stacked.images, image_size, zoom)
    probs = [predict_series(m, x, seq_len, stride, batch_size, autocast_dtype=autocast_dtype) for m in models]
    return float(np.mean(np.stack(probs)))


def patient_series(input_dir: Path, patient: str, mri_types: list[str]) -> list[tuple[str, Path]]:
    folder = input_dir / patient
    if not folder.is_dir():  # IDs may be spelled without zero padding on disk
        alt = [p for p in input_dir.iterdir() if p.is_dir() and p.name.isdigit() and task2.format_id(p.name) == patient]
        folder = alt[0] if alt else folder
    return [(t, folder / t) for t in mri_types if (folder / t).is_dir()]


def predict(
    patients: list[str],
    input_dir: Path,
    models: Models,
    device: torch.device,
    mri_types: list[str],
    tta_zoom: float = 1.2,
    seg_batch_size: int = 32,
    batch_size: int = 32,
    workers: int = 1,
    keep_dir: Path | None = None,
    amp: bool = True,
    timer: Timer | None = None,
    seg_image_size: int = 224,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(submission rows, per-patient per-type rows) for ``patients`` in their order."""
    timer = timer or Timer()
    opts = StackOptions(image_size=seg_image_size, seg_batch_size=seg_batch_size, amp=amp)
    types = [t for t in mri_types if t in models.classifiers]
    plan = {p: patient_series(input_dir, p, types) for p in patients}
    reader = dicom.read_series_many([path for p in patients for _, path in plan[p]], workers=max(workers, 1))
    autocast_dtype = None
    if amp and device.type == "cuda":
        autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    rows, detail = [], []
    for patient in tqdm(patients, desc="inference", unit="patient"):
        t0 = time.perf_counter()
        volumes: list[tuple[str, np.ndarray]] = []
        for mri_type, _path in plan[patient]:
            folder, volume, _meta = next(reader)
            if isinstance(volume, Exception):
                detail.append({"BraTS21ID": patient, "type": mri_type, "kept": 0, "chunks": 0, "prob": np.nan, "note": f"unreadable: {volume}"})
                continue
            volumes.append((mri_type, volume))
        t0 = timer.add("read", t0)
        stacked = segment_and_stack_many(models.segmenter, [v for _, v in volumes], device, opts) if volumes else []
        t0 = timer.add("segment", t0)
        type_probs = []
        for (mri_type, _), res in zip(volumes, stacked):
            if res.kept == 0:
                detail.append({"BraTS21ID": patient, "type": mri_type, "kept": 0, "chunks": 0, "prob": np.nan, "note": res.reason})
                continue
            if keep_dir is not None:
                save_npy_atomic(keep_dir / f"{patient}_{mri_type}.npy", res.images)
            prob = classify_series(models.classifiers[mri_type], res, models.image_size, models.seq_len, models.stride,
                                   tta_zoom, batch_size, autocast_dtype)
            type_probs.append(prob)
            detail.append({"BraTS21ID": patient, "type": mri_type, "kept": res.kept,
                           "chunks": n_chunks(res.kept, models.seq_len, models.stride), "prob": prob, "note": ""})
        for mri_type in sorted(set(mri_types) - {t for t, _ in plan[patient]}):
            detail.append({"BraTS21ID": patient, "type": mri_type, "kept": 0, "chunks": 0, "prob": np.nan, "note": "series missing"})
        timer.add("classify", t0)
        if type_probs:
            rows.append({"BraTS21ID": patient, "MGMT_value": float(np.mean(type_probs))})
        else:
            tqdm.write(f"warning: patient {patient} has no usable slice in any MRI type: MGMT_value {FALLBACK}")
            log.warning("patient %s has no usable slice in any MRI type: MGMT_value %.1f", patient, FALLBACK)
            rows.append({"BraTS21ID": patient, "MGMT_value": FALLBACK})
    return pd.DataFrame(rows, columns=["BraTS21ID", "MGMT_value"]), pd.DataFrame(detail)


def submission_patients(input_dir: Path, sample: Path | None) -> tuple[list[str], list[str]]:
    """(5-digit IDs, spelling to write) from sample_submission.csv, else every patient folder."""
    if sample is not None and sample.is_file():
        raw = pd.read_csv(sample, dtype={"BraTS21ID": str})
        if "BraTS21ID" not in raw.columns:
            raise SettingsError(f"{sample} lacks a BraTS21ID column")
        spelled = raw["BraTS21ID"].astype(str).str.strip().tolist()
        return [task2.format_id(s) for s in spelled], spelled
    ids = [task2.format_id(p.name) for p in task2.patient_folders(input_dir)]
    return ids, ids


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_argument(parser)
    parser.add_argument("--input", type=Path, help="test patients folder (default DICOM_DATA_DIR/test)")
    parser.add_argument("--output", type=Path, help="submission CSV (default TEST_PREDICTION_FILE)")
    parser.add_argument("--sample-submission", type=Path, help="default: sample_submission.csv beside the input folder")
    add_device_argument(parser)
    parser.add_argument("--image-size", type=int, default=224, help="segmenter input size (classifier size comes from its checkpoint)")
    parser.add_argument("--tta-zoom", type=float, default=1.2, help="test-time zoom-in (reference 1.2; 1.0 disables)")
    parser.add_argument("--mri-types", nargs="+", default=list(task2.MRI_TYPES), choices=list(task2.MRI_TYPES))
    parser.add_argument("--folds", nargs="+", type=int, default=[0], help="fold models to average")
    parser.add_argument("--weights-dir", type=Path,
                        help="folder with segmentation/fold0/best.pt and classification/<type>/fold<k>/best.pt "
                             "(default: SEGMENT_MODEL_DIR and CLASSIFICATION_MODEL_DIR)")
    parser.add_argument("--seg-batch-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32, help="frames per backbone call")
    parser.add_argument("--workers", type=int, default=2, help="DICOM reading workers (overlap model work)")
    parser.add_argument("--keep-intermediate", action="store_true", help="save stacked slices in TEMP_DATA_DIR")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="fp32 on CUDA")


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.settings)
    input_dir = args.input or settings["DICOM_DATA_DIR"] / "test"
    if not input_dir.is_dir():
        raise SettingsError(f"test folder {input_dir} does not exist (--input or DICOM_DATA_DIR/test)")
    output = args.output or settings["TEST_PREDICTION_FILE"]
    sample = args.sample_submission or input_dir.parent / "sample_submission.csv"
    if args.sample_submission and not sample.is_file():
        raise SettingsError(f"--sample-submission {sample} not found")
    if args.weights_dir:
        seg_path = args.weights_dir / "segmentation" / "fold0" / "best.pt"
        cls_dir = args.weights_dir / "classification"
    else:
        seg_path = settings["SEGMENT_MODEL_DIR"] / "fold0" / "best.pt"
        cls_dir = settings["CLASSIFICATION_MODEL_DIR"]
    device = resolve_device(args.device)
    models = load_models(seg_path, cls_dir, args.mri_types, args.folds, device, channels_last=device.type == "cuda")
    patients, spelled = submission_patients(input_dir, sample if sample.is_file() else None)
    keep_dir = settings["TEMP_DATA_DIR"] / "inference" if args.keep_intermediate else None
    timer = Timer()
    sub, detail = predict(patients, input_dir, models, device, args.mri_types, args.tta_zoom,
                          args.seg_batch_size, args.batch_size, args.workers, keep_dir, args.amp, timer, args.image_size)
    sub["BraTS21ID"] = spelled
    write_csv_atomic(output, sub)
    write_csv_atomic(output.with_name(output.stem + "_per_type.csv"), detail)
    write_run_config(output.parent, output.stem + "_config.json",
                     {**vars(args), "input": input_dir, "output": output, "seg_model": seg_path, "classifier_dir": cls_dir,
                      "seconds": timer.seconds})
    print(f"{len(sub)} patients -> {output} (per-type detail: {output.with_name(output.stem + '_per_type.csv')})")
    return 0
