"""A tiny inference setup for tests of the run itself (resume, locks, disk full): random weights of the real
segmenter whose head marks every pixel as tumour (so every brain slice is kept and scored), a tiny timm
classifier backbone, and six patients of one 4-slice 32x32 FLAIR series each. One run takes seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

REPO = Path(__file__).resolve().parents[1]
PATIENTS = ["00011", "00012", "00013", "00014", "00015", "00016"]
SIZE = 32
SLICES = 4


def _write_slice(path: Path, pixels: np.ndarray, z: float, instance: int, series_uid: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    ds.SeriesInstanceUID = series_uid
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.ImagePositionPatient = [0.0, 0.0, float(z)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.InstanceNumber = instance
    ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_patients(folder: Path, patients: list[str] = PATIENTS, seed: int = 0) -> Path:
    """One FLAIR series per patient: a bright noisy disc ("brain") on black, different per patient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE * 0.4) ** 2
    for patient in patients:
        series = folder / patient / "FLAIR"
        series.mkdir(parents=True)
        uid = generate_uid()
        for k in range(SLICES):
            pixels = np.where(disc, rng.integers(200, 1000, (SIZE, SIZE)), 0)
            _write_slice(series / f"Image-{k + 1}.dcm", pixels, z=2.0 * k, instance=k + 1, series_uid=uid)
    return folder


def write_weights(root: Path, seed: int = 0) -> Path:
    """Our weights layout: the real segmenter (head: every pixel tumour), a test_efficientnet classifier."""
    from mgmt2d.classification.model import build_classifier
    from mgmt2d.data.contract import InputContract
    from mgmt2d.segmentation.model import build_segmenter

    torch.manual_seed(seed)
    seg = build_segmenter()
    head = seg.segmentation_head[0]
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.constant_(head.bias, 5.0)
    (root / "segmentation/fold0").mkdir(parents=True)
    torch.save({"model": seg.state_dict()}, root / "segmentation/fold0/best.pt")
    contract = InputContract(seg_image_size=SIZE, image_size=SIZE, seq_len=4, stride=2)
    classifier = build_classifier("test_efficientnet", 16, 4)
    (root / "classification/pooled/fold0").mkdir(parents=True)
    torch.save({"model": classifier.state_dict(), "config": {
        "backbone": "test_efficientnet", "lstm_hidden": 16, "seq_len": 4, "stride": 2, "image_size": SIZE,
        "contract": contract.to_dict()}}, root / "classification/pooled/fold0/best.pt")
    return root


def make_setup(root: Path) -> dict[str, Path]:
    """Test and train patients (with train_labels.csv), weights and a SETTINGS.json under ``root``."""
    test = write_patients(root / "task2" / "test")
    train_ids = [f"{int(p) + 100:05d}" for p in PATIENTS[:5]]
    write_patients(root / "task2" / "train", train_ids, seed=1)
    (root / "task2" / "train_labels.csv").write_text(
        "BraTS21ID,MGMT_value\n" + "".join(f"{p},{k % 2}\n" for k, p in enumerate(train_ids)))
    weights = write_weights(root / "weights")
    settings = {"DICOM_DATA_DIR": "task2", "TASK1_DIR": "task1", "CLASSIFICATION_RAW_JPG": "jpg",
                "SEGMENT_DATA_DIR": "work/seg", "CLASSIFICATION_DATA_DIR": "work/cls", "KFOLD_PATH": "work/folds.csv",
                "SEGMENT_MODEL_DIR": "weights/segmentation", "CLASSIFICATION_MODEL_DIR": "weights/classification",
                "PRETRAINED_DIR": "weights/pretrained", "TEMP_DATA_DIR": "work/tmp",
                "TEST_PREDICTION_FILE": "out/sub.csv"}
    (root / "SETTINGS.json").write_text(json.dumps(settings))
    return {"root": root, "settings": root / "SETTINGS.json", "test": test, "weights": weights}


def infer_argv(setup: dict[str, Path], output: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "inference_on_test.py"), "--settings", str(setup["settings"]),
            "--output", str(output), "--device", "cpu", "--workers", "1", "--mri-types", "FLAIR", *extra]


def env(fault: str | None = None) -> dict[str, str]:
    out = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out.pop("MGMT2D_FAULT", None)
    if fault:
        out["MGMT2D_FAULT"] = fault
    return out


def infer(setup: dict[str, Path], output: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(infer_argv(setup, output, *extra), capture_output=True, text=True, env=env(fault),
                          timeout=600)
