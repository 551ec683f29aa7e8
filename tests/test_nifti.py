"""The NIfTI affine places every voxel at its DICOM pixel centre (RAS), whatever the plane or order."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from mgmt2d.data import dicom
from mgmt2d.data.nifti import nifti_bytes, series_affine, task2_labels, to_nifti_array
from mgmt2d.dev import synth


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.deg2rad(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


PLANES = {  # ImageOrientationPatient (row cosines, column cosines), LPS
    "axial": ((1, 0, 0), (0, 1, 0)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "oblique": tuple(tuple(_rotation(np.array([0.3, -1.0, 0.4]), 23.0) @ np.array(v, float))
                     for v in ((1, 0, 0), (0, 1, 0))),
}


@pytest.mark.parametrize("plane", list(PLANES))
@pytest.mark.parametrize("reverse", [False, True], ids=["ascending", "descending"])
def test_every_voxel_maps_to_its_dicom_pixel_centre(plane, reverse):
    row_cos, col_cos = (np.asarray(v, float) for v in PLANES[plane])
    normal = np.cross(row_cos, col_cos)
    row_mm, col_mm, step = 0.9, 1.3, 2.5 * (-1 if reverse else 1)
    origin = np.array([-101.3, 37.7, 12.9])
    n, h, w = 7, 5, 6
    positions = origin + np.arange(n)[:, None] * step * normal
    orientation = (*row_cos, *col_cos)
    affine = series_affine(positions, orientation, (row_mm, col_mm))
    rng = np.random.default_rng(0)
    for _ in range(40):
        i, j, k = int(rng.integers(w)), int(rng.integers(h)), int(rng.integers(n))
        lps = positions[k] + i * col_mm * row_cos + j * row_mm * col_cos   # DICOM pixel (row j, col i) centre
        ras = affine @ np.array([i, j, k, 1.0])
        np.testing.assert_allclose(ras[:3], lps * np.array([-1, -1, 1]), atol=1e-3)
    # The array the affine describes is indexed (column, row, slice).
    volume = rng.random((n, h, w)).astype(np.float32)
    arr = to_nifti_array(volume)
    assert arr.shape == (w, h, n) and arr[4, 2, 5] == volume[5, 2, 4]


def test_uneven_or_missing_geometry_is_refused():
    positions = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 3]], float)
    with pytest.raises(ValueError, match="evenly spaced"):
        series_affine(positions, (1, 0, 0, 0, 1, 0), (1, 1))
    with pytest.raises(ValueError, match="ImagePositionPatient"):
        series_affine(None, (1, 0, 0, 0, 1, 0), (1, 1))


def test_series_ordered_by_file_number_against_anatomy_is_placed_right(tmp_path):
    """Files numbered against anatomy and read in file order: the slice axis flips, voxels stay put."""
    x, y, z = np.mgrid[:40, :40, :30]
    blob = (100 * np.exp(-((x - 18) ** 2 + (y - 21) ** 2 + (z - 14) ** 2) / 150.0)).astype(np.float32)
    truth = synth.write_dicom_series(tmp_path / "s", blob, "coronal", np.random.default_rng(4),
                                     matrix=(24, 20), n_slices=9, order="descending", tilt_deg=7.0, blank=(0, 0))
    by_position, meta_p = dicom.read_series(tmp_path / "s")
    by_name, meta_f = dicom.read_series(tmp_path / "s", order="filename")
    np.testing.assert_array_equal(by_name, by_position[::-1])
    a_p = series_affine(meta_p.positions, meta_p.orientation, meta_p.pixel_spacing)
    a_f = series_affine(meta_f.positions, meta_f.orientation, meta_f.pixel_spacing)
    assert np.linalg.det(a_p[:3, :3]) * np.linalg.det(a_f[:3, :3]) < 0      # the slice axis flipped
    row_cos, col_cos = np.asarray(truth.orientation[:3]), np.asarray(truth.orientation[3:])
    for k in range(9):   # slice k of the file order is truth slice 8 - k; same patient point
        lps = truth.positions[8 - k] + 3 * truth.pixel_spacing[1] * row_cos + 2 * truth.pixel_spacing[0] * col_cos
        np.testing.assert_allclose((a_f @ [3, 2, k, 1])[:3], lps * [-1, -1, 1], atol=1e-3)
        np.testing.assert_allclose((a_p @ [3, 2, 8 - k, 1])[:3], lps * [-1, -1, 1], atol=1e-3)


def test_real_sagittal_series_gets_a_sagittal_orientation_code(mprage_dir, tmp_path):
    volume, meta = dicom.read_series(mprage_dir)
    affine = series_affine(meta.positions, meta.orientation, meta.pixel_spacing)
    # Columns run anterior->posterior, rows superior->inferior, slices along left-right.
    assert nib.aff2axcodes(affine) == ("P", "I", "R")
    path = tmp_path / "t1_image.nii.gz"
    path.write_bytes(nifti_bytes(volume, affine))
    img = nib.load(path)
    assert img.shape == (256, 256, 176)
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    assert gzip.decompress(path.read_bytes())[344:348] == b"n+1\x00"


def test_task2_labels():
    wt = np.array([[0, 1, 1, 0]])
    et = np.array([[0, 0, 1, 0]])
    assert task2_labels(wt, et).tolist() == [[0, 2, 4, 0]]
