"""NIfTI cohorts through the inference pipeline (issue 22, section 1): the same volume stored in RAS, in
LPS, and written as an axial DICOM series gives the same stacked slices and the same probabilities with
the same weights; the four namings give the same result for the same images.

The segmenter is a deterministic stand-in (bright = tumour), so slices are kept by the real keep rule
and reach the real classifier; the DICOM series is written with pydicom by index formulas
(``test_cohort._dicom_of``), not by the reorientation code under test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_cohort import _dicom_of, _lps_stored_affine, _save, _variants

from mgmt2d.classification.model import build_classifier
from mgmt2d.data.contract import OURS
from mgmt2d.inference.pipeline import PredictOptions, Predictor


class _BrightIsTumour(torch.nn.Module):
    """WT where the normalised input is bright, ET where very bright (as tests/test_published.py)."""

    def forward(self, x):
        return torch.cat([(x[:, :1] > 0.9).float(), (x[:, :1] > 1.6).float()], dim=1)


def _phantom() -> np.ndarray:
    """(x, y, z) int16 head: a brain ellipsoid with a bright tumour sphere, no symmetry (an offset tumour)."""
    x, y, z = np.meshgrid(np.arange(40), np.arange(44), np.arange(24), indexing="ij")
    brain = ((x - 20) / 17) ** 2 + ((y - 22) / 19) ** 2 + ((z - 12) / 11) ** 2 <= 1
    tumour = ((x - 26) / 6) ** 2 + ((y - 17) / 7) ** 2 + ((z - 13) / 5) ** 2 <= 1
    rng = np.random.default_rng(3)
    volume = np.where(brain, 380 + rng.integers(0, 40, x.shape), 0)
    return np.where(tumour, 900 + rng.integers(0, 60, x.shape), volume).astype(np.int16)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    contract = OURS.with_overrides(seg_image_size=64, image_size=32, seq_len=4, stride=2)
    return _BrightIsTumour(), [build_classifier("test_resnet", lstm_hidden=8, seq_len=4).eval()], contract


def _predict(models, root: Path, patient: str, input_format: str, keep: Path) -> tuple[float, np.ndarray]:
    seg, classifiers, contract = models
    predictor = Predictor(seg, {"T1wCE": classifiers}, contract.with_overrides(input_format=input_format))
    sub, detail = predictor.predict([patient], root, PredictOptions(["T1wCE"], batch_size=16, keep_dir=keep))
    row = detail[detail.type == "T1wCE"].iloc[0]
    assert row.kept > 0, (input_format, row.note)
    return float(sub.MGMT_value.iloc[0]), np.load(keep / f"{patient}_T1wCE.npy")


def test_ras_lps_and_the_axial_dicom_series_give_the_same_slices_and_probability(models, tmp_path: Path):
    data = _phantom()
    affine = _lps_stored_affine()
    results = {}
    for name, (array, aff) in _variants(data, affine).items():
        if name not in ("lps", "ras", "permuted_flipped"):
            continue
        _save(tmp_path / name / "case" / "case_t1ce.nii.gz", array, aff)
        results[name] = _predict(models, tmp_path / name, "case", "nifti", tmp_path / f"keep-{name}")
    _dicom_of(tmp_path / "dicom" / "case" / "T1wCE", data, affine, "axial")
    results["dicom"] = _predict(models, tmp_path / "dicom", "case", "dicom", tmp_path / "keep-dicom")
    prob, stacked = results["dicom"]
    assert 0 < len(stacked) < data.shape[2], "some slices kept, not all: the keep rule really ran"
    for name, (other_prob, other_stacked) in results.items():
        np.testing.assert_array_equal(other_stacked, stacked, err_msg=name)
        assert other_prob == pytest.approx(prob, abs=1e-6), name


@pytest.mark.parametrize("naming", ["{c}_t1ce", "{c}-t1c", "{c}_T1GD", "{c}_T1c"])
def test_the_four_namings_give_the_same_result(models, tmp_path: Path, naming: str):
    data = _phantom()
    affine = _lps_stored_affine()
    _save(tmp_path / "ref" / "case" / "case_t1ce.nii.gz", data, affine)
    want = _predict(models, tmp_path / "ref", "case", "nifti", tmp_path / "keep-ref")
    case = "UPENN-GBM-00002_11"
    _save(tmp_path / "cohort" / case / (naming.format(c=case) + ".nii.gz"), data, affine)
    got = _predict(models, tmp_path / "cohort", case, "nifti", tmp_path / "keep")
    np.testing.assert_array_equal(got[1], want[1])
    assert got[0] == pytest.approx(want[0], abs=1e-7)
