"""A DICOM series and its segmentation as NIfTI files that viewers overlay in the right place.

The volume from ``mgmt2d.data.dicom.read_series`` is (S, H, W) in reading order. The NIfTI
array is indexed (i, j, k) = (column, row, slice): voxel (i, j, k) is pixel (row j, column i)
of slice k. Its centre in DICOM patient space (LPS, mm) is

    P_k + i * PixelSpacing[1] * row_cosines + j * PixelSpacing[0] * column_cosines

where P_k is slice k's ImagePositionPatient. The slice axis is taken from the positions in
the order actually used (so a series ordered by file number, possibly against anatomy, gets
a slice axis pointing the other way, and is still placed right). nibabel expects RAS, so x
and y change sign.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mgmt2d.data.io import atomic_path

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Slice positions may deviate from an evenly spaced line by this share of the slice step
# (rounding in the headers) before the series is refused as not representable by one affine.
MAX_STEP_DEVIATION = 0.01
WT_OUTSIDE_ET, ET = 2, 4   # the Task-2 segmentation labels written to <type>_seg.nii.gz


def series_affine(
    positions: np.ndarray | None,
    orientation: Sequence[float] | None,
    pixel_spacing: Sequence[float] | None,
    slice_spacing: float | None = None,
) -> np.ndarray:
    """4x4 RAS affine of the (i, j, k) = (column, row, slice) array of a series (see module doc).

    ``positions`` (S, 3) ImagePositionPatient in reading order, ``orientation`` the six
    direction cosines, ``pixel_spacing`` (row spacing, column spacing) as in DICOM;
    ``slice_spacing`` only serves a single-slice series. Raises ValueError when the geometry
    is missing or the slices are not evenly spaced along one line (no affine describes them).
    """
    if positions is None or orientation is None or pixel_spacing is None:
        missing = [n for n, v in (("ImagePositionPatient", positions), ("ImageOrientationPatient", orientation),
                                  ("PixelSpacing", pixel_spacing)) if v is None]
        raise ValueError(f"the series lacks {', '.join(missing)}: its place in patient space is unknown")
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    cos = np.asarray(orientation, dtype=np.float64).reshape(2, 3)
    row_cos, col_cos = cos[0] / np.linalg.norm(cos[0]), cos[1] / np.linalg.norm(cos[1])
    row_mm, col_mm = (float(v) for v in pixel_spacing)
    if len(pos) > 1:
        step = (pos[-1] - pos[0]) / (len(pos) - 1)
        expected = pos[0] + np.arange(len(pos))[:, None] * step
        deviation = float(np.abs(pos - expected).max())
        if not np.linalg.norm(step) > 0 or deviation > MAX_STEP_DEVIATION * float(np.linalg.norm(step)):
            raise ValueError(f"slice positions are not evenly spaced along one line (off by up to "
                             f"{deviation:.3g} mm): no single affine describes the series")
    else:
        step = np.cross(row_cos, col_cos) * float(slice_spacing or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_mm
    lps[:3, 1] = col_cos * row_mm
    lps[:3, 2] = step
    lps[:3, 3] = pos[0]
    return LPS_TO_RAS @ lps


def to_nifti_array(volume: np.ndarray) -> np.ndarray:
    """(S, H, W) reading-order volume -> (W, H, S) array indexed (column, row, slice)."""
    return np.ascontiguousarray(np.asarray(volume).transpose(2, 1, 0))


def task2_labels(wt: np.ndarray, et: np.ndarray) -> np.ndarray:
    """{0,1} WT and ET masks -> uint8 labels: 2 = WT outside ET, 4 = ET (ET counts even outside WT)."""
    labels = np.zeros(np.shape(wt), np.uint8)
    labels[np.asarray(wt) > 0] = WT_OUTSIDE_ET
    labels[np.asarray(et) > 0] = ET
    return labels


def nifti_bytes(volume: np.ndarray, affine: np.ndarray, voxel_order: bool = False) -> bytes:
    """A gzipped NIfTI-1 file of the (S, H, W) ``volume`` (scanner-anchored q/sform, mm); with
    ``voxel_order`` the array is already in the file's voxel order (e.g. a NIfTI input's own grid)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(volume) if voxel_order else to_nifti_array(volume), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def save_nifti(path: str | Path, volume: np.ndarray, affine: np.ndarray, voxel_order: bool = False) -> Path:
    """Write ``volume`` as ``path`` (.nii.gz) atomically (``voxel_order``: see :func:`nifti_bytes`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(nifti_bytes(volume, affine, voxel_order))
    return Path(path)
