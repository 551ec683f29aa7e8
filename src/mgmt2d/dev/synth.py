"""Synthetic brain-tumour MRI in the layouts of the real data (BraTS 2021 Task 1 + Task 2).

Why: the real data are large and licensed, so tests, demos and a first check that the
pipeline *learns* need a stand-in that has the same folder layouts, the same awkward
DICOM geometry (any plane, shuffled file numbers, blank end slices, rescale tags) and a
label that is visible in the images.

Each patient is one phantom on a BraTS-like voxel grid, array axes (x, y, z) = (sagittal
index, coronal index, axial index); voxel index maps to DICOM patient coordinates (LPS, mm)
as ``(index - centre) * voxel_mm``: x towards patient left, y posterior, z superior. The
NIfTI affine (RAS) is therefore ``diag(-1, -1, 1)`` with 1 mm voxels, as in BraTS.

The MGMT label sets the tumour's architecture, visible in all four MRI types:
label 1 -> a large necrotic core (radius 60-80 % of the tumour) inside a thin enhancing
rim; label 0 -> solid enhancement with no core or a small one (radius <= 30 %).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from mgmt2d.data.io import atomic_path, write_csv_atomic, write_json_atomic
from mgmt2d.data.task2 import MRI_TYPES, format_id

logger = logging.getLogger(__name__)

__all__ = [
    "MRI_TYPES",
    "PLANES",
    "SIZES",
    "TASK1_MODALITIES",
    "Phantom",
    "SeriesTruth",
    "SizeSpec",
    "Tumour",
    "add_arguments",
    "check_request",
    "generate",
    "main",
    "make_phantom",
    "render",
    "stable_uid",
    "write_dicom_series",
    "write_task1_case",
]

TASK1_MODALITIES: dict[str, str] = {"t1": "T1w", "t1ce": "T1wCE", "t2": "T2w", "flair": "FLAIR"}
PLANES: tuple[str, ...] = ("axial", "sagittal", "coronal")

# Tissue codes of the phantom's label map.
AIR, SCALP, SKULL, CSF, GM, WM, EDEMA, ENHANCING, NECROTIC = range(9)
# Phantom tissue -> BraTS 2021 label (1 necrotic core, 2 edema, 4 enhancing tumour).
_SEG_OF_TISSUE = np.array([0, 0, 0, 0, 0, 0, 2, 4, 1], dtype=np.uint8)

# Relative intensity of each tissue (air, scalp, skull, CSF, GM, WM, edema, ET, necrosis).
# FLAIR: edema bright, CSF dark; T2: edema and CSF bright; T1: core and CSF dark;
# T1CE: enhancing rim bright. The necrotic core differs from the rim in every type.
_CONTRAST: dict[str, tuple[float, ...]] = {
    "FLAIR": (0.0, 0.60, 0.05, 0.08, 0.56, 0.46, 0.95, 0.78, 0.36),
    "T1w": (0.0, 0.85, 0.06, 0.16, 0.52, 0.72, 0.42, 0.50, 0.20),
    "T1wCE": (0.0, 0.85, 0.06, 0.18, 0.54, 0.74, 0.44, 1.10, 0.18),
    "T2w": (0.0, 0.55, 0.05, 1.00, 0.58, 0.42, 0.82, 0.62, 0.96),
}

# Shells in normalised ellipsoidal radius (brain surface = 1).
_R_CSF, _R_SKULL, _R_HEAD = 1.035, 1.11, 1.19

# Necrotic-core radius as a fraction of the tumour radius, per label.
CORE_FRACTION_LABEL1 = (0.60, 0.80)
CORE_FRACTION_LABEL0 = (0.15, 0.30)  # and no core at all in half of label-0 tumours

# DICOM rescale choices: (slope, stored value of 0); dyadic slopes keep
# stored * slope + intercept exact in float32.
_SLOPES = (0.25, 0.5, 1.0, 2.0)
_OFFSETS_UNSIGNED = (0, 1000, 2048)
_OFFSETS_SIGNED = (0, -1024, 1000)

_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
_UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's root; the suffix is a hash
# = stable_uid("mgmt2d-synth-implementation"), fixed so the files never depend on pydicom's hashing.
_IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.97903726617071906369440521769836981421"


@dataclass(frozen=True)
class SizeSpec:
    """Grid and DICOM ranges of one ``--size``."""

    grid: tuple[int, int, int]
    matrices: tuple[int, ...]
    slices: tuple[int, int]


SIZES: dict[str, SizeSpec] = {
    "small": SizeSpec(grid=(96, 96, 64), matrices=(64, 80, 96, 112), slices=(24, 64)),
    "full": SizeSpec(grid=(240, 240, 155), matrices=(256, 320, 384, 448, 512), slices=(60, 200)),
}


@dataclass(frozen=True)
class Tumour:
    """Ground truth of one tumour, in voxel units of the phantom grid."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    core_fraction: float
    edema_margin: float
    label: int


@dataclass
class Phantom:
    """One patient's anatomy: a tissue map plus the masks renderers need."""

    tissue: np.ndarray  # uint8 (x, y, z), codes AIR..NECROTIC
    tumour: Tumour
    voxel_mm: float = 1.0
    bias_coeffs: np.ndarray = field(default_factory=lambda: np.zeros(9, np.float32))

    @property
    def seg(self) -> np.ndarray:
        """BraTS labels {0, 1, 2, 4} (uint8)."""
        return _SEG_OF_TISSUE[self.tissue]

    @property
    def brain_mask(self) -> np.ndarray:
        """What BraTS skull stripping keeps: brain, ventricles and tumour."""
        return self.tissue >= CSF

    @property
    def head_mask(self) -> np.ndarray:
        """Everything but air: the support of the (not skull-stripped) DICOM images."""
        return self.tissue != AIR


