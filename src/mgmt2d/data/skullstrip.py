"""Skull stripping: a brain mask from one series, carried to the patient's other series.

The Kaggle series our models were trained on came skull-stripped; a hospital export does not.
:class:`BrainExtractor` computes a brain mask with deepbet (Fisch et al., Comput. Biol. Med.
2024; MIT; two TorchScript CNNs shipped inside its wheel, verified here by SHA-256 before
loading). :func:`strip_patient` runs it once per patient, on the T1w series (T1wCE when T1w
is missing: deepbet was trained on T1-weighted images), carries the mask to every other
series through patient coordinates (the series' affines, so both must share one
FrameOfReferenceUID) and sets everything outside it to 0, as on the Kaggle files.

:func:`looks_unstripped` is the cheap check for a series that still has its skull, to warn
users who did not ask for stripping.

deepbet is an optional extra (``pip install "mgmt2d[skull-strip]"``); everything here but
:class:`BrainExtractor` works without it.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import scipy.ndimage as ndi

from mgmt2d.data.dicom import SeriesMeta
from mgmt2d.data.nifti import series_affine, to_nifti_array

logger = logging.getLogger(__name__)

__all__ = [
    "BrainExtractor",
    "DEEPBET_VERSION",
    "DEEPBET_WEIGHTS",
    "INSTALL_HINT",
    "MissingDeepbetError",
    "SOURCE_TYPES",
    "SkullStripError",
    "StripCheck",
    "StrippedPatient",
    "carry_mask",
    "deepbet_installed",
    "frame_of_reference",
    "looks_unstripped",
    "mask_volume_ml",
    "PatientInput",
    "patient_input",
    "series_image",
    "strip_patient",
]

DEEPBET_VERSION = "1.0.2"
# SHA-256 of the TorchScript files deepbet 1.0.2's wheel installs as <site-packages>/data/models/<name>
# (the same digests as the wheel's RECORD). A different file is never loaded.
DEEPBET_WEIGHTS: dict[str, str] = {
    "bbox_model.pt": "39a7b2b5f799faa1391ea97bfcdc0b9299f20d84f2316a4ff8918dc4685e40aa",
    "model.pt": "de8ee7c69654d0dd3935dc4a5d84571d8ecf4637a6bfc01df399c4c2bc86e0fd",
}
INSTALL_HINT = 'pip install -r requirements-skull-strip.txt (or pip install "mgmt2d[skull-strip]")'
# The series the mask is computed on, in order of preference (deepbet is a T1w model).
SOURCE_TYPES: tuple[str, ...] = ("T1w", "T1wCE")
BACKGROUND = 0.0   # the value outside the brain after stripping, as in the Kaggle and BraTS files


class SkullStripError(ValueError):
    """A patient or file that cannot be skull-stripped as asked; the message is the one line to show."""


class MissingDeepbetError(SkullStripError):
    """Skull stripping was asked for without the optional deepbet installed."""


# --------------------------------------------------------------------------- deepbet


def deepbet_installed() -> bool:
    try:
        importlib.import_module("deepbet")
    except ImportError:
        return False
    return True


def _import_deepbet() -> Any:
    try:
        return importlib.import_module("deepbet")
    except ImportError as err:
        raise MissingDeepbetError(
            f"skull stripping needs deepbet=={DEEPBET_VERSION}, which is not installed ({err}); {INSTALL_HINT}"
        ) from None


def _verified_weights(models_dir: Path) -> dict[str, bytes]:
    """The bytes of deepbet's two model files, each checked against :data:`DEEPBET_WEIGHTS`."""
    out = {}
    for name, expected in DEEPBET_WEIGHTS.items():
        path = models_dir / name
        try:
            payload = path.read_bytes()
        except OSError as err:
            raise SkullStripError(f"{path}: deepbet's model file cannot be read ({err.strerror or err}); "
                                  f"reinstall it: pip install --force-reinstall deepbet=={DEEPBET_VERSION}") from None
        actual = hashlib.sha256(payload).hexdigest()
        if actual != expected:
            try:
                installed = metadata.version("deepbet")
            except metadata.PackageNotFoundError:
                installed = "unknown"
            raise SkullStripError(
                f"{path}: SHA-256 {actual} is not deepbet {DEEPBET_VERSION}'s {expected} (deepbet {installed} is "
                f"installed); install the tested version: pip install --force-reinstall deepbet=={DEEPBET_VERSION}"
            )
        out[name] = payload
    return out


