"""DICOM series reader: one folder of slices -> float32 (S, H, W) volume.

A slice is a single-frame image file or one frame of a multi-frame file (Enhanced MR Image
Storage and other multi-frame images), whose geometry and rescale come from the per-frame and
shared functional groups. Reading order is ascending position along the slice normal, where
the normal is ``cross(row_cosines, col_cosines)`` of ImageOrientationPatient and the position
is ImagePositionPatient projected on it. In DICOM patient coordinates (LPS) a standard axial
series (rows along +x, columns along +y) therefore reads inferior -> superior. When geometry
is missing the order falls back to InstanceNumber (then the frame number), then to the number
in the file name ("Image-9.dcm" before "Image-10.dcm").

A folder (or a multi-frame file) holding several volumes (time points, echoes, repeated
acquisitions, several series or orientations) is never stacked into one volume: the slices'
headers are grouped into volumes by :func:`group_volumes` (a pure function over
:class:`SliceHeader` records, so a header-only scan can count a series' volumes), one volume
is read, and the choice is recorded in :attr:`SeriesMeta.volumes` and logged.

Files that are not readable DICOM images (a ``.DS_Store``, garbage named ``.dcm``, a truncated
file, a DICOM without pixel data) are skipped and reported in :attr:`SeriesMeta.skipped`,
never silently dropped.
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import os
import re
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import combinations, islice
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array as pydicom_pixel_array
from pydicom.tag import BaseTag

logger = logging.getLogger(__name__)

__all__ = [
    "MIN_SLICE_SIZE",
    "DicomSeriesError",
    "SeriesMeta",
    "SkippedFile",
    "SliceHeader",
    "VolumeGroup",
    "VolumeSplit",
    "group_volumes",
    "plane_from_orientation",
    "read_series",
    "read_series_many",
    "slice_headers",
    "slice_order",
]

# Tags as BaseTag integers: looking them up this way skips the keyword dictionary and the tag
# conversion, and reading the raw (still undecoded) element skips pydicom's DS/IS validation,
# which otherwise costs about a tenth of the whole read of a small uncompressed slice.
_TAG_IMAGE_POSITION = BaseTag(0x00200032)
_TAG_IMAGE_ORIENTATION = BaseTag(0x00200037)
_TAG_INSTANCE_NUMBER = BaseTag(0x00200013)
_TAG_PIXEL_SPACING = BaseTag(0x00280030)
_TAG_SLICE_THICKNESS = BaseTag(0x00180050)
_TAG_SPACING_BETWEEN_SLICES = BaseTag(0x00180088)
_TAG_RESCALE_SLOPE = BaseTag(0x00281053)
_TAG_RESCALE_INTERCEPT = BaseTag(0x00281052)
_TAG_NUMBER_OF_FRAMES = BaseTag(0x00280008)
_TAG_SERIES_UID = BaseTag(0x0020000E)
_TAG_SERIES_NUMBER = BaseTag(0x00200011)
_TAG_SERIES_DESCRIPTION = BaseTag(0x0008103E)
_TAG_TEMPORAL_POSITION = BaseTag(0x00200100)   # TemporalPositionIdentifier
_TAG_ECHO_NUMBERS = BaseTag(0x00180086)
_TAG_ECHO_TIME = BaseTag(0x00180081)
_TAG_ACQUISITION_NUMBER = BaseTag(0x00200012)
_TAG_TRIGGER_TIME = BaseTag(0x00181060)
_TAG_IMAGE_TYPE = BaseTag(0x00080008)
_TAG_PHOTOMETRIC = BaseTag(0x00280004)
_TAG_ROWS = BaseTag(0x00280010)
_TAG_COLUMNS = BaseTag(0x00280011)
_TAG_SAMPLES_PER_PIXEL = BaseTag(0x00280002)
_TAG_PER_FRAME_GROUPS = BaseTag(0x52009230)
# Dimensions of a multi-frame file that index space, not volumes (In-Stack Position Number,
# Image Position (Patient)): left out of the DimensionIndexValues that tell volumes apart.
_SPATIAL_DIMENSIONS = frozenset({0x00209057, 0x00200032})
_PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel, Float, Double Float

# Two slices closer than this along the normal are treated as the same position: the
# geometry then cannot order the series (duplicates, several stacks) and we fall back.
_MIN_SLICE_GAP_MM = 1e-3
# Normals of all slices must agree to within about 0.8 degrees to share one projection.
_MIN_NORMAL_DOT = 0.9999
# Orientations whose row and column cosines agree to this dot product are one orientation.
_SAME_DIRECTION_DOT = 0.9999
_RGB_TO_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_REASON_MAX_CHARS = 300

MIN_SLICE_SIZE = 16
"""Fewest rows and columns a series' slices may have to be read as an MRI.

Clinical MR matrices run from 64 (EPI) to 512 pixels a side and even a coarse perfusion or
spectroscopic grid has 32; a "series" of 4x4 slices is not an image of a brain, and the
pipeline would score its noise (1000 such slices made 250 chunks). ``read_series`` refuses a
series whose (majority) slice size is smaller in either direction. The input contract of the
models carries this threshold.
"""


class DicomSeriesError(ValueError):
    """A series folder that yields no volume (missing, no readable slice, several volumes that
    cannot be told apart or chosen between, slices too small to be an MRI)."""


@dataclass
class SkippedFile:
    file: str
    reason: str


@dataclass
class SeriesMeta:
    """What the reader found, so later stages can check geometry without re-reading."""

    folder: Path
    plane: str
    order_by: str
    positions: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    slice_spacing: float | None
    files: list[Path]
    skipped: list[SkippedFile] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    # Per slice (reading order): the fraction of its STORED pixel values that are > 0. The
    # near-empty test uses it, so a rescale intercept cannot make background count as tissue.
    positive_fraction: np.ndarray | None = None
    # ImageOrientationPatient (row cosines, column cosines) of the first slice in reading
    # order that has a usable one; with ``positions`` it places the volume in patient space.
    orientation: tuple[float, ...] | None = None
    # Per slice (reading order): its frame number (from 1) in a multi-frame file, None for a
    # single-frame file; ``files`` then repeats the multi-frame file once per frame.
    frames: list[int | None] = field(default_factory=list)
    # The volumes the folder holds (one for an ordinary series) and the index of the one read.
    volumes: VolumeSplit | None = None
    volume: int | None = None
    # Distinct in-plane spacings (row, column mm; of resized slices as resized) with their slice
    # counts, when the slices disagree; empty when they agree (then ``pixel_spacing`` holds).
    pixel_spacings: list[tuple[tuple[float, float], int]] = field(default_factory=list)
    # What a user should know about this read (also logged as warnings).
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (paths as strings, arrays as lists)."""
        return {
            "folder": str(self.folder),
            "plane": self.plane,
            "order_by": self.order_by,
            "positions": None if self.positions is None else self.positions.tolist(),
            "pixel_spacing": None if self.pixel_spacing is None else list(self.pixel_spacing),
            "slice_spacing": self.slice_spacing,
            "files": [str(p) for p in self.files],
            "skipped": [{"file": s.file, "reason": s.reason} for s in self.skipped],
            "resized": list(self.resized),
            "positive_fraction": None if self.positive_fraction is None else self.positive_fraction.tolist(),
            "orientation": None if self.orientation is None else list(self.orientation),
            "frames": list(self.frames),
            "volumes": None if self.volumes is None else self.volumes.to_dict(),
            "volume": self.volume,
            "pixel_spacings": [{"spacing": list(sp), "slices": n} for sp, n in self.pixel_spacings],
            "warnings": list(self.warnings),
        }


