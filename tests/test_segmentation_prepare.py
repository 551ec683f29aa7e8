"""Stage-1 data: slice selection rules, the resumable store, and the training dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from mgmt2d import cli
from mgmt2d.data import intensity
from mgmt2d.segmentation import dataset as seg_dataset
from mgmt2d.segmentation import prepare as segdata
from mgmt2d.segmentation import store as slice_store
from mgmt2d.segmentation.prepare import PrepareParams
from mgmt2d.segmentation.store import SegDataError
from mgmt2d.training import augment

REPO = Path(__file__).resolve().parents[1]
SETTINGS_KEYS = (
    "DICOM_DATA_DIR", "TASK1_DIR", "CLASSIFICATION_RAW_JPG", "SEGMENT_DATA_DIR",
    "CLASSIFICATION_DATA_DIR", "KFOLD_PATH", "SEGMENT_MODEL_DIR", "CLASSIFICATION_MODEL_DIR",
    "PRETRAINED_DIR", "TEMP_DATA_DIR", "TEST_PREDICTION_FILE",
)


# --------------------------------------------------------------------------- pure functions


def test_scale_to_uint8_spans_0_255_and_guards_constant_volumes():
    vol = np.array([[[-3.0, 0.0], [1.0, 5.0]]], np.float32)
    out, ok = segdata.scale_to_uint8(vol)
    assert ok and out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    assert out[0, 0, 0] == 0  # the minimum (background) maps to 0
    const, ok = segdata.scale_to_uint8(np.full((2, 3, 4), 7.0, np.float32))
    assert not ok and const.dtype == np.uint8 and not const.any()
    with_nan = vol.copy()
    with_nan[0, 0, 1] = np.nan
    out, ok = segdata.scale_to_uint8(with_nan)
    assert ok and out[0, 0, 1] == 0 and out.max() == 255
    empty, ok = segdata.scale_to_uint8(np.full((2, 2, 2), np.nan, np.float32))
    assert not ok and not empty.any()


def test_published_keep_rule_is_the_wt_mean_over_the_whole_slice():
    """A hand-made slice where the two rules disagree: a small brain (20 x 20 of a 40 x 40
    slice) with 10 WT pixels is 2.5 % of the brain but 0.625 % of the slice."""
    images = np.zeros((2, 40, 40), np.uint8)
    wt = np.zeros((2, 40, 40), np.uint8)
    images[:, 10:30, 10:30] = 50
    wt[0, 15, 15:25] = 1               # 10 px: brain rule 0.025 (kept), slice rule 0.00625 (not)
    wt[1, 12:17, 12:32] = 1            # 100 px: 0.0625 of the slice, kept by both (WT beyond brain too)
    ratio, tumour, brain = segdata.tumour_ratios(images, wt)
    assert ratio.tolist() == [10 / 1600, 100 / 1600] and tumour.tolist() == [10, 100]
    assert segdata.kept_slices(ratio, brain, 0.01).tolist() == [1]
    ratio_b, _, _ = segdata.tumour_ratios(images, wt, of="brain")
    assert ratio_b.tolist() == [10 / 400, 100 / 400]
    assert segdata.kept_slices(ratio_b, brain, 0.01).tolist() == [0, 1]
    # the same through the case builder: the default keeps only slice 1 of the axial plane
    vol = np.zeros((40, 40, 2), np.float32)
    vol[..., 0], vol[..., 1] = images[0], images[1]
    masks = np.stack([np.moveaxis(wt, 0, -1), np.zeros((40, 40, 2), np.uint8)])
    vols = {"flair": vol}
    def axial(p):
        return sorted(r["slice"] for r in segdata.build_case_slices("00001", vols, masks, p).rows
                      if r["plane"] == "axial")

    assert axial(PrepareParams(modalities=("flair",))) == [1]
    assert axial(PrepareParams(modalities=("flair",), tumour_ratio_of="brain")) == [0, 1]
    with pytest.raises(SegDataError, match="tumour-ratio-of"):
        PrepareParams(tumour_ratio_of="head")


def test_brain_rule_is_strictly_above_ratio_and_guards_empty_brain():
    images = np.zeros((4, 10, 10), np.uint8)
    wt = np.zeros((4, 10, 10), np.uint8)
    images[1] = 1                      # 100 brain pixels, 1 tumour pixel: ratio 0.01, not kept
    wt[1, 0, 0] = 1
    images[2] = 1                      # 2 tumour pixels: ratio 0.02, kept
    wt[2, 0, :2] = 1
    wt[3, 0, 0] = 1                    # tumour but no brain: ratio 0, not kept, no division by 0
    ratio, tumour, brain = segdata.tumour_ratios(images, wt, of="brain")
    assert np.all(np.isfinite(ratio))
    assert ratio.tolist() == [0.0, 0.01, 0.02, 0.0]
    assert tumour.tolist() == [0, 1, 2, 1] and brain.tolist() == [0, 100, 100, 0]
    assert segdata.kept_slices(ratio, brain, 0.01).tolist() == [2]


@pytest.mark.parametrize("n, step", [(0, 1), (1, 1), (5, 1), (14, 1), (15, 2), (25, 2), (100, 10)])
def test_sampling_step(n: int, step: int):
    # Python round: 0.5 -> 0 and 2.5 -> 2 (half to even), as the reference computed it
    assert segdata.sampling_step(n, 0.1) == step
    kept = np.arange(100, 100 + n)
    assert segdata.sample_slices(kept, 0.1).tolist() == kept[::step].tolist()


def test_plane_extraction_axes():
    vol = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    sag, cor, ax = (segdata.plane_slices(vol, p) for p in ("sagittal", "coronal", "axial"))
    assert sag.shape == (3, 4, 5) and cor.shape == (4, 3, 5) and ax.shape == (5, 3, 4)
    np.testing.assert_array_equal(sag[1], vol[1, :, :])
    np.testing.assert_array_equal(cor[2], vol[:, 2, :])
    np.testing.assert_array_equal(ax[3], vol[:, :, 3])
    with pytest.raises(ValueError, match="unknown plane"):
        segdata.plane_slices(vol, "oblique")


def test_mask_encoding_round_trips():
    wt = np.array([[0, 1, 1, 0]], np.uint8)
    et = np.array([[0, 0, 1, 1]], np.uint8)  # ET outside WT survives too
    code = slice_store.encode_masks(wt, et)
    decoded = slice_store.decode_masks(code)
    assert decoded.shape == (2, 1, 4)
    np.testing.assert_array_equal(decoded[0], wt)
    np.testing.assert_array_equal(decoded[1], et)


def test_folds_are_deterministic_balanced_and_order_free():
    ids = [f"{i:05d}" for i in range(23)]
    folds = segdata.assign_folds(ids, 5, seed=7)
    assert folds == segdata.assign_folds(list(reversed(ids)), 5, seed=7)
    assert set(folds) == set(ids)
    sizes = np.bincount(list(folds.values()), minlength=5)
    assert sizes.tolist() == [5, 5, 5, 4, 4]
    assert folds != segdata.assign_folds(ids, 5, seed=8)
    with pytest.raises(SegDataError):
        segdata.assign_folds(ids, 1)


def test_task2_filter():
    kept, dropped = segdata.filter_task2_overlap(["00001", "00002", "00003"], {"2", "00003"})
    assert kept == ["00001"] and dropped == ["00002", "00003"]


# --------------------------------------------------------------------------- synthetic data


SHAPE = (24, 24, 16)


def _phantom(rng: np.random.Generator, shape=SHAPE) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A brain ellipsoid with a layered tumour (labels 2 / 1 / 4) at a random spot."""
    x, y, z = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    c = np.array(shape) / 2
    brain = ((x - c[0]) / (0.45 * shape[0])) ** 2 + ((y - c[1]) / (0.45 * shape[1])) ** 2 + (
        (z - c[2]) / (0.45 * shape[2])
    ) ** 2 < 1
    t = c + rng.uniform(-2, 2, 3)
    r = np.sqrt((x - t[0]) ** 2 + (y - t[1]) ** 2 + (z - t[2]) ** 2)
    seg = np.zeros(shape, np.uint8)
    seg[(r < 5) & brain] = 2
    seg[(r < 3.5) & brain] = 4
    seg[(r < 2) & brain] = 1
    vols = {}
    for k, mod in enumerate(("t1", "t1ce", "t2", "flair")):
        v = brain * (100 + 20 * k + rng.normal(0, 5, shape)) + (seg > 0) * 40
        vols[mod] = (v * brain).astype(np.float32)
    return vols, seg