class BrainExtractor:
    """deepbet's two CNNs on one device, loaded once for many volumes.

    Calling it with a NIfTI image (any orientation; deepbet reorients to RAS and back) gives
    the brain mask as a bool array in the image's own array layout. About 7 s per volume on
    two CPU cores (README, Skull stripping): it always works at 256^3.
    """

    def __init__(self, device: Any = "auto") -> None:
        import torch

        from mgmt2d.device import resolve_device

        deepbet = _import_deepbet()
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        models_dir = Path(importlib.import_module("deepbet.utils").DATA_PATH) / "models"
        weights = _verified_weights(models_dir)
        with warnings.catch_warnings():
            # torch.jit.load is deprecated in favour of torch.export; deepbet ships TorchScript only.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning)
            # Loaded from the verified bytes, so the checked file is the loaded one; on the CPU
            # first (no_gpu), then moved: deepbet alone would pick CUDA or MPS by itself.
            self._bet = deepbet.BrainExtraction(
                no_gpu=True,
                model_path=io.BytesIO(weights["model.pt"]),
                bbox_model_path=io.BytesIO(weights["bbox_model.pt"]),
            )
        self._bet.model.to(self.device)
        self._bet.bbox_model.to(self.device)

    def __call__(self, image: nib.spatialimages.SpatialImage, name: str = "the image") -> np.ndarray:
        if len(image.shape) != 3:
            raise SkullStripError(f"{name}: skull stripping needs one 3-D volume, got an image of shape {image.shape}")
        try:
            _, mask_img, _ = self._bet.run(image)
        except (AssertionError, ValueError) as err:
            # deepbet asserts (bounding box) or fails on an empty candidate mask when it finds no head.
            raise SkullStripError(f"{name}: deepbet found no brain in it ({type(err).__name__}: {err}); "
                                  "is it a head MRI with signal?") from None
        mask = np.asarray(mask_img.dataobj) > 0
        if mask.shape != image.shape:   # deepbet reorients back to the input layout; never trust it silently
            raise RuntimeError(f"deepbet returned a mask of shape {mask.shape} for an image of shape {image.shape}")
        return mask


# --------------------------------------------------------------------------- geometry


def series_image(volume: np.ndarray, meta: SeriesMeta) -> nib.Nifti1Image:
    """The (S, H, W) series as a float32 NIfTI image placed in patient space (mgmt2d.data.nifti)."""
    try:
        affine = series_affine(meta.positions, meta.orientation, meta.pixel_spacing, meta.slice_spacing)
    except ValueError as err:
        raise SkullStripError(f"{meta.folder}: {err}; skull stripping needs the series' place in space") from None
    image = nib.Nifti1Image(to_nifti_array(np.asarray(volume, dtype=np.float32)), affine)
    image.set_qform(affine, code=1)   # scanner-anchored, as mgmt2d.data.nifti writes series
    image.set_sform(affine, code=1)
    return image


def mask_volume_ml(mask: np.ndarray, affine: np.ndarray) -> float:
    """Volume of a mask in millilitres (voxel volume from the affine)."""
    return float(np.count_nonzero(mask)) * abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0


def carry_mask(
    mask: np.ndarray, mask_affine: np.ndarray, shape: Sequence[int], affine: np.ndarray
) -> np.ndarray:
    """Resample a mask onto another grid of the same patient space (bool; outside the mask's grid: False).

    Each target voxel centre is mapped through ``inv(mask_affine) @ affine`` into the mask's
    voxel grid and the mask is interpolated linearly there (>= 0.5 is inside), so a carried
    mask follows the anatomy whatever the two grids' orientations, spacings and axis orders.
    """
    mapping = np.linalg.inv(np.asarray(mask_affine, dtype=np.float64)) @ np.asarray(affine, dtype=np.float64)
    carried = ndi.affine_transform(
        np.asarray(mask, dtype=np.float32), mapping[:3, :3], mapping[:3, 3],
        output_shape=tuple(int(n) for n in shape), order=1, mode="constant", cval=0.0,
    )
    return carried >= 0.5


