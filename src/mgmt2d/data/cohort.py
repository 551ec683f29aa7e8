"""A NIfTI cohort: a folder of case folders, one NIfTI file per MRI type.

This is how the public cohorts with MGMT labels are distributed (BraTS on TCIA, UPENN-GBM,
UCSF-PDGM): skull-stripped, co-registered volumes, one case per folder. A file's MRI
type is the suffix between the last ``_`` or ``-`` and ``.nii.gz`` / ``.nii`` (exact spelling,
case included), by the table :data:`NAMINGS`:

============  =========  ========  ========  ========  ========
naming        separator  FLAIR     T1w       T1wCE     T2w
============  =========  ========  ========  ========  ========
BraTS 2021    ``_``      flair     t1        t1ce      t2
BraTS 2023+   ``-``      t2f       t1n       t1c       t2w
UPENN-GBM     ``_``      FLAIR     T1        T1GD      T2
UCSF-PDGM     ``_``      FLAIR     T1        T1c       T2
============  =========  ========  ========  ========  ========

The case ID is the case folder's name (``UPENN-GBM-00002_11``, ``UCSF-PDGM-0004_nifti``) by
:func:`mgmt2d.data.task2.format_id`, the one ID rule: kept as it is, but for purely numeric
names, which get the Kaggle 5-digit padding.
Every other file in a case folder (segmentations, masks, ADC, bias-corrected copies, a
sidecar) and every subfolder is ignored and listed. A type may be missing. Nothing is
guessed: a case with two files for one type, with files of two namings, or with a name that
cannot be an ID is refused with one line, and a case folder with none of the four types is
reported; neither is dropped without a word.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mgmt2d.data.task2 import MRI_TYPES, PatientIdError, Task2Index, format_id

log = logging.getLogger(__name__)

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Naming:
    """One distribution's file naming: ``<anything><separator><suffix>.nii(.gz)`` per MRI type."""

    name: str
    separator: str
    suffixes: dict[str, str]   # our MRI type -> the distribution's suffix

    def pattern(self) -> str:
        """``<case>_{flair,t1,t1ce,t2}.nii.gz``, for messages and the README."""
        return f"<case>{self.separator}{{{','.join(self.suffixes[t] for t in MRI_TYPES)}}}.nii.gz"


NAMINGS: tuple[Naming, ...] = (
    Naming("BraTS 2021", "_", {"FLAIR": "flair", "T1w": "t1", "T1wCE": "t1ce", "T2w": "t2"}),
    Naming("BraTS 2023+", "-", {"FLAIR": "t2f", "T1w": "t1n", "T1wCE": "t1c", "T2w": "t2w"}),
    Naming("UPENN-GBM", "_", {"FLAIR": "FLAIR", "T1w": "T1", "T1wCE": "T1GD", "T2w": "T2"}),
    Naming("UCSF-PDGM", "_", {"FLAIR": "FLAIR", "T1w": "T1", "T1wCE": "T1c", "T2w": "T2"}),
)


class CohortError(ValueError):
    """A cohort folder (or case folder) that cannot be used as given; the message is one line."""


@dataclass
class CohortCase:
    """One usable case: its ID, folder, one NIfTI per MRI type found, and what was ignored."""

    case_id: str
    folder: Path
    series: dict[str, Path]           # MRI type -> NIfTI file, in MRI_TYPES order
    naming: str                       # "BraTS 2023+"; "UPENN-GBM / UCSF-PDGM" when the files fit both
    ignored: list[str] = field(default_factory=list)   # entry names of the folder that are not a type

    @property
    def missing(self) -> list[str]:
        return [t for t in MRI_TYPES if t not in self.series]


