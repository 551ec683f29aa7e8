"""Segment-and-stack: a DICOM series -> tumour slices as [slice, WT*255, ET*255] uint8 images.

The one code path shared by prepare_classification.py and inference_on_test.py, so training
and test data are made the same way. The rules are the published solution's test-time input
contract, one implementation for every model:

1. slices in the order the reader gives (the contract's ``slice_order``);
2. a slice is used when more than 10 % of its stored pixel values are > 0 (the contract's
   ``nonempty_test``; ours counts values above the series minimum);
3. the used slices are min-max scaled over the series to float [0, 255] (float64);
4. segmenter input: that float slice x3, resized to int(224 * 1.2) = 268, centre-cropped to
   224, ImageNet-normalised; the segmenter in fp32; threshold > 0.5;
5. inverse: the 0/1 masks padded back to 268 with reflect-101 borders, resized bilinearly;
6. image channel: the float slice truncated to uint8;
7. kept when the brain (image > 1) and the WT mask, contours found with RETR_TREE (holes
   count), give 1 to 5 WT contours and largest WT / largest brain contour area > 0.025;
8. stacked [image, WT*255, ET*255].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from mgmt2d.data.contract import InputContract
from mgmt2d.data.intensity import minmax_float
from mgmt2d.segmentation import model as segmenter

# Why a slice was dropped (the report and the per-type CSV show these).
NEAR_EMPTY = "near-empty"
NO_TUMOUR = "no tumour"
TOO_MANY_CONTOURS = "too many contours"
TOO_LITTLE_TUMOUR = "too little tumour"
NO_BRAIN = "no brain"


@dataclass
class StackOptions:
    contract: InputContract = InputContract()
    seg_batch_size: int = 32
    amp: bool = False   # the reference segmented in fp32: a 0.5 threshold is sensitive to half precision
    keep_masks: bool = False   # also return every segmented slice's masks (the report's NIfTI and overlays)

    @property
    def image_size(self) -> int:
        return self.contract.seg_image_size


@dataclass
class StackedSeries:
    """Kept slices of one series, in series order."""

    images: np.ndarray        # (K, H, W, 3) uint8: slice, WT*255, ET*255
    slice_index: np.ndarray   # (K,) positions of the kept slices in the series
    total: int                # slices in the series
    nonempty: int             # slices that passed the non-empty filter
    reason: str = ""          # why nothing was kept, when K == 0
    dropped: dict[int, str] | None = None   # series position -> why that slice was not kept
    masks: np.ndarray | None = None   # (total, 2, H, W) uint8 {0,1} [WT, ET] per series slice, with keep_masks

    @property
    def kept(self) -> int:
        return len(self.images)


def positive_fraction(volume: np.ndarray) -> np.ndarray:
    """Per slice, the fraction of values > 0 (the reader gives it on stored values; this is for arrays)."""
    if len(volume) == 0:
        return np.zeros(0)
    return (np.asarray(volume) > 0).reshape(len(volume), -1).mean(axis=1)


def tissue_fraction(volume: np.ndarray, fractions: np.ndarray | None, test: str) -> np.ndarray:
    """Per slice, the fraction of tissue pixels under the contract's ``nonempty_test``.

    "stored_positive": stored values > 0 (``fractions``, the reader's ``meta.positive_fraction``;
    without it, the values themselves); "above_series_min": values above the series minimum.
    """
    if test == "stored_positive":
        return positive_fraction(volume) if fractions is None else np.asarray(fractions)
    volume = np.asarray(volume)
    if len(volume) == 0:
        return np.zeros(0)
    return (volume > volume.min()).reshape(len(volume), -1).mean(axis=1)


def select_nonempty(fractions: np.ndarray, min_fraction: float) -> np.ndarray:
    """Indices of slices whose positive fraction exceeds ``min_fraction`` (strictly, as the reference)."""
    return np.flatnonzero(np.asarray(fractions) > min_fraction)


def _contours(binary: np.ndarray) -> list[np.ndarray]:
    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    return list(contours)


def slice_verdict(
    image: np.ndarray, wt: np.ndarray, min_area_ratio: float = 0.025, max_wt_contours: int = 5
) -> str:
    """"" when the slice is kept, else why not: the reference's tumour filter (rule 7).

    ``image`` is the uint8 image channel, ``wt`` the 0/1 WT mask at the same size. Every
    contour counts, holes included (RETR_TREE): a ring tumour is two contours.
    """
    wt_contours = _contours(wt > 0)
    if not wt_contours:
        return NO_TUMOUR
    if len(wt_contours) > max_wt_contours:
        return TOO_MANY_CONTOURS
    brain_contours = _contours(image > 1)
    brain_area = max((cv2.contourArea(c) for c in brain_contours), default=0.0)
    if brain_area <= 0:
        return NO_BRAIN   # the reference divides by zero here
    wt_area = max(cv2.contourArea(c) for c in wt_contours)
    return "" if wt_area / brain_area > min_area_ratio else TOO_LITTLE_TUMOUR


def stack_channels(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """uint8 slice (H, W) + {0,1} masks (2, H, W) -> (H, W, 3) [slice, WT*255, ET*255]."""
    return np.dstack([image, masks[0] * 255, masks[1] * 255]).astype(np.uint8)


def prepare_series(
    volume: np.ndarray, fractions: np.ndarray | None, contract: InputContract
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Rules 2-3: (used slice indices, their float [0, 255] values or None, why None).

    ``fractions`` is the per-slice fraction of stored values > 0 (the DICOM reader's
    ``meta.positive_fraction``), used by the reference's non-empty test.
    """
    tissue = tissue_fraction(volume, fractions, contract.nonempty_test)
    idx = select_nonempty(tissue, contract.min_nonzero_fraction)
    if len(idx) == 0:
        return idx, None, "no non-empty slice"
    scaled = minmax_float(np.asarray(volume)[idx])
    if scaled is None:
        return idx, None, "constant series"
    return idx, scaled, ""


