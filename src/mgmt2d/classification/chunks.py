"""Chunk arithmetic for the stage-2 classifier (patient scores and AUC: :mod:`mgmt2d.training.metrics`).

A series' kept slices (in anatomical order) are cut into overlapping windows of ``seq_len``
frames with step ``stride``::

    n_chunks = max(ceil((n - seq_len) / stride) + 1, 1)

Window ``i`` covers frames ``[i * stride, min(i * stride + seq_len, n))``; a window shorter
than ``seq_len`` (only ever the last one) is padded *at the end* to ``seq_len``. Padding is
written as ``-1`` in :func:`chunk_index`; what a padding position holds (a black frame) is
decided by the caller, see :func:`gather_frames` and ``mgmt2d.classification.model``.

Everything here is pure numpy / Python so the dataset, training and inference code all
share one definition of a chunk.
"""

from __future__ import annotations

import numpy as np

SEQ_LEN = 35
STRIDE = 5
PAD = -1


def _check(n: int, seq_len: int, stride: int) -> None:
    """Reject arguments for which the published formula yields no (or a gapped) chunking."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if stride > seq_len:
        # With stride > seq_len frames between windows would be skipped and the last window
        # could start past the end of the series.
        raise ValueError(f"stride ({stride}) must not exceed seq_len ({seq_len})")
    if n < 0:
        raise ValueError(f"number of frames must be >= 0, got {n}")
    if n == 0:
        raise ValueError("a series with no kept slice yields no chunk; skip it before chunking")


def n_chunks(n: int, seq_len: int = SEQ_LEN, stride: int = STRIDE) -> int:
    """Number of chunks of a series of ``n`` kept slices: max(ceil((n - L) / s) + 1, 1).

    Integer arithmetic (``-((L - n) // s)`` is ceil((n - L) / s)) so there is no float
    rounding; for n < L the ceiling of a value in (-1, 0) is 0, giving one padded chunk.
    Raises ValueError for n == 0: such a series has nothing to classify.
    """
    _check(n, seq_len, stride)
    return max(-((seq_len - n) // stride) + 1, 1)


def chunk_windows(n: int, seq_len: int = SEQ_LEN, stride: int = STRIDE) -> list[tuple[int, int]]:
    """(start, stop) frame range of each chunk, stop clipped to ``n`` (padding not included)."""
    k = n_chunks(n, seq_len, stride)
    return [(i * stride, min(i * stride + seq_len, n)) for i in range(k)]


def chunk_index(n: int, seq_len: int = SEQ_LEN, stride: int = STRIDE) -> np.ndarray:
    """Frame index of every chunk position, shape (n_chunks, seq_len) int64, -1 = padding.

    Gather frames (or per-frame embeddings) with it; padding positions sit at the end of the
    last chunk only.
    """
    windows = chunk_windows(n, seq_len, stride)
    index = np.full((len(windows), seq_len), PAD, dtype=np.int64)
    for row, (start, stop) in enumerate(windows):
        index[row, : stop - start] = np.arange(start, stop, dtype=np.int64)
    return index


def gather_frames(stack: np.ndarray, index: np.ndarray, pad_value: float | int = 0) -> np.ndarray:
    """Frames ``stack[index]`` with padding positions (-1) filled with ``pad_value``.

    ``stack`` is (n, ...) (e.g. the uint8 (n, H, W, 3) stack of a series); ``index`` is one
    row (seq_len,) or several (k, seq_len) of :func:`chunk_index`. With the default
    ``pad_value=0`` a padding position is the black uint8 image *before* normalisation, the
    convention ``mgmt2d.classification.model`` follows.
    """
    stack = np.asarray(stack)
    index = np.asarray(index, dtype=np.int64)
    if stack.shape[0] == 0:
        raise ValueError("cannot gather from an empty stack")
    if index.size and int(index.max()) >= stack.shape[0]:
        raise IndexError(f"frame index {int(index.max())} out of range for {stack.shape[0]} frames")
    pad = index < 0
    out = stack[np.where(pad, 0, index)]
    if pad.any():
        out[pad] = pad_value
    return out