def make_task1(root: Path, ids: list[str], seed: int = 0, constant: dict[str, str] | None = None) -> Path:
    rng = np.random.default_rng(seed)
    for cid in ids:
        folder = root / f"BraTS2021_{cid}"
        folder.mkdir(parents=True)
        vols, seg = _phantom(rng)
        if constant and cid in constant:
            vols[constant[cid]] = np.zeros(SHAPE, np.float32)
        for mod, v in vols.items():
            nib.save(nib.Nifti1Image(v, np.eye(4)), str(folder / f"{folder.name}_{mod}.nii.gz"))
        nib.save(nib.Nifti1Image(seg, np.eye(4)), str(folder / f"{folder.name}_seg.nii.gz"))
    return root


def make_task2(root: Path, train: list[str], test: list[str]) -> Path:
    """Only what the leakage filter reads: train_labels.csv and patient folders."""
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir(parents=True)
    pd.DataFrame({"BraTS21ID": [int(i) for i in train], "MGMT_value": [i % 2 for i in range(len(train))]}).to_csv(
        root / "train_labels.csv", index=False
    )
    for pid in train:
        (root / "train" / pid).mkdir()
    for pid in test:
        (root / "test" / pid).mkdir()
    return root


TASK1_IDS = [f"{i:05d}" for i in (0, 2, 3, 5, 6, 8, 9, 11, 12, 14)]
TASK2_TRAIN = ["00002", "00005", "00100"]
TASK2_TEST = ["00009"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth")
    task1 = make_task1(root / "task1", TASK1_IDS, constant={"00012": "t2"})
    task2 = make_task2(root / "task2", TASK2_TRAIN, TASK2_TEST)
    return {"root": root, "task1": task1, "task2": task2}


PARAMS = PrepareParams(modalities=("t1", "t1ce", "t2", "flair"), n_folds=3, seed=3)


def _prepare(synth: dict[str, Path], out: Path, params: PrepareParams = PARAMS, **kw) -> segdata.PrepareSummary:
    kw.setdefault("progress", False)
    return segdata.prepare(synth["task1"], out, params, segdata.RunOptions(dicom_dir=synth["task2"], **kw))


def test_build_case_slices_rows_point_at_the_right_pixels():
    vols, seg = _phantom(np.random.default_rng(1))
    from mgmt2d.data.brats import wt_et_masks

    masks = wt_et_masks(seg)
    content = segdata.build_case_slices("00042", vols, masks, PARAMS)
    assert content.rows and not content.warnings
    scaled = {m: segdata.scale_to_uint8(v)[0] for m, v in vols.items()}
    for row in content.rows:
        plane = row["plane"]
        img = content.images[plane][row["image_row"]]
        np.testing.assert_array_equal(img, segdata.plane_slices(scaled[row["modality"]], plane)[row["slice"]])
        mask = slice_store.decode_masks(content.masks[plane][row["mask_row"]])
        np.testing.assert_array_equal(mask[0], segdata.plane_slices(masks[0], plane)[row["slice"]])
        np.testing.assert_array_equal(mask[1], segdata.plane_slices(masks[1], plane)[row["slice"]])
        assert row["tumour_ratio"] > 0.01
    # mask rows are shared between modalities that kept the same slice
    for plane in slice_store.PLANES:
        n_unique = len({r["slice"] for r in content.rows if r["plane"] == plane})
        assert len(content.masks[plane]) == n_unique


def test_leakage_filter_folds_and_dataset_json(synth, tmp_path: Path):
    out = tmp_path / "seg"
    summary = _prepare(synth, out, workers=2)
    expected = sorted(set(TASK1_IDS) - {"00002", "00005", "00009"})
    index = seg_dataset.load_index(out)
    assert sorted(index["case"].unique()) == expected
    assert summary.dropped_task2 == ["00002", "00005", "00009"]
    assert sorted(summary.processed) == expected and not summary.resumed and not summary.broken
    # folds: patient-disjoint and covering every kept case
    folds = pd.read_csv(out / "folds.csv", dtype={"case": str})
    assert sorted(folds["case"]) == expected
    assert (index.groupby("case")["fold"].nunique() == 1).all()
    assert set(index["fold"]) == {0, 1, 2}
    assert dict(zip(folds["case"], folds["fold"])) == segdata.assign_folds(expected, 3, 3)
    # the constant t2 of 00012 is reported and contributes nothing
    assert not ((index["case"] == "00012") & (index["modality"] == "t2")).any()
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["status"] == "complete"
    assert meta["params"]["keep_rate"] == 0.1 and meta["params"]["min_tumour_ratio"] == 0.01
    assert meta["params"]["modalities"] == ["t1", "t1ce", "t2", "flair"]
    assert meta["counts"]["slices"] == len(index) == summary.n_slices
    assert meta["counts"]["cases_dropped_task2"] == 3 and meta["counts"]["cases_finished"] == len(expected)
    assert meta["skipped_modalities"] == {"00012": ["t2: constant volume, skipped"]}
    assert meta["versions"]["numpy"] == np.__version__
    assert sum(meta["counts"]["slices_by_plane"].values()) == len(index)
    # one array pair per plane per case, never one file per slice
    assert len(list((out / "cases").rglob("*.npy"))) == 6 * len(expected)


def test_keep_task2_overlap_keeps_them(synth, tmp_path: Path):
    params = PrepareParams(modalities=("flair",), n_folds=3, seed=3, keep_task2_overlap=True)
    summary = _prepare(synth, tmp_path / "seg", params)
    assert not summary.dropped_task2
    assert sorted(seg_dataset.load_index(tmp_path / "seg")["case"].unique()) == TASK1_IDS


def test_broken_case_is_listed_not_fatal(synth, tmp_path: Path):
    task1 = tmp_path / "task1"
    make_task1(task1, ["00001", "00004"])
    (task1 / "BraTS2021_00004" / "BraTS2021_00004_flair.nii.gz").write_bytes(b"not a gzip")
    summary = segdata.prepare(task1, tmp_path / "seg", PrepareParams(modalities=("flair",)),
                              segdata.RunOptions(progress=False))
    assert list(summary.broken) == ["00004"] and summary.processed == ["00001"]
    meta = json.loads((tmp_path / "seg" / "dataset.json").read_text())
    assert "00004" in meta["broken"] and meta["source"]["task2_filter"].startswith("not applied")
    assert "broken 00004" in summary.report()


def test_rerun_resumes_and_redoes_an_interrupted_case(synth, tmp_path: Path):
    out = tmp_path / "seg"
    params = PrepareParams(modalities=("flair", "t1ce"), n_folds=3, seed=3)
    first = _prepare(synth, out, params)
    index_before = pd.read_csv(out / "index.csv", dtype={"case": str})
    finished = sorted(first.processed)
    done_case, cut_case = finished[0], finished[1]
    stamp = {p: p.stat().st_mtime_ns for p in (out / "cases" / done_case).iterdir()}
    # simulate a run killed while writing cut_case: no marker, a stray temp file
    (out / "cases" / cut_case / slice_store.CASE_MARKER).unlink()
    stray = out / "cases" / cut_case / ".axial_images.npy.abc.tmp"
    stray.write_bytes(b"partial")
    second = _prepare(synth, out, params)
    assert second.processed == [cut_case]
    assert sorted(second.resumed) == [c for c in finished if c != cut_case]
    assert {p: p.stat().st_mtime_ns for p in (out / "cases" / done_case).iterdir()} == stamp
    assert not stray.exists() and slice_store.is_case_done(out, cut_case)
    pd.testing.assert_frame_equal(pd.read_csv(out / "index.csv", dtype={"case": str}), index_before)


def test_existing_store_is_never_deleted_without_overwrite(synth, tmp_path: Path):
    out = tmp_path / "seg"
    params = PrepareParams(modalities=("flair",), n_folds=3, seed=3)
    _prepare(synth, out, params)
    keep = out / "notes.txt"
    keep.write_text("mine")
    n_files = len(list((out / "cases").rglob("*")))
    other = PrepareParams(modalities=("flair",), n_folds=3, seed=4)
    with pytest.raises(SegDataError, match="--overwrite"):
        _prepare(synth, out, other)
    assert len(list((out / "cases").rglob("*"))) == n_files
    assert json.loads((out / "dataset.json").read_text())["params"]["seed"] == 3
    # a folder with slices but no dataset.json is refused too
    (out / "dataset.json").unlink()
    with pytest.raises(SegDataError, match="without dataset.json"):
        _prepare(synth, out, params)
    assert len(list((out / "cases").rglob("*"))) == n_files
    # --overwrite replaces our store and leaves foreign files alone
    summary = _prepare(synth, out, other, overwrite=True)
    assert not summary.resumed and summary.processed
    assert json.loads((out / "dataset.json").read_text())["params"]["seed"] == 4
    assert keep.read_text() == "mine"


def test_unfinished_store_is_not_loaded(tmp_path: Path):
    with pytest.raises(SegDataError, match="run prepare"):
        seg_dataset.load_index(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"status": "incomplete"}))
    with pytest.raises(SegDataError, match="unfinished"):
        seg_dataset.load_index(tmp_path)


