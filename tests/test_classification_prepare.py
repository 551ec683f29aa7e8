from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mgmt2d.classification.prepare import read_jpg_series
from mgmt2d.classification.stack import StackOptions, segment_and_stack_many
from mgmt2d.data.contract import InputContract


def test_jpg_series_ordered_by_number_in_name(tmp_path: Path):
    for n in (10, 2, 1):
        cv2.imwrite(str(tmp_path / f"Image-{n}.jpg"), np.full((8, 6), n * 20, np.uint8))
    vol = read_jpg_series(tmp_path)
    assert vol.shape == (3, 8, 6) and vol.dtype == np.float32
    assert [int(round(v)) for v in vol[:, 4, 3]] == [20, 40, 200]


def test_jpg_series_without_images_is_a_clear_error(tmp_path: Path):
    (tmp_path / "Image-1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="no readable .jpg"):
        read_jpg_series(tmp_path)


# ------------------------------------------------------------------------- folds

from mgmt2d.classification import prepare as prep  # noqa: E402
from mgmt2d.data.task2 import DEFAULT_EXCLUDE  # noqa: E402


def test_shipped_published_folds_load_and_match_the_582_training_patients():
    table = prep.published_folds()
    assert len(table) == table.BraTS21ID.nunique() == 582
    assert table.BraTS21ID.str.fullmatch(r"\d{5}").all() and "00000" in set(table.BraTS21ID)  # unpadded 0 -> 00000
    assert not set(DEFAULT_EXCLUDE) & set(table.BraTS21ID)
    assert sorted(table.fold.unique()) == [0, 1, 2, 3, 4]
    fold0 = table[table.fold == 0]
    assert len(fold0) == 118 and int(fold0.MGMT_value.sum()) == 62
    data = Path(prep.__file__).parents[1] / "data"
    assert "MIT License" in (data / "LICENSE-t4e_folds.txt").read_text()   # the licence travels with it
    # the 585 labelled patients minus the organisers' exclusions -> the published folds
    labels = dict(zip(table.BraTS21ID, table.MGMT_value.astype(int)))
    labels.update({"00109": 0, "00123": 1, "00709": 0})
    folds, source = prep.folds_for(labels, DEFAULT_EXCLUDE, seed=42)
    assert source == prep.FOLDS_PUBLISHED and folds.equals(table[["BraTS21ID", "MGMT_value", "fold"]])
    # other patients (synthetic data, another exclusion list) or other labels -> our own folds
    for other in ({p: v for p, v in labels.items() if p != "00000"}, {**labels, "00002": 1 - labels["00002"]}):
        folds, source = prep.folds_for(other, DEFAULT_EXCLUDE, seed=42)
        training = {p: v for p, v in other.items() if p not in DEFAULT_EXCLUDE}   # the excluded get no fold
        assert source == prep.FOLDS_GENERATED and folds.equals(prep.make_folds(training, seed=42))
        assert not set(DEFAULT_EXCLUDE) & set(folds.BraTS21ID)
    assert prep.folds_for(labels, (), seed=42)[1] == prep.FOLDS_GENERATED


def test_ensure_folds_writes_once_and_says_where_they_came_from(tmp_path: Path):
    table = prep.published_folds()
    labels = dict(zip(table.BraTS21ID, table.MGMT_value.astype(int)))
    path = tmp_path / "folds.csv"
    folds, info = prep.ensure_folds(path, labels, seed=1, exclude=())
    assert info["source"] == prep.FOLDS_PUBLISHED and folds == dict(zip(table.BraTS21ID, table.fold))
    assert prep.read_fold_table(path).equals(table[["BraTS21ID", "MGMT_value", "fold"]])
    folds_again, info = prep.ensure_folds(path, {"00001": 1}, seed=1)   # an existing file is kept
    assert folds_again == folds and info["source"].startswith("existing KFOLD_PATH (equal to")
    small = {f"{i:05d}": i % 2 for i in range(10)}
    folds, info = prep.ensure_folds(tmp_path / "own.csv", small, seed=1)
    assert info["source"] == prep.FOLDS_GENERATED and set(folds) == set(small)
    assert prep.ensure_folds(tmp_path / "own.csv", small, seed=1)[1]["source"].startswith("existing KFOLD_PATH (not")


class CentreTumour(torch.nn.Module):
    """A stand-in segmenter: WT and ET probability 1 in the central quarter of every input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 2, *x.shape[2:])
        h, w = x.shape[2:]
        out[:, :, h // 4:3 * h // 4, w // 4:3 * w // 4] = 1.0
        return out


def test_jpg_input_keeps_its_own_pixel_values_in_the_image_channel():
    """The segmenter sees the series min-max (as for DICOM); the stored image channel is the
    JPG's own 8-bit values, not re-scaled (the published JPG preparation)."""
    yy, xx = np.mgrid[:32, :32]
    brain = ((yy - 16) ** 2 + (xx - 16) ** 2 <= 14**2)
    volume = np.stack([brain * (40.0 + 10 * k) for k in range(4)]).astype(np.float32)   # values 0..70
    opts = StackOptions(InputContract(seg_image_size=32))
    dicom_like = segment_and_stack_many(CentreTumour(), [volume], torch.device("cpu"), opts)[0]
    assert dicom_like.kept == 4 and dicom_like.images[..., 0].max() == 255              # min-max scaled
    masks_before = dicom_like.images[..., 1:].copy()
    jpg = prep.with_own_pixels(dicom_like, volume)
    np.testing.assert_array_equal(jpg.images[..., 0], volume[jpg.slice_index].astype(np.uint8))
    np.testing.assert_array_equal(jpg.images[..., 1:], masks_before)                   # masks untouched
