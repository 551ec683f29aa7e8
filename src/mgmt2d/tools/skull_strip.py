"""``python -m mgmt2d skull-strip --input SERIES_OR_NIFTI --out MASK.nii.gz``: a brain mask with deepbet.

The mask (uint8 {0, 1}) is written on the input's own grid with its affine: for a DICOM
series folder, the grid of the series as NIfTI (i, j, k) = (column, row, slice) in patient
space (``mgmt2d.data.nifti``), the same one the report's NIfTI files use; for a NIfTI file,
its array layout and header. The brain volume is printed in mL. Needs the optional deepbet
(``pip install "mgmt2d[skull-strip]"``).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from mgmt2d.data.io import atomic_path
from mgmt2d.data.skullstrip import BrainExtractor, SkullStripError, mask_volume_ml, series_image
from mgmt2d.device import add_device_argument

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _nifti_suffix(path: Path) -> str | None:
    return next((s for s in NIFTI_SUFFIXES if path.name.endswith(s)), None)


def load_input(path: Path) -> nib.spatialimages.SpatialImage:
    """A DICOM series folder or a 3-D NIfTI file as a NIfTI image placed in patient space."""
    if path.is_dir():
        from mgmt2d.data.dicom import read_series

        volume, meta = read_series(path)
        return series_image(volume, meta)
    if not path.is_file():
        raise SkullStripError(f"--input {path}: no such file or folder (give a DICOM series folder or a NIfTI file)")
    if _nifti_suffix(path) is None:
        raise SkullStripError(f"--input {path}: not a DICOM series folder or a .nii/.nii.gz file")
    try:
        image = nib.load(str(path))
    except Exception as err:   # nibabel raises many types for a damaged file
        raise SkullStripError(f"--input {path}: not a readable NIfTI file ({type(err).__name__}: {err})") from None
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        image = image.slicer[..., 0]
    elif len(shape) != 3:
        raise SkullStripError(f"--input {path}: holds an image of shape {shape}; give one 3-D volume")
    return image


def save_mask(path: Path, mask: np.ndarray, like: nib.spatialimages.SpatialImage) -> None:
    """Write the bool mask as uint8 NIfTI on ``like``'s grid (its header for a NIfTI input), atomically."""
    header = like.header.copy() if isinstance(like.header, nib.Nifti1Header) else None
    image = nib.Nifti1Image(np.asarray(mask, dtype=np.uint8), like.affine, header)
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1.0, 0.0)
    image.header.set_xyzt_units("mm", "sec")
    with atomic_path(path, suffix=_nifti_suffix(path) or ".nii.gz") as tmp:
        nib.save(image, str(tmp))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, required=True, help="a DICOM series folder or a 3-D NIfTI file (T1w)")
    parser.add_argument("--out", type=Path, required=True, help="the brain mask to write (.nii.gz or .nii)")
    add_device_argument(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def main(args: argparse.Namespace) -> int:
    out: Path = args.out
    if _nifti_suffix(out) is None:
        raise SkullStripError(f"--out {out}: the mask is written as NIfTI; name it .nii.gz or .nii")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"--out {out} exists; pass --overwrite to replace it")
    if args.input.resolve() == out.resolve():
        raise SkullStripError(f"--out {out} is the input; choose another file name")
    extractor = BrainExtractor(args.device)   # first: without deepbet, one line before any reading
    image = load_input(args.input)
    started = time.perf_counter()
    mask = extractor(image, str(args.input))
    seconds = time.perf_counter() - started
    save_mask(out, mask, image)
    ml = mask_volume_ml(mask, image.affine)
    logger.info("deepbet on %s (%s, %s) took %.1f s", args.input, "x".join(map(str, image.shape)),
                extractor.device, seconds)
    print(f"{out}: brain mask of {ml:.1f} mL ({int(np.count_nonzero(mask))} voxels)")
    return 0
