"""``python -m mgmt2d organize``: a hospital's DICOM export -> the Kaggle Task 2 layout, with a table to check.

    python -m mgmt2d organize --input EXPORT --out LAYOUT [--series-csv EDITED.csv] [--copy] [--overwrite]

A PACS dump holds every series of every study in nested folders with meaningless names.
This walks EXPORT, reads each file's header only (pydicom ``stop_before_pixels``), groups
the files by patient, study and series, types each series FLAIR / T1w / T1wCE / T2w / other
with the rules of :mod:`mgmt2d.data.series_type`, chooses one series per type and patient, and
writes ``LAYOUT/<patient>/<TYPE>/Image-<n>.dcm`` (symbolic links, or copies with ``--copy``)
plus ``LAYOUT/series.csv`` (one row per series: what was found, the type, whether it was
chosen, and why) and ``LAYOUT/skipped.csv`` (files that are not images: DICOMDIR, text,
truncated or broken files). The user checks series.csv, may edit its ``type`` / ``chosen``
columns, and runs again with ``--series-csv`` to apply them. Every stage script reads LAYOUT
as a Task 2 split (``inference_on_test.py --input LAYOUT``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shutil
import struct
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from mgmt2d.data.dicom import (
    SkippedFile,
    SliceHeader,
    VolumeSplit,
    group_volumes,
    plane_from_orientation,
    slice_headers,
)
from mgmt2d.data.io import write_csv_atomic, write_run_config
from mgmt2d.data.series_type import (
    OTHER,
    SERIES_TYPES,
    SeriesSummary,
    SeriesTyping,
    study_contrast,
    type_series,
)
from mgmt2d.data.task2 import MAX_ID_CHARS, MRI_TYPES, format_id, id_clash

logger = logging.getLogger(__name__)

SERIES_CSV = "series.csv"
SKIPPED_CSV = "skipped.csv"
CONFIG_JSON = "organize_config.json"
COLUMNS: tuple[str, ...] = (
    "patient", "patient_id", "study_uid", "study_date", "series_uid", "series_number", "description", "protocol",
    "n_files", "n_slices", "n_volumes", "plane", "thickness", "tr", "te", "ti", "sequence", "acquisition",
    "image_type", "contrast_agent", "acquired", "fields", "type", "chosen", "reason",
)
EDITABLE = ("type", "chosen")
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"     # Media Storage Directory Storage
_DEFLATED = "1.2.840.10008.1.2.1.99"
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class OrganizeError(ValueError):
    """An export, a layout folder or an edited series.csv that cannot be used; the message is one line."""


@dataclass
class OrganizeOptions:
    """What ``python -m mgmt2d organize`` was asked to do."""

    input: Path
    out: Path
    series_csv: Path | None = None
    copy: bool = False
    overwrite: bool = False
    number_patients: bool = False
    progress: bool | None = None    # tqdm's default: a bar on a terminal only


# --------------------------------------------------------------------------- reading the export


@dataclass
class FileRecord:
    """One image file of the export: who, which series, and its slices' headers."""

    path: Path
    patient_id: str
    study_uid: str
    study_date: str
    series_uid: str
    sop_uid: str
    instance: float | None
    summary: SeriesSummary
    headers: list[SliceHeader]