@dataclass
class SeriesTruth:
    """What a correct reader must return for a series written by write_dicom_series.

    ``volume`` is float32 (S, H, W) in reading order (ascending projection of
    ImagePositionPatient on ``normal`` = cross(row_cos, col_cos)), rescale applied.
    ``file_numbers[i]`` is n of the file ``Image-<n>.dcm`` holding slice i.
    """

    volume: np.ndarray
    plane: str
    positions: np.ndarray  # (S, 3) LPS mm, as written in the headers
    orientation: tuple[float, ...]  # ImageOrientationPatient as written
    normal: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    slice_thickness: float
    file_numbers: np.ndarray
    order: str  # "ascending" | "descending" | "shuffled" (file numbers vs anatomy)
    slope: float
    intercept: float
    rescale_tags: bool
    signed: bool
    blank: tuple[int, int]  # all-zero slices at the start / end of the reading order
    tilt_deg: float
    mri_type: str
    seg: np.ndarray | None = None  # uint8 (S, H, W) labels when labels_xyz was given

    def summary(self) -> dict[str, Any]:
        """One flat row for truth/series.csv."""
        s, h, w = self.volume.shape
        return {
            "plane": self.plane,
            "slices": s,
            "rows": h,
            "cols": w,
            "pixel_spacing": self.pixel_spacing[0],
            "slice_spacing": self.slice_spacing,
            "order": self.order,
            "slope": self.slope,
            "intercept": self.intercept,
            "rescale_tags": self.rescale_tags,
            "signed": self.signed,
            "blank_start": self.blank[0],
            "blank_end": self.blank[1],
            "tilt_deg": round(self.tilt_deg, 3),
        }


# --------------------------------------------------------------------------- anatomy


def _axes(shape: tuple[int, int, int], centre: np.ndarray, radii: np.ndarray) -> list[np.ndarray]:
    """Broadcastable normalised coordinates (idx - centre) / radii along x, y, z."""
    out = []
    for ax in range(3):
        v = (np.arange(shape[ax], dtype=np.float32) - np.float32(centre[ax])) / np.float32(
            radii[ax]
        )
        sh = [1, 1, 1]
        sh[ax] = shape[ax]
        out.append(v.reshape(sh))
    return out


def _wave_field(
    u: list[np.ndarray], rng: np.random.Generator, terms: int, freq: tuple[float, float]
) -> np.ndarray:
    """Smooth random field (about unit std): a sum of plane waves with random directions."""
    total: np.ndarray | float = 0.0
    amp = np.float32(np.sqrt(2.0 / terms))
    for _ in range(terms):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = direction * rng.uniform(*freq) * 2.0 * np.pi
        phase = rng.uniform(0.0, 2.0 * np.pi)
        arg = u[0] * np.float32(k[0]) + u[1] * np.float32(k[1]) + (
            u[2] * np.float32(k[2]) + np.float32(phase)
        )
        total = total + amp * np.cos(arg)
    return np.asarray(total, dtype=np.float32)


def _ellipsoid(u: list[np.ndarray], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    """Boolean ellipsoid in normalised coordinates."""
    acc = ((u[0] - centre[0]) / radii[0]) ** 2
    acc = acc + ((u[1] - centre[1]) / radii[1]) ** 2
    acc = acc + ((u[2] - centre[2]) / radii[2]) ** 2
    return acc < 1.0


def make_phantom(
    grid: tuple[int, int, int], label: int, rng: np.random.Generator, voxel_mm: float = 1.0
) -> Phantom:
    """Head, skull, CSF, grey/white matter, ventricles and one tumour whose look follows ``label``."""
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label}")
    shape = tuple(int(n) for n in grid)
    dims = np.asarray(shape, dtype=np.float64)
    centre = dims * np.array([0.5, 0.5, 0.45]) + rng.uniform(-0.015, 0.015, 3) * dims
    radii = dims * np.array([0.29, 0.355, 0.40]) * rng.uniform(0.93, 1.05, 3)
    u = _axes(shape, centre, radii)

    rho = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
    rho *= 1.0 + 0.035 * _wave_field(u, rng, 3, (0.3, 0.8))
    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[rho < _R_HEAD] = SCALP
    tissue[rho < _R_SKULL] = SKULL
    tissue[rho < _R_CSF] = CSF
    brain = rho < 1.0
    tissue[brain] = GM
    gyri = _wave_field(u, rng, 4, (2.0, 4.0))
    tissue[rho < 0.88 + 0.04 * gyri] = WM
    del gyri
    for side in (-1.0, 1.0):  # deep grey nuclei
        tissue[_ellipsoid(u, (side * 0.24, 0.02, -0.08), (0.11, 0.20, 0.13))] = GM
    vent = rng.uniform(0.8, 1.4)
    for side in (-1.0, 1.0):  # lateral ventricles
        tissue[_ellipsoid(u, (side * 0.09, -0.03, 0.12), (0.055 * vent, 0.40, 0.13 * vent))] = CSF
    fissure = (np.abs(u[0]) < 0.02) & (u[2] > 0.0) & (rho > 0.45) & brain
    tissue[fissure] = CSF
    del fissure, rho

    tumour = _draw_tumour(shape, centre, radii, label, rng)
    _paint_tumour(tissue, brain, tumour, rng)
    # Bias field: exp of a random quadratic in normalised coordinates (x, y, z, squares, xy).
    bias = rng.normal(0.0, [0.10, 0.10, 0.10, 0.06, 0.06, 0.06, 0.05, 0.05, 0.05]).astype(
        np.float32
    )
    return Phantom(tissue=tissue, tumour=tumour, voxel_mm=float(voxel_mm), bias_coeffs=bias)