NIFTI_SPACE = "scanner space of the NIfTI files"


def frame_of_reference(meta: SeriesMeta) -> str:
    """The one FrameOfReferenceUID of a DICOM series' files (headers only); refused when absent or mixed.

    A volume read from NIfTI (a cohort case) has no UID: its files' affines place it in the case's
    common space (the public cohorts are co-registered per case), :data:`NIFTI_SPACE`.
    """
    if meta.files and all(p.name.endswith((".nii", ".nii.gz")) for p in meta.files):
        return NIFTI_SPACE
    uids: set[str] = set()
    for path in meta.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["FrameOfReferenceUID"])
        uids.add(str(ds.get("FrameOfReferenceUID", "") or "").strip())
    if not uids or "" in uids:
        raise SkullStripError(f"{meta.folder}: the series has no FrameOfReferenceUID, so a brain mask from another "
                              "series cannot be placed on it; strip it on its own or drop --skull-strip")
    if len(uids) > 1:
        raise SkullStripError(f"{meta.folder}: the series' files carry {len(uids)} different FrameOfReferenceUIDs; "
                              "it is not one volume in one patient space")
    return uids.pop()


# --------------------------------------------------------------------------- one patient


@dataclass
class StrippedPatient:
    """What :func:`strip_patient` did: the stripped series, their masks and where the mask came from."""

    series: dict[str, tuple[np.ndarray, SeriesMeta]]   # type -> (stripped (S, H, W) volume, meta)
    masks: dict[str, np.ndarray]                       # type -> (S, H, W) uint8 {0, 1} brain mask on its grid
    source: str                                        # the type the mask was computed on
    brain_ml: float                                    # brain volume on the source series
    frame_uid: str


def _source_type(types: Sequence[str]) -> str:
    for name in SOURCE_TYPES:
        if name in types:
            return name
    raise SkullStripError(f"skull stripping needs a {' or '.join(SOURCE_TYPES)} series to compute the brain mask on; "
                          f"this patient has {', '.join(sorted(types)) or 'none'}")


def _touches_edge(mask: np.ndarray) -> bool:
    return any(np.take(mask, idx, axis=ax).any() for ax in range(mask.ndim) for idx in (0, -1))


def strip_patient(
    series: Mapping[str, tuple[np.ndarray, SeriesMeta]],
    extract: Callable[[nib.Nifti1Image, str], np.ndarray],
) -> StrippedPatient:
    """Skull-strip every series of one patient with one brain mask.

    ``series``: MRI type -> (float32 (S, H, W) volume, meta) as ``mgmt2d.data.dicom.read_series``
    gives them. ``extract``: (image, name for messages) -> bool brain mask in the image's array
    layout (a :class:`BrainExtractor`). The mask is computed on the T1w series (else T1wCE) and carried
    to the others through patient coordinates; a series in another FrameOfReferenceUID is
    refused (no registration is done). Outside the mask every value becomes 0 and
    ``meta.positive_fraction`` is recomputed on the stripped volume, as if the files had been
    stored stripped (the Kaggle data). Patient motion between series is not corrected.
    """
    source = _source_type(list(series))
    src_volume, src_meta = series[source]
    frame_uid = frame_of_reference(src_meta)
    for name, (_, meta) in series.items():
        if name != source and frame_of_reference(meta) != frame_uid:
            raise SkullStripError(
                f"{meta.folder}: its FrameOfReferenceUID differs from the {source} series' ({src_meta.folder}), so the "
                f"brain mask cannot be carried to it without registration; register the series or drop --skull-strip"
            )
    src_image = series_image(src_volume, src_meta)
    src_mask = np.asarray(extract(src_image, str(src_meta.folder)), dtype=bool)
    if src_mask.shape != src_image.shape:
        raise RuntimeError(f"the brain extractor returned shape {src_mask.shape} for {src_image.shape}")
    brain_ml = mask_volume_ml(src_mask, src_image.affine)
    if not src_mask.any():
        raise SkullStripError(f"{src_meta.folder}: no brain was found in the {source} series; check that it is a "
                              "head MRI, or drop --skull-strip")
    if _touches_edge(src_mask):
        logger.warning("%s: the brain mask reaches the edge of the %s series' field of view; brain outside it is "
                       "removed from every series", src_meta.folder, source)
    out: dict[str, tuple[np.ndarray, SeriesMeta]] = {}
    masks: dict[str, np.ndarray] = {}
    for name, (volume, meta) in series.items():
        if name == source:
            mask_xyz = src_mask
        else:
            image = series_image(volume, meta)
            mask_xyz = carry_mask(src_mask, src_image.affine, image.shape, image.affine)
        mask = np.ascontiguousarray(mask_xyz.transpose(2, 1, 0))   # NIfTI (column, row, slice) -> (S, H, W)
        stripped = np.where(mask, np.asarray(volume, dtype=np.float32), np.float32(BACKGROUND))
        positive = (stripped > 0).reshape(len(stripped), -1).mean(axis=1)
        out[name] = (stripped, replace(meta, positive_fraction=positive))
        masks[name] = mask.astype(np.uint8)
    logger.info("skull-stripped %s with a %.0f mL brain mask from %s", ", ".join(series), brain_ml, source)
    return StrippedPatient(series=out, masks=masks, source=source, brain_ml=brain_ml, frame_uid=frame_uid)


