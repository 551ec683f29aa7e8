"""A NIfTI volume read as the slices a DICOM series of it would give under our DICOM reader.

``read_nifti_series(path, plane)`` returns what :func:`mgmt2d.data.dicom.read_series` returns:
a float32 (S, H, W) volume and a :class:`~mgmt2d.data.dicom.SeriesMeta`. Each slice is
exactly the image that ``read_series`` reads from the DICOM series of this volume written in
the chosen plane with the standard orientation below, ordered by position (the reader's
ascending order along the normal ``cross(row, column)``); patient coordinates are DICOM's
LPS (x to the patient's left, y to posterior, z to superior):

==========  ===========================  ==================  ===================  ======================
plane       ImageOrientationPatient      columns (-> right)  rows (-> down)       slices, first -> last
==========  ===========================  ==================  ===================  ======================
axial       (1, 0, 0, 0, 1, 0)           right -> left       anterior -> post.    inferior -> superior
coronal     (1, 0, 0, 0, 0, -1)          right -> left       superior -> inf.     anterior -> posterior
sagittal    (0, 1, 0, 0, 0, -1)          anterior -> post.   superior -> inf.     left -> right
==========  ===========================  ==================  ===================  ======================

(The sagittal normal ``cross((0,1,0), (0,0,-1))`` is (-1, 0, 0), towards the patient's right,
so ascending positions run left -> right.)

The file's stored orientation (RAS, LPS, any permutation or flip of its axes, a grid that is
oblique but closest to one such permutation) makes no difference: the voxel axes are only
permuted and flipped to the target (nibabel's ``io_orientation`` / ``ornt_transform``, the
logic of ``as_closest_canonical``), never resampled. For an oblique file the returned
orientation and positions are the file's own oblique ones. Values are the stored values
with the file's ``scl_slope`` / ``scl_inter`` applied, computed in float32 as the DICOM
reader applies RescaleSlope / RescaleIntercept.

The DICOM-only reading choices do not apply to a NIfTI file: there is no file-name order
(the order always comes from the file's geometry) and no separate "stored values" (the
scaled values are the file's values). In the returned meta, ``folder`` is the folder that
holds the file, ``files[i]`` is the NIfTI file itself for every slice ``i`` (each slice came
from it), ``order_by`` is ``"position"`` (the slices are in ascending position along the
normal, as the DICOM reader's position rule orders them), ``plane`` is the requested plane,
``skipped`` and ``resized`` are empty, and ``positive_fraction`` is the share of each slice's
values above 0. ``mgmt2d.data.nifti.series_affine(meta.positions, meta.orientation,
meta.pixel_spacing, meta.slice_spacing)`` places ``to_nifti_array(volume)`` exactly where
the input's voxels lie, so NIfTI outputs written from these slices overlay the input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mgmt2d.data.contract import NIFTI_PLANES
from mgmt2d.data.dicom import SeriesMeta
from mgmt2d.data.nifti import LPS_TO_RAS

__all__ = ["NIFTI_PLANES", "PLANE_ORIENTATION", "NiftiSeriesError", "output_grid", "read_nifti_series"]

# Per plane: ImageOrientationPatient (row cosines, column cosines) and nibabel's axis codes of
# the (slice, row, column) array, which follow from it (codes name where each axis points in RAS
# terms: L = LPS +x, P = LPS +y, S = LPS +z, and R / A / I their opposites).
PLANE_ORIENTATION: dict[str, tuple[float, ...]] = {
    "axial": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    "sagittal": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
}
_AXIS_CODES: dict[str, tuple[str, str, str]] = {
    "axial": ("S", "P", "L"),
    "coronal": ("P", "I", "L"),
    "sagittal": ("R", "I", "P"),
}
assert tuple(PLANE_ORIENTATION) == NIFTI_PLANES, "one table of planes: mgmt2d.data.contract.NIFTI_PLANES"


class NiftiSeriesError(ValueError):
    """A NIfTI file that cannot be read as a series; the message is one line naming the file."""


def _load(path: Path):  # -> nibabel image
    import nibabel as nib

    if not path.is_file():
        raise NiftiSeriesError(f"NIfTI file {'is not a file' if path.exists() else 'does not exist'}: {path}")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for broken or foreign files
        raise NiftiSeriesError(f"cannot read {path} as NIfTI: {type(err).__name__}: {err}") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise NiftiSeriesError(f"{path} is a {type(img).__name__}, not a NIfTI image")
    header = img.header
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        raise NiftiSeriesError(
            f"{path} has no orientation (qform_code and sform_code are both 0): its left and right are "
            "unknown; give it a scanner or aligned q/sform with the tool that made it"
        )
    return img


def _scaled_values(img, path: Path) -> np.ndarray:
    """The stored array as float32 with scl_slope / scl_inter applied, as a 3-D (X, Y, Z) array."""
    try:
        raw = np.asarray(img.dataobj.get_unscaled())
    except Exception as err:  # truncated gzip, short file
        raise NiftiSeriesError(f"cannot read the voxels of {path}: {type(err).__name__}: {err}") from None
    while raw.ndim > 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if raw.ndim == 2:
        raw = raw[..., None]
    if raw.ndim != 3:
        raise NiftiSeriesError(f"{path} has shape {raw.shape}: one 3-D volume per file is expected")
    if raw.dtype.kind not in "biuf" or raw.size == 0:
        raise NiftiSeriesError(f"{path} holds {raw.dtype} voxels of shape {raw.shape}: a gray-value volume "
                               "is expected")
    # A loaded image keeps the file's scl_slope / scl_inter on its array proxy (nibabel resets them in
    # the image's header copy); the proxy already turned an absent, 0 or NaN slope into 1.
    slope, inter = float(img.dataobj.slope), float(img.dataobj.inter)
    values = raw.astype(np.float32)
    if slope != 1.0:
        values *= np.float32(slope)
    if inter != 0.0:
        values += np.float32(inter)
    return values


def read_nifti_series(path: str | Path, plane: str = "axial") -> tuple[np.ndarray, SeriesMeta]:
    """The float32 (S, H, W) slices of a NIfTI volume in ``plane`` and their DICOM-style meta (module doc)."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    if plane not in PLANE_ORIENTATION:
        raise NiftiSeriesError(f"unknown plane {plane!r}: choose from {', '.join(NIFTI_PLANES)}")
    path = Path(path)
    img = _load(path)
    values = _scaled_values(img, path)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise NiftiSeriesError(f"{path} has a degenerate affine (a zero or non-finite voxel axis): "
                               "its voxels have no place in patient space")
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(_AXIS_CODES[plane]))
    volume = np.ascontiguousarray(apply_orientation(values, transform), dtype=np.float32)
    # The affine of the (slice, row, column) array, turned from nibabel's RAS into DICOM's LPS.
    lps = LPS_TO_RAS @ affine @ inv_ornt_aff(transform, values.shape)
    step, down, across, origin = lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3]
    row_mm, col_mm = float(np.linalg.norm(down)), float(np.linalg.norm(across))
    row_cos, col_cos = across / col_mm, down / row_mm
    normal = np.cross(row_cos, col_cos)
    if not step @ normal > 0:   # only a grid sheared by more than 45 degrees gets here
        raise NiftiSeriesError(f"{path}: its slice axis is not on the side of the {plane} slice normal "
                               "(a grid sheared too far to be read as slices without resampling)")
    n_slices = volume.shape[0]
    meta = SeriesMeta(
        folder=path.parent,
        plane=plane,
        order_by="position",
        positions=origin[None, :] + np.arange(n_slices, dtype=np.float64)[:, None] * step[None, :],
        pixel_spacing=(row_mm, col_mm),
        slice_spacing=abs(float(step @ normal)) / float(np.linalg.norm(normal)),
        files=[path] * n_slices,
        positive_fraction=np.count_nonzero(volume.reshape(n_slices, -1) > 0, axis=1) / float(volume[0].size),
        orientation=tuple(float(v) for v in (*row_cos, *col_cos)),
    )
    return volume, meta