def _draw_tumour(
    shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray, label: int, rng: np.random.Generator
) -> Tumour:
    """Random position inside one hemisphere, random size; core size from the label."""
    while True:
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        pos = direction * rng.uniform(0.25, 0.58)
        if abs(pos[0]) >= 0.2 and pos[2] > -0.5:
            break
    mean_r = float(np.mean(radii))
    size = rng.uniform(0.20, 0.32) * mean_r
    tumour_radii = tuple(float(size * a) for a in rng.uniform(0.85, 1.15, 3))
    if label == 1:
        core = float(rng.uniform(*CORE_FRACTION_LABEL1))
    else:
        core = 0.0 if rng.random() < 0.5 else float(rng.uniform(*CORE_FRACTION_LABEL0))
    return Tumour(
        centre=tuple(float(c) for c in centre + pos * radii),
        radii=tumour_radii,
        core_fraction=core,
        edema_margin=float(rng.uniform(0.3, 0.8)),
        label=int(label),
    )


def _paint_tumour(
    tissue: np.ndarray, brain: np.ndarray, tumour: Tumour, rng: np.random.Generator
) -> None:
    """Edema, enhancing tumour and necrotic core with lumpy borders, inside the brain."""
    # Fields are clipped to +-2, so the edema never reaches past 1.4 x its radius.
    reach = max(tumour.radii) * (1.0 + tumour.edema_margin) * 1.4 + 2
    lo = [max(int(np.floor(c - reach)), 0) for c in tumour.centre]
    hi = [min(int(np.ceil(c + reach)) + 1, n) for c, n in zip(tumour.centre, tissue.shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub_shape = tuple(b - a for a, b in zip(lo, hi))
    centre = np.asarray(tumour.centre) - np.asarray(lo)
    u = _axes(sub_shape, centre, np.asarray(tumour.radii))
    d = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
    def lumps(terms: int, freq: tuple[float, float]) -> np.ndarray:
        return np.clip(_wave_field(u, rng, terms, freq), -2.0, 2.0)

    d_tumour = d / (1.0 + 0.10 * lumps(4, (0.3, 0.7)))
    d_edema = d / ((1.0 + tumour.edema_margin) * (1.0 + 0.20 * lumps(5, (0.25, 0.6))))
    d_core = d / (1.0 + 0.06 * lumps(3, (0.4, 0.9)))

    sub = tissue[box]
    in_brain = brain[box]
    parenchyma = (sub == GM) | (sub == WM)
    sub[(d_edema < 1.0) & parenchyma] = EDEMA
    sub[(d_tumour < 1.0) & in_brain] = ENHANCING
    if tumour.core_fraction > 0:
        sub[(d_core < tumour.core_fraction) & (d_tumour < 1.0) & in_brain] = NECROTIC


def _bias_field(shape: tuple[int, ...], coeffs: np.ndarray) -> np.ndarray:
    """Smooth multiplicative field exp(quadratic), about +-20 %."""
    u = _axes(shape, (np.asarray(shape) - 1) / 2.0, np.asarray(shape) / 2.0)
    c = coeffs
    log_b = (
        c[0] * u[0] + c[3] * u[0] ** 2
        + (c[1] * u[1] + c[4] * u[1] ** 2)
        + (c[2] * u[2] + c[5] * u[2] ** 2)
        + (c[6] * u[0] * u[1])
        + (c[7] * u[1] * u[2])
        + (c[8] * u[0] * u[2])
    )
    return np.exp(log_b).astype(np.float32)


def render(
    phantom: Phantom,
    mri_type: str,
    rng: np.random.Generator,
    *,
    skull_strip: bool = False,
    noise: float = 0.0,
) -> np.ndarray:
    """Float32 image of one MRI type (about 0..1.2), zero outside the head (or brain).

    Each call jitters the tissue contrasts by a few percent so no two series are
    identical; ``noise`` is the Rician noise sigma relative to white matter.
    """
    if mri_type not in _CONTRAST:
        raise ValueError(f"unknown MRI type {mri_type!r}; expected one of {MRI_TYPES}")
    lut = np.asarray(_CONTRAST[mri_type], dtype=np.float32)
    lut = lut * rng.uniform(0.93, 1.07, lut.shape).astype(np.float32)
    img = lut[phantom.tissue]
    img = ndi.gaussian_filter(img, sigma=0.6, mode="constant")
    img *= _bias_field(phantom.tissue.shape, phantom.bias_coeffs)
    mask = phantom.brain_mask if skull_strip else phantom.head_mask
    if noise > 0:
        img = _rician(img, noise, rng)
    img *= mask
    return img


def _rician(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of signal plus complex Gaussian noise, like an MR magnitude image."""
    s = np.float32(sigma)
    real = img + s * rng.standard_normal(img.shape, dtype=np.float32)
    imag = s * rng.standard_normal(img.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)


# --------------------------------------------------------------------------- Task 1


def _nifti_affine(shape: tuple[int, ...], voxel_mm: float) -> np.ndarray:
    """BraTS-like RAS affine: diag(-1, -1, 1) * voxel, origin at the grid centre."""
    c = (np.asarray(shape, dtype=np.float64) - 1) / 2.0
    aff = np.diag([-voxel_mm, -voxel_mm, voxel_mm, 1.0])
    aff[:3, 3] = np.array([c[0], c[1], -c[2]]) * voxel_mm
    return aff


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write .nii.gz atomically and byte-deterministically (gzip mtime 0)."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    payload = gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def write_task1_case(
    folder: Path, case_id: str, phantom: Phantom, rng: np.random.Generator
) -> dict[str, Path]:
    """BraTS2021_<id>_{t1,t1ce,t2,flair,seg}.nii.gz, skull-stripped, int16 images."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = _nifti_affine(phantom.tissue.shape, phantom.voxel_mm)
    out: dict[str, Path] = {}
    for mod, mri_type in TASK1_MODALITIES.items():
        img = render(phantom, mri_type, rng, skull_strip=True, noise=rng.uniform(0.015, 0.035))
        scale = rng.uniform(600.0, 1600.0)
        data = np.clip(np.rint(img * scale), 0, np.iinfo(np.int16).max).astype(np.int16)
        path = folder / f"BraTS2021_{case_id}_{mod}.nii.gz"
        _save_nifti(path, data, affine)
        out[mod] = path
    path = folder / f"BraTS2021_{case_id}_seg.nii.gz"
    _save_nifti(path, phantom.seg, affine)
    out["seg"] = path
    return out


# --------------------------------------------------------------------------- DICOM


def _plane_basis(plane: str) -> tuple[np.ndarray, np.ndarray]:
    """Standard scanner (row, column) direction cosines in LPS for each plane."""
    if plane == "axial":
        return np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    if plane == "coronal":
        return np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])
    if plane == "sagittal":
        return np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])
    raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix."""
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _fmt(value: float, decimals: int) -> str:
    """A DS string of at most 16 characters, no '-0'."""
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    if text in ("-0", "", "-"):
        text = "0"
    return text


def _nonzero_bbox(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index bounds (inclusive) of non-zero voxels; the whole grid when empty."""
    lo, hi = [], []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        hit = np.flatnonzero(np.any(volume != 0, axis=other))
        if hit.size == 0:
            return np.zeros(3), np.asarray(volume.shape, dtype=np.float64) - 1
        lo.append(hit[0])
        hi.append(hit[-1])
    return np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)


