"""Task 2 (classification) index: which patient has which MRI series, and its label."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mgmt2d.data.patient_id import validate_patient_id

MRI_TYPES: tuple[str, ...] = ("FLAIR", "T1w", "T1wCE", "T2w")
POOLED = "pooled"   # train_classification.py --mri-type pooled: one model on the series of every MRI type
DEFAULT_EXCLUDE: tuple[str, ...] = ("00109", "00123", "00709")
log = logging.getLogger(__name__)


class Task2Error(ValueError):
    """A Task 2 layout or CSV problem; the message names the file and the fix."""


def format_id(value: object) -> str:
    """A patient ID: a purely numeric one is Kaggle's BraTS21ID, a 5-digit string ("109", 109 -> "00109");
    any other (a cohort's case folder name, ``UPENN-GBM-00002_11``) is kept as it is, once it passes
    :func:`mgmt2d.data.patient_id.validate_patient_id` (a plain folder name)."""
    text = str(value).strip()
    if text.endswith(".0") and text[:-2].isdigit():
        text = text[:-2]
    if text.isdigit():
        return text.zfill(5)
    return validate_patient_id(text)


def read_id_csv(path: str | Path, value_column: str = "MGMT_value") -> pd.DataFrame:
    """Read a BraTS21ID,<value> CSV (train_labels.csv or sample_submission.csv)."""
    path = Path(path)
    if not path.is_file():
        raise Task2Error(f"{path} not found")
    frame = pd.read_csv(path, dtype={"BraTS21ID": str})
    missing = {"BraTS21ID", value_column} - set(frame.columns)
    if missing:
        raise Task2Error(f"{path} lacks column(s) {', '.join(sorted(missing))}; expected BraTS21ID,{value_column}")
    frame["BraTS21ID"] = frame["BraTS21ID"].map(format_id)
    duplicated = frame["BraTS21ID"][frame["BraTS21ID"].duplicated()].tolist()
    if duplicated:
        raise Task2Error(f"{path} lists patient(s) twice: {', '.join(duplicated[:5])}")
    return frame


def read_labels(path: str | Path) -> dict[str, int]:
    frame = read_id_csv(path)
    bad = frame[~frame["MGMT_value"].isin([0, 1])]
    if len(bad):
        raise Task2Error(f"{path}: MGMT_value must be 0 or 1 (patient {bad['BraTS21ID'].iloc[0]})")
    return dict(zip(frame["BraTS21ID"], frame["MGMT_value"].astype(int)))


@dataclass
class Task2Index:
    """Series of one split. ``series`` has columns patient, mri_type, path, label."""

    split: str
    series: pd.DataFrame
    patients: list[str]
    missing_types: dict[str, list[str]] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"{self.split}: {len(self.patients)} patients, {len(self.series)} series"]
        if self.excluded:
            lines.append(f"  excluded: {', '.join(self.excluded)}")
        if self.missing_types:
            lines.append(f"  {len(self.missing_types)} patient(s) with missing MRI types:")
            for pid, types in sorted(self.missing_types.items()):
                lines.append(f"    {pid}: {', '.join(types)}")
        if self.unlabelled:
            lines.append(f"  not in train_labels.csv (skipped): {', '.join(self.unlabelled)}")
        return "\n".join(lines)


def patient_folders(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and p.name.isdigit())


def index_split(
    dicom_dir: str | Path,
    split: str,
    exclude: tuple[str, ...] | list[str] = DEFAULT_EXCLUDE,
    mri_types: tuple[str, ...] = MRI_TYPES,
) -> Task2Index:
    """Walk DICOM_DATA_DIR/<split>/<id>/<type>/, join labels for train, apply exclusions."""
    dicom_dir = Path(dicom_dir)
    split_dir = dicom_dir / split
    if not split_dir.is_dir():
        raise Task2Error(f"{split_dir} does not exist (DICOM_DATA_DIR/{split} in SETTINGS.json)")
    labels: dict[str, int] = {}
    if split == "train":
        labels = read_labels(dicom_dir / "train_labels.csv")
    excluded_set = {format_id(e) for e in exclude}
    rows, patients, excluded, unlabelled = [], [], [], []
    missing: dict[str, list[str]] = {}
    for folder in patient_folders(split_dir):
        pid = format_id(folder.name)
        if pid in excluded_set:
            excluded.append(pid)
            continue
        if split == "train" and pid not in labels:
            unlabelled.append(pid)
            continue
        patients.append(pid)
        absent = []
        for mri_type in mri_types:
            series_dir = folder / mri_type
            if series_dir.is_dir():
                rows.append(
                    {"patient": pid, "mri_type": mri_type, "path": str(series_dir), "label": labels.get(pid, -1)}
                )
            else:
                absent.append(mri_type)
        if absent:
            missing[pid] = absent
    series = pd.DataFrame(rows, columns=["patient", "mri_type", "path", "label"])
    index = Task2Index(split, series, patients, missing, excluded, unlabelled)
    if missing or unlabelled:
        log.warning(index.report())
    return index


def task2_patient_ids(dicom_dir: str | Path) -> set[str]:
    """Every Task 2 patient ID (train labels and test folders): the stage-1 leakage filter."""
    dicom_dir = Path(dicom_dir)
    ids: set[str] = set()
    labels = dicom_dir / "train_labels.csv"
    if labels.is_file():
        ids |= set(read_labels(labels))
    for split in ("train", "test"):
        if (dicom_dir / split).is_dir():
            ids |= {format_id(p.name) for p in patient_folders(dicom_dir / split)}
    return ids
