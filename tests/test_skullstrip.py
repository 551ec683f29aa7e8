"""Skull stripping (issue 23 section 3): deepbet masks, carried between series, and the unstripped check.

Two tests run deepbet's CNN (about 7-15 s each on two CPU cores); everything else is fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage as ndi

from mgmt2d.__main__ import main as mgmt2d_main
from mgmt2d.data import skullstrip
from mgmt2d.data.dicom import read_series
from mgmt2d.data.nifti import series_affine, to_nifti_array
from mgmt2d.data.skullstrip import (
    BrainExtractor,
    MissingDeepbetError,
    SkullStripError,
    carry_mask,
    looks_unstripped,
    strip_patient,
)
from mgmt2d.dev.synth import make_phantom, render, write_dicom_series

needs_deepbet = pytest.mark.skipif(not skullstrip.deepbet_installed(), reason="deepbet not installed "
                                   "(pip install -r requirements-skull-strip.txt)")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# --------------------------------------------------------------------------- the optional extra


def test_missing_deepbet_is_one_line_naming_the_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "deepbet", None)   # import deepbet now raises ImportError
    out = tmp_path / "mask.nii.gz"
    rc = mgmt2d_main(["skull-strip", "--input", str(tmp_path), "--out", str(out)])
    assert rc == 2
    line = _one_error_line(capsys)
    assert "deepbet" in line and "requirements-skull-strip.txt" in line and "mgmt2d[skull-strip]" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(MissingDeepbetError):
        BrainExtractor("cpu")


def test_weights_are_verified_before_loading(tmp_path):
    for name in skullstrip.DEEPBET_WEIGHTS:
        (tmp_path / name).write_bytes(b"not the published network")
    with pytest.raises(SkullStripError, match="SHA-256") as err:
        skullstrip._verified_weights(tmp_path)
    assert str(tmp_path) in str(err.value) and f"deepbet=={skullstrip.DEEPBET_VERSION}" in str(err.value)
    (tmp_path / "model.pt").unlink()
    (tmp_path / "bbox_model.pt").unlink()
    with pytest.raises(SkullStripError, match="cannot be read"):
        skullstrip._verified_weights(tmp_path)


@needs_deepbet
def test_installed_weights_match_the_recorded_hashes():
    import importlib

    models = Path(importlib.import_module("deepbet.utils").DATA_PATH) / "models"
    assert set(skullstrip._verified_weights(models)) == set(skullstrip.DEEPBET_WEIGHTS)


def test_bad_arguments_are_one_line(tmp_path, capsys):
    (tmp_path / "mask.nii.gz").write_bytes(b"earlier output")
    assert mgmt2d_main(["skull-strip", "--input", str(tmp_path), "--out", str(tmp_path / "mask.nii.gz")]) == 2
    assert "--overwrite" in _one_error_line(capsys)
    assert (tmp_path / "mask.nii.gz").read_bytes() == b"earlier output"
    assert mgmt2d_main(["skull-strip", "--input", str(tmp_path), "--out", str(tmp_path / "mask.png")]) == 2
    assert ".nii.gz" in _one_error_line(capsys)


# --------------------------------------------------------------------------- carrying the mask


def _two_series(tmp_path: Path, frame_uids: tuple[str, str]) -> dict:
    """A synthetic head written as a T1w (axial) and a T2w (sagittal, tilted) series; true brain masks."""
    rng = np.random.default_rng(7)
    phantom = make_phantom((96, 96, 64), 1, rng)
    brain = phantom.brain_mask.astype(np.uint8)
    out = {}
    for (mri_type, plane, tilt), frame in zip((("T1w", "axial", 0.0), ("T2w", "sagittal", 6.0)), frame_uids):
        truth = write_dicom_series(
            tmp_path / mri_type, render(phantom, mri_type, rng), plane, rng, mri_type=mri_type,
            tilt_deg=tilt, blank=(0, 0), labels_xyz=brain, frame_uid=frame, study_uid="1.2.3",
        )
        volume, meta = read_series(tmp_path / mri_type)
        out[mri_type] = (volume, meta, truth.seg > 0)
    return out


def test_mask_carried_to_another_grid_lands_on_the_same_anatomy(tmp_path):
    series = _two_series(tmp_path, ("1.2.3.4", "1.2.3.4"))
    t1_mask = series["T1w"][2]
    calls = []

    def truth_on_the_source(image: nib.Nifti1Image, name: str) -> np.ndarray:
        calls.append((image.shape, name))
        return to_nifti_array(t1_mask)   # the exact brain of the T1w grid stands in for the CNN

    result = strip_patient({k: (v, m) for k, (v, m, _) in series.items()}, truth_on_the_source)
    assert result.source == "T1w" and calls == [(to_nifti_array(t1_mask).shape, str(tmp_path / "T1w"))]
    t2_volume, t2_meta, t2_truth = series["T2w"]
    carried = result.masks["T2w"].astype(bool)
    assert carried.shape == t2_volume.shape != series["T1w"][0].shape
    assert dice(carried, t2_truth) > 0.9
    # The geometry is what lands it: the same mask merely resized onto the T2w array misses.
    zoom = np.asarray(t2_volume.shape) / np.asarray(t1_mask.shape)
    resized = ndi.zoom(t1_mask.astype(np.float32), zoom, order=1)[tuple(slice(0, n) for n in t2_volume.shape)] > 0.5
    assert dice(resized, t2_truth) < 0.8
    # Stripped: zero outside the mask, untouched inside; the slice tissue fractions follow.
    stripped, meta = result.series["T2w"]
    assert np.all(stripped[~carried] == 0) and np.array_equal(stripped[carried], t2_volume[carried])
    assert np.allclose(meta.positive_fraction, (stripped > 0).reshape(len(stripped), -1).mean(axis=1))
    assert np.all(meta.positive_fraction <= t2_meta.positive_fraction + 1e-12)
    voxel_ml = np.prod(series["T1w"][1].pixel_spacing) * series["T1w"][1].slice_spacing / 1000
    assert result.brain_ml == pytest.approx(np.count_nonzero(t1_mask) * voxel_ml)
    # carry_mask itself: identity grid gives the mask back exactly.
    affine = series_affine(t2_meta.positions, t2_meta.orientation, t2_meta.pixel_spacing, t2_meta.slice_spacing)
    same = carry_mask(to_nifti_array(t2_truth), affine, to_nifti_array(t2_truth).shape, affine)
    assert np.array_equal(same, to_nifti_array(t2_truth))


def test_other_frame_of_reference_is_refused_before_any_extraction(tmp_path):
    series = _two_series(tmp_path, ("1.2.3.4", "1.2.3.5"))

    def never(image, name):
        raise AssertionError("the mask must not be computed when it cannot be carried")

    with pytest.raises(SkullStripError, match="FrameOfReferenceUID") as err:
        strip_patient({k: (v, m) for k, (v, m, _) in series.items()}, never)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "T2w") in message and "T1w" in message


def test_no_t1_series_is_refused(tmp_path):
    series = _two_series(tmp_path, ("1.2.3.4", "1.2.3.4"))
    volume, meta, _ = series["T2w"]
    with pytest.raises(SkullStripError, match="T1w or T1wCE"):
        strip_patient({"T2w": (volume, meta)}, lambda image, name: np.ones(image.shape, bool))


# --------------------------------------------------------------------------- is a skull there?


def _nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj), tuple(float(z) for z in image.header.get_zooms()[:3])


def _axial_slab(volume: np.ndarray, affine: np.ndarray, top_mm: float, height_mm: float) -> np.ndarray:
    """Resample a head onto an axial 5 mm slab below ``top_mm`` (RAS z): a partial-coverage series."""
    slab = np.diag([-1.0, 1.0, 5.0, 1.0])
    slab[:3, 3] = [100.0, -100.0, top_mm - height_mm]
    mapping = np.linalg.inv(affine) @ slab
    return ndi.affine_transform(volume, mapping[:3, :3], mapping[:3, 3], output_shape=(200, 280, int(height_mm / 5)),
                                order=1)


def test_unstripped_check_separates_real_samples(mprage_dir: Path, shared_data: Path):
    volume, meta = read_series(mprage_dir)
    check = looks_unstripped(volume, (meta.slice_spacing, *meta.pixel_spacing))
    assert check.unstripped and check.outside_share > 0.4 and check.signal_ml > 3000, check
    # A 40 mm axial slab through the same head: less signal than a brain holds, the scalp still shows.
    head = to_nifti_array(volume)
    affine = series_affine(meta.positions, meta.orientation, meta.pixel_spacing, meta.slice_spacing)
    slab = looks_unstripped(_axial_slab(head, affine, top_mm=75.0, height_mm=40.0), (1.0, 1.0, 5.0))
    assert slab.unstripped and slab.signal_ml < skullstrip.MAX_BRAIN_ML and slab.outside_share > 0.2, slab
    stripped = sorted((shared_data / "brats-gli-00001-000").glob("*.nii.gz"))
    stripped += sorted((shared_data / "brats2015-sample").glob("*/*_t1ce.nii.gz"))
    assert len(stripped) >= 4
    for path in stripped:
        check = looks_unstripped(*_nifti(path))
        assert not check.unstripped and check.outside_share < 0.1, (path.name, check)


def test_unstripped_check_on_a_synthetic_head(tmp_path):
    """The phantom with its scalp and skull is unstripped; the same one stripped is not (to scale: 1.5 mm voxels)."""
    rng = np.random.default_rng(3)
    phantom = make_phantom((128, 128, 100), 0, rng, voxel_mm=1.5)
    for skull_strip, expected in ((False, True), (True, False)):
        image = render(phantom, "T1w", rng, skull_strip=skull_strip, noise=0.02)
        check = looks_unstripped(image, (1.5, 1.5, 1.5))
        assert check.unstripped is expected, (skull_strip, check)


# --------------------------------------------------------------------------- deepbet on real data


@needs_deepbet
def test_mprage_through_the_command_gives_an_adult_brain(mprage_dir: Path, tmp_path, capsys):
    out = tmp_path / "mask.nii.gz"
    assert mgmt2d_main(["skull-strip", "--input", str(mprage_dir), "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    written = nib.load(str(out))
    mask = np.asarray(written.dataobj)
    volume, meta = read_series(mprage_dir)
    assert written.get_data_dtype() == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert mask.shape == to_nifti_array(volume).shape
    assert np.allclose(written.affine, series_affine(meta.positions, meta.orientation, meta.pixel_spacing,
                                                     meta.slice_spacing), atol=1e-4)
    ml = float(mask.sum()) * abs(np.linalg.det(written.affine[:3, :3])) / 1000
    # deepbet's mask is the intracranial brain (its "TIV"): adult values lie within 1100-1900 mL.
    assert 1100 < ml < 1900 and f"{ml:.1f} mL" in printed
    # One connected piece, and with it removed the same series no longer looks unstripped.
    assert ndi.label(mask)[1] == 1
    stripped = np.where(mask.transpose(2, 1, 0) > 0, volume, 0)
    assert not looks_unstripped(stripped, (meta.slice_spacing, *meta.pixel_spacing)).unstripped


@needs_deepbet
def test_blank_input_is_one_line(tmp_path, capsys):
    blank = tmp_path / "blank.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((48, 48, 32), np.float32), np.eye(4)), str(blank))
    out = tmp_path / "mask.nii.gz"
    assert mgmt2d_main(["skull-strip", "--input", str(blank), "--out", str(out), "--device", "cpu"]) == 2
    line = _one_error_line(capsys)
    assert str(blank) in line and "no brain" in line and not out.exists()


@needs_deepbet
def test_brats_t1_mask_matches_its_stripping(shared_data: Path):
    path = shared_data / "brats-gli-00001-000" / "BraTS-GLI-00001-000-t1n.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    image = nib.load(str(path))
    mask = BrainExtractor("cpu")(image)
    # BraTS's own stripping differs at the boundary by about a voxel; measured Dice 0.985.
    assert mask.shape == image.shape and dice(mask, np.asarray(image.dataobj) != 0) >= 0.97