def stable_uid(*parts: object) -> str:
    """A UID that depends only on ``parts`` (deterministic synthetic files)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=_UID_PREFIX, entropy_srcs=[str(p) for p in parts]))


@dataclass(frozen=True)
class _SeriesDraw:
    """The drawing parameters of one series: what :func:`write_dicom_series` leaves to the rng."""

    rows: int
    cols: int
    n_slices: int
    order: str
    tilt_deg: float
    blank: tuple[int, int]
    signed: bool
    slope: float
    offset: int
    intercept: float
    rescale_tags: bool
    value_scale: float
    uid_key: int


def _draw_series(
    rng: np.random.Generator,
    spec: SizeSpec,
    matrix: tuple[int, int] | None,
    n_slices: int | None,
    order: str | None,
    tilt_deg: float | None,
    blank: tuple[int, int] | None,
    rescale: tuple[float, float] | None,
    rescale_tags: bool | None,
    signed: bool | None,
    value_scale: float | None,
) -> _SeriesDraw:
    """Fill in every option left as None from ``rng`` (the defaults of ``spec``), and check them."""
    if matrix is None:
        rows = int(rng.choice(spec.matrices))
        cols = rows if rng.random() < 0.7 else int(rng.choice(spec.matrices))
        matrix = (rows, cols)
    rows, cols = (int(matrix[0]), int(matrix[1]))
    if n_slices is None:
        n_slices = int(rng.integers(spec.slices[0], spec.slices[1] + 1))
    n_slices = int(n_slices)
    if order is None:
        order = str(rng.choice(["ascending", "descending", "shuffled"], p=[0.4, 0.4, 0.2]))
    if order not in ("ascending", "descending", "shuffled"):
        raise ValueError(f"order must be ascending, descending or shuffled, got {order!r}")
    if tilt_deg is None:
        tilt_deg = float(rng.uniform(2.0, 8.0)) if rng.random() < 0.3 else 0.0
    if blank is None:
        blank = (int(rng.integers(0, 4)), int(rng.integers(0, 4)))
    blank = (int(blank[0]), int(blank[1]))
    if n_slices - blank[0] - blank[1] < 1:
        raise ValueError(f"{n_slices} slices leave none after blank {blank}")
    if signed is None:
        signed = bool(rng.random() < 0.5)
    if rescale is None and rescale_tags is False:
        rescale = (1.0, 0.0)
    if rescale is None:
        if rng.random() < 0.5:
            slope, offset = 1.0, 0
            rescale_tags = bool(rng.random() < 0.5)
        else:
            offsets = _OFFSETS_SIGNED if signed else _OFFSETS_UNSIGNED
            while True:
                slope = float(rng.choice(_SLOPES))
                offset = int(rng.choice(offsets))
                if (slope, offset) != (1.0, 0):
                    break
    else:
        slope = float(rescale[0])
        if not slope > 0:
            raise ValueError(f"rescale {rescale}: slope must be positive")
        offset_f = -float(rescale[1]) / slope
        if offset_f != round(offset_f):
            raise ValueError(f"rescale {rescale}: intercept / slope must be a whole number")
        offset = int(round(offset_f))
    rescale_tags = True if rescale_tags is None else bool(rescale_tags)
    intercept = -offset * slope + 0.0
    if not rescale_tags and (slope, intercept) != (1.0, 0.0):
        raise ValueError("rescale tags can be omitted only for slope 1, intercept 0")
    if value_scale is None:
        value_scale = float(rng.uniform(800.0, 2500.0))
    uid_key = int(rng.integers(0, 2**62))
    return _SeriesDraw(rows, cols, n_slices, order, float(tilt_deg), blank, bool(signed), slope, offset, intercept,
                       rescale_tags, float(value_scale), uid_key)


@dataclass(frozen=True)
class _SeriesGeometry:
    """Where the series lies (LPS mm): orientation, spacing and every slice's position."""

    orientation: tuple[float, ...]
    normal: np.ndarray
    pixel: float
    spacing: float
    thickness: float
    pos_text: list[list[str]]
    positions: np.ndarray
    matrix: np.ndarray          # output (slice, row, col) -> phantom index, per voxel step
    offset: np.ndarray          # phantom index of the first slice's first pixel


