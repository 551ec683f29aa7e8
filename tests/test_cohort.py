"""NIfTI cohorts: discovery by naming, patient IDs, and NIfTI volumes read exactly as DICOM series.

The DICOM series here are written with pydicom from the volume by explicit index formulas (not
by the reorientation code under test) and read by ``read_series`` in position order.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mgmt2d.data import cohort
from mgmt2d.data.dicom import read_series
from mgmt2d.data.nifti import LPS_TO_RAS, series_affine, to_nifti_array
from mgmt2d.data.nifti_series import PLANE_ORIENTATION, NiftiSeriesError, read_nifti_series

SHAPE = (7, 9, 5)                   # x (towards the patient's left), y (posterior), z (superior)
SPACING = (0.9, 1.1, 2.0)
ORIGIN_LPS = (-3.0, 12.5, -40.0)    # LPS position of voxel (0, 0, 0)


def _volume(seed: int = 0) -> np.ndarray:
    """An int16 volume with no symmetry (any flip or transpose changes it); negatives and zeros included."""
    return np.random.default_rng(seed).integers(-60, 1000, SHAPE).astype(np.int16)


def _lps_stored_affine() -> np.ndarray:
    """RAS affine of a file stored like BraTS (orientation codes L, P, S)."""
    lps = np.eye(4)
    lps[:3, :3] = np.diag(SPACING)
    lps[:3, 3] = ORIGIN_LPS
    return LPS_TO_RAS @ lps


def _rotation(degrees: float) -> np.ndarray:
    """A rotation about an oblique axis by ``degrees``: an oblique grid still closest to the same axes."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.deg2rad(degrees)
    out = np.eye(4)
    out[:3, :3] = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k
    return out


