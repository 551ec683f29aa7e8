"""Intensity conventions shared by every stage: min-max to uint8, ImageNet normalisation."""

from __future__ import annotations

import numpy as np


def minmax_uint8(volume: np.ndarray) -> np.ndarray | None:
    """Scale to uint8 [0, 255] over the whole array, rounded; None for a constant array.

    Non-finite values count as the minimum, so a stray NaN cannot poison the scale. The
    minimum maps to 0, which is what lets "brain = non-zero pixels" work on z-scored data.
    """
    vol = np.asarray(volume, dtype=np.float32)
    finite = np.isfinite(vol)
    if not finite.any():
        return None
    lo, hi = float(vol[finite].min()), float(vol[finite].max())
    if not hi > lo:
        return None
    if not finite.all():
        vol = np.where(finite, vol, lo)
    scaled = (vol - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalise_gray(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W) -> float32 (3, H, W): the gray slice repeated to 3 channels, ImageNet mean/std.

    The segmenter's input in training (segdata) and in use (segmenter.to_input).
    """
    x = image.astype(np.float32) / 255.0
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    return (np.broadcast_to(x, (3, *x.shape)) - mean) / std