def _series_geometry(
    volume_xyz: np.ndarray, plane: str, d: _SeriesDraw, voxel_mm: float, rng: np.random.Generator
) -> _SeriesGeometry:
    """A slab covering the head in ``plane`` (tilted by ``d.tilt_deg``), with a random field of view
    and centre; voxel index = world / voxel_mm + grid centre."""
    row0, col0 = _plane_basis(plane)
    rows, cols, n_slices, blank = d.rows, d.cols, d.n_slices, d.blank
    if d.tilt_deg:
        axis = rng.normal(size=3)
        rot = _rotation(axis, np.deg2rad(d.tilt_deg))
        row_cos, col_cos = rot @ row0, rot @ col0
    else:
        row_cos, col_cos = row0, col0
    orientation = tuple(float(_fmt(v, 6)) for v in (*row_cos, *col_cos))
    row_cos = np.asarray(orientation[:3])
    col_cos = np.asarray(orientation[3:])
    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)

    grid_centre = (np.asarray(volume_xyz.shape, dtype=np.float64) - 1) / 2.0
    lo, hi = _nonzero_bbox(volume_xyz)
    corners = np.array(
        [[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]] for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    )
    corners = (corners - grid_centre) * voxel_mm
    ext_r, ext_c, ext_n = ((float(p.min()), float(p.max())) for p in (
        corners @ row_cos, corners @ col_cos, corners @ normal))
    fov_r = (ext_r[1] - ext_r[0] + voxel_mm) * rng.uniform(1.05, 1.3)
    fov_c = (ext_c[1] - ext_c[0] + voxel_mm) * rng.uniform(1.05, 1.3)
    pixel = round(max(fov_r / cols, fov_c / rows), 4)
    body = n_slices - blank[0] - blank[1]
    slab = (ext_n[1] - ext_n[0] + voxel_mm) * rng.uniform(0.9, 1.05)
    spacing = round(max(slab / body, 0.5), 4)
    thickness = round(spacing * (1.0 if rng.random() < 0.6 else rng.uniform(0.75, 0.95)), 4)
    centre = (
        row_cos * (np.mean(ext_r) + rng.uniform(-0.03, 0.03) * fov_r)
        + col_cos * (np.mean(ext_c) + rng.uniform(-0.03, 0.03) * fov_c)
        + normal * (np.mean(ext_n) + rng.uniform(-0.03, 0.03) * slab)
    )
    # First slice (reading order) starts blank[0] slices before the head slab.
    centre_index = blank[0] + (body - 1) / 2.0
    first = (
        centre
        - row_cos * (cols - 1) / 2.0 * pixel
        - col_cos * (rows - 1) / 2.0 * pixel
        - normal * centre_index * spacing
    )
    pos_text = [
        [_fmt(v, 4) for v in first + normal * spacing * s] for s in range(n_slices)
    ]
    positions = np.array([[float(t) for t in p] for p in pos_text])
    mat = np.stack([normal * spacing, col_cos * pixel, row_cos * pixel], axis=1) / voxel_mm
    return _SeriesGeometry(orientation, normal, pixel, spacing, thickness, pos_text, positions, mat,
                           first / voxel_mm + grid_centre)


def _resample(
    source: np.ndarray, geo: _SeriesGeometry, shape: tuple[int, int, int], dtype: Any, order: int
) -> np.ndarray:
    """``source`` (phantom grid) on the series grid ``shape`` (slices, rows, cols), 16 slices at a time."""
    out = np.empty(shape, dtype=dtype)
    src = np.asarray(source, dtype=dtype)
    step = 16
    for s0 in range(0, shape[0], step):
        s1 = min(s0 + step, shape[0])
        ndi.affine_transform(
            src, geo.matrix, offset=geo.offset + geo.matrix[:, 0] * s0, output_shape=(s1 - s0, *shape[1:]),
            output=out[s0:s1], order=order, mode="constant", cval=0, prefilter=False,
        )
    return out


def _write_series_files(
    folder: Path, stored: np.ndarray, numbers: np.ndarray, geo: _SeriesGeometry, d: _SeriesDraw,
    mri_type: str, patient_id: str, series_number: int, study_uid: str | None, frame_uid: str | None,
) -> None:
    """``folder/Image-<n>.dcm``, one file per slice (Explicit VR Little Endian, ``pydicom.dcmwrite``)."""
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset

    study_uid = study_uid or stable_uid("study", d.uid_key, patient_id)
    frame_uid = frame_uid or stable_uid("frame", d.uid_key, patient_id)
    series_uid = stable_uid("series", d.uid_key, patient_id, mri_type, series_number)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID = _MR_IMAGE_STORAGE
    ds.Modality = "MR"
    ds.SeriesDescription = mri_type
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.SliceThickness = _fmt(geo.thickness, 4)
    ds.SpacingBetweenSlices = _fmt(geo.spacing, 4)
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = int(series_number)
    ds.ImageOrientationPatient = [_fmt(v, 6) for v in geo.orientation]
    ds.FrameOfReferenceUID = frame_uid
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = d.rows
    ds.Columns = d.cols
    ds.PixelSpacing = [_fmt(geo.pixel, 4), _fmt(geo.pixel, 4)]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if d.signed else 0
    if d.rescale_tags:
        ds.RescaleIntercept = _fmt(d.intercept, 4)
        ds.RescaleSlope = _fmt(d.slope, 4)
        ds.RescaleType = "US"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    little = stored.astype(stored.dtype.newbyteorder("<"), copy=False)
    for s in range(d.n_slices):
        n = int(numbers[s])
        sop_uid = stable_uid("image", d.uid_key, patient_id, mri_type, series_number, n)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = _MR_IMAGE_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = _EXPLICIT_VR_LE
        ds.file_meta.ImplementationClassUID = _IMPLEMENTATION_UID
        ds.file_meta.ImplementationVersionName = "MGMT2D_SYNTH"
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = str(n)
        ds.ImagePositionPatient = geo.pos_text[s]
        ds.SliceLocation = _fmt(float(geo.positions[s] @ geo.normal), 4)
        ds.PixelData = little[s].tobytes()
        ds["PixelData"].VR = "OW"
        dcmwrite(folder / f"Image-{n}.dcm", ds, enforce_file_format=True)