# --------------------------------------------------------------------------- dataset


@pytest.fixture(scope="module")
def store(synth, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("store") / "seg"
    _prepare(synth, out, PrepareParams(modalities=("flair", "t1ce"), n_folds=3, seed=3))
    return out


def test_split_by_fold_is_patient_disjoint(store: Path):
    index = seg_dataset.load_index(store)
    for fold in range(3):
        train, val = seg_dataset.split_by_fold(index, fold)
        assert len(train) + len(val) == len(index) and len(val)
        assert not set(train["case"]) & set(val["case"])
        assert set(val["fold"]) == {fold}
    with pytest.raises(SegDataError, match="fold 7"):
        seg_dataset.split_by_fold(index, 7)
    bad = index.copy()
    bad.loc[0, "fold"] = (bad.loc[0, "fold"] + 1) % 3
    with pytest.raises(SegDataError, match="more than one fold"):
        seg_dataset.split_by_fold(bad, 0)


def test_dataset_shapes_and_values(store: Path):
    index = seg_dataset.load_index(store)
    train, val = seg_dataset.split_by_fold(index, 0)
    ds = seg_dataset.SegmentationSliceDataset(store, val, image_size=32)
    assert len(ds) == len(val)
    image, mask = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert mask.dtype == torch.float32 and mask.shape == (2, 32, 32)
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
    # gray repeated: undo the per-channel normalisation and the channels agree
    mean = torch.tensor(intensity.IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(intensity.IMAGENET_STD)[:, None, None]
    gray = image * std + mean
    assert torch.allclose(gray[0], gray[1], atol=1e-5) and torch.allclose(gray[0], gray[2], atol=1e-5)
    # raw slice = the stored pixels, shape of its plane
    row = val.iloc[0]
    raw_image, raw_mask = ds.raw(0)
    assert raw_image.shape == (row["height"], row["width"]) and raw_mask.shape == (2, row["height"], row["width"])
    assert raw_mask[0].sum() == row["tumour_pixels"]
    # a DataLoader batches slices of every plane (all resized to one size)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))
    assert batch[0].shape == (len(ds), 3, 32, 32) and set(val["plane"]) == set(slice_store.PLANES)


def test_augmentation_is_reproducible_per_epoch_and_sample(store: Path):
    index = seg_dataset.load_index(store)
    train, _ = seg_dataset.split_by_fold(index, 0)
    ds = seg_dataset.SegmentationSliceDataset(store, train, image_size=32, transform=augment.train_transform(), seed=5)
    ds.set_epoch(0)
    a = [ds[i] for i in range(8)]
    b = [ds[i] for i in reversed(range(8))][::-1]  # order (hence worker split) does not matter
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    ds.set_epoch(1)
    c = [ds[i] for i in range(8)]
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c))
    plain = seg_dataset.SegmentationSliceDataset(store, train, image_size=32)
    assert not all(torch.equal(x[0], p[0]) for x, p in zip(a, (plain[i] for i in range(8))))