def _pixel_data_problem(fh: Any, ds: pydicom.Dataset, at: int, size: int) -> str | None:
    """Why the pixel data starting at byte ``at`` is missing or cut short, or None when it is whole.

    The header-only read stops at the pixel data element; its declared length (or, for
    compressed data, its item structure) must fit in the file: a file cut during a copy is
    otherwise only found when the pixels are decoded, stages later.
    """
    if str(getattr(ds.file_meta, "TransferSyntaxUID", "")) == _DEFLATED:
        return None    # deflated: byte offsets are not the file's; the reader checks it when decoding
    fh.seek(at)
    head = fh.read(12)
    if len(head) < 8:
        return "DICOM without pixel data (a report, presentation state or other non-image object)"
    implicit, little = ds.original_encoding
    endian = "<" if little in (True, None) else ">"
    group, element = struct.unpack(endian + "HH", head[:4])
    if (group, element) not in _PIXEL_TAGS:
        return "DICOM without pixel data (a report, presentation state or other non-image object)"
    if implicit or implicit is None:
        length, start = struct.unpack(endian + "I", head[4:8])[0], at + 8
    else:
        length, start = struct.unpack(endian + "I", head[8:12])[0], at + 12
    if length != 0xFFFFFFFF:
        if start + length > size:
            return f"truncated: its pixel data needs {length} bytes and the file holds {max(size - start, 0)}"
        return None
    position = start    # encapsulated (compressed): items up to the sequence delimiter
    while True:
        fh.seek(position)
        item = fh.read(8)
        if len(item) < 8:
            return "truncated: its compressed pixel data ends without the sequence delimiter"
        tag_group, tag_element, item_length = struct.unpack(endian + "HHI", item)
        if (tag_group, tag_element) == (0xFFFE, 0xE0DD):
            return None
        if (tag_group, tag_element) != (0xFFFE, 0xE000) or item_length == 0xFFFFFFFF:
            return "broken compressed pixel data (an item that is not a fragment)"
        position += 8 + item_length
        if position > size:
            return "truncated: its compressed pixel data is cut inside a fragment"


def read_file(path: Path) -> FileRecord | str:
    """The record of one image file, or the reason it is skipped (not DICOM, DICOMDIR, no pixels, truncated)."""
    try:
        size = path.stat().st_size
        if size == 0:
            return "not a DICOM file: empty file"
        with open(path, "rb") as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
            if str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS or \
                    "DirectoryRecordSequence" in ds:
                return "DICOMDIR: an index of the media, not an image"
            problem = _pixel_data_problem(fh, ds, fh.tell(), size)
        if problem:
            return problem
        headers = slice_headers(ds, path)
        summary = SeriesSummary.from_dataset(ds)
    except InvalidDicomError:
        return "not a DICOM file"
    except OSError as err:
        return f"cannot be read: {err.strerror or err}"
    except Exception as err:   # a header so broken that pydicom gives up: listed, never fatal
        text = " ".join(f"{type(err).__name__}: {err}".split())
        return f"unreadable DICOM header: {text[:200]}"
    return FileRecord(
        path=path,
        patient_id=_value(ds, "PatientID"),
        study_uid=_value(ds, "StudyInstanceUID"),
        study_date=_value(ds, "StudyDate"),
        series_uid=_value(ds, "SeriesInstanceUID"),
        sop_uid=_value(ds, "SOPInstanceUID"),
        instance=_float(_value(ds, "InstanceNumber")),
        summary=summary,
        headers=headers,
    )


