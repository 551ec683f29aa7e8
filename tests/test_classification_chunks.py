"""Chunk arithmetic (published formula, edge cases) and patient-level scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mgmt2d.classification.chunks import chunk_index, chunk_windows, gather_frames, n_chunks
from mgmt2d.training.metrics import patient_auc, patient_scores

# n -> (n_chunks, windows) with seq_len=35, stride=5
CASES = {
    1: (1, [(0, 1)]),
    34: (1, [(0, 34)]),
    35: (1, [(0, 35)]),
    36: (2, [(0, 35), (5, 36)]),
    40: (2, [(0, 35), (5, 40)]),
    100: (14, [(5 * i, min(5 * i + 35, 100)) for i in range(14)]),
}


@pytest.mark.parametrize("n", sorted(CASES))
def test_counts_and_windows(n: int) -> None:
    count, windows = CASES[n]
    assert n_chunks(n) == count
    assert n_chunks(n) == max(math.ceil((n - 35) / 5) + 1, 1)  # the published float formula
    assert chunk_windows(n) == windows
    assert chunk_windows(n)[-1][1] == n  # the last window reaches the last slice


@pytest.mark.parametrize("n", sorted(CASES))
def test_index_and_padding(n: int) -> None:
    idx = chunk_index(n)
    assert idx.dtype == np.int64
    assert idx.shape == (n_chunks(n), 35)
    for row, (start, stop) in zip(idx, chunk_windows(n), strict=True):
        assert row[: stop - start].tolist() == list(range(start, stop))
        assert (row[stop - start :] == -1).all()  # padding only at the end
    # only the last chunk may be padded, and by exactly this much
    assert (idx[:-1] >= 0).all()
    assert int((idx[-1] == -1).sum()) == 35 - (chunk_windows(n)[-1][1] - chunk_windows(n)[-1][0])


def test_padding_amounts() -> None:
    assert (chunk_index(1)[0] == -1).sum() == 34
    assert (chunk_index(34)[0] == -1).sum() == 1
    assert (chunk_index(35) == -1).sum() == 0
    assert (chunk_index(36)[1] == -1).sum() == 4
    assert (chunk_index(40) == -1).sum() == 0
    assert (chunk_index(100)[-1] == -1).sum() == 0  # (100-35)/5 = 13 exactly: last window full


def test_every_frame_covered_small_params() -> None:
    for n in range(1, 60):
        for seq_len, stride in [(5, 2), (35, 5), (3, 3), (1, 1)]:
            idx = chunk_index(n, seq_len, stride)
            assert set(idx[idx >= 0].tolist()) == set(range(n))


def test_empty_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="no kept slice"):
        n_chunks(0)
    with pytest.raises(ValueError):
        chunk_index(0)
    with pytest.raises(ValueError):
        n_chunks(-1)
    with pytest.raises(ValueError):
        n_chunks(10, seq_len=2, stride=5)


def test_gather_frames_pads_with_zeros() -> None:
    stack = np.arange(1, 4, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)  # 3 frames
    out = gather_frames(stack, chunk_index(3, 5, 2)[0])
    assert out.shape == (5, 2, 2, 3) and out.dtype == np.uint8
    assert [int(f.max()) for f in out] == [1, 2, 3, 0, 0]
    assert stack[0, 0, 0, 0] == 1  # input untouched


def test_patient_scores_and_auc() -> None:
    ids = ["a", "a", "b", "b", "b", "c", "d", "d"]
    probs = [0.2, 0.4, 0.9, 0.7, 0.8, 0.5, 0.1, 0.9]
    labels = {"a": 0, "b": 1, "c": 1, "d": 0}
    scores = patient_scores(ids, probs)
    assert list(scores) == ["a", "b", "c", "d"]
    assert scores == pytest.approx({"a": 0.3, "b": 0.8, "c": 0.5, "d": 0.5})
    expected = roc_auc_score([0, 1, 1, 0], [0.3, 0.8, 0.5, 0.5])
    assert patient_auc(ids, probs, labels) == pytest.approx(expected)
    assert expected == pytest.approx(0.875)  # 3 of 4 pairs ordered, one tie
    # chunk AUC differs from patient AUC here: the metric must be the patient one
    chunk_auc = roc_auc_score([labels[i] for i in ids], probs)
    assert chunk_auc != pytest.approx(expected)


def test_patient_auc_errors() -> None:
    with pytest.raises(KeyError):
        patient_auc(["a", "b"], [0.1, 0.2], {"a": 0})
    with pytest.raises(ValueError):
        patient_auc(["a", "b"], [0.1, 0.2], {"a": 0, "b": 0})
    with pytest.raises(ValueError):
        patient_scores(["a"], [0.1, 0.2])
