"""Stacked [slice, WT, ET] frames -> classifier input: augmentation, zoom TTA, resize, normalisation.

Shared by the training dataset and inference so both feed the network identically.
A chunk is handled as one (H, W, T*3) image, so one augmentation draw covers all its frames.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from mgmt2d.data.intensity import imagenet_normalise
from mgmt2d.training import augment as seeded

_CV_MAX_CHANNELS = 512


def _per_channel_groups(image: np.ndarray, fn) -> np.ndarray:
    """Apply an OpenCV call to a many-channel image in groups it accepts."""
    if image.ndim == 2 or image.shape[2] <= 4:
        return fn(image)
    parts = [fn(np.ascontiguousarray(image[..., i:i + 4])) for i in range(0, image.shape[2], 4)]
    return np.concatenate([p if p.ndim == 3 else p[..., None] for p in parts], axis=2)


def to_channels(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) -> (H, W, T*3)."""
    t, h, w, c = frames.shape
    return np.ascontiguousarray(frames.transpose(1, 2, 0, 3).reshape(h, w, t * c))


def from_channels(image: np.ndarray, t: int) -> np.ndarray:
    """(H, W, T*3) -> (T, H, W, 3)."""
    h, w, _ = image.shape
    return image.reshape(h, w, t, 3).transpose(2, 0, 1, 3)


def resize(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3) uint8, bilinear."""
    if frames.shape[1:3] == (size, size):
        return frames
    image = _per_channel_groups(
        to_channels(frames), lambda x: cv2.resize(x, (size, size), interpolation=cv2.INTER_LINEAR)
    )
    return from_channels(image, len(frames))


def zoom(frames: np.ndarray, scale: float) -> np.ndarray:
    """Test-time zoom-in: affine scale about the centre (the published TTA); 1.0 returns the input."""
    if scale == 1.0:
        return frames
    h, w = frames.shape[1:3]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), 0.0, scale)  # pixel-centre convention
    image = _per_channel_groups(
        to_channels(frames),
        lambda x: cv2.warpAffine(
            x, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        ),
    )
    return from_channels(image, len(frames))


def test_time_view(frames: np.ndarray, image_size: int, zoom_factor: float) -> np.ndarray:
    """(T, H, W, 3) stacked frames as the classifier sees them at test time, before normalisation:
    zoomed in about the centre (TTA), then resized. uint8 frames stay uint8 (OpenCV rounds after
    each step), float frames stay float."""
    return resize(zoom(frames, zoom_factor), image_size)


def chunk_frames(frames: np.ndarray, index: np.ndarray, image_size: int, zoom_factor: float) -> np.ndarray:
    """The real frames of one chunk (a row of ``chunks.chunk_index``, -1 = padding) as seen at test time.

    A padded (short) chunk's frames are made in float, as the published inference made them:
    its zero frames turned that chunk into a float64 array before the zoom and resize, while
    full chunks stayed uint8.
    """
    real = index[index >= 0]
    source = frames[real]
    if len(real) < len(index):
        source = source.astype(np.float64)
    return test_time_view(source, image_size, zoom_factor)


def normalise(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) in [0, 255] (uint8 or float) -> (T, 3, H, W) float32 with ImageNet mean/std."""
    return np.ascontiguousarray(imagenet_normalise(frames).transpose(0, 3, 1, 2))


def augment(frames: np.ndarray, transform: A.Compose, seed: int, epoch: int | None, index: int) -> np.ndarray:
    """One seeded draw of ``transform`` (:func:`mgmt2d.training.augment.apply`) applied identically to
    every frame of a chunk, pad frames included: the chunk is warped as one (H, W, T*3) image."""
    image = to_channels(frames)
    if image.shape[2] > _CV_MAX_CHANNELS:
        raise ValueError(f"a chunk of {len(frames)} frames exceeds OpenCV's {_CV_MAX_CHANNELS} channels")
    out, _ = seeded.apply(transform, seed, epoch, index, image)
    return from_channels(out, len(frames))