def _value(ds: pydicom.Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    return "" if value is None else str(value).strip(" \x00")


def _float(text: str) -> float | None:
    try:
        out = float(text)
    except ValueError:
        return None
    return out if math.isfinite(out) else None


def export_files(root: Path) -> tuple[list[Path], list[SkippedFile]]:
    """Every file under ``root`` (sorted; symbolic links to files included), and what cannot be read as one.

    Links to folders are not followed (an export never needs them, and they can loop); they, broken
    links and folders that cannot be read are listed with their reason.
    """
    files: list[Path] = []
    skipped: list[SkippedFile] = []

    def unreadable(err: OSError) -> None:
        skipped.append(SkippedFile(str(err.filename), f"cannot be read: {err.strerror or err}"))

    for folder, dirs, names in os.walk(root, onerror=unreadable, followlinks=False):
        dirs.sort()
        for name in dirs:
            if (Path(folder) / name).is_symlink():
                skipped.append(SkippedFile(str(Path(folder) / name), "symbolic link to a folder: not followed"))
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_file():
                files.append(path)
            elif path.is_symlink():
                skipped.append(SkippedFile(str(path), "broken symbolic link"))
    return files, skipped


def scan_export(root: Path, progress: bool | None = None) -> tuple[list[FileRecord], list[SkippedFile]]:
    """Read the header of every file under ``root``: (image records, skipped files with their reason)."""
    files, skipped = export_files(root)
    records: list[FileRecord] = []
    for path in tqdm(files, desc="headers", unit="file", disable=_no_bar(progress)):
        result = read_file(path)
        if isinstance(result, str):
            skipped.append(SkippedFile(str(path), result))
        else:
            records.append(result)
    return records, skipped


# --------------------------------------------------------------------------- series


@dataclass
class Series:
    """One series of the export and what organize decided about it."""

    patient_id: str
    study_uid: str
    study_date: str
    series_uid: str
    files: list[Path]                 # in InstanceNumber order: Image-1, Image-2, ...
    summary: SeriesSummary
    split: VolumeSplit
    plane: str
    typing: SeriesTyping = field(default_factory=lambda: SeriesTyping(OTHER, ""))
    chosen: bool = False
    note: str = ""                    # why chosen or not (when it is a candidate)
    patient: str = ""                 # the patient folder; "" when not placed
    multi_frame: bool = False         # its slices are frames of multi-frame files (Enhanced MR)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.patient_id, self.study_uid, self.series_uid

    @property
    def label(self) -> str:
        number = self.summary.series_number
        name = self.summary.name or "(no description)"
        return f"#{number:g} {name!r}" if number is not None else repr(name)

    @property
    def reason(self) -> str:
        return "; ".join(r for r in (self.typing.reason, self.note) if r)

    def row(self) -> dict[str, Any]:
        s = self.summary
        return {
            "patient": self.patient, "patient_id": self.patient_id, "study_uid": self.study_uid,
            "study_date": self.study_date, "series_uid": self.series_uid,
            "series_number": _number_text(s.series_number), "description": s.description, "protocol": s.protocol,
            "n_files": len(self.files), "n_slices": s.n_slices, "n_volumes": s.n_volumes, "plane": self.plane,
            "thickness": _number_text(s.thickness), "tr": _number_text(s.tr), "te": _number_text(s.te),
            "ti": _number_text(s.ti),
            "sequence": " ".join(p for p in ("\\".join(s.scanning_sequence), "\\".join(s.sequence_variant),
                                             s.sequence_name) if p),
            "acquisition": s.acquisition_type, "image_type": "\\".join(s.image_type),
            "contrast_agent": s.contrast_agent,
            "acquired": f"{s.acquired:%Y-%m-%d %H:%M:%S}" if s.acquired is not None else "",
            "fields": " ".join(self.typing.fields), "type": self.typing.type, "chosen": "yes" if self.chosen else "no",
            "reason": self.reason,
        }


def _number_text(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _order(record: FileRecord) -> tuple[bool, float, str]:
    return record.instance is None, record.instance or 0.0, str(record.path)


def group_series(records: Sequence[FileRecord], skipped: list[SkippedFile]) -> list[Series]:
    """Records grouped by (PatientID, StudyInstanceUID, SeriesInstanceUID); a repeated SOP instance is skipped."""
    groups: dict[tuple[str, str, str], list[FileRecord]] = defaultdict(list)
    for r in records:
        groups[(r.patient_id, r.study_uid, r.series_uid)].append(r)
    out = []
    for key in sorted(groups):
        members = sorted(groups[key], key=_order)
        first_of: dict[str, Path] = {}
        kept: list[FileRecord] = []
        for r in sorted(members, key=lambda r: str(r.path)):
            if r.sop_uid and r.sop_uid in first_of:
                skipped.append(SkippedFile(str(r.path), f"duplicate of {first_of[r.sop_uid]} (same SOPInstanceUID)"))
                continue
            first_of.setdefault(r.sop_uid, r.path)
            kept.append(r)
        kept.sort(key=_order)
        out.append(_series_of(kept))
    # series.csv lists each patient's studies in time and their series in SeriesNumber order
    return sorted(out, key=lambda s: (s.patient_id, s.study_date, s.study_uid, s.summary.series_number is None,
                                      s.summary.series_number or 0, s.series_uid))


def _series_of(members: list[FileRecord]) -> Series:
    headers = [h for r in members for h in r.headers]
    split = group_volumes(headers)
    volume = split.volumes[split.chosen] if split.chosen is not None else None
    indices = volume.indices if volume is not None else list(range(len(headers)))
    first = members[0]
    times = [r.summary.acquired for r in members if r.summary.acquired is not None]
    starts = [r.summary.contrast_start for r in members if r.summary.contrast_start is not None]
    frame_types = sorted({v for h in headers for v in (h.image_type or ())[2:]} | set(first.summary.frame_types))
    summary = replace(
        first.summary,
        n_slices=len(indices),
        n_volumes=split.n_volumes,
        volumes_by=tuple(split.by),
        volume_problem=split.reason if split.chosen is None else None,
        frame_types=tuple(frame_types),
        acquired=min(times) if times else None,
        contrast_start=min(starts) if starts else None,
        contrast_agent=next((r.summary.contrast_agent for r in members if r.summary.contrast_agent), ""),
    )
    planes = Counter(plane_from_orientation(headers[i].orientation) for i in indices)
    return Series(first.patient_id, first.study_uid, first.study_date, first.series_uid,
                  [r.path for r in members], summary, split, planes.most_common(1)[0][0],
                  multi_frame=any(h.frame is not None for h in headers))


def type_all(series: Sequence[Series]) -> None:
    """Type every series with its study's contrast timing (:func:`mgmt2d.data.series_type.type_series`)."""
    studies: dict[tuple[str, str], list[Series]] = defaultdict(list)
    for s in series:
        studies[(s.patient_id, s.study_uid)].append(s)
    for members in studies.values():
        contrast = study_contrast([m.summary for m in members])
        for m in members:
            m.typing = type_series(m.summary, contrast)
            if not m.series_uid:
                m.typing = SeriesTyping(OTHER, "no SeriesInstanceUID: its files cannot be told from another series'",
                                        ("SeriesInstanceUID",))


# --------------------------------------------------------------------------- choosing


def _rank(s: Series) -> tuple[int, float, float, str]:
    """Most slices first, then the thinnest, then the lowest SeriesNumber."""
    thickness = s.summary.thickness if s.summary.thickness is not None else math.inf
    number = s.summary.series_number if s.summary.series_number is not None else math.inf
    return -s.summary.n_slices, thickness, number, s.series_uid


def _why_first(best: Series, other: Series) -> str:
    a, b = best.summary, other.summary
    if a.n_slices != b.n_slices:
        return f"more slices ({a.n_slices} vs {b.n_slices})"
    if (a.thickness or math.inf) != (b.thickness or math.inf):
        return f"the same slices, thinner ({_number_text(a.thickness)} vs {_number_text(b.thickness) or '?'} mm)"
    return "the same slices and thickness, the lower SeriesNumber"


def _study_start(members: Sequence[Series]) -> datetime:
    times = [m.summary.acquired for m in members if m.summary.acquired is not None]
    return min(times) if times else datetime.max


def choose(series: Sequence[Series]) -> None:
    """One series per type and patient: from one study, the one with the most slices, then the thinnest.

    When a patient has several studies, the study with the most of the four types is used (the
    earliest when tied: before treatment), and the other studies' series say so.
    """
    patients: dict[str, list[Series]] = defaultdict(list)
    for s in series:
        s.chosen, s.note = False, ""
        if s.patient:
            patients[s.patient_id].append(s)
    for members in patients.values():
        studies: dict[str, list[Series]] = defaultdict(list)
        for s in members:
            studies[s.study_uid].append(s)
        ranked = sorted(studies.items(), key=lambda kv: (-len({m.typing.type for m in kv[1]} - {OTHER}),
                                                          _study_start(kv[1]), kv[0]))
        best_uid, best = ranked[0]
        if len(studies) > 1:
            n_types = len({m.typing.type for m in best} - {OTHER})
            when = best[0].study_date or best_uid
            for uid, others in ranked[1:]:
                for s in others:
                    if s.typing.type != OTHER:
                        s.note = (f"not chosen: the layout takes one study per patient, the study of {when} "
                                  f"({n_types} of {len(MRI_TYPES)} types; set chosen in series.csv to use this one)")
        for mri_type in MRI_TYPES:
            candidates = sorted((s for s in best if s.typing.type == mri_type), key=_rank)
            if not candidates:
                continue
            first = candidates[0]
            first.chosen = True
            if len(candidates) > 1:
                first.note = f"chosen among {len(candidates)} {mri_type} series: " + _why_first(first, candidates[1])
                for other in candidates[1:]:
                    other.note = f"not chosen: {first.label} has " + _why_first(first, other)


# --------------------------------------------------------------------------- patients


def safe_folder_name(patient_id: str) -> str:
    """A PatientID as a plain folder name: runs of anything but ``A-Z a-z 0-9 . _ -`` become ``_``."""
    name = _UNSAFE.sub("_", patient_id.strip()).strip("._") or "_"
    return name[:MAX_ID_CHARS]


def patient_folders(patient_ids: Iterable[str], number: bool) -> dict[str, str]:
    """PatientID -> patient folder name, or OrganizeError when two patients would share a folder.

    ``number``: ``00001``, ``00002``, ... in PatientID order. Otherwise the PatientID made safe
    (the stage scripts read any plain folder name as a patient ID; numbers are padded to 5 digits).
    """
    ids = sorted({p for p in patient_ids if p})
    if number:
        return {pid: f"{k:05d}" for k, pid in enumerate(ids, start=1)}
    names = {pid: safe_folder_name(pid) for pid in ids}
    by_name: dict[str, list[str]] = defaultdict(list)
    for pid, name in names.items():
        by_name[name].append(pid)
    for name, pids in by_name.items():
        if len(pids) > 1:
            raise OrganizeError(f"PatientIDs {pids[0]!r} and {pids[1]!r} would both become the patient folder "
                                f"{name!r}; pass --number-patients to name the patients 00001, 00002, ... instead "
                                "(series.csv keeps each PatientID)")
    _check_stage_readable(names)
    return names


def _check_stage_readable(names: dict[str, str]) -> None:
    """Two folders the stage scripts would read as one patient (:func:`mgmt2d.data.task2.id_clash`) are
    refused: numeric IDs are padded to 5 digits (``7`` and ``007``), and IDs that differ only in case
    would share their output files on a case-insensitive disk."""
    by_name = {name: pid for pid, name in sorted(names.items())}
    for name, pid in by_name.items():
        format_id(name, f"PatientID {pid!r}")
    clash = id_clash(by_name)
    if clash is not None:
        first, second, pid = clash
        why = f"are both patient {pid}" if pid else "differ only in case"
        raise OrganizeError(f"PatientIDs {by_name[first]!r} and {by_name[second]!r} {why} to the stage scripts; "
                            "pass --number-patients to number the patients 00001, 00002, ... instead")


def place_patients(series: Sequence[Series], number: bool) -> None:
    """Set each series' patient folder; a series without PatientID stays out of the layout, and says so."""
    missing = [s for s in series if not s.patient_id]
    if missing and len(missing) == len(series):
        raise OrganizeError(f"none of the {len(series)} series has a PatientID, so none can be placed in a patient "
                            "folder: export the studies again with the patients' IDs")
    folders = patient_folders((s.patient_id for s in series), number)
    for s in series:
        s.patient = folders.get(s.patient_id, "")
        if not s.patient_id:
            s.typing = replace(s.typing, reason=f"{s.typing.reason}; no PatientID in its headers: not placed in a "
                                                "patient folder")
    if missing:
        logger.warning("%d series have no PatientID: listed in series.csv, not placed in a patient folder",
                       len(missing))


# --------------------------------------------------------------------------- edited series.csv


def _chosen_value(text: str) -> bool | None:
    return {"yes": True, "y": True, "true": True, "1": True, "x": True,
            "no": False, "n": False, "false": False, "0": False, "": False}.get(text.strip().lower())


def apply_edits(series: Sequence[Series], path: Path) -> None:
    """Apply the ``type`` / ``chosen`` columns of an edited series.csv, or OrganizeError naming the line and the fix."""
    if not path.is_file():
        raise OrganizeError(f"--series-csv {path} not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise OrganizeError(f"{path} is not a readable CSV ({' '.join(str(err).split())[:120]}); "
                            f"start again from the {SERIES_CSV} organize wrote") from None
    needed = ("patient_id", "study_uid", "series_uid", *EDITABLE)
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise OrganizeError(f"{path} lacks the column(s) {', '.join(missing)}; start again from the {SERIES_CSV} "
                            "organize wrote and edit only its type and chosen columns")
    by_key = {s.key: s for s in series}
    seen: dict[tuple[str, str, str], int] = {}
    edits: dict[tuple[str, str, str], tuple[str, bool, int]] = {}
    valid_types = {t.lower(): t for t in SERIES_TYPES}
    for line, row in enumerate(table.itertuples(index=False), start=2):
        key = (row.patient_id.strip(), row.study_uid.strip(), row.series_uid.strip())
        where = f"{path} line {line}"
        if key in seen:
            raise OrganizeError(f"{where} lists series {key[2]} again (line {seen[key]}): keep one row per series")
        seen[key] = line
        if key not in by_key:
            raise OrganizeError(f"{where}: series {key[2]} of patient {key[0]!r} is not in the export; was this "
                                "series.csv written for another --input?")
        mri_type = valid_types.get(row.type.strip().lower())
        if mri_type is None:
            raise OrganizeError(f"{where}: type {row.type!r} is not one of {', '.join(SERIES_TYPES)}")
        chosen = _chosen_value(row.chosen)
        if chosen is None:
            raise OrganizeError(f"{where}: chosen {row.chosen!r} is not yes or no")
        if chosen and mri_type == OTHER:
            raise OrganizeError(f"{where}: a series of type other cannot be chosen; set its type to one of "
                                f"{', '.join(MRI_TYPES)} or chosen to no")
        if chosen and not by_key[key].patient:
            raise OrganizeError(f"{where}: series {key[2]} has no PatientID, so it has no patient folder to go in")
        edits[key] = (mri_type, chosen, line)
    absent = [s for s in series if s.key not in edits]
    if absent:
        more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
        raise OrganizeError(f"{path} lacks series {absent[0].series_uid} ({absent[0].label}) of patient "
                            f"{absent[0].patient_id!r}{more}; was it written for another --input?")
    taken: dict[tuple[str, str], int] = {}
    for key, (mri_type, chosen, line) in sorted(edits.items(), key=lambda kv: kv[1][2]):
        if not chosen:
            continue
        slot = (by_key[key].patient, mri_type)
        if slot in taken:
            raise OrganizeError(f"{path} lines {taken[slot]} and {line} both choose a {mri_type} series for patient "
                                f"{by_key[key].patient_id!r}: choose one (set the other's chosen to no)")
        taken[slot] = line
    for key, (mri_type, chosen, _) in edits.items():
        s = by_key[key]
        if mri_type != s.typing.type:
            s.typing = replace(s.typing, type=mri_type,
                               reason=f"type set to {mri_type} in {path.name} (the rules said {s.typing.type}: "
                                      f"{s.typing.reason})")
        if chosen != s.chosen:
            s.note = f"{'chosen' if chosen else 'not chosen'} in {path.name}"
        s.chosen = chosen
    studies = defaultdict(set)
    for s in series:
        if s.chosen:
            studies[s.patient].add(s.study_uid)
    for patient, uids in studies.items():
        if len(uids) > 1:
            logger.warning("patient %s: the chosen series come from %d studies", patient, len(uids))


# --------------------------------------------------------------------------- writing the layout


def check_out(options: OrganizeOptions) -> None:
    """Refuse an output that would overwrite anything not ours, or sit inside the export (before any reading)."""
    src, out = options.input.resolve(), options.out.resolve()
    if not options.input.is_dir():
        raise OrganizeError(f"--input {options.input} is not a folder (a DICOM export: any folders of files)")
    if out == src or src in out.parents or out in src.parents:
        raise OrganizeError(f"--out {options.out} and --input {options.input} overlap; write the layout beside the "
                            "export, not in it")
    if options.out.exists() and not options.out.is_dir():
        raise OrganizeError(f"--out {options.out} exists and is not a folder; choose another --out")
    if options.out.is_dir() and any(options.out.iterdir()):
        if not options.overwrite:
            raise FileExistsError(f"{options.out} exists and is not empty; pass --overwrite to replace the layout "
                                  "organize wrote there, or choose a new --out")
        if not (options.out / SERIES_CSV).is_file() or not (options.out / CONFIG_JSON).is_file():
            raise OrganizeError(f"{options.out} is not a layout written by organize (no {SERIES_CSV} and "
                                f"{CONFIG_JSON}); --overwrite replaces only those: choose a new or empty --out")


def _place(source: Path, target: Path, copy: bool) -> None:
    if copy:
        shutil.copyfile(source, target)
    else:
        os.symlink(source.resolve(), target)


def _layout_files(series: Sequence[Series]) -> Iterator[tuple[Path, Path]]:
    """(source file, path in the layout) of every chosen series: ``<patient>/<TYPE>/Image-<n>.dcm``, n from 1."""
    for s in series:
        if s.chosen:
            for n, source in enumerate(s.files, start=1):
                yield source, Path(s.patient) / s.typing.type / f"Image-{n}.dcm"


def write_layout(series: Sequence[Series], skipped: Sequence[SkippedFile], options: OrganizeOptions,
                 config: dict[str, Any]) -> None:
    """Build the layout in a temporary folder beside ``out`` and move it into place: never half a layout."""
    out = options.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.organize-", dir=out.parent))
    old: Path | None = None
    try:
        placed = list(_layout_files(series))
        for source, relative in tqdm(placed, desc="layout", unit="file", disable=_no_bar(options.progress)):
            target = tmp / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            _place(source, target, options.copy)
        write_csv_atomic(tmp / SERIES_CSV, pd.DataFrame([s.row() for s in series], columns=list(COLUMNS)))
        write_csv_atomic(tmp / SKIPPED_CSV, pd.DataFrame([{"file": k.file, "reason": k.reason} for k in skipped],
                                                         columns=["file", "reason"]))
        write_run_config(tmp, CONFIG_JSON, config)
        if out.is_dir():
            if any(out.iterdir()):
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.organize-old-", dir=out.parent))
                os.replace(out, old / "layout")
            else:
                out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old / "layout", out)     # put the earlier layout back
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old)   # links are removed, never followed: the export is untouched