@dataclass
class PatientInput:
    """A patient's series as the segmenter will see them (:func:`patient_input`)."""

    series: dict[str, tuple[np.ndarray, SeriesMeta]]
    masks: dict[str, np.ndarray]   # type -> brain mask (S, H, W), when skull-stripped
    note: str                      # what was done, or a warning that the series look unstripped


def patient_input(series: Mapping[str, tuple[np.ndarray, SeriesMeta]],
                  extract: Callable[[nib.Nifti1Image, str], np.ndarray] | None, patient: str) -> PatientInput:
    """Skull-strip a patient's series with ``extract`` (the contract says ``skull_strip``), or, without it,
    check one series for a skull: the models expect stripped inputs, so a series that looks unstripped is
    a warning naming the patient and ``--skull-strip``. One check per patient (the T1w, else T1wCE, else
    the first series): a skull is in every series of a study or in none."""
    if not series:
        return PatientInput({}, {}, "")
    if extract is not None:
        done = strip_patient(series, extract)
        return PatientInput(done.series, done.masks,
                            f"skull-stripped with a {done.brain_ml:.0f} mL brain mask from the {done.source} series")
    name = next((t for t in SOURCE_TYPES if t in series), next(iter(series)))
    volume, meta = series[name]
    spacing = (meta.slice_spacing or 1.0, *(meta.pixel_spacing or (1.0, 1.0)))
    check = looks_unstripped(volume, spacing)
    note = ""
    if check.unstripped:
        note = (f"patient {patient}: the {name} series looks unstripped ({check.reason()}); the models expect "
                "skull-stripped inputs: pass --skull-strip")
        logger.warning("%s", note)
    return PatientInput(dict(series), {}, note)


# --------------------------------------------------------------------------- is a skull there?

# Signal: above this share of the way from the volume's minimum to the 99th percentile of the
# rest (air noise and cortical bone stay below it in T1, T2 and FLAIR).
SIGNAL_LEVEL = 0.10
# Erosion that cuts the thin bridges (skull base, orbits, vessels) between the brain and the scalp,
# so the largest eroded piece is the brain (or, skull on, brain and scalp are separate pieces).
BRIDGE_MM = 3.0
# The check runs on a grid no finer than this (strided), to stay cheap on 0.5 mm series.
CHECK_MM = 2.0
# Verdict: unstripped when more than this share of the signal lies outside the largest piece ...
MAX_OUTSIDE_SHARE = 0.15
# ... or when there is more signal than any brain holds (adult intracranial volumes stay below ~2 L).
MAX_BRAIN_ML = 2000.0


