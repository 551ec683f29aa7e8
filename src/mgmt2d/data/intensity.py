"""Intensity conventions shared by every stage: min-max to uint8, ImageNet normalisation."""

from __future__ import annotations

import numpy as np


def _finite_range(vol: np.ndarray) -> tuple[np.ndarray, float, float] | None:
    """(array with non-finite values set to the minimum, min, max) over the finite values; None
    when no value is finite or the array is constant."""
    finite = np.isfinite(vol)
    if not finite.any():
        return None
    lo, hi = float(vol[finite].min()), float(vol[finite].max())
    if not hi > lo:
        return None
    if not finite.all():
        vol = np.where(finite, vol, lo)
    return vol, lo, hi


def minmax_uint8(volume: np.ndarray) -> np.ndarray | None:
    """Scale to uint8 [0, 255] over the whole array, rounded; None for a constant array.

    Non-finite values count as the minimum, so a stray NaN cannot poison the scale. The
    minimum maps to 0, which is what lets "brain = non-zero pixels" work on z-scored data.
    """
    span = _finite_range(np.asarray(volume, dtype=np.float32))
    if span is None:
        return None
    vol, lo, hi = span
    scaled = (vol - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def minmax_float(volume: np.ndarray) -> np.ndarray | None:
    """Scale to float64 [0, 255] over the whole array, ``(v - lo) / (hi - lo) * 255``; None if constant.

    The published stage-2 preparation's arithmetic, in its order and precision: its image
    channel is this value truncated to uint8 and its segmenter input is this value itself,
    so the last bit matters where truncation sits on an integer.
    """
    span = _finite_range(np.asarray(volume, dtype=np.float64))
    if span is None:
        return None
    vol, lo, hi = span
    return (vol - lo) / (hi - lo) * 255.0


IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# albumentations' Normalize arithmetic (what the published models saw): float32
# (x - mean * 255) * (1 / (std * 255)), with the constants rounded to float32 first.
_MEAN_255 = np.asarray(IMAGENET_MEAN, np.float32) * np.float32(255.0)
_INV_STD_255 = np.reciprocal(np.asarray(IMAGENET_STD, np.float32) * np.float32(255.0), dtype=np.float32)


def imagenet_normalise(image: np.ndarray) -> np.ndarray:
    """(..., 3) pixel values in [0, 255] (any dtype) -> float32 ImageNet-normalised, channels last."""
    return (image.astype(np.float32) - _MEAN_255) * _INV_STD_255


def normalise_gray(image: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 255] (uint8 or float) -> float32 (3, H, W): the slice repeated to 3 channels, normalised.

    The segmenter's input in training (segmentation.dataset) and in use (segmentation.model.to_input).
    """
    return np.ascontiguousarray(imagenet_normalise(image[..., None]).transpose(2, 0, 1))
