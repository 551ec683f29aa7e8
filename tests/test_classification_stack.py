"""Segment-and-stack: each rule of the published test-time input contract where it matters."""

import cv2
import numpy as np
import torch

from mgmt2d.classification import stack
from mgmt2d.data.contract import REFERENCE, InputContract
from mgmt2d.segmentation import model as segmenter


def _disc(shape, center, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2).astype(np.float32)


def test_nonempty_is_strictly_more_than_a_tenth_of_tissue():
    fractions = np.array([0.0, 0.1, 0.1000001, 0.5])
    assert stack.select_nonempty(fractions, 0.1).tolist() == [2, 3]
    vol = np.zeros((3, 10, 10), np.float32)
    vol[1, :5] = 100   # 50 % positive
    vol[2, 0, :5] = 100  # 5 %: near-empty
    assert stack.positive_fraction(vol).tolist() == [0.0, 0.5, 0.05]
    # the two tests agree when the smallest stored value is 0...
    for test in ("stored_positive", "above_series_min"):
        assert stack.tissue_fraction(vol, None, test).tolist() == [0.0, 0.5, 0.05]
    # ...and differ for a stored background offset (-1024): only ours still finds tissue
    offset = vol - 1024.0
    assert stack.tissue_fraction(offset, stack.positive_fraction(offset), "stored_positive").tolist() == [0, 0, 0]
    assert stack.tissue_fraction(offset, None, "above_series_min").tolist() == [0.0, 0.5, 0.05]


def test_rule_4_resize_is_int_of_224_times_1_2():
    assert segmenter.zoomed_size(224, 1.2) == 268          # round() would give 269
    rng = np.random.default_rng(0)
    sl = rng.random((1, 240, 200)) * 255.0
    got = segmenter.to_input(sl, 224, zoom=1.2)[0]
    big = cv2.resize(sl[0], (268, 268), interpolation=cv2.INTER_LINEAR)[22:246, 22:246]
    np.testing.assert_array_equal(got[0], segmenter.to_input(big[None], 224, zoom=1.0)[0, 0])
    wrong = cv2.resize(sl[0], (269, 269), interpolation=cv2.INTER_LINEAR)[22:246, 22:246]
    assert not np.allclose(got[0], segmenter.to_input(wrong[None], 224, zoom=1.0)[0, 0])


def test_rule_5_mask_touching_the_crop_edge_is_mirrored_into_the_margin():
    small = np.zeros((2, 224, 224), np.uint8)
    small[0, 100:140, 0:12] = 1          # WT touching the left edge of the crop
    back = segmenter.from_output(small, (268, 268), zoom=1.2)
    zero_padded = cv2.copyMakeBorder(small[0], 22, 22, 22, 22, cv2.BORDER_CONSTANT, value=0)
    assert back.dtype == np.uint8 and set(np.unique(back)) <= {0, 1}
    assert back[0, :, :22].sum() > 0 and zero_padded[:, :22].sum() == 0
    assert back[0].sum() > zero_padded.sum()
    # resized bilinearly (0/1 stays 0/1) to the slice size
    assert segmenter.from_output(small, (300, 250), zoom=1.2).shape == (2, 300, 250)


def test_rule_7_ring_tumour_plus_four_blobs_is_six_contours_and_dropped():
    brain = (_disc((120, 120), (60, 60), 55) * 200).astype(np.uint8)
    ring = (_disc((120, 120), (60, 60), 14) - _disc((120, 120), (60, 60), 7)).astype(np.uint8)
    blobs = [(15, 60), (105, 60), (60, 15), (60, 105)]
    wt = ring.copy()
    for c in blobs:
        wt |= _disc((120, 120), c, 3).astype(np.uint8)
    assert stack.slice_verdict(brain, wt) == stack.TOO_MANY_CONTOURS   # 2 (ring + hole) + 4
    three = ring.copy()
    for c in blobs[:3]:
        three |= _disc((120, 120), c, 3).astype(np.uint8)
    assert stack.slice_verdict(brain, three) == ""                      # 5 contours: kept
    assert stack.slice_verdict(brain, three, max_wt_contours=4) == stack.TOO_MANY_CONTOURS


def test_rule_7_area_ratio_and_brain_of_value_one():
    shape = (100, 100)
    big = _disc(shape, (50, 50), 10).astype(np.uint8)                  # ratio ~0.05
    tiny = _disc(shape, (50, 50), 3).astype(np.uint8)                  # ~0.004
    brain = (_disc(shape, (50, 50), 45) * 200).astype(np.uint8)
    assert stack.slice_verdict(brain, big) == ""
    assert stack.slice_verdict(brain, tiny) == stack.TOO_LITTLE_TUMOUR
    assert stack.slice_verdict(brain, np.zeros_like(big)) == stack.NO_TUMOUR
    ones = _disc(shape, (50, 50), 45).astype(np.uint8)                 # a "brain" of value 1
    assert stack.slice_verdict(ones, big) == stack.NO_BRAIN            # brain is > 1
    assert stack.slice_verdict(ones * 2, big) == ""