@dataclass(frozen=True)
class StripCheck:
    """The numbers behind :func:`looks_unstripped` and its verdict."""

    unstripped: bool
    signal_ml: float        # volume above the signal level
    outside_share: float    # share of that signal outside the largest compact piece (the brain-sized region)
    region_ml: float        # volume of that piece

    def reason(self) -> str:
        return (f"{self.outside_share:.0%} of the signal lies outside the largest brain-sized region "
                f"({self.region_ml:.0f} mL; a stripped brain has under {MAX_OUTSIDE_SHARE:.0%} there), "
                f"{self.signal_ml:.0f} mL of signal in all (a brain holds under {MAX_BRAIN_ML:.0f} mL)")


def looks_unstripped(volume: np.ndarray, voxel_mm: Sequence[float]) -> StripCheck:
    """Does this volume still carry skull, scalp or neck? A cheap check (about 0.1 s), no CNN.

    ``voxel_mm``: the voxel size along each axis of ``volume`` (for an (S, H, W) series:
    slice spacing, row spacing, column spacing). Rule: take the signal (see ``SIGNAL_LEVEL``),
    erode it by ``BRIDGE_MM``, keep the largest connected piece and grow it back: that is the
    brain, if the skull is off. Unstripped when more than ``MAX_OUTSIDE_SHARE`` of the signal
    lies outside it (scalp, face, neck are separate pieces beyond the dark skull), or when the
    signal alone exceeds ``MAX_BRAIN_ML``. Calibrated on real series (README, Skull stripping):
    outside shares of 0.01-0.07 on stripped ones (BraTS, the MPRAGE after deepbet; all under
    1.7 L of signal), 0.57 (4.5 L) on the unstripped MPRAGE and 0.28-0.34 on axial 5 mm
    resamplings of it that cover only part of the head.
    """
    volume = np.asarray(volume)
    spacing = np.asarray([float(v) for v in voxel_mm], dtype=np.float64)
    if volume.ndim != 3 or spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"looks_unstripped needs a 3-D volume and three positive voxel sizes, got shape "
                         f"{volume.shape} and {list(voxel_mm)}")
    step = np.maximum(1, np.floor(CHECK_MM / spacing)).astype(int)
    coarse = volume[:: step[0], :: step[1], :: step[2]].astype(np.float32, copy=False)
    spacing = spacing * step
    voxel_ml = float(np.prod(spacing)) / 1000.0
    low = float(coarse.min())
    above = coarse[coarse > low]
    if above.size == 0:
        return StripCheck(unstripped=False, signal_ml=0.0, outside_share=0.0, region_ml=0.0)
    signal = coarse > low + SIGNAL_LEVEL * (float(np.percentile(above, 99)) - low)
    iterations = [max(1, int(round(BRIDGE_MM / s))) for s in spacing]
    core = signal
    for axis, n in enumerate(iterations):   # a box of BRIDGE_MM half-width, axis by axis (voxels may be anisotropic)
        core = ndi.binary_erosion(core, _line(axis), iterations=n)
    labels, count = ndi.label(core)
    if count:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        region = labels == int(sizes.argmax())
        for axis, n in enumerate(iterations):
            region = ndi.binary_dilation(region, _line(axis), iterations=n)
        region &= signal
    else:
        region = np.zeros_like(signal)
    n_signal = int(np.count_nonzero(signal))
    n_region = int(np.count_nonzero(region))
    outside = 1.0 - n_region / n_signal
    signal_ml = n_signal * voxel_ml
    return StripCheck(
        unstripped=bool(outside > MAX_OUTSIDE_SHARE or signal_ml > MAX_BRAIN_ML),
        signal_ml=signal_ml, outside_share=outside, region_ml=n_region * voxel_ml,
    )


def _line(axis: int) -> np.ndarray:
    """3x3x3 structuring element: the centre and its two neighbours along ``axis``."""
    element = np.zeros((3, 3, 3), dtype=bool)
    index = [1, 1, 1]
    for i in range(3):
        index[axis] = i
        element[tuple(index)] = True
    return element