def stack_series(
    volume: np.ndarray,
    prepared: tuple[np.ndarray, np.ndarray | None, str],
    masks: Iterable[np.ndarray],
    contract: InputContract,
    keep_masks: bool = False,
) -> StackedSeries:
    """Rules 6-8 on a prepared series: ``masks`` yields each used slice's {0,1} (2, H, W) [WT, ET] mask.

    The masks come from the segmenter (:func:`segment_and_stack_many`) or, in the learning
    check, from the true labels (``mgmt2d.dev.synth_stack``): the same filter and stacking.
    ``keep_masks``: the result also holds every series slice's masks (zeros where not segmented).
    """
    idx, scaled, reason = prepared
    total = len(volume)
    full = np.zeros((total, 2, *np.shape(volume)[1:]), np.uint8) if keep_masks else None
    used = set(idx.tolist())
    dropped = {i: NEAR_EMPTY for i in range(total) if i not in used}
    if scaled is None:
        if reason == "constant series":
            dropped.update({int(i): reason for i in idx})
        return _empty(volume, total, len(idx) if reason == "constant series" else 0, reason, dropped, full)
    images, kept = [], []
    for i, (value, mask) in enumerate(zip(scaled, masks, strict=True)):
        if full is not None:
            full[idx[i]] = mask
        image = value.astype(np.uint8)   # truncation, as the reference (254.9 -> 254)
        verdict = slice_verdict(image, mask[0], contract.min_area_ratio, contract.max_wt_contours)
        if verdict:
            dropped[int(idx[i])] = verdict
            continue
        images.append(stack_channels(image, mask))
        kept.append(idx[i])
    if not images:
        return _empty(volume, total, len(idx), "no slice passed the tumour filter", dropped, full)
    return StackedSeries(np.stack(images), np.asarray(kept, dtype=np.int64), total, len(idx), "", dropped, full)


def segment_and_stack_many(
    model: nn.Module,
    volumes: Sequence[np.ndarray],
    device: torch.device,
    opts: StackOptions | None = None,
    fractions: Sequence[np.ndarray | None] | None = None,
) -> list[StackedSeries]:
    """Segment-and-stack several series (a patient's) with one batched pass of the segmenter.

    ``fractions[i]``: series i's ``meta.positive_fraction`` (None: from the volume).
    """
    opts = opts or StackOptions()
    c = opts.contract
    fractions = list(fractions) if fractions is not None else [None] * len(volumes)
    if len(fractions) != len(volumes):
        raise ValueError(f"{len(volumes)} volumes but {len(fractions)} fraction arrays")
    prepared = [prepare_series(v, f, c) for v, f in zip(volumes, fractions)]
    inputs = [segmenter.to_input(s, c.seg_image_size, c.seg_zoom) for _, s, _ in prepared if s is not None]
    binary = (
        segmenter.predict_probs(model, np.concatenate(inputs), device, opts.seg_batch_size, opts.amp, c.threshold)
        if inputs else np.zeros((0, 2, c.seg_image_size, c.seg_image_size), np.uint8)
    )
    results, offset = [], 0
    for volume, prep in zip(volumes, prepared):
        n = 0 if prep[1] is None else len(prep[1])
        shape = np.asarray(volume).shape[1:]
        masks = (segmenter.from_output(small, shape, c.seg_zoom) for small in binary[offset:offset + n])
        offset += n
        results.append(stack_series(volume, prep, masks, c, opts.keep_masks))
    return results


def segment_and_stack(
    model: nn.Module, volume: np.ndarray, device: torch.device, opts: StackOptions | None = None,
    fractions: np.ndarray | None = None,
) -> StackedSeries:
    return segment_and_stack_many(model, [volume], device, opts, [fractions])[0]


def _empty(volume: np.ndarray, total: int, nonempty: int, reason: str, dropped: dict[int, str],
           masks: np.ndarray | None = None) -> StackedSeries:
    h, w = volume.shape[1:] if volume.ndim == 3 else (0, 0)
    return StackedSeries(np.zeros((0, h, w, 3), np.uint8), np.zeros(0, np.int64), total, nonempty, reason, dropped,
                         masks)