def test_stack_channels_layout():
    img = np.full((4, 5), 7, np.uint8)
    masks = np.zeros((2, 4, 5), np.uint8)
    masks[0, 1, 1] = 1
    masks[1, 2, 2] = 1
    out = stack.stack_channels(img, masks)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert out[1, 1].tolist() == [7, 255, 0] and out[2, 2].tolist() == [7, 0, 255]


class _DiscModel(torch.nn.Module):
    """Predicts WT where the (normalised) input is bright; ET nowhere. Enough to drive the filter."""

    def forward(self, x):
        bright = (x[:, :1] > 1.5).float()
        return torch.cat([bright, torch.zeros_like(bright)], dim=1)


SMALL = InputContract(seg_image_size=64)


def test_rule_6_image_channel_is_truncated_not_rounded():
    vol = np.zeros((2, 64, 64), np.float32)
    vol[:, 8:56, 8:56] = 500.0
    vol[:, 20:40, 20:40] = 1000.0                  # the bright "tumour": WT for _DiscModel
    vol[:, 30, 30] = 999.6                         # (999.6 / 1000) * 255 = 254.898
    res = stack.segment_and_stack(_DiscModel(), vol, torch.device("cpu"), stack.StackOptions(SMALL))
    assert res.kept == 2
    assert res.images[0, 30, 30, 0] == 254 and res.images[0, 25, 25, 0] == 255
    assert res.images[0, 10, 10, 0] == int(500 / 1000 * 255.0)


def test_segment_and_stack_keeps_tumour_slices_and_reports_why_others_went():
    rng = np.random.default_rng(0)
    vol = np.zeros((6, 80, 64), np.float32)
    for i in range(6):
        vol[i] = _disc((80, 64), (40, 32), 28) * 100 + np.abs(rng.normal(0, 1, (80, 64)))
    vol[2] += _disc((80, 64), (40, 32), 8) * 400     # tumour on slices 2 and 4
    vol[4] += _disc((80, 64), (40, 32), 10) * 400
    vol[5] = 0                                       # blank slice
    opts = stack.StackOptions(SMALL, seg_batch_size=4)
    model = _DiscModel()
    series, constant, blank = stack.segment_and_stack_many(
        model, [vol, np.ones((3, 20, 20), np.float32), np.zeros((3, 20, 20), np.float32)], torch.device("cpu"), opts
    )
    assert series.total == 6 and series.nonempty == 5
    assert series.slice_index.tolist() == [2, 4]
    assert series.images.shape == (2, 80, 64, 3)
    assert series.images[:, 40, 32, 1].tolist() == [255, 255]   # WT channel at the tumour
    assert series.images[:, 5, 5, 1].tolist() == [0, 0]
    assert series.dropped == {0: stack.NO_TUMOUR, 1: stack.NO_TUMOUR, 3: stack.NO_TUMOUR, 5: stack.NEAR_EMPTY}
    assert constant.kept == 0 and blank.kept == 0 and constant.reason and blank.reason
    # one series alone gives the same as inside the batch
    alone = stack.segment_and_stack(model, vol, torch.device("cpu"), opts)
    np.testing.assert_array_equal(alone.images, series.images)
    # the reference's test reads the reader's stored-value fractions, not the values themselves
    ref = stack.StackOptions(REFERENCE.with_overrides(seg_image_size=64), seg_batch_size=4)
    shifted = stack.segment_and_stack(
        model, vol - 1024.0, torch.device("cpu"), ref, fractions=stack.positive_fraction(vol)
    )
    assert shifted.slice_index.tolist() == [2, 4]
    assert stack.segment_and_stack(model, vol - 1024.0, torch.device("cpu"), ref).kept == 0
    # keep_masks (the report): every segmented slice's masks, the kept ones equal to their stacked channels
    assert series.masks is None
    kept = stack.segment_and_stack(model, vol, torch.device("cpu"), stack.StackOptions(SMALL, 4, keep_masks=True))
    np.testing.assert_array_equal(kept.images, series.images)
    assert kept.masks.shape == (6, 2, 80, 64) and kept.masks.dtype == np.uint8
    np.testing.assert_array_equal(kept.masks[[2, 4], 0] * 255, series.images[..., 1])
    np.testing.assert_array_equal(kept.masks[[2, 4], 1] * 255, series.images[..., 2])
    assert not kept.masks[5].any()                   # near-empty: never segmented


def test_transform_round_trip_of_masks():
    mask = np.zeros((2, 90, 70), np.uint8)
    mask[0, 30:60, 20:50] = 1
    small = segmenter.to_input((mask[0] * 255).astype(np.uint8)[None], 64, zoom=1.2)[0, 0]
    back = segmenter.from_output(np.stack([small > 0, small > 0]).astype(np.uint8), (90, 70), zoom=1.2)[0]
    assert back.shape == (90, 70)
    assert np.abs(back.astype(int) - mask[0]).mean() < 0.03
