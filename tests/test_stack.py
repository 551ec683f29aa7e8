import numpy as np
import torch

from mgmt2d import segmenter, stack


def _disc(shape, center, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2).astype(np.float32)


def test_nonempty_uses_series_minimum_as_zero():
    vol = np.full((4, 10, 10), -1024.0, np.float32)
    vol[1, :5] = 100  # 50 % tissue
    vol[2, 0, :5] = 100  # 5 % tissue: near-empty
    assert stack.select_nonempty(vol).tolist() == [1]


def test_keep_slice_rules():
    brain = (_disc((100, 100), (50, 50), 45) * 200).astype(np.uint8)
    big = _disc((100, 100), (50, 50), 10)          # area ratio ~0.06
    tiny = _disc((100, 100), (50, 50), 3)          # ~0.006
    assert stack.keep_slice(brain, big)
    assert not stack.keep_slice(brain, tiny)
    assert not stack.keep_slice(brain, np.zeros_like(big))
    many = np.zeros((100, 100), np.uint8)
    for k in range(5):
        many |= _disc((100, 100), (20 + 12 * k, 20), 4).astype(np.uint8)
    many |= big.astype(np.uint8)
    assert stack.largest_contour(many)[1] == 6  # five small blobs + the tumour
    assert not stack.keep_slice(brain, many)                   # 6 blobs > 5
    assert stack.keep_slice(brain, many, max_wt_contours=6)    # the flag changes it
    assert not stack.keep_slice(np.zeros_like(brain), big)     # no brain: no division


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


def test_segment_and_stack_keeps_tumour_slices_and_reports_empty_series():
    rng = np.random.default_rng(0)
    vol = np.zeros((6, 80, 64), np.float32)
    for i in range(6):
        vol[i] = _disc((80, 64), (40, 32), 28) * 100 + rng.normal(0, 1, (80, 64))
    vol[2] += _disc((80, 64), (40, 32), 8) * 400     # tumour on slices 2 and 4
    vol[4] += _disc((80, 64), (40, 32), 10) * 400
    vol[5] = vol.min()                               # blank slice
    opts = stack.StackOptions(image_size=64, seg_batch_size=4)
    model = _DiscModel()
    series, constant, blank = stack.segment_and_stack_many(
        model, [vol, np.ones((3, 20, 20), np.float32), np.zeros((3, 20, 20), np.float32)], torch.device("cpu"), opts
    )
    assert series.total == 6 and series.nonempty == 5
    assert series.slice_index.tolist() == [2, 4]
    assert series.images.shape == (2, 80, 64, 3)
    assert series.images[:, 40, 32, 1].tolist() == [255, 255]   # WT channel at the tumour
    assert series.images[:, 5, 5, 1].tolist() == [0, 0]
    assert constant.kept == 0 and blank.kept == 0 and constant.reason and blank.reason
    # one series alone gives the same as inside the batch
    alone = stack.segment_and_stack(model, vol, torch.device("cpu"), opts)
    np.testing.assert_array_equal(alone.images, series.images)


def test_transform_round_trip_of_masks():
    mask = np.zeros((2, 90, 70), np.uint8)
    mask[0, 30:60, 20:50] = 1
    small = segmenter.to_input((mask[0] * 255).astype(np.uint8)[None], 64, zoom=1.2)[0, 0]
    back = segmenter.from_output((small > 0)[None].astype(np.uint8), (90, 70), zoom=1.2, nearest=True)[0]
    assert back.shape == (90, 70)
    assert np.abs(back.astype(int) - mask[0]).mean() < 0.03
