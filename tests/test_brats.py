from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mgmt2d.data import brats


def test_wt_et_from_labels():
    seg = np.array([0, 1, 2, 4, 3, 0])
    wt, et = brats.wt_et_masks(seg)
    assert wt.tolist() == [0, 1, 1, 1, 0, 0]
    assert et.tolist() == [0, 0, 0, 1, 0, 0]


def test_reads_real_sample_with_flair_and_t1ce(brats_sample_dir: Path):
    cases = brats.list_cases(brats_sample_dir)
    assert [brats.case_id(c) for c in cases] == ["90003", "90004", "90005", "90006"]
    case = brats.read_case(cases[0], ("flair", "t1ce"))
    assert set(case.volumes) == {"flair", "t1ce"}
    assert case.shape == (240, 240, 155)
    assert case.masks.shape == (2, 240, 240, 155) and case.masks.dtype == np.uint8
    seg = np.asarray(nib.load(str(cases[0] / "BraTS2021_90003_seg.nii.gz")).dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2, 4}
    np.testing.assert_array_equal(case.masks[0], np.isin(seg, [1, 2, 4]))
    np.testing.assert_array_equal(case.masks[1], seg == 4)
    # ET lies inside WT, and both are non-empty on this tumour case
    assert case.masks[1].sum() > 0 and np.all(case.masks[0][case.masks[1] > 0] == 1)


def test_missing_modality_names_the_file(brats_sample_dir: Path):
    with pytest.raises(brats.BratsCaseError, match="t1.nii.gz is missing"):
        brats.read_case(brats_sample_dir / "BraTS2021_90003", ("t1",))


def _write(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def test_shape_mismatch_is_a_clear_error(tmp_path: Path):
    case = tmp_path / "BraTS2021_00001"
    case.mkdir()
    _write(case / "BraTS2021_00001_flair.nii.gz", np.zeros((8, 8, 4), np.float32))
    _write(case / "BraTS2021_00001_t1ce.nii.gz", np.zeros((8, 8, 5), np.float32))
    _write(case / "BraTS2021_00001_seg.nii.gz", np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(brats.BratsCaseError, match="differ in shape"):
        brats.read_case(case, ("flair", "t1ce"))


def test_unknown_modality_rejected():
    with pytest.raises(brats.BratsCaseError, match="unknown modality"):
        brats.parse_modalities(["flair", "dwi"])
    assert brats.parse_modalities(["FLAIR", "t1ce", "flair"]) == ("flair", "t1ce")