def write_dicom_series(
    folder: Path,
    volume_xyz: np.ndarray,
    plane: str,
    rng: np.random.Generator,
    *,
    mri_type: str = "T1wCE",
    patient_id: str = "00000",
    size: str = "small",
    matrix: tuple[int, int] | None = None,
    n_slices: int | None = None,
    order: str | None = None,
    tilt_deg: float | None = None,
    blank: tuple[int, int] | None = None,
    rescale: tuple[float, float] | None = None,
    rescale_tags: bool | None = None,
    signed: bool | None = None,
    value_scale: float | None = None,
    noise: float = 0.0,
    labels_xyz: np.ndarray | None = None,
    voxel_mm: float = 1.0,
    series_number: int = 1,
    study_uid: str | None = None,
    frame_uid: str | None = None,
) -> SeriesTruth:
    """Resample a phantom volume onto a random series grid in ``plane`` and write it.

    Files are ``folder/Image-<n>.dcm``. Every option left as None is drawn from ``rng``
    (the defaults of ``size``): ``matrix`` (rows, cols); ``n_slices``; ``order`` of the
    file numbers relative to anatomy; ``tilt_deg`` (small obliquity); ``blank`` slices
    zeroed at each end; ``rescale`` (slope, intercept) where intercept / slope must be a
    whole number (the stored value of 0); ``signed`` int16 vs uint16; ``value_scale``
    (stored units per phantom unit). ``rescale_tags=False`` omits the tags (slope 1,
    intercept 0 only); None writes them, except in some drawn (1, 0) series.
    ``labels_xyz`` (a label map on the same grid, e.g. the BraTS seg) is resampled
    nearest-neighbour onto the series grid and returned as ``truth.seg``.
    Returns the ground truth a correct reader reproduces.
    """
    if volume_xyz.ndim != 3:
        raise ValueError(f"volume_xyz must be 3-D, got shape {volume_xyz.shape}")
    d = _draw_series(rng, SIZES[size], matrix, n_slices, order, tilt_deg, blank, rescale, rescale_tags, signed,
                     value_scale)
    geo = _series_geometry(volume_xyz, plane, d, voxel_mm, rng)
    shape = (d.n_slices, d.rows, d.cols)
    blank = d.blank
    vol = _resample(volume_xyz, geo, shape, np.float32, order=1)
    seg = None
    if labels_xyz is not None:
        if labels_xyz.shape != volume_xyz.shape:
            raise ValueError(f"labels_xyz shape {labels_xyz.shape} != volume {volume_xyz.shape}")
        seg = _resample(labels_xyz, geo, shape, np.uint8, order=0)
        seg[: blank[0]] = 0
        seg[d.n_slices - blank[1]:] = 0
    if noise > 0:
        inside = vol > 0
        vol = _rician(vol, noise, rng) * inside
    if blank[0]:
        vol[: blank[0]] = 0
    if blank[1]:
        vol[d.n_slices - blank[1]:] = 0

    dtype = np.int16 if d.signed else np.uint16
    info = np.iinfo(dtype)
    stored = np.clip(np.rint(vol * (d.value_scale / d.slope)) + d.offset, info.min, info.max).astype(dtype)
    truth = (stored.astype(np.float32) * np.float32(d.slope) + np.float32(d.intercept)).astype(np.float32)

    if d.order == "ascending":
        numbers = np.arange(1, d.n_slices + 1)
    elif d.order == "descending":
        numbers = np.arange(d.n_slices, 0, -1)
    else:
        numbers = rng.permutation(d.n_slices) + 1
    _write_series_files(folder, stored, numbers, geo, d, mri_type, patient_id, series_number, study_uid, frame_uid)

    return SeriesTruth(
        volume=truth,
        plane=plane,
        positions=geo.positions,
        orientation=geo.orientation,
        normal=geo.normal,
        pixel_spacing=(geo.pixel, geo.pixel),
        slice_spacing=geo.spacing,
        slice_thickness=geo.thickness,
        file_numbers=numbers.astype(np.int64),
        order=d.order,
        slope=d.slope,
        intercept=d.intercept,
        rescale_tags=d.rescale_tags,
        signed=d.signed,
        blank=blank,
        tilt_deg=d.tilt_deg,
        mri_type=mri_type,
        seg=seg,
    )


# --------------------------------------------------------------------------- dataset


def _draw_planes(rng: np.random.Generator) -> list[str]:
    """One plane per MRI type, not all equal (real patients mix planes)."""
    while True:
        planes = [str(p) for p in rng.choice(PLANES, size=len(MRI_TYPES), p=[0.5, 0.25, 0.25])]
        if len(set(planes)) > 1:
            return planes


