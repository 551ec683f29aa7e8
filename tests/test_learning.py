"""Stage 2 learns: on synthetic data whose label is a visible tumour property, a short CPU
training of the real classifier reaches a held-out patient AUC >= 0.8.

Stage 1 is bypassed so the check measures stage 2 alone: the true labels of every synthetic
DICOM series (``synth.generate(..., series_seg=True)``) stand in for the segmenter, and
``mgmt2d.synth_stack`` stacks them exactly as ``mgmt2d.stack`` does. The real script
``train_classification.py`` then trains ECA-NFNet-L0 + BiLSTM from random initialisation on
CPU, and the best validation patient AUC in its ``history.csv`` must reach 0.8. The label
(MGMT_value) sets the tumour's architecture: 1 = large necrotic core in a thin enhancing
rim, 0 = solid enhancement (see ``mgmt2d.synth``); nothing but the images and the stacked
masks carries it.

Status: the slow learning check itself is not in the suite yet: random-init ECA-NFNet-L0 on
this CPU did not reach 0.8 within a test's time budget (see the issue notes). What is here
checks the ground-truth stacking it will train on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mgmt2d import dicom, synth
from mgmt2d.chunk_dataset import ChunkDataset, load_index, split_by_fold
from mgmt2d.classification_prep import INDEX_COLUMNS
from mgmt2d.synth_stack import prepare_from_synth, stack_with_truth, true_masks

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fast checks


def test_stack_with_truth_on_a_phantom_slice_stack():
    """Hand-made series: near-empty slices dropped, small tumours filtered, channels stacked."""
    s, h, w = 6, 40, 40
    yy, xx = np.mgrid[:h, :w]
    brain = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 15**2).astype(np.float32)
    volume = np.stack([brain * (100 + 10 * k) for k in range(s)]) - 1024.0  # background -1024
    volume[0] = -1024.0                                   # blank slice
    seg = np.zeros((s, h, w), np.uint8)
    tumour = (yy - 20) ** 2 + (xx - 24) ** 2 <= 5**2
    core = (yy - 20) ** 2 + (xx - 24) ** 2 <= 2**2
    for k in (2, 3, 4):
        seg[k][tumour] = 4
        seg[k][core] = 1
    seg[5][(yy - 20) ** 2 + (xx - 24) ** 2 <= 1] = 2      # one-pixel tumour: filtered out
    res = stack_with_truth(volume, seg)
    assert res.total == 6 and res.nonempty == 5
    assert res.slice_index.tolist() == [2, 3, 4]
    assert res.images.shape == (3, h, w, 3) and res.images.dtype == np.uint8
    wt, et = res.images[0, ..., 1], res.images[0, ..., 2]
    assert set(np.unique(wt)) == {0, 255} and set(np.unique(et)) == {0, 255}
    assert np.array_equal(wt > 0, tumour) and np.array_equal(et > 0, tumour & ~core)
    # min-max over the non-empty slices (slice 5 is the brightest, though not kept)
    assert res.images[2, ..., 0].max() == round(255 * 140 / 150)
    masks = true_masks(np.array([[0, 1, 2, 4]]))
    assert masks[:, 0].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    none = stack_with_truth(volume, np.zeros_like(seg))
    assert none.kept == 0 and none.reason == "no slice passed the tumour filter"
    with pytest.raises(ValueError, match="do not match"):
        stack_with_truth(volume, seg[:, :-1])


@pytest.fixture(scope="module")
def small_prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """A 4-patient synthetic set, stacked with its true labels (all four MRI types)."""
    root = tmp_path_factory.mktemp("truth_stack")
    synth.generate(root / "synth", patients=4, seed=11, size="small", series_seg=True)
    frame = prepare_from_synth(root / "synth", root / "train", n_folds=2, seed=11)
    return root / "synth", root / "train", frame


def test_truth_stacking_keeps_slices_in_the_prepared_layout(small_prepared):
    synth_dir, out, frame = small_prepared
    meta = json.loads((synth_dir / "synth.json").read_text())
    on_disk = pd.read_csv(out / "index.csv", dtype={"patient": str}, keep_default_na=False)
    assert list(on_disk.columns) == INDEX_COLUMNS
    assert len(on_disk) == 4 * 4
    assert (on_disk.kept > 0).mean() >= 0.9               # most series keep tumour slices
    assert set(on_disk.label) == {0, 1}
    assert on_disk.groupby("patient").fold.nunique().max() == 1
    for row in on_disk.itertuples():
        assert row.label == meta["labels"][row.patient]
        if row.kept == 0:
            assert row.file == "" and row.note
            continue
        arr = np.load(out / row.file, allow_pickle=False)
        assert row.file == f"series/{row.patient}_{row.type}.npy"
        assert arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] == 3
        assert arr.shape[0] == row.kept <= row.total
        wt, et = arr[..., 1], arr[..., 2]
        assert set(np.unique(wt)) <= {0, 255} and set(np.unique(et)) <= {0, 255}
        assert not np.any((et > 0) & (wt == 0))           # ET inside WT
        assert (wt > 0).reshape(len(arr), -1).any(axis=1).all()
    # The stage-2 dataset reads it as prepare_classification.py's output.
    index = load_index(out, "All")
    train, val = split_by_fold(index, 0)
    assert not set(train.patient) & set(val.patient)
    ds = ChunkDataset(val, out, image_size=32, seq_len=8, stride=4)
    item = ds[0]
    assert tuple(item["image"].shape) == (8, 3, 32, 32)
    assert float(item["label"]) in (0.0, 1.0)


def test_series_truth_is_aligned_with_the_dicom_reading_order(small_prepared):
    """truth/series_seg is (S, H, W) in read_series order: T1wCE's enhancing rim is its
    brightest tissue only when the labels are not flipped along any axis."""
    synth_dir, _, _ = small_prepared
    meta = json.loads((synth_dir / "synth.json").read_text())
    checked = 0
    for patient in meta["task2_train_ids"][:3]:
        volume, _ = dicom.read_series(synth_dir / "task2" / "train" / patient / "T1wCE")
        seg = np.load(synth_dir / "truth" / "series_seg" / patient / "T1wCE.npz")["seg"]
        assert seg.shape == volume.shape

        def contrast(labels: np.ndarray) -> float:
            tissue = (labels == 0) & (volume > volume.min())
            return float(volume[labels == 4].mean() / volume[tissue].mean())

        aligned = contrast(seg)
        assert aligned > 1.4
        for axis in range(3):
            assert contrast(np.flip(seg, axis)) < aligned
        checked += 1
    assert checked == 3
