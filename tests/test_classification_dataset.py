from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mgmt2d.classification import frames
from mgmt2d.classification.dataset import ChunkDataset, load_index, split_by_fold
from mgmt2d.classification.model import normalised_zero_frame
from mgmt2d.classification.prepare import make_folds


def _store(tmp_path: Path, kept=(3, 12)) -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(0)
    (tmp_path / "series").mkdir()
    for i, k in enumerate(kept):
        arr = (rng.random((k, 30, 20, 3)) * 255).astype(np.uint8)
        np.save(tmp_path / "series" / f"0000{i}_FLAIR.npy", arr)
        rows.append({"patient": f"0000{i}", "type": "FLAIR", "kept": k, "total": k + 2,
                     "file": f"series/0000{i}_FLAIR.npy", "label": i % 2, "fold": i, "note": ""})
    rows.append({"patient": "00009", "type": "T2w", "kept": 0, "total": 5, "file": "", "label": 1, "fold": 0,
                 "note": "no slice passed the tumour filter"})
    index = pd.DataFrame(rows)
    index.to_csv(tmp_path / "index.csv", index=False)
    return index


def test_chunks_pad_with_black_frames_and_keep_series_order(tmp_path: Path):
    _store(tmp_path)
    index = load_index(tmp_path)
    assert len(index) == 2                      # the empty series is skipped
    ds = ChunkDataset(index, tmp_path, image_size=16, seq_len=5, stride=2)
    assert len(ds) == 1 + 5                     # n=3 -> 1 chunk; n=12 -> ceil(7/2)+1 = 5
    first = ds[0]
    assert first["image"].shape == (5, 3, 16, 16) and first["patient_id"] == "00000"
    pad = normalised_zero_frame(16, 16)
    assert np.allclose(first["image"][3:].numpy(), pad.numpy())   # 2 pad frames at the end
    arr = np.load(tmp_path / "series/00001_FLAIR.npy")
    second_chunk = ds.chunk_frames(2)           # series 1, window [2, 7), native size
    np.testing.assert_array_equal(second_chunk, arr[2:7])
    np.testing.assert_array_equal(ds.chunk_frames(0)[3:], 0)


def test_augment_at_native_size_then_resize_one_draw_per_chunk(tmp_path: Path):
    """The published order (augment, resize, normalise), seeded by (seed, epoch, chunk index)."""
    _store(tmp_path)
    ds = ChunkDataset(load_index(tmp_path), tmp_path, image_size=16, seq_len=5, stride=2, augment=True, seed=3)
    plain = ChunkDataset(load_index(tmp_path), tmp_path, image_size=16, seq_len=5, stride=2)
    ds.set_epoch(4)
    changed = 0
    for idx in range(len(ds)):
        chunk = ds.chunk_frames(idx)
        if (ds.samples[idx][1] < 0).any():   # a padded chunk is made in float, as published
            chunk = chunk.astype(np.float64)
        expected = frames.normalise(frames.resize(frames.augment(chunk, ds.transform, 3, 4, idx), 16))
        got = ds[idx]["image"].numpy()
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(ds[idx]["image"].numpy(), got)   # same epoch, same draw
        changed += not np.array_equal(got, plain[idx]["image"].numpy())
    assert changed > 0
    ds.set_epoch(5)
    assert any(not np.array_equal(ds[i]["image"].numpy(), frames.normalise(frames.resize(
        frames.augment(ds.chunk_frames(i), ds.transform, 3, 4, i), 16))) for i in range(len(ds)))


def test_split_by_fold_is_patient_disjoint(tmp_path: Path):
    index = _store(tmp_path, kept=(3, 4, 5))
    train, val = split_by_fold(index[index.kept > 0], 1)
    assert set(val.patient) == {"00001"} and not set(train.patient) & set(val.patient)
    with pytest.raises(ValueError):
        split_by_fold(index[index.kept > 0], 7)


def test_make_folds_stratified_and_seeded():
    labels = {f"{i:05d}": i % 2 for i in range(20)}
    a, b = make_folds(labels, seed=1), make_folds(labels, seed=1)
    assert a.equals(b) and sorted(a.fold.unique()) == [0, 1, 2, 3, 4]
    assert (a.groupby("fold").MGMT_value.mean() == 0.5).all()
    assert not a.equals(make_folds(labels, seed=2))
    with pytest.raises(ValueError):
        make_folds({"00001": 0, "00002": 1}, n_folds=5)


def test_padded_chunk_is_made_in_float_full_chunks_in_uint8(tmp_path: Path):
    """The published dataset's zero frames were float64, so a padded chunk skipped the uint8 rounding."""
    _store(tmp_path, kept=(3, 5))
    ds = ChunkDataset(load_index(tmp_path), tmp_path, image_size=16, seq_len=5, stride=2)
    padded, full = ds[0]["image"].numpy(), ds[1]["image"].numpy()   # 3 frames + 2 pad; 5 frames
    as_float = frames.normalise(frames.resize(ds.chunk_frames(0).astype(np.float64), 16))
    as_uint8 = frames.normalise(frames.resize(ds.chunk_frames(0), 16))
    np.testing.assert_array_equal(padded, as_float)
    assert not np.array_equal(padded, as_uint8)
    np.testing.assert_array_equal(full, frames.normalise(frames.resize(ds.chunk_frames(1), 16)))