def _balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """Half 0, half 1 (the odd one random), in random order."""
    labels = np.array([0] * (n // 2) + [1] * (n // 2) + ([int(rng.integers(0, 2))] if n % 2 else []))
    return rng.permutation(labels).astype(np.int64)


def _plan(patients: int, seed: int) -> dict[str, Any]:
    """IDs, labels and splits: Task 2 train/test ~3:1 stratified; half of Task 1 shared."""
    rng = np.random.default_rng([seed, 0x5EED])
    n_shared = patients // 2 + (patients % 2) * int(rng.integers(0, 2))
    n_ids = 2 * patients - n_shared
    pool = max(1667, 3 * n_ids)
    ids = [f"{i:05d}" for i in sorted(rng.choice(pool, size=n_ids, replace=False).tolist())]
    perm = rng.permutation(n_ids)
    task2 = sorted(ids[i] for i in perm[:patients])
    shared = sorted(rng.choice(task2, size=n_shared, replace=False).tolist()) if n_shared else []
    task1 = sorted(shared + [ids[i] for i in perm[patients:]])
    labels2 = dict(zip(task2, _balanced_labels(patients, rng).tolist()))
    only1 = [i for i in task1 if i not in labels2]
    labels = {**labels2, **dict(zip(only1, _balanced_labels(len(only1), rng).tolist()))}

    n_test = max(1, int(round(patients / 4))) if patients >= 2 else 0
    groups = [[i for i in rng.permutation(task2).tolist() if labels2[i] == lab] for lab in (1, 0)]
    if len(groups[1]) > len(groups[0]):
        groups.reverse()
    merged = [g[k] for k in range(max(map(len, groups))) for g in groups if k < len(g)]
    test = sorted(merged[:n_test])
    train = sorted(i for i in task2 if i not in set(test))
    return {"task1": task1, "train": train, "test": test, "shared": shared, "labels": labels}


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Compressed .npz, written atomically (zip entries carry a fixed 1980 timestamp)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def settings_json(data_root: str = "") -> dict[str, str]:
    """SETTINGS.json for this dataset: data under ``data_root``, work and models beside it."""
    return {
        "DICOM_DATA_DIR": f"{data_root}task2",
        "TASK1_DIR": f"{data_root}task1",
        "CLASSIFICATION_RAW_JPG": f"{data_root}task2_jpg",
        "SEGMENT_DATA_DIR": "work/segmentation_data",
        "CLASSIFICATION_DATA_DIR": "work/classification_data",
        "KFOLD_PATH": "work/classification_folds.csv",
        "SEGMENT_MODEL_DIR": "models/segmentation",
        "CLASSIFICATION_MODEL_DIR": "models/classification",
        "PRETRAINED_DIR": "models/pretrained",
        "TEMP_DATA_DIR": "work/tmp",
        "TEST_PREDICTION_FILE": "work/submission.csv",
    }


def check_request(out: Path, size: str, patients: int, seed: int) -> None:
    """What every generator refuses: an unknown size, no patients, a negative seed, a used folder."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if patients < 1:
        raise ValueError(f"patients must be >= 1, got {patients}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose a new --out")


def generate(
    out: Path, patients: int, seed: int, size: str = "small", *, series_seg: bool = False, id_template: str = "{}"
) -> dict[str, Any]:
    """Write a synthetic dataset (Task 1 NIfTI + Task 2 DICOM + truth) under ``out``.

    ``out`` must be absent or empty: a partial earlier run is never mixed in. The file
    ``out/synth.json`` is written last and marks a complete dataset. Same arguments give
    byte-identical files. ``series_seg`` also writes each Task 2 series' true BraTS
    labels on its own grid, (S, H, W) in reading order, to
    ``truth/series_seg/<id>/<type>.npz`` (key ``seg``), to score stage 1 on DICOM.
    ``id_template`` spells the Task 2 patient IDs (folders, CSVs, PatientID) from the 5-digit
    number, e.g. ``"UPENN-GBM-{}_11"`` for another cohort's IDs (they then match no Task 1 case);
    Task 1 keeps its BraTS names, and truth/patients.csv gives both.
    Returns a summary (IDs, labels, counts, seconds).
    """
    from mgmt2d import __version__

    out = Path(out)
    check_request(out, size, patients, seed)
    t0 = time.perf_counter()
    spec = SIZES[size]
    plan = _plan(patients, seed)
    labels: dict[str, int] = plan["labels"]
    split = {i: "train" for i in plan["train"]} | {i: "test" for i in plan["test"]}
    try:
        t2 = {pid: id_template.format(pid) for pid in split}   # Task 2 spelling of each ID
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"--id-template {id_template!r} must hold one {{}} for the 5-digit number") from None
    for pid, spelled in t2.items():
        if format_id(spelled, "--id-template") != spelled:
            raise ValueError(f"--id-template {id_template!r} gives {spelled!r}, which is not a patient ID as "
                             f"written (it reads as {format_id(spelled)}); use a template with letters")
    task1 = set(plan["task1"])

    patient_rows: list[dict[str, Any]] = []
    series_rows: list[dict[str, Any]] = []
    n_files = 0
    for pid in sorted(task1 | set(split)):
        label = labels[pid]
        phantom = make_phantom(spec.grid, label, np.random.default_rng([seed, int(pid), 1]))
        t = phantom.tumour
        seg = phantom.seg
        n_et, n_nc = int(np.count_nonzero(seg == 4)), int(np.count_nonzero(seg == 1))
        patient_rows.append({
            "BraTS21ID": pid,
            "MGMT_value": label,
            "task1": pid in task1,
            "task2": split.get(pid, ""),
            "task2_id": t2.get(pid, ""),
            "core_fraction": round(t.core_fraction, 4),
            "tumour_radius": round(float(np.mean(t.radii)), 3),
            "edema_margin": round(t.edema_margin, 4),
            "necrotic_voxels": n_nc,
            "enhancing_voxels": n_et,
            "edema_voxels": int(np.count_nonzero(seg == 2)),
        })
        if pid in task1:
            write_task1_case(
                out / "task1" / f"BraTS2021_{pid}", pid, phantom,
                np.random.default_rng([seed, int(pid), 2]),
            )
            n_files += 5
        if pid in split:
            rng = np.random.default_rng([seed, int(pid), 3])
            study = stable_uid("study", seed, t2[pid])
            frame = stable_uid("frame", seed, t2[pid])
            numbers = rng.permutation(len(MRI_TYPES)) + 1
            for mri_type, plane, number in zip(MRI_TYPES, _draw_planes(rng), numbers):
                img = render(phantom, mri_type, rng)
                truth = write_dicom_series(
                    out / "task2" / split[pid] / t2[pid] / mri_type, img, plane, rng,
                    mri_type=mri_type, patient_id=t2[pid], size=size,
                    noise=float(rng.uniform(0.015, 0.035)), voxel_mm=phantom.voxel_mm,
                    series_number=int(number), study_uid=study, frame_uid=frame,
                    labels_xyz=seg if series_seg else None,
                )
                if truth.seg is not None:
                    _save_npz(out / "truth" / "series_seg" / t2[pid] / f"{mri_type}.npz", seg=truth.seg)
                n_files += truth.volume.shape[0]
                series_rows.append({"BraTS21ID": t2[pid], "split": split[pid], "type": mri_type,
                                    **truth.summary()})

    task2_dir = out / "task2"
    for split_name in ("train", "test"):  # both exist even when one is empty (1 patient)
        (task2_dir / split_name).mkdir(parents=True, exist_ok=True)
    train_df = pd.DataFrame({"BraTS21ID": [t2[i] for i in plan["train"]],
                             "MGMT_value": [labels[i] for i in plan["train"]]})
    write_csv_atomic(task2_dir / "train_labels.csv", train_df)
    write_csv_atomic(task2_dir / "sample_submission.csv",
                     pd.DataFrame({"BraTS21ID": [t2[i] for i in plan["test"]],
                                   "MGMT_value": [0.5] * len(plan["test"])}))
    write_csv_atomic(out / "truth" / "test_labels.csv",
                     pd.DataFrame({"BraTS21ID": [t2[i] for i in plan["test"]],
                                   "MGMT_value": [labels[i] for i in plan["test"]]}))
    write_csv_atomic(out / "truth" / "patients.csv", pd.DataFrame(patient_rows))
    write_csv_atomic(out / "truth" / "series.csv", pd.DataFrame(series_rows))
    write_json_atomic(out / "SETTINGS.json", settings_json())
    summary: dict[str, Any] = {
        "generator": f"mgmt2d.synth {__version__}",
        "seed": int(seed),
        "patients": int(patients),
        "size": size,
        "grid": list(spec.grid),
        "task1_ids": plan["task1"],
        "task2_train_ids": [t2[i] for i in plan["train"]],
        "task2_test_ids": [t2[i] for i in plan["test"]],
        "shared_ids": plan["shared"],   # Task 1 IDs of patients also in Task 2 (under their Task 2 spelling there)
        "id_template": id_template,
        "labels": {k: labels[k] for k in sorted(labels)},
        "label_rule": {
            "1": f"necrotic core radius {CORE_FRACTION_LABEL1} of the tumour radius, thin rim",
            "0": f"no core (half) or core radius {CORE_FRACTION_LABEL0}, thick solid rim",
        },
        "files": n_files,
        "series_seg": bool(series_seg),
    }
    write_json_atomic(out / "synth.json", summary)
    return {**summary, "out": str(out), "seconds": round(time.perf_counter() - t0, 2)}


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m mgmt2d synth``."""
    parser.add_argument("--out", type=Path, required=True, help="new or empty output folder")
    parser.add_argument("--patients", type=int, default=8, help="Task 2 patients (Task 1 gets as many cases)")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> identical files")
    parser.add_argument("--size", choices=sorted(SIZES), default="small",
                        help="small: 96x96x64 grid, 64-112 px DICOM (tests); "
                        "full: BraTS 240x240x155, 256-512 px")
    parser.add_argument("--series-seg", action="store_true",
                        help="also write each DICOM series' true labels to truth/series_seg/")
    parser.add_argument("--id-template", default="{}",
                        help="Task 2 patient IDs from the 5-digit number, e.g. 'UPENN-GBM-{}_11' (default: the number)")


def main(args: argparse.Namespace) -> int:
    """Run the generator; one-line error and exit code 2 on bad arguments."""
    try:
        summary = generate(args.out, args.patients, args.seed, args.size,
                           series_seg=bool(getattr(args, "series_seg", False)),
                           id_template=getattr(args, "id_template", "{}"))
    except (ValueError, FileExistsError) as err:
        logger.error("%s", err)
        return 2
    logger.info(
        "wrote %d files to %s in %.1f s: Task 1 %d cases, Task 2 %d train + %d test, %d shared IDs",
        summary["files"], summary["out"], summary["seconds"], len(summary["task1_ids"]),
        len(summary["task2_train_ids"]), len(summary["task2_test_ids"]), len(summary["shared_ids"]),
    )
    print(json.dumps({k: summary[k] for k in ("out", "files", "seconds")}))
    return 0