@dataclass
class Cohort:
    """What :func:`discover_cohort` found under ``root``."""

    root: Path
    cases: list[CohortCase]                 # sorted by case ID; each has at least one type
    refused: dict[str, str] = field(default_factory=dict)            # folder name -> one-line reason
    empty: dict[str, list[str]] = field(default_factory=dict)        # folder name -> its entries (no type)
    ignored: list[str] = field(default_factory=list)                 # entries of root that are not folders

    @property
    def missing_types(self) -> dict[str, list[str]]:
        return {c.case_id: c.missing for c in self.cases if c.missing}

    def series_frame(self) -> pd.DataFrame:
        """One row per series: patient, mri_type, path, naming (the columns of a Task 2 index, plus naming)."""
        rows = [{"patient": c.case_id, "mri_type": t, "path": str(p), "naming": c.naming}
                for c in self.cases for t, p in c.series.items()]
        return pd.DataFrame(rows, columns=["patient", "mri_type", "path", "naming"])

    def report(self) -> str:
        """A short human summary: counts, namings, missing types, refused and empty cases, ignored files."""
        namings = Counter(c.naming for c in self.cases)
        n_series = sum(len(c.series) for c in self.cases)
        lines = [f"{self.root}: {len(self.cases)} case(s), {n_series} series ("
                 + ", ".join(f"{n} {name}" for name, n in namings.most_common()) + ")"]
        if self.missing_types:
            lines.append(f"  {len(self.missing_types)} case(s) with missing MRI types:")
            lines += [f"    {cid}: {', '.join(types)}" for cid, types in self.missing_types.items()]
        for name, reason in self.refused.items():
            lines.append(f"  refused {name}: {reason}")
        for name, entries in self.empty.items():
            shown = ", ".join(entries[:5]) + (f" (+{len(entries) - 5} more)" if len(entries) > 5 else "")
            lines.append(f"  no FLAIR/T1w/T1wCE/T2w file in {name} (holds: {shown or 'nothing'})")
        kinds = Counter(_kind(name) for c in self.cases for name in c.ignored)
        if kinds:
            lines.append(f"  ignored in case folders, not one of the four types: {sum(kinds.values())} "
                         "entries (" + ", ".join(f"{k} {n}" for k, n in kinds.most_common()) + ")")
        if self.ignored:
            lines.append(f"  ignored in {self.root.name}/, not case folders: {', '.join(self.ignored)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy with every file listed."""
        return {
            "root": str(self.root),
            "cases": [{"case_id": c.case_id, "folder": str(c.folder), "naming": c.naming,
                       "series": {t: str(p) for t, p in c.series.items()}, "missing": c.missing,
                       "ignored": c.ignored} for c in self.cases],
            "refused": dict(self.refused),
            "empty": {k: list(v) for k, v in self.empty.items()},
            "ignored": list(self.ignored),
        }


def _nifti_stem(name: str) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _kind(name: str) -> str:
    """What an ignored entry is, for the summary: its suffix (``_seg``, ``-seg``) or its extension."""
    stem = _nifti_stem(name)
    if stem is None:
        return Path(name).suffix or name
    cut = max(stem.rfind("_"), stem.rfind("-"))
    return stem[cut:] if cut > 0 else ".nii"


def file_type(name: str) -> tuple[str, tuple[str, ...]] | None:
    """(MRI type, namings it fits) of a file name, or None when it is not one of the four types."""
    stem = _nifti_stem(name)
    if stem is None:
        return None
    found: dict[str, list[str]] = {}
    for naming in NAMINGS:
        for mri_type, suffix in naming.suffixes.items():
            tail = naming.separator + suffix
            if stem.endswith(tail) and len(stem) > len(tail):
                found.setdefault(mri_type, []).append(naming.name)
    if not found:
        return None
    if len(found) > 1:   # impossible with the table above; a new naming must keep it so
        raise AssertionError(f"{name} fits several MRI types: {found}")
    ((mri_type, namings),) = found.items()
    return mri_type, tuple(namings)


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as err:
        raise CohortError(f"cannot list {folder}: {err.strerror or err}") from None


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:   # a link loop
        return False


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _scan_case(folder: Path) -> CohortCase:
    """The case in ``folder``; CohortError (one line) when it must be refused. May have no series."""
    try:
        case_id = format_id(folder.name, str(folder))
    except PatientIdError as err:
        raise CohortError(str(err)) from None
    by_type: dict[str, list[str]] = {}
    namings: dict[str, tuple[str, ...]] = {}
    ignored: list[str] = []
    for entry in _entries(folder):
        typed = file_type(entry.name) if _is_file(entry) else None
        if typed is None:
            ignored.append(entry.name + ("/" if _is_dir(entry) else ""))
            continue
        mri_type, fits = typed
        by_type.setdefault(mri_type, []).append(entry.name)
        namings[entry.name] = fits
    doubled = {t: names for t, names in by_type.items() if len(names) > 1}
    if doubled:
        t, names = next(iter(doubled.items()))
        raise CohortError(f"{folder} holds {len(names)} files for {t} ({', '.join(names)}): keep one per MRI "
                          "type (mgmt2d never picks one)")
    common = [n.name for n in NAMINGS if all(n.name in fits for fits in namings.values())]
    if namings and not common:
        detail = ", ".join(f"{name} ({' / '.join(fits)})" for name, fits in namings.items())
        raise CohortError(f"{folder} mixes file namings: {detail}; rename its files to one naming")
    series = {t: folder / by_type[t][0] for t in MRI_TYPES if t in by_type}
    return CohortCase(case_id, folder, series, " / ".join(common), ignored)


def discover_case(folder: str | Path) -> CohortCase:
    """One case folder (see the module doc); CohortError when it is refused or holds none of the types."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CohortError(f"case folder {'is not a folder' if folder.exists() else 'does not exist'}: {folder}")
    case = _scan_case(folder)
    if not case.series:
        raise CohortError(f"no FLAIR/T1w/T1wCE/T2w NIfTI in {folder} ({_expected()}; "
                          f"it holds: {', '.join(case.ignored[:5]) or 'nothing'})")
    return case


def discover_cohort(root: str | Path) -> Cohort:
    """Every case folder of ``root`` (see the module doc), sorted by ID.

    Raises CohortError (one line naming what was there) when no case folder holds any of
    the four types, e.g. when ``root`` is itself a case folder or holds DICOM.
    """
    root = Path(root)
    if not root.is_dir():
        raise CohortError(f"cohort folder {'is not a folder' if root.exists() else 'does not exist'}: {root}")
    cases: list[CohortCase] = []
    refused: dict[str, str] = {}
    empty: dict[str, list[str]] = {}
    ignored: list[str] = []
    for entry in _entries(root):
        if not _is_dir(entry):
            ignored.append(entry.name)
            continue
        try:
            case = _scan_case(Path(entry.path))
        except CohortError as err:
            refused[entry.name] = str(err)
            continue
        if case.series:
            cases.append(case)
        else:
            empty[entry.name] = case.ignored
    if not cases:
        raise CohortError(_nothing_found(root, refused, empty, ignored))
    seen: dict[str, Path] = {}
    for case in cases:   # "7" and "007" are both patient 00007
        if case.case_id in seen:
            raise CohortError(f"{root} holds {seen[case.case_id].name} and {case.folder.name}, both patient "
                              f"{case.case_id}: keep one folder per patient")
        seen[case.case_id] = case.folder
    return Cohort(root, sorted(cases, key=lambda c: c.case_id), refused, empty, ignored)


def _expected() -> str:
    return "expected " + ", ".join(f"{n.pattern()} ({n.name})" for n in NAMINGS)


def _nothing_found(root: Path, refused: dict[str, str], empty: dict[str, list[str]], ignored: list[str]) -> str:
    niftis = [name for name in ignored if _nifti_stem(name) is not None]
    if niftis:
        return (f"{root} holds NIfTI files itself ({', '.join(niftis[:3])}), not case folders: point at the "
                f"folder that holds one folder per case ({_expected()})")
    if refused:
        name, reason = next(iter(refused.items()))
        return f"no usable case folder in {root}: {len(refused)} refused, e.g. {reason}"
    seen = ", ".join(list(empty)[:3]) + (f" (+{len(empty) - 3} more)" if len(empty) > 3 else "")
    return (f"no case folder in {root} holds a FLAIR/T1w/T1wCE/T2w NIfTI ({len(empty)} folder(s): {seen or 'none'}; "
            f"{len(ignored)} other entries); {_expected()}")


def index_cohort(root: str | Path, split: str, labels: dict[str, int] | None = None,
                 exclude: tuple[str, ...] | list[str] = ()) -> Task2Index:
    """A NIfTI cohort as a Task 2 split index (what prepare_classification.py reads for DICOM):
    one row per series with the case's label (-1 without labels); on ``train`` only labelled
    cases, the others listed as unlabelled; ``exclude`` drops cases first. The cohort's report
    (refused and empty cases, ignored files) is logged, never dropped without a word."""
    found = discover_cohort(root)
    excluded_set = {format_id(e, "--exclude") for e in exclude}
    series = found.series_frame()
    patients, excluded, unlabelled = [], [], []
    for case in found.cases:
        if case.case_id in excluded_set:
            excluded.append(case.case_id)
        elif split == "train" and case.case_id not in (labels or {}):
            unlabelled.append(case.case_id)
        else:
            patients.append(case.case_id)
    series = series[series.patient.isin(set(patients))].reset_index(drop=True)
    series["label"] = [int((labels or {}).get(p, -1)) for p in series.patient]
    index = Task2Index(split, series[["patient", "mri_type", "path", "label"]], patients,
                       {c: t for c, t in found.missing_types.items() if c in set(patients)}, excluded, unlabelled)
    if found.refused or found.empty or found.ignored or index.missing_types or unlabelled:
        log.warning("%s\n%s", found.report(), index.report())
    return index