def test_augmentation_follows_global_seeding_without_set_epoch(store: Path):
    """The engine re-seeds NumPy every epoch; without set_epoch the dataset follows it."""
    index = seg_dataset.load_index(store)
    ds = seg_dataset.SegmentationSliceDataset(store, index, image_size=32, transform=augment.train_transform(), seed=5)
    state = np.random.get_state()
    try:
        runs = []
        for s in (1, 1, 2):
            np.random.seed(s)
            runs.append(torch.stack([ds[i][0] for i in range(8)]))
    finally:
        np.random.set_state(state)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_augmentation_runs_at_native_size_before_resize(store: Path):
    """Published order: augment the stored slice, then resize (mask nearest), then normalise."""
    index = seg_dataset.load_index(store)
    ds = seg_dataset.SegmentationSliceDataset(store, index, image_size=32, transform=augment.train_transform(), seed=5)
    ds.set_epoch(2)
    for i in range(6):
        image, mask = ds.raw(i)
        aug, aug_mask = augment.apply(ds.transform, 5, 2, i, image, np.ascontiguousarray(mask.transpose(1, 2, 0)))
        expected = seg_dataset.normalise_slice(cv2.resize(aug, (32, 32), interpolation=cv2.INTER_LINEAR))
        expected_mask = cv2.resize(aug_mask, (32, 32), interpolation=cv2.INTER_NEAREST).transpose(2, 0, 1)
        x, y = ds[i]
        np.testing.assert_array_equal(x.numpy(), expected)
        np.testing.assert_array_equal(y.numpy(), expected_mask.astype(np.float32))