def output_grid(volume: np.ndarray, meta: SeriesMeta) -> tuple[np.ndarray, np.ndarray]:
    """Where an output of a series goes: ``(array, affine)`` of (S, H, W) data in reading order, ready for
    ``mgmt2d.data.nifti.save_nifti(path, array, affine, voxel_order=True)``.

    A series read from a NIfTI file goes back onto that file's own voxel grid and affine (the
    inverse permutation and flips of :func:`read_nifti_series`), so a mask overlays the input
    voxel for voxel; a DICOM series gets its (column, row, slice) array and
    :func:`mgmt2d.data.nifti.series_affine`. Raises ValueError when the geometry does not allow it.
    """
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    from mgmt2d.data.nifti import series_affine, to_nifti_array

    array = to_nifti_array(volume)
    affine = series_affine(meta.positions, meta.orientation, meta.pixel_spacing, meta.slice_spacing)
    source = meta.files[0] if meta.files else None
    if source is None or not source.name.endswith((".nii", ".nii.gz")):
        return array, affine
    target = np.asarray(_load(source).affine, dtype=np.float64)
    transform = ornt_transform(io_orientation(affine), io_orientation(target))
    back = np.ascontiguousarray(apply_orientation(array, transform))
    placed = affine @ inv_ornt_aff(transform, array.shape)
    if not np.allclose(placed, target, atol=1e-3):   # the read is a pure permutation: this is float rounding
        raise ValueError(f"{source}: the slices do not map back onto the file's grid (affines differ by "
                         f"{float(np.abs(placed - target).max()):.3g})")
    return back, target
