"""Segment-and-stack: a DICOM series -> tumour slices as [slice, WT*255, ET*255] uint8 images.

The one code path shared by prepare_classification.py and inference_on_test.py (GUIDE 3),
so training and test data are made the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from mgmt2d import segmenter
from mgmt2d.intensity import minmax_uint8

MIN_NONZERO_FRACTION = 0.1   # slices with at most this much non-background are dropped
MIN_AREA_RATIO = 0.025       # largest WT contour / largest brain contour must exceed this
MAX_WT_CONTOURS = 5          # more separate WT blobs than this is noise
SEG_ZOOM = 1.2               # resize to 1.2 x image size, centre-crop (GUIDE 3)


@dataclass
class StackOptions:
    image_size: int = 224
    zoom: float = SEG_ZOOM
    min_nonzero_fraction: float = MIN_NONZERO_FRACTION
    min_area_ratio: float = MIN_AREA_RATIO
    max_wt_contours: int = MAX_WT_CONTOURS
    threshold: float = 0.5
    seg_batch_size: int = 32
    amp: bool = True


@dataclass
class StackedSeries:
    """Kept slices of one series, in series order."""

    images: np.ndarray        # (K, H, W, 3) uint8: slice, WT*255, ET*255
    slice_index: np.ndarray   # (K,) positions of the kept slices in the series
    total: int                # slices in the series
    nonempty: int             # slices that passed the non-empty filter
    reason: str = ""          # why nothing was kept, when K == 0

    @property
    def kept(self) -> int:
        return len(self.images)


def select_nonempty(volume: np.ndarray, min_fraction: float = MIN_NONZERO_FRACTION) -> np.ndarray:
    """Indices of slices with more than ``min_fraction`` pixels above the series minimum.

    The series minimum stands for zero so a rescale intercept (negative background)
    does not make every pixel count as tissue.
    """
    if len(volume) == 0:
        return np.zeros(0, dtype=np.int64)
    background = volume.min()
    fraction = (volume > background).reshape(len(volume), -1).mean(axis=1)
    return np.flatnonzero(fraction > min_fraction)


def largest_contour(mask: np.ndarray) -> tuple[float, int]:
    """(area of the largest external contour, number of external contours) of a binary mask."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return 0.0, 0
    return max(cv2.contourArea(c) for c in contours), len(contours)


def keep_slice(
    image: np.ndarray,
    wt: np.ndarray,
    min_area_ratio: float = MIN_AREA_RATIO,
    max_wt_contours: int = MAX_WT_CONTOURS,
) -> bool:
    """The reference's tumour filter: a big enough main tumour blob and few blobs."""
    wt_area, n_wt = largest_contour(wt)
    if n_wt == 0 or n_wt > max_wt_contours:
        return False
    brain_area, _ = largest_contour(image > 0)
    return brain_area > 0 and wt_area / brain_area > min_area_ratio


def stack_channels(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """uint8 slice (H, W) + {0,1} masks (2, H, W) -> (H, W, 3) [slice, WT*255, ET*255]."""
    return np.dstack([image, masks[0] * 255, masks[1] * 255]).astype(np.uint8)


def _prepared(volume: np.ndarray, opts: StackOptions) -> tuple[np.ndarray, np.ndarray | None, str]:
    idx = select_nonempty(volume, opts.min_nonzero_fraction)
    if len(idx) == 0:
        return idx, None, "no non-empty slice"
    scaled = minmax_uint8(volume[idx])
    if scaled is None:
        return idx, None, "constant series"
    return idx, scaled, ""


def segment_and_stack_many(
    model: nn.Module,
    volumes: list[np.ndarray],
    device: torch.device,
    opts: StackOptions | None = None,
) -> list[StackedSeries]:
    """Segment-and-stack several series (a patient's) with one batched pass of the segmenter."""
    opts = opts or StackOptions()
    prepared = [_prepared(np.asarray(v, dtype=np.float32), opts) for v in volumes]
    inputs = [segmenter.to_input(s, opts.image_size, opts.zoom) for _, s, _ in prepared if s is not None]
    binary = (
        segmenter.predict_probs(model, np.concatenate(inputs), device, opts.seg_batch_size, opts.amp, opts.threshold)
        if inputs else np.zeros((0, 2, opts.image_size, opts.image_size), np.uint8)
    )
    results, offset = [], 0
    for volume, (idx, scaled, reason) in zip(volumes, prepared):
        total = len(volume)
        if scaled is None:
            results.append(_empty(volume, total, len(idx) if reason == "constant series" else 0, reason))
            continue
        series_masks = binary[offset:offset + len(scaled)]
        offset += len(scaled)
        images, kept = [], []
        for i, (img, small) in enumerate(zip(scaled, series_masks)):
            masks = segmenter.from_output(small, img.shape, opts.zoom, nearest=True)
            if keep_slice(img, masks[0], opts.min_area_ratio, opts.max_wt_contours):
                images.append(stack_channels(img, masks))
                kept.append(idx[i])
        if not images:
            results.append(_empty(volume, total, len(idx), "no slice passed the tumour filter"))
            continue
        results.append(StackedSeries(np.stack(images), np.asarray(kept, dtype=np.int64), total, len(idx)))
    return results


def segment_and_stack(
    model: nn.Module, volume: np.ndarray, device: torch.device, opts: StackOptions | None = None
) -> StackedSeries:
    return segment_and_stack_many(model, [volume], device, opts)[0]


def _empty(volume: np.ndarray, total: int, nonempty: int, reason: str) -> StackedSeries:
    h, w = volume.shape[1:] if volume.ndim == 3 else (0, 0)
    return StackedSeries(np.zeros((0, h, w, 3), np.uint8), np.zeros(0, np.int64), total, nonempty, reason)
