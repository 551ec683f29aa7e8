"""DICOM series reader: one folder of single-frame slices -> float32 (S, H, W) volume.

Reading order is ascending position along the slice normal, where the normal is
``cross(row_cosines, col_cosines)`` of ImageOrientationPatient and the position is
ImagePositionPatient projected on it. In DICOM patient coordinates (LPS) a standard
axial series (rows along +x, columns along +y) therefore reads inferior -> superior.
When geometry is missing or inconsistent the order falls back to InstanceNumber, then
to the number in the file name ("Image-9.dcm" before "Image-10.dcm").

Files that are not readable single-frame DICOM images (a ``.DS_Store``, garbage named
``.dcm``, a truncated file, a DICOM without pixel data) are skipped and reported in
:attr:`SeriesMeta.skipped`, never silently dropped.
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import os
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array as pydicom_pixel_array

logger = logging.getLogger(__name__)

__all__ = [
    "DicomSeriesError",
    "SeriesMeta",
    "SkippedFile",
    "plane_from_orientation",
    "read_series",
    "read_series_many",
    "slice_order",
]

# Tags as integers: looking them up this way skips the keyword dictionary, and reading
# the raw (still undecoded) element skips pydicom's DS/IS validation, which otherwise
# costs about a tenth of the whole read of a small uncompressed slice.
_TAG_IMAGE_POSITION = 0x00200032
_TAG_IMAGE_ORIENTATION = 0x00200037
_TAG_INSTANCE_NUMBER = 0x00200013
_TAG_PIXEL_SPACING = 0x00280030
_TAG_SLICE_THICKNESS = 0x00180050
_TAG_SPACING_BETWEEN_SLICES = 0x00180088
_TAG_RESCALE_SLOPE = 0x00281053
_TAG_RESCALE_INTERCEPT = 0x00281052
_TAG_NUMBER_OF_FRAMES = 0x00280008
_PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel, Float, Double Float

# Two slices closer than this along the normal are treated as the same position: the
# geometry then cannot order the series (duplicates, several stacks) and we fall back.
_MIN_SLICE_GAP_MM = 1e-3
# Normals of all slices must agree to within about 0.8 degrees to share one projection.
_MIN_NORMAL_DOT = 0.9999
_RGB_TO_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_REASON_MAX_CHARS = 300


class DicomSeriesError(ValueError):
    """A series folder that yields no volume (missing, or no readable slice)."""


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
        }


@dataclass
class _Slice:
    """One decoded file: its pixels and the few header values the series needs."""

    path: Path
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
) -> tuple[np.ndarray, str]:
    """Reading order of slices and the rule that produced it.

    ``positions``: per slice a 3-vector or None; ``orientation``: one 6-vector for the
    series or one per slice (None allowed); ``instance_numbers``: per slice or None.
    Rules, first that applies: "position" (every slice has geometry, all normals agree,
    no two projected positions coincide; ascending along the normal), "instance" (every
    slice has a distinct InstanceNumber; ascending), "filename" (last number in the
    name, then the name). Ties are broken by file name so the result never depends on
    the order the caller listed the files in.
    """
    order, order_by, _ = _order_and_projection(
        positions, orientation, instance_numbers, filenames
    )
    return order, order_by


def _order_and_projection(
    positions: Sequence[Any] | np.ndarray | None,
    orientation: Sequence[Any] | np.ndarray | None,
    instance_numbers: Sequence[float | int | None] | None,
    filenames: Sequence[str],
) -> tuple[np.ndarray, str, np.ndarray | None]:
    """slice_order plus the projected positions in reading order (None unless used)."""
    names = [str(f) for f in filenames]
    n = len(names)
    name_keys = [_filename_key(f) for f in names]
    projected = _projected_positions(positions, orientation, n)
    if projected is not None:
        order = sorted(range(n), key=lambda i: (projected[i], name_keys[i]))
        return np.asarray(order, dtype=np.intp), "position", projected[order]
    if instance_numbers is not None:
        inst = list(instance_numbers)
        if len(inst) != n:
            raise ValueError(f"expected {n} instance numbers, got {len(inst)}")
        values = [_finite_or_none(v) for v in inst]
        if all(v is not None for v in values) and len(set(values)) == n:
            order = sorted(range(n), key=lambda i: (values[i], name_keys[i]))
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


# --------------------------------------------------------------------------- decoding


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


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= _REASON_MAX_CHARS else text[: _REASON_MAX_CHARS - 3] + "..."


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _decode_file(path: Path) -> _Slice | str:
    """Read and decode one file once; a string is the reason it cannot be a slice."""
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
    frames = _number(ds, _TAG_NUMBER_OF_FRAMES)
    if frames is not None and frames > 1:
        return f"multi-frame image ({int(frames)} frames) is not supported"
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric == "PALETTE COLOR":
        return "PALETTE COLOR images are not supported"
    try:
        # The function, not the Dataset.pixel_array property: same decoders and options,
        # minus the property's cache bookkeeping (about 5 % of a small slice's read).
        pixels = pydicom_pixel_array(ds)
    except Exception as exc:  # missing decoder, truncated pixel data, bad group 0028
        return f"pixel data could not be decoded: {_short(exc)}"
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        # pydicom already converted YBR to RGB; the volume is gray.
        pixels = pixels[..., :3].astype(np.float32) @ _RGB_TO_GRAY
    if pixels.ndim != 2 or pixels.size == 0:
        return f"unsupported pixel array shape {tuple(pixels.shape)}"
    spacing = _numbers(ds, _TAG_PIXEL_SPACING)
    slope = _number(ds, _TAG_RESCALE_SLOPE)
    intercept = _number(ds, _TAG_RESCALE_INTERCEPT)
    return _Slice(
        path=path,
        pixels=pixels,
        position=_numbers(ds, _TAG_IMAGE_POSITION),
        orientation=_numbers(ds, _TAG_IMAGE_ORIENTATION),
        instance=_number(ds, _TAG_INSTANCE_NUMBER),
        slope=1.0 if not slope else slope,  # absent, or an invalid 0: identity
        intercept=0.0 if intercept is None else intercept,
        monochrome1=photometric == "MONOCHROME1",
        pixel_spacing=(spacing[0], spacing[1]) if spacing and len(spacing) >= 2 else None,
        spacing_between=_number(ds, _TAG_SPACING_BETWEEN_SLICES),
        thickness=_number(ds, _TAG_SLICE_THICKNESS),
    )


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
    folder: str | Path, order: Literal["position", "filename"] = "position", rescale: bool = True
) -> tuple[np.ndarray, SeriesMeta]:
    """Read one series folder into a float32 (S, H, W) volume in anatomical order.

    Order: see :func:`slice_order` (ascending along the slice normal when the geometry
    allows). ``order="filename"`` instead sorts by the trailing integer of the file name
    (``Image-9.dcm`` before ``Image-10.dcm``), the published solution's order.
    Values are RescaleSlope * stored + RescaleIntercept (a missing or zero slope
    counts as 1); ``rescale=False`` keeps the stored values (no rescale, no MONOCHROME1
    inversion), as the published solution read them. Colour images become luminance (0.299 R + 0.587 G + 0.114 B); only
    single-frame images are read. MONOCHROME1 slices are mirrored as ``max - value``
    (max over the series' MONOCHROME1 slices) so larger means brighter and the
    display-white background becomes 0. Slices whose size differs from the majority are
    resized to it (bilinear) and listed in ``meta.resized``. Subfolders are ignored;
    every other unreadable file is listed in ``meta.skipped`` with its reason.
    Raises :class:`DicomSeriesError` when the folder is missing or has no readable slice.
    """
    folder = Path(folder)
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise DicomSeriesError(f"DICOM series folder {problem}: {folder}")
    slices: list[_Slice] = []
    files, skipped, subfolders = _list_files(folder)
    for item in skipped:
        logger.info("skipping %s: %s", item.file, item.reason)
    for path in files:
        result = _decode_file(path)
        if isinstance(result, str):
            skipped.append(SkippedFile(file=str(path), reason=result))
            logger.info("skipping %s: %s", path, result)
        else:
            slices.append(result)
    if not slices:
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

    if order not in ("position", "filename"):
        raise ValueError(f"order must be 'position' or 'filename', got {order!r}")
    names = [s.path.name for s in slices]
    if order == "filename":
        reading = np.asarray(sorted(range(len(names)), key=lambda i: _filename_key(names[i])), dtype=np.intp)
        order_by, projected = "filename", None
    else:
        reading, order_by, projected = _order_and_projection(
            [s.position for s in slices], [s.orientation for s in slices], [s.instance for s in slices], names
        )
    slices = [slices[i] for i in reading]

    height, width = _majority_shape([s.pixels.shape for s in slices])  # type: ignore[misc]
    volume = np.empty((len(slices), height, width), dtype=np.float32)
    resized: list[str] = []
    positive = np.array([np.count_nonzero(s.pixels > 0) / s.pixels.size for s in slices], dtype=np.float64)
    for i, s in enumerate(slices):
        if s.pixels.shape == (height, width):
            volume[i] = s.pixels
        else:
            volume[i] = cv2.resize(
                s.pixels.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR
            )
            resized.append(str(s.path))
        if rescale and s.slope != 1.0:
            volume[i] *= np.float32(s.slope)
        if rescale and s.intercept != 0.0:
            volume[i] += np.float32(s.intercept)
    if resized:
        logger.warning(
            "%s: resized %d of %d slices to the majority size %dx%d",
            folder, len(resized), len(slices), height, width,
        )
    mono1 = [i for i, s in enumerate(slices) if s.monochrome1]
    if mono1 and rescale:
        top = np.float32(volume[mono1].max())
        volume[mono1] = top - volume[mono1]

    meta = SeriesMeta(
        folder=folder,
        plane=_series_plane(slices),
        order_by=order_by,
        positions=_position_matrix([s.position for s in slices], len(slices)),
        pixel_spacing=_pixel_spacing(slices, (height, width)),
        slice_spacing=_slice_spacing(slices, projected),
        files=[s.path for s in slices],
        skipped=skipped,
        resized=resized,
        positive_fraction=positive,
        orientation=_series_orientation(slices),
    )
    return volume, meta


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
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    kind = executor or "thread"
    if kind not in ("thread", "process"):
        raise ValueError(f"executor must be 'thread' or 'process', got {executor!r}")
    return _read_many(iter(folders), workers, kind, functools.partial(read_series, order=order, rescale=rescale))


def _read_many(
    folders: Iterator[str | Path], workers: int, kind: str, reader: Callable[[Path], tuple[np.ndarray, SeriesMeta]]
) -> Iterator[tuple[Path, np.ndarray | Exception, SeriesMeta | None]]:
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