def _no_bar(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


# --------------------------------------------------------------------------- the command


@dataclass
class Survey:
    """What organize found in an export and decided, before anything is written."""

    series: list[Series]
    skipped: list[SkippedFile]
    n_files: int          # image files read


def survey(export: Path, number_patients: bool = False, progress: bool | None = None) -> Survey:
    """Read every header of ``export``, group the series, type them, name the patient folders, choose."""
    records, skipped = scan_export(export, progress)
    if not records:
        reasons = Counter(_kind(k.reason) for k in skipped)
        listed = ", ".join(f"{n} {r}" for r, n in reasons.most_common(3)) or "no file at all"
        raise OrganizeError(f"{export} holds no DICOM image ({listed}); is it the export folder?")
    series = group_series(records, skipped)
    type_all(series)
    place_patients(series, number_patients)
    choose(series)
    return Survey(series, skipped, len(records))


def organize(options: OrganizeOptions) -> Survey:
    """Survey the export, apply an edited series.csv, write the layout; returns what series.csv holds."""
    check_out(options)
    found = survey(options.input, options.number_patients, options.progress)
    if options.series_csv is not None:
        apply_edits(found.series, options.series_csv)
    config = {"input": options.input, "out": options.out, "series_csv": options.series_csv, "copy": options.copy,
              "number_patients": options.number_patients, "files": found.n_files, "skipped": len(found.skipped),
              "series": len(found.series)}
    write_layout(found.series, found.skipped, options, config)
    _report(found, options)
    return found


def _report(found: Survey, options: OrganizeOptions) -> None:
    series, skipped = found.series, found.skipped
    chosen = Counter(s.typing.type for s in series if s.chosen)
    patients = sorted({s.patient for s in series if s.patient})
    for patient in patients:
        have = {s.typing.type for s in series if s.patient == patient and s.chosen}
        absent = [t for t in MRI_TYPES if t not in have]
        if absent:
            logger.warning("patient %s: no %s series chosen (see %s)", patient, ", ".join(absent),
                           options.out / SERIES_CSV)
    for s in series:
        if s.chosen and s.multi_frame:
            logger.info("patient %s %s: %d multi-frame file(s) with %d slices, linked as Image-1..%d.dcm in "
                        "InstanceNumber order; the reader takes the frames from them", s.patient, s.typing.type,
                        len(s.files), s.summary.n_slices, len(s.files))
    why = Counter(_kind(k.reason) for k in skipped)
    types = ", ".join(f"{t} {chosen.get(t, 0)}" for t in MRI_TYPES)
    print(f"{found.n_files} image files read, {len(skipped)} skipped "
          f"({', '.join(f'{n} {r}' for r, n in why.most_common()) or 'none'}; {options.out / SKIPPED_CSV}); "
          f"{len(patients)} patients, {len(series)} series; chosen: {types}; "
          f"{sum(1 for s in series if s.typing.type == OTHER)} other -> {options.out} "
          f"(check {options.out / SERIES_CSV}: edit its type / chosen columns and run again with --series-csv)")


def _kind(reason: str) -> str:
    """The kind of a skipped file's reason, for the summary line ("truncated", "not a DICOM file", ...)."""
    return re.split(r":| \(| of ", reason, maxsplit=1)[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("A hospital's DICOM export -> the Task 2 layout <patient>/<TYPE>/Image-<n>.dcm, with "
                          "series.csv saying what each series is, whether it was chosen, and why.")
    parser.add_argument("--input", type=Path, required=True, help="the DICOM export (any nested folders of files)")
    parser.add_argument("--out", type=Path, required=True,
                        help="the layout to write: <patient>/<TYPE>/Image-<n>.dcm, series.csv, skipped.csv")
    parser.add_argument("--series-csv", type=Path, default=None,
                        help="an edited series.csv of this export: its type and chosen columns are applied")
    parser.add_argument("--copy", action="store_true", help="copy the files (default: symbolic links to them)")
    parser.add_argument("--overwrite", action="store_true", help="replace a layout organize wrote earlier at --out")
    parser.add_argument("--number-patients", action="store_true",
                        help="name the patient folders 00001, 00002, ... in PatientID order (needed when PatientIDs "
                             "are not numbers; series.csv keeps each PatientID)")


def main(args: argparse.Namespace) -> int:
    organize(OrganizeOptions(input=args.input, out=args.out, series_csv=args.series_csv, copy=args.copy,
                             overwrite=args.overwrite, number_patients=args.number_patients))
    return 0