# --------------------------------------------------------------------------- real sample and CLI


def test_real_sample_end_to_end(brats_sample_dir: Path, tmp_path: Path):
    out = tmp_path / "seg"
    params = PrepareParams(modalities=("flair", "t1ce"))
    summary = segdata.prepare(brats_sample_dir, out, params, segdata.RunOptions(workers=2, progress=False))
    assert sorted(summary.processed) == ["90003", "90004", "90005", "90006"] and not summary.broken
    index = seg_dataset.load_index(out)
    assert set(index["modality"]) == {"flair", "t1ce"} and set(index["plane"]) == set(slice_store.PLANES)
    shapes = index.groupby("plane")[["height", "width"]].first()
    assert shapes.loc["axial"].tolist() == [240, 240] and shapes.loc["sagittal"].tolist() == [240, 155]
    assert (index["tumour_ratio"] > 0.01).all()
    # WT/ET in the store equal labels {1,2,4} / {4} of the seg file
    seg = np.asarray(nib.load(str(brats_sample_dir / "BraTS2021_90003" / "BraTS2021_90003_seg.nii.gz")).dataobj)
    ds = seg_dataset.SegmentationSliceDataset(out, index)
    rows = index.index[index["case"] == "90003"]
    for i in rows[:: max(len(rows) // 6, 1)]:
        row = index.loc[i]
        labels = segdata.plane_slices(seg, row["plane"])[row["slice"]]
        _, mask = ds.raw(i)
        np.testing.assert_array_equal(mask[0], np.isin(labels, [1, 2, 4]))
        np.testing.assert_array_equal(mask[1], labels == 4)
    # about one slice in ten per plane and modality
    per = index.groupby(["case", "modality", "plane"]).size()
    assert per.between(5, 15).all()


def test_cli_refuses_other_parameters_in_one_line(synth, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    import argparse

    settings = {k: str(tmp_path / k.lower()) for k in SETTINGS_KEYS}
    settings.update(TASK1_DIR=str(synth["task1"]), DICOM_DATA_DIR=str(synth["task2"]), SEGMENT_DATA_DIR="seg")
    (tmp_path / "SETTINGS.json").write_text(json.dumps(settings))
    base = ["--settings", str(tmp_path / "SETTINGS.json"), "--modalities", "t1ce", "--workers", "1", "--no-progress"]
    def run(argv: list[str]) -> int:   # through the one user-error boundary, as the script
        parser = argparse.ArgumentParser()
        segdata.add_arguments(parser)
        return cli.run(segdata.main, parser, argv)

    assert run(base) == 0
    assert "0 already finished" in capsys.readouterr().out
    assert run(base) == 0
    assert "7 already finished" in capsys.readouterr().out
    assert run(base + ["--seed", "9"]) == 2
    err = capsys.readouterr().err
    assert "seed: 42 -> 9" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert run(base + ["--keep-rate", "0"]) == 2
    assert "--keep-rate" in capsys.readouterr().err


# --------------------------------------------------------------------------- mgmt2d.dev.synth data


@pytest.fixture(scope="module")
def synth_small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    synth_mod = pytest.importorskip("mgmt2d.dev.synth")
    out = tmp_path_factory.mktemp("synth_small") / "data"
    summary = synth_mod.generate(out, patients=6, seed=1, size="small")
    return out, summary


def test_synthetic_dataset_through_the_cli(synth_small, tmp_path: Path):
    data, info = synth_small
    settings = json.loads((data / "SETTINGS.json").read_text())
    settings = {k: str(data / v) for k, v in settings.items()}
    settings["SEGMENT_DATA_DIR"] = str(tmp_path / "seg")
    (tmp_path / "SETTINGS.json").write_text(json.dumps(settings))
    cmd = [sys.executable, str(REPO / "prepare_segmentation_data.py"), "--settings", str(tmp_path / "SETTINGS.json"),
           "--workers", "1", "--n-folds", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr
    task2 = set(info["task2_train_ids"]) | set(info["task2_test_ids"])
    expected = sorted(set(info["task1_ids"]) - task2)
    assert expected and set(info["shared_ids"]) and set(info["shared_ids"]) <= set(info["task1_ids"])
    index = seg_dataset.load_index(tmp_path / "seg")
    assert sorted(index["case"].unique()) == expected
    meta = json.loads((tmp_path / "seg" / "dataset.json").read_text())
    assert meta["dropped_task2"] == sorted(set(info["task1_ids"]) & task2)
    assert meta["params"]["modalities"] == ["t1", "t1ce", "t2", "flair"]
    grid = info["grid"]
    ds = seg_dataset.SegmentationSliceDataset(tmp_path / "seg", index, image_size=64)
    image, mask = ds[len(ds) - 1]
    assert image.shape == (3, 64, 64) and mask.shape == (2, 64, 64) and mask[0].sum() > 0
    assert ds.raw(0)[0].shape == tuple(g for k, g in enumerate(grid) if k != slice_store.PLANES[index.loc[0, "plane"]])
    # --keep-task2-overlap keeps them all
    params = PrepareParams(modalities=("flair",), n_folds=2, keep_task2_overlap=True)
    summary = segdata.prepare(data / "task1", tmp_path / "seg_all", params,
                              segdata.RunOptions(dicom_dir=data / "task2", progress=False))
    assert not summary.dropped_task2
    assert sorted(seg_dataset.load_index(tmp_path / "seg_all")["case"].unique()) == sorted(info["task1_ids"])