@dataclass
class _Slice:
    """One decoded slice (a file, or a frame of one): its pixels and the header values the series needs."""

    path: Path
    frame: int | None  # frame number (from 1) in a multi-frame file, None for a single-frame one
    pixels: np.ndarray  # 2-D, as decoded (gray), before rescale
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    instance: float | None
    slope: float
    intercept: float
    monochrome1: bool
    pixel_spacing: tuple[float, float] | None
    spacing_between: float | None
    thickness: float | None


# --------------------------------------------------------------------------- ordering


def _as_vector(value: Sequence[float] | np.ndarray | None, length: int) -> np.ndarray | None:
    """A finite float vector of the given length, or None when absent or malformed."""
    if value is None:
        return None
    try:
        vec = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    if vec.shape != (length,) or not np.all(np.isfinite(vec)):
        return None
    return vec


def _unit_normal(orientation: Sequence[float] | np.ndarray | None) -> np.ndarray | None:
    """cross(row, col) of ImageOrientationPatient, unit length; None if degenerate."""
    vec = _as_vector(orientation, 6)
    if vec is None:
        return None
    # Plain arithmetic: np.cross costs more than the rest of the ordering per slice.
    rx, ry, rz, cx, cy, cz = (float(v) for v in vec)
    normal = np.array([ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        return None
    return normal / norm


def plane_from_orientation(orientation: Sequence[float] | np.ndarray | None) -> str:
    """Acquisition plane from the dominant axis of the slice normal (LPS x/y/z)."""
    normal = _unit_normal(orientation)
    if normal is None:
        return "unknown"
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def _per_slice_orientations(
    orientation: Sequence[Any] | np.ndarray | None, n: int
) -> list[Any] | None:
    """Accept one 6-vector for the whole series or one (or None) per slice."""
    if orientation is None:
        return None
    items = list(orientation)
    if len(items) == 6 and all(isinstance(v, (int, float, np.number)) for v in items):
        return [items] * n
    if len(items) != n:
        raise ValueError(f"expected {n} orientations, got {len(items)}")
    return items


def _position_matrix(positions: Sequence[Any] | np.ndarray | None, n: int) -> np.ndarray | None:
    """(n, 3) finite float64 positions, or None if any slice lacks a usable one."""
    if positions is None:
        return None
    pos_list = list(positions)
    if len(pos_list) != n:
        raise ValueError(f"expected {n} positions, got {len(pos_list)}")
    if n == 0 or any(p is None for p in pos_list):
        return None
    try:
        arr = np.array(pos_list, dtype=np.float64)
    except (TypeError, ValueError):  # ragged or non-numeric
        return None
    if arr.shape != (n, 3) or not np.all(np.isfinite(arr)):
        return None
    return arr


def _projected_positions(
    positions: Sequence[Any] | np.ndarray | None,
    orientation: Sequence[Any] | np.ndarray | None,
    n: int,
) -> np.ndarray | None:
    """Positions along the common slice normal, or None if geometry can't order slices."""
    pos = _position_matrix(positions, n)
    orients = _per_slice_orientations(orientation, n)
    if pos is None or orients is None:
        return None
    # A series nearly always repeats one orientation: compute each distinct normal once.
    normals: dict[tuple[float, ...], np.ndarray | None] = {}
    for o in orients:
        if o is None:
            return None
        try:
            key = tuple(float(v) for v in o)
        except (TypeError, ValueError):
            return None
        if key not in normals:
            normals[key] = _unit_normal(key)
            if normals[key] is None:
                return None
    normal_arr = np.stack(list(normals.values()))  # type: ignore[arg-type]
    if np.any(normal_arr @ normal_arr[0] < _MIN_NORMAL_DOT):
        return None
    projected = pos @ normal_arr[0]
    if n > 1 and np.min(np.diff(np.sort(projected))) < _MIN_SLICE_GAP_MM:
        return None
    return projected


def _filename_key(name: str) -> tuple[int, int, str]:
    """Sort key from the last number in the file stem; names without one sort last."""
    numbers = re.findall(r"\d+", Path(name).stem)
    if numbers:
        return (0, int(numbers[-1]), name)
    return (1, 0, name)


def slice_order(
    positions: Sequence[Any] | np.ndarray | None,
    orientation: Sequence[Any] | np.ndarray | None,
    instance_numbers: Sequence[float | int | None] | None,
    filenames: Sequence[str],
    frames: Sequence[int | None] | None = None,
) -> tuple[np.ndarray, str]:
    """Reading order of slices and the rule that produced it.

    ``positions``: per slice a 3-vector or None; ``orientation``: one 6-vector for the
    series or one per slice (None allowed); ``instance_numbers``: per slice or None;
    ``frames``: per slice its frame number in a multi-frame file (None for a single-frame
    file), the tie-break among the frames of one file.
    Rules, first that applies: "position" (every slice has geometry, all normals agree,
    no two projected positions coincide; ascending along the normal), "instance" (every
    slice has a distinct InstanceNumber, or InstanceNumber and frame; ascending), "filename"
    (last number in the name, then the name, then the frame). Ties are broken by file name so
    the result never depends on the order the caller listed the files in.
    """
    order, order_by, _ = _order_and_projection(
        positions, orientation, instance_numbers, filenames, frames
    )
    return order, order_by


def _order_and_projection(
    positions: Sequence[Any] | np.ndarray | None,
    orientation: Sequence[Any] | np.ndarray | None,
    instance_numbers: Sequence[float | int | None] | None,
    filenames: Sequence[str],
    frames: Sequence[int | None] | None = None,
) -> tuple[np.ndarray, str, np.ndarray | None]:
    """slice_order plus the projected positions in reading order (None unless used)."""
    names = [str(f) for f in filenames]
    n = len(names)
    frame_nos = [0 if f is None else int(f) for f in frames] if frames is not None else [0] * n
    if len(frame_nos) != n:
        raise ValueError(f"expected {n} frame numbers, got {len(frame_nos)}")
    name_keys = [(*_filename_key(f), k) for f, k in zip(names, frame_nos)]
    projected = _projected_positions(positions, orientation, n)
    if projected is not None:
        order = sorted(range(n), key=lambda i: (projected[i], name_keys[i]))
        return np.asarray(order, dtype=np.intp), "position", projected[order]
    if instance_numbers is not None:
        inst = list(instance_numbers)
        if len(inst) != n:
            raise ValueError(f"expected {n} instance numbers, got {len(inst)}")
        values = [_finite_or_none(v) for v in inst]
        if all(v is not None for v in values) and len(set(zip(values, frame_nos))) == n:
            order = sorted(range(n), key=lambda i: (values[i], frame_nos[i], name_keys[i]))
            return np.asarray(order, dtype=np.intp), "instance", None
    order = sorted(range(n), key=lambda i: name_keys[i])
    return np.asarray(order, dtype=np.intp), "filename", None


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


# --------------------------------------------------------------------------- header records


def _numbers(ds: pydicom.Dataset, tag: int) -> tuple[float, ...] | None:
    """Numeric (DS/IS) values of ``tag`` without pydicom's per-value conversion."""
    elem = ds.get_item(tag)
    if elem is None:
        return None
    value = elem.value
    if value is None:
        return None
    try:
        if isinstance(value, (bytes, bytearray)):
            text = value.decode("ascii", "replace").strip(" \x00")
            if not text:
                return None
            return tuple(float(v) for v in text.split("\\"))
        if isinstance(value, (str, int, float)):
            text = str(value).strip()
            return tuple(float(v) for v in text.split("\\")) if text else None
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None


def _number(ds: pydicom.Dataset, tag: int) -> float | None:
    values = _numbers(ds, tag)
    if not values:
        return None
    return values[0] if math.isfinite(values[0]) else None


def _texts(ds: pydicom.Dataset, tag: int) -> tuple[str, ...] | None:
    """String values of ``tag`` (multi-valued CS/UI/LO), stripped; None when absent or empty."""
    elem = ds.get_item(tag)
    if elem is None or elem.value is None:
        return None
    value = elem.value
    if isinstance(value, (bytes, bytearray)):
        parts = value.decode("latin-1").split("\\")
    elif isinstance(value, str):
        parts = value.split("\\")
    else:
        try:
            parts = [str(v) for v in value]
        except TypeError:
            parts = [str(value)]
    parts = [p.strip(" \x00") for p in parts]
    return tuple(parts) if any(parts) else None


def _text(ds: pydicom.Dataset, tag: int) -> str | None:
    values = _texts(ds, tag)
    return "\\".join(values) if values else None


def _unsigned(ds: pydicom.Dataset, tag: int) -> int | None:
    """A US value (Rows, Columns), read through pydicom (binary VR)."""
    elem = ds.get(tag)
    try:
        return None if elem is None or elem.value is None else int(elem.value)
    except (TypeError, ValueError):
        return None


@dataclass(slots=True)
class SliceHeader:
    """The header values of one slice that decide its volume, its place and its values.

    One record per single-frame file, or per frame of a multi-frame file (``frame`` from 1).
    Built by :func:`slice_headers` from a dataset read with or without its pixel data; the
    fields are plain values so that other tools can build or compare records. For a frame of
    a multi-frame file the values come from its functional groups (per-frame, else shared):
    ``temporal_position`` is then TemporalPositionIndex, ``echo_time`` EffectiveEchoTime and
    ``image_type`` FrameType.
    """

    file: str
    frame: int | None = None
    series_uid: str | None = None
    series_number: float | None = None
    description: str | None = None
    position: tuple[float, ...] | None = None
    orientation: tuple[float, ...] | None = None
    instance: float | None = None
    temporal_position: float | None = None
    echo_number: float | None = None
    echo_time: float | None = None
    acquisition_number: float | None = None
    trigger_time: float | None = None
    image_type: tuple[str, ...] | None = None
    complex_component: str | None = None
    stack_id: str | None = None
    dimension_index: tuple[int, ...] | None = None   # DimensionIndexValues without the spatial ones
    rows: int | None = None
    columns: int | None = None
    pixel_spacing: tuple[float, float] | None = None
    thickness: float | None = None
    spacing_between: float | None = None
    slope: float = 1.0
    intercept: float = 0.0
    photometric: str = ""


def slice_headers(ds: pydicom.Dataset, path: str | Path) -> list[SliceHeader]:
    """The :class:`SliceHeader` records of one DICOM dataset: one per slice.

    A single-frame image gives one record; a multi-frame image (NumberOfFrames > 1, or any
    image with a PerFrameFunctionalGroupsSequence) gives one per frame, with its position,
    orientation, pixel spacing, rescale, temporal position, echo time and frame type from
    the per-frame functional groups, else the shared ones, else the top-level header.
    Frames of a multi-frame image without functional groups have no position (the top-level
    ImagePositionPatient places the first frame only). Reads headers only, so it works on
    ``pydicom.dcmread(path, stop_before_pixels=True)``.
    """
    spacing = _numbers(ds, _TAG_PIXEL_SPACING)
    slope = _number(ds, _TAG_RESCALE_SLOPE)
    intercept = _number(ds, _TAG_RESCALE_INTERCEPT)
    base = SliceHeader(
        file=str(path),
        series_uid=_text(ds, _TAG_SERIES_UID),
        series_number=_number(ds, _TAG_SERIES_NUMBER),
        description=_text(ds, _TAG_SERIES_DESCRIPTION),
        position=_numbers(ds, _TAG_IMAGE_POSITION),
        orientation=_numbers(ds, _TAG_IMAGE_ORIENTATION),
        instance=_number(ds, _TAG_INSTANCE_NUMBER),
        temporal_position=_number(ds, _TAG_TEMPORAL_POSITION),
        echo_number=_number(ds, _TAG_ECHO_NUMBERS),
        echo_time=_number(ds, _TAG_ECHO_TIME),
        acquisition_number=_number(ds, _TAG_ACQUISITION_NUMBER),
        trigger_time=_number(ds, _TAG_TRIGGER_TIME),
        image_type=_upper(_texts(ds, _TAG_IMAGE_TYPE)),
        rows=_unsigned(ds, _TAG_ROWS),
        columns=_unsigned(ds, _TAG_COLUMNS),
        pixel_spacing=(spacing[0], spacing[1]) if spacing and len(spacing) >= 2 else None,
        thickness=_number(ds, _TAG_SLICE_THICKNESS),
        spacing_between=_number(ds, _TAG_SPACING_BETWEEN_SLICES),
        slope=1.0 if not slope else slope,  # absent, or an invalid 0: identity
        intercept=0.0 if intercept is None else intercept,
        photometric=(_text(ds, _TAG_PHOTOMETRIC) or "").upper(),
    )
    frames = _number(ds, _TAG_NUMBER_OF_FRAMES)
    if (frames is None or frames <= 1) and _TAG_PER_FRAME_GROUPS not in ds:
        return [base]
    return _frame_headers(ds, base, max(int(frames or 1), 1))


def _upper(values: tuple[str, ...] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(v.upper() for v in values)


def _first_item(groups: Sequence[Any], keyword: str) -> Any:
    """The first item of sequence ``keyword`` in the first functional-group item that has it."""
    for group in groups:
        if group is None:
            continue
        seq = group.get(keyword)
        if seq:
            return seq[0]
    return None


def _item_numbers(item: Any, keyword: str) -> tuple[float, ...] | None:
    """Numeric values of ``keyword`` in a sequence item; None when absent or malformed."""
    if item is None:
        return None
    value = item.get(keyword)
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (str, bytes)):
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            return tuple(float(v) for v in text.strip(" \x00").split("\\"))
        if isinstance(value, (int, float)):
            out: tuple[float, ...] = (float(value),)
        else:
            out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if out and all(math.isfinite(v) for v in out) else None


def _item_number(item: Any, keyword: str) -> float | None:
    values = _item_numbers(item, keyword)
    return values[0] if values else None


def _spatial_dimensions(ds: pydicom.Dataset) -> list[bool] | None:
    """Per entry of DimensionIndexValues: whether it indexes space (position in a stack)."""
    seq = ds.get("DimensionIndexSequence")
    if not seq:
        return None
    out = []
    for item in seq:
        pointer = item.get("DimensionIndexPointer")
        out.append(pointer is not None and int(pointer) in _SPATIAL_DIMENSIONS)
    return out


def _frame_headers(ds: pydicom.Dataset, base: SliceHeader, n_frames: int) -> list[SliceHeader]:
    """One record per frame: ``base`` (the top-level values) overridden by the frame's functional groups."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    spatial = _spatial_dimensions(ds)
    legacy = not per_frame and shared is None
    out = []
    for k in range(n_frames):
        groups = (per_frame[k] if k < len(per_frame) else None, shared)
        content = _first_item(groups, "FrameContentSequence")
        plane_position = _first_item(groups, "PlanePositionSequence")
        plane_orientation = _first_item(groups, "PlaneOrientationSequence")
        measures = _first_item(groups, "PixelMeasuresSequence")
        transform = _first_item(groups, "PixelValueTransformationSequence")
        echo = _first_item(groups, "MREchoSequence")
        frame_type = _first_item(groups, "MRImageFrameTypeSequence") or _first_item(groups, "FrameTypeSequence")
        position = _item_numbers(plane_position, "ImagePositionPatient")
        if position is None and (legacy and n_frames == 1):
            position = base.position   # the top-level position places a lone frame
        orientation = _item_numbers(plane_orientation, "ImageOrientationPatient") or base.orientation
        spacing = _item_numbers(measures, "PixelSpacing")
        slope = _item_number(transform, "RescaleSlope")
        intercept = _item_number(transform, "RescaleIntercept")
        index = _item_numbers(content, "DimensionIndexValues")
        if index is not None and spatial is not None and len(spatial) == len(index):
            index = tuple(v for v, is_space in zip(index, spatial) if not is_space)
        stack = content.get("StackID") if content is not None else None
        types = frame_type.get("FrameType") if frame_type is not None else None
        component = frame_type.get("ComplexImageComponent") if frame_type is not None else None
        out.append(replace(
            base,
            frame=k + 1,
            position=position,
            orientation=orientation,
            temporal_position=_item_number(content, "TemporalPositionIndex") or base.temporal_position,
            echo_time=_item_number(echo, "EffectiveEchoTime") if echo is not None else base.echo_time,
            trigger_time=base.trigger_time if legacy else None,
            image_type=_upper(tuple(str(t) for t in types)) if types else base.image_type,
            complex_component=str(component).upper() if component else None,
            stack_id=str(stack) if stack not in (None, "") else None,
            dimension_index=None if index is None else tuple(int(v) for v in index),
            pixel_spacing=(spacing[0], spacing[1]) if spacing and len(spacing) >= 2 else base.pixel_spacing,
            thickness=_item_number(measures, "SliceThickness") or base.thickness,
            spacing_between=_item_number(measures, "SpacingBetweenSlices") or base.spacing_between,
            slope=(slope or 1.0) if transform is not None else base.slope,
            intercept=(intercept or 0.0) if transform is not None else base.intercept,
        ))
    return out


# --------------------------------------------------------------------------- volumes


# Headers that tell volumes at the same positions apart, in the order they are tried:
# (SliceHeader field, its name in a single-frame file, its name in a multi-frame file).
_VOLUME_KEYS: tuple[tuple[str, str, str], ...] = (
    ("temporal_position", "TemporalPositionIdentifier", "TemporalPositionIndex"),
    ("echo_number", "EchoNumbers", "EchoNumbers"),
    ("echo_time", "EchoTime", "EffectiveEchoTime"),
    ("acquisition_number", "AcquisitionNumber", "AcquisitionNumber"),
    ("image_type", "ImageType", "FrameType"),
    ("stack_id", "StackID", "StackID"),
    ("dimension_index", "DimensionIndexValues", "DimensionIndexValues"),
    ("trigger_time", "TriggerTime", "TriggerTime"),
)
# ImageType / FrameType values (from the third on) and ComplexImageComponent values of images
# that are not structural: phase, real and imaginary parts, field maps and parametric maps.
_NON_STRUCTURAL_PARTS = frozenset({"P", "R", "I", "PHASE", "REAL", "IMAGINARY", "ADC", "FA", "B0"})


@dataclass
class VolumeGroup:
    """One volume of a folder: the slices (indices into the header list) that form it."""

    indices: list[int]
    key: dict[str, Any]              # header name -> value that sets this volume apart
    positions: int | None            # distinct slice positions; None without full geometry
    structural: bool                 # magnitude image, not a phase / real / imaginary part or a map
    problem: str | None = None       # why this group could not be split further (several volumes)

    @property
    def label(self) -> str:
        if not self.key:
            return "the only volume"
        return ", ".join(f"{k}={_show(v)}" for k, v in self.key.items())

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "key": {k: _jsonable(v) for k, v in self.key.items()},
                "slices": len(self.indices), "positions": self.positions, "structural": self.structural,
                "problem": self.problem}


@dataclass
class VolumeSplit:
    """What :func:`group_volumes` found: the volumes, the headers that told them apart, the choice.

    ``chosen`` is the index of the volume a reader should use, or None when no volume may be
    chosen (``reason`` then says why, in one line: several series, no majority orientation,
    duplicates no header tells apart). ``reason`` also explains a choice.
    """

    volumes: list[VolumeGroup]
    by: list[str]
    chosen: int | None
    reason: str

    @property
    def n_volumes(self) -> int:
        return len(self.volumes)

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.n_volumes, "by": list(self.by), "used": self.chosen, "reason": self.reason,
                "volumes": [dict(index=i, **v.to_dict()) for i, v in enumerate(self.volumes)]}


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return "\\".join(_show(v) for v in value)
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _partition(indices: Iterable[int], key: Callable[[int], Hashable]) -> dict[Hashable, list[int]]:
    groups: dict[Hashable, list[int]] = {}
    for i in indices:
        groups.setdefault(key(i), []).append(i)
    return groups


def _sort_value(value: Any) -> tuple[bool, Any]:
    return (value is None, value if value is not None else 0)


def _direction_key(orientation: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """Unit row and column cosines, or None when ImageOrientationPatient is unusable."""
    vec = _as_vector(orientation, 6)
    if vec is None or _unit_normal(vec) is None:
        return None
    row, col = vec[:3], vec[3:]
    return tuple((row / np.linalg.norm(row)).tolist() + (col / np.linalg.norm(col)).tolist())


def _orientation_groups(headers: Sequence[SliceHeader], indices: list[int]) -> list[list[int]]:
    """Slices grouped by ImageOrientationPatient (rows and columns within about 0.8 degrees).

    Slices without a usable orientation join the only orientation there is (as before any
    split existed) and form their own group only when there are several. Largest group first.
    """
    reps: list[np.ndarray] = []
    groups: list[list[int]] = []
    unknown: list[int] = []
    cache: dict[tuple[float, ...] | None, int | None] = {}
    for i in indices:
        raw = headers[i].orientation
        if raw not in cache:
            key = _direction_key(raw)
            if key is None:
                cache[raw] = None
            else:
                vec = np.asarray(key)
                found = next((g for g, rep in enumerate(reps)
                              if vec[:3] @ rep[:3] >= _SAME_DIRECTION_DOT and vec[3:] @ rep[3:] >= _SAME_DIRECTION_DOT),
                             None)
                if found is None:
                    reps.append(vec)
                    groups.append([])
                    found = len(groups) - 1
                cache[raw] = found
        g = cache[raw]
        (unknown if g is None else groups[g]).append(i)
    if len(groups) <= 1:
        return [sorted(indices)] if indices else []
    if unknown:
        groups.append(unknown)
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def _position_ids(headers: Sequence[SliceHeader], indices: list[int]) -> list[int] | None:
    """Per slice an id of its position along the normal (equal ids: the same place), or None."""
    pos = _position_matrix([headers[i].position for i in indices], len(indices))
    normal = _unit_normal(headers[indices[0]].orientation) if indices else None
    if pos is None or normal is None:
        return None
    projected = pos @ normal
    order = np.argsort(projected, kind="stable")
    ids = [0] * len(indices)
    current, last = -1, None
    for j in order:
        if last is None or projected[j] - last >= _MIN_SLICE_GAP_MM:
            current += 1
        last = projected[j]
        ids[j] = current
    return ids


def _key_name(field_name: str, headers: Sequence[SliceHeader], indices: list[int]) -> str:
    single, multi = next((s, m) for f, s, m in _VOLUME_KEYS if f == field_name)
    kinds = {headers[i].frame is None for i in indices}
    if kinds == {True}:
        return single
    if kinds == {False}:
        return multi
    return single if single == multi else f"{single}/{multi}"


def _split_by_header(
    headers: Sequence[SliceHeader], indices: list[int]
) -> tuple[list[tuple[dict[str, Any], list[int], int | None]], str | None]:
    """Split one orientation's slices into volumes at the same positions.

    Returns ``(parts, problem)``: parts as (key, indices, distinct positions or None without
    full geometry) in ascending key order, and a one-line problem when slices share positions
    and no header (or pair of headers) tells them apart. A header tells volumes apart when
    grouping by it gives exactly as many groups as the most slices at one position, none with
    two slices at one position.
    """
    ids = _position_ids(headers, indices)
    if ids is None:
        return [({}, indices, None)], None
    per_position = Counter(ids)
    n_positions, depth = len(per_position), max(per_position.values())
    if depth == 1:
        return [({}, indices, n_positions)], None
    by_index = dict(zip(indices, ids))
    fields = [f for f, _, _ in _VOLUME_KEYS if len({getattr(headers[i], f) for i in indices}) > 1]
    for combo in [(f,) for f in fields] + list(combinations(fields, 2)):
        groups = _partition(indices, lambda i: tuple(getattr(headers[i], f) for f in combo))
        if len(groups) != depth:
            continue
        if any(len({by_index[i] for i in g}) != len(g) for g in groups.values()):
            continue
        names = [_key_name(f, headers, indices) for f in combo]
        ordered = sorted(groups.items(), key=lambda kv: tuple(_sort_value(v) for v in kv[0]))
        return [(dict(zip(names, values)), g, len(g)) for values, g in ordered], None
    tried = ", ".join(dict.fromkeys(s for _, s, _ in _VOLUME_KEYS))
    plural = "s" if n_positions > 1 else ""
    problem = (f"holds {len(indices)} slices at {n_positions} position{plural} (up to {depth} at one position): "
               f"several volumes that no header tells apart ({tried})")
    return [({}, indices, n_positions)], problem


def _structural(headers: Sequence[SliceHeader], indices: list[int]) -> bool:
    """False when the slices are phase / real / imaginary parts or a field or parametric map."""
    for i in indices:
        h = headers[i]
        if h.complex_component in ("PHASE", "REAL", "IMAGINARY"):
            return False
        for part in (h.image_type or ())[2:]:
            if part in _NON_STRUCTURAL_PARTS or part.split("_")[0] in ("P", "R", "I") or "MAP" in part:
                return False
    return True


def _series_label(headers: Sequence[SliceHeader], indices: list[int]) -> str:
    h = headers[indices[0]]
    number = "" if h.series_number is None else f"#{_show(h.series_number)} "
    return f"{number}{h.description or '(no description)'!r} ({len(indices)} slices)"


def group_volumes(headers: Sequence[SliceHeader]) -> VolumeSplit:
    """Group slices into volumes from their headers alone, and choose the one to read.

    Slices are split, in this order, by SeriesInstanceUID, by ImageOrientationPatient, and,
    where slices of one orientation share positions, by the first header of
    TemporalPositionIdentifier / TemporalPositionIndex, EchoNumbers, EchoTime /
    EffectiveEchoTime, AcquisitionNumber, ImageType / FrameType, StackID, DimensionIndexValues
    (without the in-stack position) and TriggerTime (or the first pair of them) that tells
    them apart. Volumes are listed series by series (SeriesNumber order), the largest
    orientation first, then in ascending order of the header (the first time point, the
    shortest echo, the first acquisition).

    The volume to read (``chosen``) is the first structural volume with the most slices:
    among the volumes of the majority orientation, the structural ones (magnitude images, not
    a phase / real / imaginary part or a field or parametric map by ImageType or FrameType and
    ComplexImageComponent; all of them when none is), the first in the order above that has as
    many slices as the fullest of them. None is chosen, and ``reason`` says why in one line,
    when the folder holds several series, when no orientation holds more than half of the
    slices, or when slices share positions and no header tells their volumes apart.
    """
    n = len(headers)
    if n == 0:
        return VolumeSplit([], [], None, "holds no slice")
    by: list[str] = []
    volumes: list[VolumeGroup] = []
    series = _partition(range(n), lambda i: headers[i].series_uid)
    series_order = sorted(series.items(), key=lambda kv: (_sort_value(headers[kv[1][0]].series_number),
                                                          kv[0] or ""))
    if len(series) > 1:
        by.append("SeriesInstanceUID")
    majority: list[int] = []     # indices into ``volumes`` of the majority orientation's volumes
    problem: str | None = None   # why no volume may be chosen
    note = ""
    for uid, s_idx in series_order:
        orientations = _orientation_groups(headers, s_idx)
        if len(orientations) > 1 and "ImageOrientationPatient" not in by:
            by.append("ImageOrientationPatient")
        for rank, o_idx in enumerate(orientations):
            parts, split_problem = _split_by_header(headers, o_idx)
            first = len(volumes)
            for key, idx, positions in parts:
                full_key: dict[str, Any] = {}
                if len(series) > 1:
                    full_key["SeriesInstanceUID"] = uid
                if len(orientations) > 1:
                    full_key["ImageOrientationPatient"] = tuple(round(v, 4) for v in headers[idx[0]].orientation or ())
                full_key.update(key)
                by.extend(name for name in key if name not in by)
                volumes.append(VolumeGroup(idx, full_key, positions, _structural(headers, idx), split_problem))
            if len(series) > 1 or rank > 0:
                continue
            majority = list(range(first, len(volumes)))
            problem = None if split_problem is None else f"{split_problem}; put each volume in its own folder"
            if len(orientations) > 1:
                note = f"; {n - len(o_idx)} of {n} slices in another orientation left out"
                if 2 * len(o_idx) <= n:
                    sizes = ", ".join(str(len(g)) for g in orientations)
                    problem = (f"holds slices in {len(orientations)} orientations ({sizes} slices) and none holds "
                               "most of them: several series or a localiser; put each in its own folder")
    if len(series) > 1:
        listed = "; ".join(_series_label(headers, idx) for _, idx in series_order[:5])
        listed += f" (+{len(series) - 5} more)" if len(series) > 5 else ""
        problem = (f"holds {len(series)} series (SeriesInstanceUID): {listed}; a series folder holds one series: "
                   "put each in its own folder")
    if problem is not None:
        return VolumeSplit(volumes, by, None, problem)
    structural = [v for v in majority if volumes[v].structural]
    pool = structural or majority
    fullest = max(len(volumes[v].indices) for v in pool)
    chosen = next(v for v in pool if len(volumes[v].indices) == fullest)
    if len(volumes) == 1:
        return VolumeSplit(volumes, by, chosen, "one volume")
    why = ("the first structural volume with the most slices" if structural
           else "no structural (magnitude) volume: the first with the most slices")
    return VolumeSplit(volumes, by, chosen,
                       f"holds {len(volumes)} volumes told apart by {', '.join(by)}; read volume {chosen} "
                       f"({volumes[chosen].label}, {len(volumes[chosen].indices)} slices): {why}{note}")


# --------------------------------------------------------------------------- decoding


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= _REASON_MAX_CHARS else text[: _REASON_MAX_CHARS - 3] + "..."


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _read_file(path: Path) -> tuple[pydicom.Dataset, list[SliceHeader]] | str:
    """Read one file once (pixels still encoded) and its slice records; a string is the reason it has no slice."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        if _is_empty(path):
            return "not a DICOM file: empty file"
        # pydicom's advice to use force=True does not apply to a reader of series.
        message = str(exc).split(" Use force=True", 1)[0]
        return f"not a DICOM file: {_short(InvalidDicomError(message))}"
    except Exception as exc:  # truncated or corrupt headers raise many types
        return f"unreadable DICOM: {_short(exc)}"
    if not any(tag in ds for tag in _PIXEL_DATA_TAGS):
        return "DICOM without pixel data"
    try:
        headers = slice_headers(ds, path)
    except Exception as exc:  # a malformed functional-group sequence
        return f"unreadable DICOM header: {_short(exc)}"
    if headers[0].photometric == "PALETTE COLOR":
        return "PALETTE COLOR images are not supported"
    return ds, headers


def _decode_frames(ds: pydicom.Dataset, n_frames: int) -> np.ndarray | str:
    """All frames of a dataset as (F, H, W) gray (decoded once); a string is why it cannot be."""
    try:
        # The function, not the Dataset.pixel_array property: same decoders and options,
        # minus the property's cache bookkeeping (about 5 % of a small slice's read).
        pixels = pydicom_pixel_array(ds)
    except Exception as exc:  # missing decoder, truncated pixel data, bad group 0028
        return f"pixel data could not be decoded: {_short(exc)}"
    samples = _unsigned(ds, _TAG_SAMPLES_PER_PIXEL) or 1
    if samples > 1 and pixels.ndim >= 3 and pixels.shape[-1] in (3, 4):
        # pydicom already converted YBR to RGB; the volume is gray.
        pixels = pixels[..., :3].astype(np.float32) @ _RGB_TO_GRAY
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.ndim != 3 or pixels.size == 0 or pixels.shape[0] != n_frames:
        return f"unsupported pixel array shape {tuple(pixels.shape)}"
    return pixels


def _majority_shape(shapes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """Most common (H, W); ties go to the larger image so resizing never loses detail."""
    counts = Counter(shapes)
    return max(counts, key=lambda s: (counts[s], s[0] * s[1], s))


def _list_files(folder: Path) -> tuple[list[Path], list[SkippedFile], list[Path]]:
    """(files, entries skipped with a reason, subfolders) of a series folder, files sorted by name.

    An entry that cannot even be looked at (a symbolic-link loop, a dangling link) is skipped
    with its reason; it never rejects the series.
    """
    files, skipped, subfolders = [], [], []
    with os.scandir(folder) as entries:
        for e in entries:
            try:
                if e.is_file():
                    files.append(Path(e.path))
                elif e.is_dir():
                    subfolders.append(Path(e.path))
                elif e.is_symlink():
                    skipped.append(SkippedFile(file=e.path, reason="broken symbolic link"))
            except OSError as exc:   # ELOOP: a link loop
                skipped.append(SkippedFile(file=e.path, reason=f"cannot be read: {exc.strerror or exc}"))
    return sorted(files, key=lambda p: p.name), skipped, sorted(subfolders)


def _dicoms_below(subfolders: list[Path], limit: int = 3) -> list[Path]:
    """Subfolders that hold .dcm files (at any depth), for an error message; never read as the series."""
    found = []
    for sub in subfolders:
        if next(sub.rglob("*.dcm"), None) is not None:
            found.append(sub)
            if len(found) >= limit:
                break
    return found


# --------------------------------------------------------------------------- public


def read_series(
    folder: str | Path,
    order: Literal["position", "filename"] = "position",
    rescale: bool = True,
    *,
    volume: int | None = None,
    min_size: int | None = None,
) -> tuple[np.ndarray, SeriesMeta]:
    """Read one series folder into a float32 (S, H, W) volume in anatomical order.

    Slices are the folder's single-frame files and the frames of its multi-frame files
    (Enhanced MR: per-frame position, orientation, pixel spacing and rescale from the
    functional groups). When the folder holds several volumes (time points, echoes, repeated
    acquisitions, several orientations or series), :func:`group_volumes` splits them and one
    is read: by default its ``chosen`` volume (the first structural volume with the most
    slices, of the majority orientation), or ``volume`` (an index into ``meta.volumes``);
    the choice is in ``meta.volumes`` / ``meta.volume`` and logged. Raises
    :class:`DicomSeriesError` when no volume may be chosen (several series, duplicates that
    no header tells apart: "holds N slices at M positions").

    Order: see :func:`slice_order` (ascending along the slice normal when the geometry
    allows). ``order="filename"`` instead sorts by the trailing integer of the file name
    (``Image-9.dcm`` before ``Image-10.dcm``), the published solution's order.
    Values are RescaleSlope * stored + RescaleIntercept, per slice or frame (a missing or
    zero slope counts as 1); ``rescale=False`` keeps the stored values (no rescale, no
    MONOCHROME1 inversion), as the published solution read them. Colour images become
    luminance (0.299 R + 0.587 G + 0.114 B). MONOCHROME1 slices are mirrored as ``max - value``
    (max over the series' MONOCHROME1 slices) so larger means brighter and the
    display-white background becomes 0. Slices whose size differs from the majority are
    resized to it (bilinear) and listed in ``meta.resized``; slices whose pixel spacing
    differs are kept, with a warning in ``meta.warnings`` and the spacings in
    ``meta.pixel_spacings``. Subfolders are ignored; every other unreadable file is listed
    in ``meta.skipped`` with its reason. Also raises :class:`DicomSeriesError` when the
    folder is missing or has no readable slice, and when the slices are smaller than
    ``min_size`` pixels (default :data:`MIN_SLICE_SIZE`) in either direction.
    """
    folder = Path(folder)
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise DicomSeriesError(f"DICOM series folder {problem}: {folder}")
    if order not in ("position", "filename"):
        raise ValueError(f"order must be 'position' or 'filename', got {order!r}")
    files, skipped, subfolders = _list_files(folder)
    for item in skipped:
        logger.info("skipping %s: %s", item.file, item.reason)
    headers: list[SliceHeader] = []
    pixels: list[np.ndarray] = []    # per header: its decoded 2-D slice (a view into its file's frames)
    paths: list[Path] = []
    for path in files:
        # Each file is read and decoded once, before grouping: a file whose pixels cannot be
        # decoded is skipped and must not count as a slice of any volume.
        result = _read_file(path)
        if not isinstance(result, str):
            ds, file_headers = result
            frames = _decode_frames(ds, len(file_headers))
            del ds
            result = frames if isinstance(frames, str) else (file_headers, frames)
        if isinstance(result, str):
            skipped.append(SkippedFile(file=str(path), reason=result))
            logger.info("skipping %s: %s", path, result)
            continue
        file_headers, frames = result
        headers.extend(file_headers)
        pixels.extend(frames[(h.frame or 1) - 1] for h in file_headers)
        paths.extend([path] * len(file_headers))
    if not headers:
        _raise_nothing_readable(folder, files, skipped, subfolders)

    split = group_volumes(headers)
    picked = _pick_volume(folder, split, volume)
    if split.n_volumes > 1:
        message = f"{folder} {split.reason}" if volume is None else (
            f"{folder} holds {split.n_volumes} volumes told apart by {', '.join(split.by)}; "
            f"read volume {picked} ({split.volumes[picked].label}) as asked")
        logger.warning("%s", message)
    slices = [_slice_of(paths[i], headers[i], pixels[i]) for i in split.volumes[picked].indices]
    del pixels

    names = [s.path.name for s in slices]
    frame_nos = [s.frame for s in slices]
    if order == "filename":
        keys = [(*_filename_key(n), f or 0) for n, f in zip(names, frame_nos)]
        reading = np.asarray(sorted(range(len(names)), key=lambda i: keys[i]), dtype=np.intp)
        order_by, projected = "filename", None
    else:
        reading, order_by, projected = _order_and_projection(
            [s.position for s in slices], [s.orientation for s in slices], [s.instance for s in slices], names,
            frame_nos,
        )
    slices = [slices[i] for i in reading]

    height, width = _majority_shape([s.pixels.shape for s in slices])  # type: ignore[misc]
    smallest = MIN_SLICE_SIZE if min_size is None else min_size
    if height < smallest or width < smallest:
        raise DicomSeriesError(
            f"{folder}: its slices are {height}x{width} pixels, too small to be an MRI (at least "
            f"{smallest}x{smallest}); is this an image series?"
        )
    volume_array = np.empty((len(slices), height, width), dtype=np.float32)
    resized: list[str] = []
    positive = np.array([np.count_nonzero(s.pixels > 0) / s.pixels.size for s in slices], dtype=np.float64)
    for i, s in enumerate(slices):
        if s.pixels.shape == (height, width):
            volume_array[i] = s.pixels
        else:
            volume_array[i] = cv2.resize(
                s.pixels.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR
            )
            resized.append(str(s.path))
        if rescale and s.slope != 1.0:
            volume_array[i] *= np.float32(s.slope)
        if rescale and s.intercept != 0.0:
            volume_array[i] += np.float32(s.intercept)
    if resized:
        logger.warning(
            "%s: resized %d of %d slices to the majority size %dx%d",
            folder, len(resized), len(slices), height, width,
        )
    mono1 = [i for i, s in enumerate(slices) if s.monochrome1]
    if mono1 and rescale:
        top = np.float32(volume_array[mono1].max())
        volume_array[mono1] = top - volume_array[mono1]

    warnings: list[str] = []
    pixel_spacing = _pixel_spacing(slices, (height, width))
    spacings = _pixel_spacings(slices, (height, width))
    if len(spacings) > 1 and pixel_spacing is not None:
        listed = ", ".join(f"{r:g}x{c:g} mm ({n} slices)" for (r, c), n in spacings)
        warnings.append(f"{folder}: its slices differ in PixelSpacing: {listed}; the volume is treated as "
                        f"{pixel_spacing[0]:g}x{pixel_spacing[1]:g} mm (its first full-size slice)")
    for text in warnings:
        logger.warning("%s", text)
    meta = SeriesMeta(
        folder=folder,
        plane=_series_plane(slices),
        order_by=order_by,
        positions=_position_matrix([s.position for s in slices], len(slices)),
        pixel_spacing=pixel_spacing,
        slice_spacing=_slice_spacing(slices, projected),
        files=[s.path for s in slices],
        skipped=skipped,
        resized=resized,
        positive_fraction=positive,
        orientation=_series_orientation(slices),
        frames=[s.frame for s in slices],
        volumes=split,
        volume=picked,
        pixel_spacings=spacings if len(spacings) > 1 else [],
        warnings=warnings,
    )
    return volume_array, meta


def _slice_of(path: Path, h: SliceHeader, pixels: np.ndarray) -> _Slice:
    return _Slice(
        path=path,
        frame=h.frame,
        pixels=pixels,
        position=h.position,
        orientation=h.orientation,
        instance=h.instance,
        slope=h.slope,
        intercept=h.intercept,
        monochrome1=h.photometric == "MONOCHROME1",
        pixel_spacing=h.pixel_spacing,
        spacing_between=h.spacing_between,
        thickness=h.thickness,
    )


def _pick_volume(folder: Path, split: VolumeSplit, volume: int | None) -> int:
    """The index of the volume to read: ``volume`` when given, else the split's choice."""
    if volume is None:
        if split.chosen is None:
            raise DicomSeriesError(f"{folder} {split.reason}")
        return split.chosen
    if not 0 <= volume < split.n_volumes:
        raise DicomSeriesError(f"{folder} holds {split.n_volumes} volume(s): volume {volume} does not exist "
                               f"(0 to {split.n_volumes - 1})")
    problem = split.volumes[volume].problem
    if problem is not None:
        raise DicomSeriesError(f"{folder}: volume {volume} {problem}")
    return volume


def _raise_nothing_readable(
    folder: Path, files: list[Path], skipped: list[SkippedFile], subfolders: list[Path]
) -> None:
    detail = "; ".join(f"{Path(s.file).name}: {s.reason}" for s in skipped[:3])
    more = f" (+{len(skipped) - 3} more)" if len(skipped) > 3 else ""
    below = _dicoms_below(subfolders) if not files else []
    if below:
        where = ", ".join(str(p) for p in below)
        raise DicomSeriesError(
            f"no DICOM file directly in {folder}, but .dcm files lie below it in {where}; "
            "a series folder holds its slices itself (move them up or point at that folder)"
        )
    raise DicomSeriesError(
        f"no readable DICOM slice in {folder}"
        + (f" ({len(skipped)} files skipped: {detail}{more})" if skipped else " (no files)")
    )


def _pixel_spacings(slices: Sequence[_Slice], shape: tuple[int, int]) -> list[tuple[tuple[float, float], int]]:
    """Distinct in-plane spacings (as resized to ``shape``) with slice counts, most common first.

    Spacings within 0.1 % of each other count as one (header rounding).
    """
    found: list[tuple[tuple[float, float], int]] = []
    for s in slices:
        if s.pixel_spacing is None:
            continue
        h, w = s.pixels.shape
        sp = (s.pixel_spacing[0] * h / shape[0], s.pixel_spacing[1] * w / shape[1])
        for k, (ref, count) in enumerate(found):
            if all(abs(a - b) <= 1e-3 * max(abs(b), 1e-9) for a, b in zip(sp, ref)):
                found[k] = (ref, count + 1)
                break
        else:
            found.append(((round(sp[0], 6), round(sp[1], 6)), 1))
    return sorted(found, key=lambda item: -item[1])


def _series_plane(slices: Sequence[_Slice]) -> str:
    """Plane of the first slice (in reading order) whose orientation is usable."""
    for s in slices:
        plane = plane_from_orientation(s.orientation)
        if plane != "unknown":
            return plane
    return "unknown"


def _series_orientation(slices: Sequence[_Slice]) -> tuple[float, ...] | None:
    """ImageOrientationPatient of the first slice (in reading order) whose orientation is usable."""
    for s in slices:
        if _unit_normal(s.orientation) is not None:
            return tuple(float(v) for v in s.orientation)  # type: ignore[union-attr]
    return None


def _pixel_spacing(
    slices: Sequence[_Slice], shape: tuple[int, int]
) -> tuple[float, float] | None:
    for s in slices:
        if s.pixels.shape == shape and s.pixel_spacing is not None:
            return s.pixel_spacing
    return None


def _slice_spacing(slices: Sequence[_Slice], projected: np.ndarray | None) -> float | None:
    if projected is not None and len(projected) > 1:
        return float(np.median(np.abs(np.diff(projected))))
    for s in slices:
        if s.spacing_between is not None and s.spacing_between > 0:
            return s.spacing_between
    for s in slices:
        if s.thickness is not None and s.thickness > 0:
            return s.thickness
    return None


def _start_method() -> str:
    # Forking a process that already runs threads (torch, CUDA) can deadlock; forkserver
    # forks from a clean single-threaded server and is much cheaper than spawn.
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def read_series_many(
    folders: Iterable[str | Path],
    workers: int = 1,
    *,
    executor: Literal["thread", "process"] | None = None,
    order: Literal["position", "filename"] = "position",
    rescale: bool = True,
    min_size: int | None = None,
) -> Iterator[tuple[Path, np.ndarray | Exception, SeriesMeta | None]]:
    """Read series in the background so the caller can overlap reading with model work.

    Yields ``(folder, volume, meta)`` in input order, or ``(folder, exception, None)``
    for a series that failed (errors are yielded, not raised). Nothing is read before the
    first item is requested; then at most ``workers + 1`` series are read ahead.

    ``executor="thread"`` (default) overlaps reading with the caller's work (model code
    releases the GIL) and with file I/O, but decoding itself is GIL-bound Python, so more
    than one thread mainly helps on slow storage. ``executor="process"`` decodes in
    parallel; each volume is then pickled back to this process (about 0.1 s of this
    process's CPU per 46 MB volume), so it only pays off with several idle cores. It
    needs the caller's script guarded by ``if __name__ == "__main__":``.
    ``order``, ``rescale`` and ``min_size`` go to :func:`read_series` (``min_size`` None:
    :data:`MIN_SLICE_SIZE` as it is in this process when called).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    kind = executor or "thread"
    if kind not in ("thread", "process"):
        raise ValueError(f"executor must be 'thread' or 'process', got {executor!r}")
    smallest = MIN_SLICE_SIZE if min_size is None else min_size
    reader = functools.partial(read_series, order=order, rescale=rescale, min_size=smallest)
    return read_ahead(iter(folders), workers, reader, kind)


def read_ahead(
    folders: Iterator[str | Path], workers: int, reader: Callable[[Path], tuple[np.ndarray, SeriesMeta]],
    kind: str = "thread",
) -> Iterator[tuple[Path, np.ndarray | Exception, SeriesMeta | None]]:
    """``reader`` over ``folders`` in the background (at most ``workers + 1`` ahead), yielding ``(path, volume,
    meta)`` or ``(path, exception, None)`` in input order (see :func:`read_series_many`); any reader of one
    series (a DICOM folder, a NIfTI file: ``mgmt2d.data.series``) can use it."""
    pool: Executor
    if kind == "thread":
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read_series")
    else:
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context(_start_method())
        )
    pending: deque[tuple[Path, Future[tuple[np.ndarray, SeriesMeta]]]] = deque()
    try:
        for folder in islice(folders, workers + 1):
            pending.append((Path(folder), _submit(pool, reader, Path(folder))))
        while pending:
            folder, future = pending.popleft()
            item: tuple[Path, np.ndarray | Exception, SeriesMeta | None]
            try:
                item = (folder, *future.result())
            except Exception as exc:  # yielded to the caller, by contract
                item = (folder, exc, None)
            # Refill before yielding so workers stay busy while the caller works.
            for nxt in islice(folders, 1):
                pending.append((Path(nxt), _submit(pool, reader, Path(nxt))))
            del future  # no reference here may keep a consumed volume alive
            yield item
            del item
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


def _submit(
    pool: Executor, reader: Callable[[Path], tuple[np.ndarray, SeriesMeta]], folder: Path
) -> Future[tuple[np.ndarray, SeriesMeta]]:
    """Submit, turning a refusal (a broken process pool) into a failed future."""
    try:
        return pool.submit(reader, folder)
    except Exception as exc:
        failed: Future[tuple[np.ndarray, SeriesMeta]] = Future()
        failed.set_exception(exc)
        return failed
