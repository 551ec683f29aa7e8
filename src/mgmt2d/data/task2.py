"""Task 2 (classification) index: which patient has which MRI series, and its label; patient IDs.

A patient ID is its case folder's name: ASCII letters, digits, ``-``, ``_`` and ``.`` (not
starting with ``.``, at most 200 characters), so that it is always a plain folder or file name
inside an output folder. Only purely numeric IDs are rewritten, to the Kaggle 5-digit form
(``109``, ``0109`` and ``109.0`` are patient ``00109``); every other ID (``UPENN-GBM-00002_11``)
is kept exactly. :func:`format_id` is this rule, the one place it lives; :func:`read_id_table`
is the one reader of patient CSVs (labels, sample submissions, folds, predictions).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

MRI_TYPES: tuple[str, ...] = ("FLAIR", "T1w", "T1wCE", "T2w")
POOLED = "pooled"   # train_classification.py --mri-type pooled: one model on the series of every MRI type
DEFAULT_EXCLUDE: tuple[str, ...] = ("00109", "00123", "00709")
ID_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
MAX_ID_CHARS = 200   # below the 255-byte name limit, leaving room for suffixes such as "_FLAIR_seg.nii.gz"
_NUMERIC_ID = re.compile(r"[0-9]+(\.0)?")   # "109.0": a number that went through a float column
log = logging.getLogger(__name__)


class Task2Error(ValueError):
    """A Task 2 layout or CSV problem; the message names the file and the fix."""


class PatientIdError(Task2Error):
    """A patient ID that cannot be used as a folder name; the message is one line."""


def format_id(value: object, where: str = "") -> str:
    """``value`` (a case folder's name, a CSV cell) as a patient ID, or PatientIdError.

    Purely numeric IDs get the Kaggle 5-digit padding ("109", "0109", "109.0" and 109 ->
    "00109"); any other ID is returned unchanged (no case folding, no trimming) when it is a
    plain folder name: ASCII letters, digits, '-', '_' and '.', not starting with '.', at most
    200 characters. Anything else (a slash, a space, '..', a non-ASCII letter whose spelling
    differs between file systems) is refused rather than rewritten: two IDs must never
    collapse into one, and no ID may lead out of an output folder. ``where`` names the
    source for the message (a folder, "labels.csv line 7").
    """
    text = str(value)
    if _NUMERIC_ID.fullmatch(text):
        return text.removesuffix(".0").lstrip("0").zfill(5)
    if not text:
        problem = "is empty"
    elif not ID_PATTERN.fullmatch(text):
        bad = sorted({c for c in text if not ID_PATTERN.fullmatch(c)})
        problem = f"holds {' '.join(repr(c) for c in bad)}"
    elif text.startswith("."):
        problem = "starts with '.' (a hidden name, or a way out of the folder)"
    elif len(text) > MAX_ID_CHARS:
        problem = f"is longer than {MAX_ID_CHARS} characters"
    else:
        return text
    source = f"{where}: " if where else ""
    raise PatientIdError(
        f"{source}patient ID {text[:80]!r} {problem}: an ID must be a plain folder name of ASCII letters, "
        "digits, '-', '_' and '.' (rename the case folder or fix the ID)"
    )


# --------------------------------------------------------------------------- patient CSVs


@dataclass(frozen=True)
class LabelColumns:
    """The columns of a labels CSV (train_labels.csv, sample_submission.csv): ``--id-column``, ``--label-column``."""

    id: str = "BraTS21ID"
    label: str = "MGMT_value"

    def flags(self) -> dict[str, str]:
        return {self.id: "--id-column", self.label: "--label-column"}


def add_column_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--id-column`` and ``--label-column`` of ``what`` (e.g. "train_labels.csv")."""
    d = LabelColumns()
    parser.add_argument("--id-column", default=d.id, help=f"patient ID column of {what} (default {d.id})")
    parser.add_argument("--label-column", default=d.label, help=f"MGMT label column of {what} (default {d.label})")


def columns_from_args(args: argparse.Namespace) -> LabelColumns:
    return LabelColumns(getattr(args, "id_column", LabelColumns.id), getattr(args, "label_column", LabelColumns.label))


@dataclass(frozen=True)
class IdRow:
    """One data row of a patient CSV: its line number, patient ID, the cells asked for, the ID as spelled."""

    line: int
    id: str
    values: dict[str, str]
    spelled: str


def read_id_table(path: str | Path, id_column: str, columns: Sequence[str] = (), flags: dict[str, str] | None = None,
                  key_columns: Sequence[str] = ()) -> list[IdRow]:
    """The rows of a patient CSV; a one-line Task2Error naming the file and line for anything wrong.

    The one reader of patient CSVs: a UTF-8 BOM is accepted; cells are trimmed; the ID goes
    through :func:`format_id`. Refused: a missing file or column (``flags``, column -> the option
    that names it, for the message; default ``--id-column`` for the ID column), a blank row between
    data rows (a hand-edited file that lost a row; blank lines at the very end are not rows), a row
    with another number of fields than the header, a patient listed twice (``key_columns`` extend
    the key when a patient has one row per key, as in the per-type file).
    """
    path = Path(path)
    flags = {id_column: "--id-column"} if flags is None else flags
    if not path.is_file():
        raise Task2Error(f"{path} not found; give the path of an existing CSV file")
    rows: list[IdRow] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if not any(header):
                raise Task2Error(f"{path} is empty; expected a header line {','.join((id_column, *columns))}")
            for name in (id_column, *columns):
                if name not in header:
                    how = f"; name the column with {flags[name]}" if name in flags else "; fix the header line"
                    raise Task2Error(f"{path} has no column {name!r} (columns: {', '.join(header)}){how}")
            where = {name: header.index(name) for name in (id_column, *columns)}
            seen: dict[tuple[str, ...], int] = {}
            blank = None
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    blank = blank or line
                    continue
                if blank is not None:
                    raise Task2Error(f"{path} line {blank} is blank; delete the blank line or fill in the row")
                if len(row) != len(header):
                    raise Task2Error(
                        f"{path} line {line} has {len(row)} fields but the header has {len(header)}; fix the row"
                    )
                spelled = row[where[id_column]].strip()
                pid = format_id(spelled, f"{path} line {line}")
                values = {name: row[where[name]].strip() for name in columns}
                key = (pid, *(values[k] for k in key_columns))
                if key in seen:
                    raise Task2Error(f"{path} lists {' '.join(key)} twice (lines {seen[key]} and {line}); keep one row")
                seen[key] = line
                rows.append(IdRow(line, pid, values, spelled))
    except UnicodeDecodeError:
        raise Task2Error(f"{path} is not a UTF-8 text CSV; export it as CSV") from None
    return rows


def read_labels(path: str | Path, columns: LabelColumns = LabelColumns()) -> dict[str, int]:
    """Patient -> 0/1 label of a labels CSV; anything else is one line naming file, line and value."""
    labels = {}
    for row in read_id_table(path, columns.id, (columns.label,), columns.flags()):
        text = row.values[columns.label]
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if number not in (0.0, 1.0):
            raise Task2Error(
                f"{path} line {row.line}: {columns.label} is {text!r} for patient {row.id}; labels must be 0 or 1"
            )
        labels[row.id] = int(number)
    return labels


def read_patient_list(path: str | Path, columns: LabelColumns = LabelColumns()) -> tuple[list[str], list[str]]:
    """(IDs, spelling as written) of a sample submission, in its order; it must list at least one patient."""
    rows = read_id_table(path, columns.id, (columns.label,), columns.flags())
    if not rows:
        raise Task2Error(f"{path} lists no patient; it should hold {columns.id},{columns.label} rows")
    return [r.id for r in rows], [r.spelled for r in rows]


# --------------------------------------------------------------------------- folders


def id_clash(names: Iterable[str]) -> tuple[str, str, str | None] | None:
    """The first two names that would be one patient, as (first, second, their ID or None), else None.

    Names are folder names or IDs; numeric ones are one patient when they pad alike ("7" and
    "00007": the third item is "00007"), and IDs that differ only in case (third item None) would
    share their output files on a case-insensitive disk. Call with valid IDs (:func:`format_id`).
    """
    seen: dict[str, str] = {}
    for name in names:
        pid = format_id(name)
        other = seen.setdefault(pid.casefold(), name)
        if other != name:
            return other, name, (pid if format_id(other) == pid else None)
    return None


def patient_folders(split_dir: str | Path) -> dict[str, Path]:
    """Patient ID -> folder, for every folder of ``split_dir`` (sorted by ID; hidden folders are not patients).

    Every folder is a patient, so a folder whose name cannot be an ID is refused (one line), as
    are two folders of one patient (:func:`id_clash`: "7" and "00007", or IDs that differ only in case).
    """
    split_dir = Path(split_dir)
    folders = [p for p in sorted(split_dir.iterdir(), key=lambda p: p.name)
               if not p.name.startswith(".") and p.is_dir()]
    found = {format_id(path.name, str(path)): path for path in folders}
    clash = id_clash(p.name for p in folders)
    if clash is not None:
        first, second, pid = clash
        why = f"both patient {pid}" if pid else "whose IDs differ only in case"
        raise Task2Error(f"{split_dir} holds {first} and {second}, {why}: keep one folder per patient "
                         "(their outputs would collide)")
    return dict(sorted(found.items()))


def find_patient_folder(split_dir: str | Path, patient: str) -> Path | None:
    """The folder of ``patient`` (an ID from :func:`format_id`) in ``split_dir``, None when it has none.

    A numeric ID may be spelled without its padding on disk ("109" for 00109).
    """
    split_dir = Path(split_dir)
    exact = split_dir / patient
    if exact.is_dir():
        return exact
    if not patient.isdigit() or not split_dir.is_dir():
        return None
    return next((p for p in sorted(split_dir.iterdir()) if p.name.isdigit() and p.is_dir()
                 and format_id(p.name) == patient), None)


def series_folders(patient_dir: str | Path, mri_types: Sequence[str] = MRI_TYPES) -> dict[str, Path]:
    """MRI type -> its series folder in ``patient_dir`` (in ``mri_types`` order; types without one left out).

    Type folders are matched without regard to case (``flair``, ``T1WCE``); two folders of one
    type (``FLAIR`` and ``flair``) are refused, naming both: which one is the series is not ours
    to guess.
    """
    patient_dir = Path(patient_dir)
    if not patient_dir.is_dir():
        return {}
    wanted = {t.casefold(): t for t in mri_types}
    found: dict[str, list[Path]] = {}
    for path in sorted(patient_dir.iterdir(), key=lambda p: p.name):
        mri_type = wanted.get(path.name.casefold())
        if mri_type is not None and path.is_dir():
            found.setdefault(mri_type, []).append(path)
    for mri_type, paths in found.items():
        if len(paths) > 1:
            raise Task2Error(f"{patient_dir} holds {' and '.join(p.name for p in paths)}, both the {mri_type} "
                             "series (type folders are matched regardless of case): keep one")
    return {t: found[t][0] for t in mri_types if t in found}


# --------------------------------------------------------------------------- the index


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


def index_split(
    dicom_dir: str | Path,
    split: str,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    mri_types: Sequence[str] = MRI_TYPES,
    columns: LabelColumns = LabelColumns(),
) -> Task2Index:
    """Walk DICOM_DATA_DIR/<split>/<id>/<type>/, join labels for train (``columns`` of train_labels.csv),
    apply exclusions."""
    dicom_dir = Path(dicom_dir)
    split_dir = dicom_dir / split
    if not split_dir.is_dir():
        raise Task2Error(f"{split_dir} does not exist (DICOM_DATA_DIR/{split} in SETTINGS.json)")
    labels: dict[str, int] = {}
    if split == "train":
        labels = read_labels(dicom_dir / "train_labels.csv", columns)
    excluded_set = {format_id(e, "--exclude") for e in exclude}
    rows, patients, excluded, unlabelled = [], [], [], []
    missing: dict[str, list[str]] = {}
    for pid, folder in patient_folders(split_dir).items():
        if pid in excluded_set:
            excluded.append(pid)
            continue
        if split == "train" and pid not in labels:
            unlabelled.append(pid)
            continue
        patients.append(pid)
        found = series_folders(folder, mri_types)
        for mri_type, series_dir in found.items():
            rows.append({"patient": pid, "mri_type": mri_type, "path": str(series_dir), "label": labels.get(pid, -1)})
        absent = [t for t in mri_types if t not in found]
        if absent:
            missing[pid] = absent
    series = pd.DataFrame(rows, columns=["patient", "mri_type", "path", "label"])
    index = Task2Index(split, series, patients, missing, excluded, unlabelled)
    if missing or unlabelled:
        log.warning(index.report())
    return index


def task2_patient_ids(dicom_dir: str | Path) -> set[str]:
    """Every Task 2 patient ID (train labels and test folders): the stage-1 leakage filter.

    IDs that are not BraTS 2021 numbers (another cohort's) simply match no Task 1 case. A labels file
    whose ID column is not ``BraTS21ID`` (another cohort's, read with ``--id-column`` by stage 2) is
    left out with a warning: its patients are the folders' anyway.
    """
    dicom_dir = Path(dicom_dir)
    ids: set[str] = set()
    labels = dicom_dir / "train_labels.csv"
    if labels.is_file():
        with open(labels, newline="", encoding="utf-8-sig") as fh:
            header = [h.strip() for h in next(csv.reader(fh), [])]
        if LabelColumns.id in header:
            ids |= {row.id for row in read_id_table(labels, LabelColumns.id)}
        else:
            log.warning("%s has no %s column: the leakage filter uses the patient folders' IDs only", labels,
                        LabelColumns.id)
    for split in ("train", "test"):
        if (dicom_dir / split).is_dir():
            ids |= set(patient_folders(dicom_dir / split))
    return ids
