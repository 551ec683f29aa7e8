"""Masks back in DICOM: a series' WT and ET masks as one DICOM Segmentation object, and ``<patient>.json``.

:func:`write_seg` writes, for one single-frame DICOM series, the whole-tumour (WT) and
enhancing-tumour (ET) masks as one BINARY Segmentation instance (highdicom) that a PACS
viewer (OHIF, 3D Slicer) shows over the series:

- two segments (see :data:`SEGMENTS`): WT as SCT 108369006 "Neoplasm", ET as NCIt C113842
  "Enhancing Lesion" (DICOM CID 7169, Brain Lesion Segmentation Type), both in the category
  SCT 49755003 "Morphologically Abnormal Structure", anatomic region SCT 12738006 "Brain",
  algorithm type AUTOMATIC, identified as ``mgmt2d`` with its version (family DCM 123110
  "Artificial Intelligence"); ET inside WT, so the segments overlap (SegmentsOverlap YES);
- one frame per segment for EVERY source slice, empty ones included: each frame refers to
  its source instance (frame-level references), its plane position is the source's, the
  FrameOfReferenceUID is the source's. An empty frame says "no tumour on this slice" rather
  than leaving the slice unmentioned, and an all-empty mask is still a valid SEG (a SEG
  without frames is not). The cost is small: 1 bit per pixel per segment (2.5 MB for 155
  slices of 256 x 256);
- patient and study attributes copied from the source, leniently (:func:`lenient_header`):
  real exports carry invalid values (PatientSex "0000", a bad date) that highdicom would
  refuse; they are emptied with a logged warning, never a crash.

Multi-frame (Enhanced MR) sources are refused for now with one line; see :func:`write_seg`.

:func:`patient_record` / :func:`write_patient_json` build and write the per-patient JSON
(schema :data:`PATIENT_SCHEMA`) for a worklist or a structured report downstream.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.valuerep import DA, DT, TM, VALIDATORS

from mgmt2d.data.io import atomic_path, file_sha256, json_default, write_text_atomic

log = logging.getLogger(__name__)

__all__ = [
    "PATIENT_SCHEMA",
    "SEGMENTS",
    "DicomSegError",
    "SegOptions",
    "lenient_header",
    "patient_record",
    "weights_sha256",
    "write_patient_json",
    "write_seg",
]

PATIENT_SCHEMA = "mgmt2d.patient/1"

# The segments, in segment-number order: (label, property type as (scheme, code), recommended colour).
# The colours are the report's overlay colours (WT yellow, ET red).
SEGMENTS: tuple[tuple[str, tuple[str, str], str], ...] = (
    ("Whole tumour", ("SCT", "Neoplasm"), "yellow"),
    ("Enhancing tumour", ("NCIt", "EnhancingLesion"), "red"),
)
_CATEGORY = ("SCT", "MorphologicallyAbnormalStructure")
_ANATOMY = ("SCT", "Brain")
_ALGORITHM_FAMILY = ("DCM", "ArtificialIntelligence")

# Attributes that tie the SEG to its patient and study in a PACS: copied verbatim even when a
# check fails (a changed PatientID files the SEG under another patient); the failure is logged.
_IDENTITY = frozenset({
    "PatientID", "PatientName", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientNames",
    "AccessionNumber", "StudyID",
})
# Text VRs whose values are checked; UIDs and numbers (geometry) are never touched.
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT"})
_PARSERS = {"DA": DA, "TM": TM, "DT": DT}
# Enumerated values highdicom enforces on the attributes it passes to its constructor.
_ENUMERATED = {"PatientSex": frozenset({"M", "F", "O"})}
# Type 2 attributes highdicom reads from the first source image (absent ones are added empty).
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
          "StudyDate", "StudyTime", "ReferringPhysicianName")
# Per source image: what placing a frame in patient space needs.
_GEOMETRY = ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")


class DicomSegError(ValueError):
    """A series or masks that cannot become a DICOM SEG; the message is the one line to show."""


@dataclass(frozen=True)
class SegOptions:
    """What the SEG says about itself; the defaults suit the report.

    ``series_number``: None gives 1000 + the source's SeriesNumber (so "1003" sits beside series 3
    in a viewer's list), or 1000 when the source has none. ``label`` (e.g. the MRI type) goes into
    the series description. ``parameters`` become the AlgorithmParameters of both segments (for
    example the stage-1 weights' SHA-256).
    """

    label: str = ""
    series_number: int | None = None
    manufacturer: str = "mgmt2d"
    device_serial_number: str = "none"
    parameters: Mapping[str, str] = field(default_factory=dict)
    overwrite: bool = False


# --------------------------------------------------------------------------- DICOM SEG


def write_seg(source_files: Sequence[str | Path], wt: np.ndarray, et: np.ndarray, out: str | Path,
              options: SegOptions | None = None) -> Path:
    """Write ``out``: the WT and ET masks of one series as a DICOM Segmentation object (see the module doc).

    ``source_files``: the series' files in the reader's order (``read_series(folder)[1].files``);
    ``wt``, ``et``: (S, H, W) bool or {0, 1} masks in that order, on the source pixel grid
    (H, W = Rows, Columns). Returns ``out``. Raises :class:`DicomSegError` (one line naming the
    file and the fix) for sources a SEG cannot be placed over (no geometry, mixed series or
    sizes, multi-frame files) or masks that do not fit; nothing is written then. An existing
    ``out`` is replaced only with ``options.overwrite``; the file appears whole or not at all.

    Multi-frame sources (Enhanced MR): highdicom takes exactly one multi-frame image as the
    source, with ``pixel_array[i]`` its frame i; the reader would have to say per slice which
    (file, frame) it came from, and several multi-frame files of one series would need the plane
    positions passed explicitly. Refused here until the reader gives that mapping.
    """
    import highdicom as hd

    options = options or SegOptions()
    out = Path(out)
    files = [Path(f) for f in source_files]
    if not files:
        raise DicomSegError(f"{out}: no source files given; pass the series' files (read_series' meta.files)")
    if out.exists() and not options.overwrite:
        raise DicomSegError(f"{out} already exists; pass overwrite to replace it or choose another file")
    headers = [_read_header(f) for f in files]
    _check_sources(files, headers)
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    pixels = np.stack([_binary(wt, "wt", files, (rows, cols)), _binary(et, "et", files, (rows, cols))], axis=-1)

    headers[0] = lenient_header(headers[0], files[0])
    src = headers[0]
    series_number = options.series_number if options.series_number is not None else 1000 + _int_or(
        src.get("SeriesNumber"), 0)
    from mgmt2d import __version__

    algorithm = hd.AlgorithmIdentificationSequence(
        name="mgmt2d", family=_code(_ALGORITHM_FAMILY), version=__version__, source="mgmt2d",
        parameters=dict(options.parameters) or None)
    segments = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=label,
            segmented_property_category=_code(_CATEGORY), segmented_property_type=_code(prop),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            anatomic_regions=[_code(_ANATOMY)], display_color=hd.color.CIELabColor.from_string(colour))
        for number, (label, prop, colour) in enumerate(SEGMENTS, start=1)
    ]
    description = f"mgmt2d WT/ET{' ' + options.label if options.label else ''}"[:64]
    try:
        seg = hd.seg.Segmentation(
            source_images=headers, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=options.manufacturer,
            manufacturer_model_name="mgmt2d", software_versions=__version__,
            device_serial_number=options.device_serial_number, content_label="MGMT2D_TUMOUR",
            content_description="whole tumour and enhancing tumour, automatic (mgmt2d stage 1)",
            series_description=description, omit_empty_frames=False)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        # Whatever highdicom refuses that the checks above did not foresee: one line, nothing written.
        raise DicomSegError(f"{files[0].parent}: cannot write a DICOM SEG over this series "
                            f"({type(err).__name__}: {_one_line(err)})") from None
    with atomic_path(out, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    log.info("%s: DICOM SEG of %d slices (WT %d, ET %d voxels) -> %s", files[0].parent, len(files),
             int(pixels[..., 0].sum()), int(pixels[..., 1].sum()), out)
    return out


def _read_header(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError) as err:
        raise DicomSegError(f"{path}: not a readable DICOM file ({_one_line(err)}); "
                            "pass the files the reader used (read_series' meta.files)") from None


def _check_sources(files: list[Path], headers: list[Dataset]) -> None:
    """Refuse, with one line, sources a SEG cannot be built over (before highdicom's own checks)."""
    first = headers[0]
    for path, ds in zip(files, headers):
        frames = _int_or(ds.get("NumberOfFrames"), 1)
        if frames > 1:
            raise DicomSegError(f"{path}: multi-frame image ({frames} frames); a DICOM SEG is written over "
                                "single-frame series only for now (see mgmt2d.inference.dicom_seg.write_seg)")
        missing = [k for k in ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID",
                               "Rows", "Columns", *_GEOMETRY) if not ds.get(k)]
        if missing:
            raise DicomSegError(f"{path}: no {', '.join(missing)}; a DICOM SEG needs the source's identity "
                                "and patient geometry to lie over it (write the NIfTI masks instead)")
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            if ds.get(key) != first.get(key):
                raise DicomSegError(f"{path}: {key} differs from {files[0].name}'s; one DICOM SEG covers one "
                                    "series in one frame of reference (pass one series' files)")
        if (int(ds.Rows), int(ds.Columns)) != (int(first.Rows), int(first.Columns)):
            raise DicomSegError(f"{path}: {ds.Rows}x{ds.Columns} pixels, {files[0].name} "
                                f"{first.Rows}x{first.Columns}; a DICOM SEG needs one slice size")
    uids = [str(ds.SOPInstanceUID) for ds in headers]
    if len(set(uids)) != len(uids):
        raise DicomSegError(f"{files[0].parent}: two source files share a SOPInstanceUID; "
                            "remove the duplicate files")


def _binary(mask: np.ndarray, name: str, files: list[Path], shape: tuple[int, int]) -> np.ndarray:
    mask = np.asarray(mask)
    expected = (len(files), *shape)
    if mask.shape != expected:
        raise DicomSegError(f"{files[0].parent}: {name} mask of shape {mask.shape}, expected {expected} "
                            "(one mask per source file, on the source pixel grid)")
    if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
        raise DicomSegError(f"{files[0].parent}: {name} mask holds values other than 0 and 1; pass binary masks")
    return mask.astype(np.uint8)


def lenient_header(ds: Dataset, path: str | Path = "") -> Dataset:
    """A copy of a source header whose text values highdicom accepts, each change logged as a warning.

    Real exports carry values that break DICOM's rules (PatientSex "0000", a date "20230231", an
    over-long description); highdicom refuses some of them when it copies the patient and study.
    For every top-level text attribute (UIDs and numbers, which place and identify the images,
    are never touched): a value only too long is cut to the VR's limit; a value of the wrong form
    (pydicom's check of the VR, a date or time that does not parse, a PatientSex other than
    M / F / O) is emptied, which DICOM reads as "unknown". Identifying attributes (PatientID,
    PatientName, AccessionNumber, StudyID, ...) are kept verbatim so the SEG is filed with its
    source; their problem is logged. Type 2 attributes highdicom needs and the source lacks
    (PatientSex, StudyDate, ...) are added empty.
    """
    ds = copy.deepcopy(ds)   # Dataset.copy() shares the elements: the caller's header would change
    where = str(path) or "source"
    for elem in list(ds):
        if elem.VR not in _TEXT_VRS or elem.keyword == "" or elem.value is None:
            continue
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        problems = [p for p in (_problem(elem.keyword, elem.VR, v) for v in values) if p]
        if not problems:
            continue
        shown = _shown(elem.value)
        if elem.keyword in _IDENTITY:
            log.warning("%s: %s %s: %s; kept verbatim so the DICOM SEG is filed with its source",
                        where, elem.keyword, shown, problems[0])
            continue
        cut = [_cut(elem.VR, v) for v in values]
        if all(_problem(elem.keyword, elem.VR, v) is None for v in cut):
            elem.value = cut if len(cut) > 1 else cut[0]
            log.warning("%s: %s %s: %s; cut to %s in the DICOM SEG", where, elem.keyword, shown, problems[0],
                        _shown(elem.value))
        else:
            elem.value = ""
            log.warning("%s: %s %s: %s; written empty in the DICOM SEG", where, elem.keyword, shown, problems[0])
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def _problem(keyword: str, vr: str, value: Any) -> str | None:
    """Why ``value`` is not a valid ``vr`` value for ``keyword`` (None when it is)."""
    if value is None or value == "":
        return None
    text = value.original_string if hasattr(value, "original_string") else value
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    validator = VALIDATORS.get(vr)
    if validator is not None:
        ok, message = validator(vr, text if vr != "PN" else str(value))
        if not ok:
            return message.rstrip(".")
    if vr in _PARSERS:
        try:
            _PARSERS[vr](str(text))
        except (ValueError, TypeError) as err:
            return f"not a valid {vr} ({_one_line(err)})"
    allowed = _ENUMERATED.get(keyword)
    if allowed is not None and str(text).strip() not in allowed:
        return f"not one of {', '.join(sorted(allowed))}"
    return None


def _cut(vr: str, value: Any) -> Any:
    limit = pydicom.valuerep.MAX_VALUE_LEN.get(vr) or {"PN": 64}.get(vr)
    if not limit or not isinstance(value, str):
        return value
    return value[:limit]


def _code(scheme_and_name: tuple[str, str]) -> Any:
    from pydicom.sr.codedict import codes

    scheme, name = scheme_and_name
    return getattr(getattr(codes, scheme), name)


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _shown(value: Any) -> str:
    text = repr(str(value) if not isinstance(value, (list, tuple)) else [str(v) for v in value])
    return text if len(text) <= 80 else text[:77] + "..."


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."


# --------------------------------------------------------------------------- <patient>.json

# Per MRI type: what the report knows about it. ``seg``: the type's DICOM SEG, relative to the JSON.
_TYPE_FIELDS = ("prob", "kept", "total", "chunks", "note", "seg")


def weights_sha256(paths: Iterable[str | Path]) -> dict[str, str]:
    """{path: SHA-256} of each weights file; compute it once per run, not per patient."""
    return {str(path): file_sha256(path) for path in paths}


def patient_record(patient: str, mgmt_value: float, *, fallback: bool, types: Mapping[str, Mapping[str, Any]],
                   contract: Mapping[str, Any], weights: Mapping[str, str],
                   created: datetime.datetime | None = None) -> dict[str, Any]:
    """The ``<patient>.json`` document (schema :data:`PATIENT_SCHEMA`), from plain values.

    ``types``: MRI type -> {prob, kept, total, chunks, note, seg} (any may be absent: null; prob NaN:
    null, the type was not scored and ``note`` says why); ``contract``: the checkpoints' input
    contract (``InputContract.to_dict()``); ``weights``: {path: sha256} (:func:`weights_sha256`).
    Raises ValueError for a field outside the schema, so the document never drifts silently.
    """
    from mgmt2d import __version__

    per_type = {}
    for mri_type, result in types.items():
        unknown = sorted(set(result) - set(_TYPE_FIELDS))
        if unknown:
            raise ValueError(f"type {mri_type}: fields {unknown} are not in {PATIENT_SCHEMA} ({_TYPE_FIELDS})")
        entry = {key: result.get(key) for key in _TYPE_FIELDS}
        entry["prob"] = _finite_or_none(entry["prob"])
        entry["note"] = entry["note"] or ""
        entry["seg"] = None if entry["seg"] is None else str(entry["seg"])
        per_type[str(mri_type)] = entry
    created = created or datetime.datetime.now(datetime.timezone.utc)
    return {
        "schema": PATIENT_SCHEMA,
        "patient": str(patient),
        "MGMT_value": _finite_or_none(mgmt_value),
        "fallback": bool(fallback),
        "types": per_type,
        "contract": dict(contract),
        "weights": {str(k): str(v) for k, v in weights.items()},
        "mgmt2d_version": __version__,
        "created": created.isoformat(timespec="seconds"),
    }


def write_patient_json(path: str | Path, record: Mapping[str, Any], overwrite: bool = False) -> Path:
    """Write ``record`` (:func:`patient_record`) as strict JSON (no NaN), atomically; never replaces
    an existing file without ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it or choose another folder")
    text = json.dumps(record, indent=2, allow_nan=False, default=json_default) + "\n"
    write_text_atomic(path, text)
    return path


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None