def _variants(data: np.ndarray, affine: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The same voxels stored four ways, each (array, affine) built by hand."""
    nx, ny, nz = data.shape
    flip_xy = np.array([[-1, 0, 0, nx - 1], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    # permuted array p[k, i, j] = data[i, j, k]: index (k, i, j) -> (i, j, k)
    perm = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    # q[a, b, c] = data[c, a, nz - 1 - b]: index (a, b, c) -> (c, a, nz - 1 - b)
    permute_flip = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, -1, 0, nz - 1], [0, 0, 0, 1]], float)
    return {
        "lps": (data, affine),
        "ras": (data[::-1, ::-1, :], affine @ flip_xy),
        "permuted": (data.transpose(2, 0, 1), affine @ perm),
        "permuted_flipped": (data[:, :, ::-1].transpose(1, 2, 0), affine @ permute_flip),
    }


def _save(path: Path, data: np.ndarray, affine: np.ndarray, slope: float = 1.0, inter: float = 0.0) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if (slope, inter) != (1.0, 0.0):
        img.header.set_slope_inter(slope, inter)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def _ds(value: float) -> str:
    text = f"{value:.10f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"


def _write_dicom(folder: Path, slices: list[tuple[np.ndarray, np.ndarray]], row_cos: np.ndarray,
                 col_cos: np.ndarray, spacing: tuple[float, float], slope: float, inter: float) -> Path:
    """One single-frame MR file per (stored pixels, ImagePositionPatient); file numbers shuffled."""
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True)
    numbers = np.random.default_rng(len(slices)).permutation(len(slices)) + 1
    for n, (pixels, position) in zip(numbers, slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID = MRImageStorage
        ds.Modality = "MR"
        ds.InstanceNumber = int(n)
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_cos, *col_cos)]
        ds.PixelSpacing = [_ds(spacing[0]), _ds(spacing[1])]
        ds.RescaleSlope = _ds(slope)
        ds.RescaleIntercept = _ds(inter)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
        dcmwrite(folder / f"Image-{n}.dcm", ds, enforce_file_format=True)
    return folder


def _dicom_of(folder: Path, data: np.ndarray, affine: np.ndarray, plane: str, slope: float = 1.0,
              inter: float = 0.0) -> Path:
    """The DICOM series of an LPS-stored volume (axes x=L, y=P, z=S up to a rotation) in ``plane``.

    Standard orientation per plane; pixel (row r, column c) of each slice by index formulas.
    """
    lps = LPS_TO_RAS @ affine
    axis = [lps[:3, a] for a in range(3)]
    unit = [v / np.linalg.norm(v) for v in axis]
    nx, ny, nz = data.shape

    def where(i: int, j: int, k: int) -> np.ndarray:
        return (lps @ np.array([i, j, k, 1.0]))[:3]

    if plane == "axial":      # columns along +x, rows along +y, one slice per z
        slices = [(data[:, :, k].T, where(0, 0, k)) for k in range(nz)]
        row_cos, col_cos, spacing = unit[0], unit[1], (SPACING[1], SPACING[0])
    elif plane == "coronal":  # columns along +x, rows along -z, one slice per y
        slices = [(data[:, j, ::-1].T, where(0, j, nz - 1)) for j in range(ny)]
        row_cos, col_cos, spacing = unit[0], -unit[2], (SPACING[2], SPACING[0])
    else:                     # sagittal: columns along +y, rows along -z, one slice per x
        slices = [(data[i, :, ::-1].T, where(i, 0, nz - 1)) for i in range(nx)]
        row_cos, col_cos, spacing = unit[1], -unit[2], (SPACING[2], SPACING[1])
    return _write_dicom(folder, slices, row_cos, col_cos, spacing, slope, inter)


# --------------------------------------------------------------------------- NIfTI as DICOM slices


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_nifti_in_any_storage_order_reads_as_its_dicom_series(tmp_path: Path, plane: str):
    data, affine = _volume(), _lps_stored_affine()
    dicom_volume, dicom_meta = read_series(_dicom_of(tmp_path / "dicom", data, affine, plane), min_size=1)
    assert dicom_meta.order_by == "position" and dicom_meta.plane == plane
    assert dicom_meta.orientation == pytest.approx(PLANE_ORIENTATION[plane])
    for name, (stored, stored_affine) in _variants(data, affine).items():
        volume, meta = read_nifti_series(_save(tmp_path / f"{name}.nii.gz", stored, stored_affine), plane)
        np.testing.assert_array_equal(volume, dicom_volume, err_msg=name)
        assert volume.dtype == np.float32
        np.testing.assert_allclose(meta.positions, dicom_meta.positions, atol=1e-6, err_msg=name)
        assert meta.orientation == pytest.approx(dicom_meta.orientation, abs=1e-9)
        assert meta.pixel_spacing == pytest.approx(dicom_meta.pixel_spacing)
        assert meta.slice_spacing == pytest.approx(dicom_meta.slice_spacing)
        np.testing.assert_array_equal(meta.positive_fraction, dicom_meta.positive_fraction)
        assert meta.plane == plane and meta.order_by == "position"
        assert meta.files == [tmp_path / f"{name}.nii.gz"] * len(volume) and not meta.skipped


def test_axial_slices_follow_the_dicom_convention_by_hand(tmp_path: Path):
    """Axial slice k, row r, column c of an (L, P, S)-stored file is voxel (c, r, k): rows anterior ->
    posterior, columns right -> left, slices inferior -> superior."""
    data = _volume(1)
    volume, _ = read_nifti_series(_save(tmp_path / "v.nii.gz", data, _lps_stored_affine()), "axial")
    np.testing.assert_array_equal(volume, data.transpose(2, 1, 0))
    ras = _variants(data, _lps_stored_affine())["ras"]
    volume, _ = read_nifti_series(_save(tmp_path / "ras.nii.gz", *ras), "axial")
    np.testing.assert_array_equal(volume, data.transpose(2, 1, 0))


def test_scaling_is_applied_as_the_dicom_rescale(tmp_path: Path):
    data, affine = _volume(2), _lps_stored_affine()
    path = _save(tmp_path / "scaled.nii.gz", data, affine, slope=2.0, inter=-10.0)
    assert nib.load(str(path)).dataobj.slope == 2.0          # the file really holds the scaling
    volume, meta = read_nifti_series(path, "axial")
    np.testing.assert_array_equal(volume, data.transpose(2, 1, 0).astype(np.float32) * 2 - 10)
    dicom_volume, _ = read_series(_dicom_of(tmp_path / "dicom", data, affine, "axial", slope=2.0, inter=-10.0),
                                  min_size=1)
    np.testing.assert_array_equal(volume, dicom_volume)
    # values above 0 after scaling, not stored values above 0 (the DICOM-only "stored" choice does not apply)
    np.testing.assert_array_equal(meta.positive_fraction, (volume > 0).mean(axis=(1, 2)))


def test_oblique_grid_is_permuted_not_resampled(tmp_path: Path):
    data = _volume(3)
    affine = LPS_TO_RAS @ _rotation(8.0) @ LPS_TO_RAS @ _lps_stored_affine()   # rotate in LPS
    dicom_volume, dicom_meta = read_series(_dicom_of(tmp_path / "dicom", data, affine, "axial"), min_size=1)
    for name, variant in _variants(data, affine).items():
        volume, meta = read_nifti_series(_save(tmp_path / f"{name}.nii.gz", *variant), "axial")
        np.testing.assert_array_equal(volume, dicom_volume, err_msg=name)
        np.testing.assert_array_equal(volume, data.transpose(2, 1, 0))
        # the file keeps its affine in float32: geometry agrees to that precision
        assert meta.orientation == pytest.approx(dicom_meta.orientation, abs=1e-6)
        assert meta.orientation != pytest.approx(PLANE_ORIENTATION["axial"], abs=1e-3)
        np.testing.assert_allclose(meta.positions, dicom_meta.positions, atol=1e-4)


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_series_affine_puts_every_voxel_back_on_the_input(tmp_path: Path, plane: str):
    """What the report writes (to_nifti_array + series_affine) overlays the input voxel by voxel."""
    data = _volume(4)
    oblique = LPS_TO_RAS @ _rotation(5.0) @ LPS_TO_RAS @ _lps_stored_affine()
    for name, (stored, affine) in _variants(data, oblique).items():
        volume, meta = read_nifti_series(_save(tmp_path / f"{name}.nii.gz", stored, affine), plane)
        out_affine = series_affine(meta.positions, meta.orientation, meta.pixel_spacing, meta.slice_spacing)
        out = to_nifti_array(volume)
        # input voxel index -> output voxel index: a signed permutation with an integer offset
        to_out = np.linalg.inv(out_affine) @ affine
        np.testing.assert_allclose(to_out, np.rint(to_out), atol=1e-6, err_msg=name)
        idx = np.indices(stored.shape).reshape(3, -1)
        mapped = np.rint(to_out[:3, :3] @ idx + to_out[:3, 3:]).astype(int)
        np.testing.assert_array_equal(out[tuple(mapped)], stored.reshape(-1), err_msg=name)


def test_real_brats_case_reads_as_its_transposed_voxels(shared_data: Path):
    case = cohort.discover_case(_real_case(shared_data))
    img = nib.load(str(case.series["T1wCE"]))
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    volume, meta = read_nifti_series(case.series["T1wCE"], "axial")
    assert volume.shape == (155, 240, 240)
    np.testing.assert_array_equal(volume, np.asarray(img.dataobj).transpose(2, 1, 0))
    assert meta.pixel_spacing == (1.0, 1.0) and meta.slice_spacing == 1.0
    assert meta.orientation == PLANE_ORIENTATION["axial"]
    # (column, row, slice) of the axial slices is the file's own (i, j, k) here: the same affine comes back
    np.testing.assert_allclose(series_affine(meta.positions, meta.orientation, meta.pixel_spacing), img.affine)


def test_unreadable_niftis_are_one_line_errors(tmp_path: Path):
    affine = _lps_stored_affine()
    with pytest.raises(NiftiSeriesError, match="does not exist"):
        read_nifti_series(tmp_path / "nope.nii.gz")
    with pytest.raises(NiftiSeriesError, match="unknown plane 'oblique'"):
        read_nifti_series(_save(tmp_path / "v.nii.gz", _volume(), affine), "oblique")
    four_d = _save(tmp_path / "4d.nii.gz", np.zeros((*SHAPE, 3), np.int16), affine)
    with pytest.raises(NiftiSeriesError, match=r"4d.nii.gz has shape \(7, 9, 5, 3\)"):
        read_nifti_series(four_d)
    single = _save(tmp_path / "one.nii.gz", _volume()[..., None], affine)   # (X, Y, Z, 1) is one volume
    assert read_nifti_series(single)[0].shape == (5, 9, 7)
    (tmp_path / "junk.nii.gz").write_bytes(b"not a gzip")
    with pytest.raises(NiftiSeriesError, match="cannot read .*junk.nii.gz"):
        read_nifti_series(tmp_path / "junk.nii.gz")
    no_orientation = nib.Nifti1Image(_volume(), affine)
    no_orientation.set_qform(None, code=0)
    no_orientation.set_sform(None, code=0)
    nib.save(no_orientation, str(tmp_path / "bare.nii.gz"))
    with pytest.raises(NiftiSeriesError, match="no orientation"):
        read_nifti_series(tmp_path / "bare.nii.gz")


# --------------------------------------------------------------------------- discovery


NAMED = {   # naming -> (separator, FLAIR, T1w, T1wCE, T2w suffixes), as the issue lists them
    "BraTS 2021": ("_", "flair", "t1", "t1ce", "t2"),
    "BraTS 2023+": ("-", "t2f", "t1n", "t1c", "t2w"),
    "UPENN-GBM": ("_", "FLAIR", "T1", "T1GD", "T2"),
    "UCSF-PDGM": ("_", "FLAIR", "T1", "T1c", "T2"),
}
TYPES = ("FLAIR", "T1w", "T1wCE", "T2w")


def _case(root: Path, name: str, files: dict[str, np.ndarray | None]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for file_name, data in files.items():
        if data is None:
            (folder / file_name).write_text("not an image")
        else:
            _save(folder / file_name, data, _lps_stored_affine())
    return folder


def test_the_four_namings_give_the_same_images(tmp_path: Path):
    images = {t: _volume(10 + k) for k, t in enumerate(TYPES)}
    case_names = {"BraTS 2021": "BraTS2021_00005", "BraTS 2023+": "BraTS-GLI-00005-000",
                  "UPENN-GBM": "UPENN-GBM-00002_11", "UCSF-PDGM": "UCSF-PDGM-0004_nifti"}
    for naming, (sep, *suffixes) in NAMED.items():
        prefix = case_names[naming].removesuffix("_nifti")
        files: dict[str, np.ndarray | None] = {f"{prefix}{sep}{s}.nii.gz": images[t] for t, s in zip(TYPES, suffixes)}
        files[f"{prefix}{sep}seg.nii.gz"] = np.zeros(SHAPE, np.uint8)       # other files: ignored and listed
        files[f"{prefix}_ADC.nii.gz"] = images["FLAIR"]
        files[f"{prefix}_T1c_bias.nii.gz"] = images["T1wCE"]
        files["notes.txt"] = None
        _case(tmp_path / "cohort", case_names[naming], files)
    found = cohort.discover_cohort(tmp_path / "cohort")
    assert [c.case_id for c in found.cases] == sorted(case_names.values())
    assert not found.refused and not found.empty and not found.missing_types
    by_naming = {c.naming: c for c in found.cases}
    assert set(by_naming) == set(NAMED)
    for naming, case in by_naming.items():
        assert list(case.series) == list(TYPES)
        assert sorted(case.ignored) == sorted(n for n in (p.name for p in case.folder.iterdir())
                                              if n not in {p.name for p in case.series.values()})
        assert len(case.ignored) == 4, naming
        for t, path in case.series.items():
            volume, _ = read_nifti_series(path, "axial")
            np.testing.assert_array_equal(volume, images[t].transpose(2, 1, 0), err_msg=f"{naming} {t}")
    frame = found.series_frame()
    assert len(frame) == 16 and set(frame.columns) == {"patient", "mri_type", "path", "naming"}
    report = found.report()
    assert "4 case(s), 16 series" in report and "ignored in case folders" in report and "_ADC 4" in report


def test_missing_types_empty_and_refused_cases_are_reported(tmp_path: Path):
    root = tmp_path / "cohort"
    v = _volume()
    _case(root, "UPENN-GBM-00010_11", {"UPENN-GBM-00010_11_FLAIR.nii.gz": v, "UPENN-GBM-00010_11_T2.nii.gz": v})
    _case(root, "BraTS2021_00007", {"BraTS2021_00007_flair.nii.gz": v, "BraTS2021_00007_flair.nii": v,
                                    "BraTS2021_00007_t1.nii.gz": v})
    _case(root, "mixed", {"mixed_flair.nii.gz": v, "mixed-t1c.nii.gz": v})
    _case(root, "only-seg", {"only-seg_seg.nii.gz": v, "only-seg_ADC.nii.gz": v})
    _case(root, "bad name", {"x_flair.nii.gz": v})
    (root / "participants.tsv").write_text("id\n")
    found = cohort.discover_cohort(root)
    assert [c.case_id for c in found.cases] == ["UPENN-GBM-00010_11"]
    case = found.cases[0]
    assert case.naming == "UPENN-GBM / UCSF-PDGM" and case.missing == ["T1w", "T1wCE"]
    assert found.missing_types == {"UPENN-GBM-00010_11": ["T1w", "T1wCE"]}
    assert set(found.refused) == {"BraTS2021_00007", "mixed", "bad name"}
    assert "2 files for FLAIR" in found.refused["BraTS2021_00007"] and "keep one" in found.refused["BraTS2021_00007"]
    assert "mixes file namings" in found.refused["mixed"]
    assert "' '" in found.refused["bad name"] and "rename" in found.refused["bad name"]
    assert all("\n" not in reason for reason in found.refused.values())
    assert found.empty == {"only-seg": ["only-seg_ADC.nii.gz", "only-seg_seg.nii.gz"]}
    assert found.ignored == ["participants.tsv"]
    report = found.report()
    for name in ("refused BraTS2021_00007", "refused mixed", "refused bad name", "no FLAIR/T1w/T1wCE/T2w file in "
                 "only-seg", "UPENN-GBM-00010_11: T1w, T1wCE", "participants.tsv"):
        assert name in report
    assert found.to_dict()["cases"][0]["missing"] == ["T1w", "T1wCE"]


def test_folders_without_cases_are_one_line_errors(tmp_path: Path, shared_data: Path):
    with pytest.raises(cohort.CohortError, match="does not exist"):
        cohort.discover_cohort(tmp_path / "nope")
    flat = tmp_path / "flat"
    _case(tmp_path, "flat", {"a_flair.nii.gz": _volume()})
    with pytest.raises(cohort.CohortError, match="holds NIfTI files itself .*a_flair.nii.gz.*one folder per case"):
        cohort.discover_cohort(flat)
    dicom_like = tmp_path / "dicom"
    (dicom_like / "00001" / "FLAIR").mkdir(parents=True)
    with pytest.raises(cohort.CohortError) as err:
        cohort.discover_cohort(dicom_like)
    assert "00001" in str(err.value) and "BraTS 2023+" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(cohort.CohortError, match="no FLAIR/T1w/T1wCE/T2w NIfTI"):
        cohort.discover_case(dicom_like / "00001")
    (tmp_path / "refused" / "two").mkdir(parents=True)
    _case(tmp_path / "refused", "x y", {"x_flair.nii.gz": _volume()})
    with pytest.raises(cohort.CohortError, match="1 refused"):
        cohort.discover_cohort(tmp_path / "refused")


def _real_case(shared_data: Path) -> Path:
    path = shared_data / "brats-gli-00001-000"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


def test_real_brats2023_case_is_found_with_all_four_types(shared_data: Path, tmp_path: Path):
    real = _real_case(shared_data)
    case = cohort.discover_case(real)
    assert case.case_id == "brats-gli-00001-000" and case.naming == "BraTS 2023+"
    assert {t: p.name for t, p in case.series.items()} == {
        "FLAIR": "BraTS-GLI-00001-000-t2f.nii.gz", "T1w": "BraTS-GLI-00001-000-t1n.nii.gz",
        "T1wCE": "BraTS-GLI-00001-000-t1c.nii.gz", "T2w": "BraTS-GLI-00001-000-t2w.nii.gz"}
    assert case.ignored == ["LICENSE-BrainLesion-tutorials.txt"] and not case.missing
    # as one case of a cohort folder (a link to it, never a copy)
    (tmp_path / "cohort").mkdir()
    (tmp_path / "cohort" / "BraTS-GLI-00001-000").symlink_to(real)
    found = cohort.discover_cohort(tmp_path / "cohort")
    assert [c.case_id for c in found.cases] == ["BraTS-GLI-00001-000"] and len(found.cases[0].series) == 4


def test_naming_table_is_unambiguous():
    """Every suffix names one MRI type, whichever naming it belongs to (so a file's type is never a guess)."""
    seen: dict[tuple[str, str], str] = {}
    for naming in cohort.NAMINGS:
        assert set(naming.suffixes) == set(TYPES)
        for t, suffix in naming.suffixes.items():
            assert seen.setdefault((naming.separator, suffix), t) == t
    assert cohort.file_type("X_T1c_bias.nii.gz") is None and cohort.file_type("t1.nii.gz") is None
    assert cohort.file_type("UCSF-PDGM-0004_T1c.nii") == ("T1wCE", ("UCSF-PDGM",))
