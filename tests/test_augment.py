"""The one training augmentation of both stages: what fires, how often, and how it warps."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from mgmt2d.classification import frames
from mgmt2d.training import augment

N_DRAWS = 400


def within(count: int, n: int, p: float, sds: float = 4.5) -> bool:
    """``count`` is inside the binomial(n, p) range mean +- ``sds`` standard deviations."""
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    return mean - sds * sd <= count <= mean + sds * sd


def applied(seed: int, epoch: int, n: int) -> list[dict[str, dict]]:
    t = augment.train_transform(save_applied_params=True)
    image = np.zeros((20, 30, 6), np.uint8)
    out = []
    for i in range(n):
        augment.seed_transform(t, seed, epoch, i)
        out.append(dict(t(image=image)["applied_transforms"]))
    return out


def test_each_transform_draws_independently():
    """Every flip combination and the affine occur at their own rates (p = 0.5 each). The old
    bug (one seed for the whole Compose) gave only 'nothing' or 'everything'."""
    draws = applied(0, 0, N_DRAWS)
    combos = Counter((("HorizontalFlip" in d), ("VerticalFlip" in d)) for d in draws)
    assert set(combos) == {(False, False), (True, False), (False, True), (True, True)}
    for combo in combos:
        assert within(combos[combo], N_DRAWS, 0.25), (combo, combos)
    affine = [("Affine" in d) for d in draws]
    assert within(sum(affine), N_DRAWS, 0.5)
    both_flips_and_affine = sum(a and ("HorizontalFlip" in d) and ("VerticalFlip" in d) for a, d in zip(affine, draws))
    assert within(both_flips_and_affine, N_DRAWS, 0.125)
    # the same (seed, epoch, index) gives the same draw; another epoch another one
    assert [sorted(d) for d in applied(0, 0, 20)] == [sorted(d) for d in draws[:20]]
    assert [sorted(d) for d in applied(0, 1, 20)] != [sorted(d) for d in draws[:20]]


def test_shift_scale_rotate_has_the_2021_distribution():
    """One isotropic scale in 1 +- 0.1, angle in +-45 deg, spread over the whole range."""
    params = [d["Affine"] for d in applied(1, 0, N_DRAWS) if "Affine" in d]
    scales = np.array([(p["scale"]["x"], p["scale"]["y"]) for p in params])
    angles = np.array([p["rotate"] for p in params])
    assert np.array_equal(scales[:, 0], scales[:, 1])                  # keep_ratio: never a stretch
    assert scales.min() >= 0.9 and scales.max() <= 1.1 and scales.min() < 0.92 and scales.max() > 1.08
    assert angles.min() >= -45 and angles.max() <= 45 and angles.min() < -40 and angles.max() > 40
    shifts = np.array([p["matrix"][:2, 2] for p in params])
    assert np.abs(shifts).max() < 30                                   # bounded, not wild


def test_border_is_reflect_101_and_masks_stay_binary():
    """A uniform image stays uniform after any draw (a constant-zero border would blacken the
    corners of a rotation); mask labels are moved, never blended (nearest)."""
    t = augment.train_transform()
    image = np.full((40, 50), 90, np.uint8)
    mask = np.zeros((40, 50, 2), np.uint8)
    mask[10:25, 12:30, 0] = 1
    mask[14:18, 16:20, 1] = 1
    fired = 0
    for i in range(24):
        out, out_mask = augment.apply(t, 3, 0, i, image, mask)
        assert out.shape == image.shape and np.all(out == 90)
        assert set(np.unique(out_mask)) <= {0, 1} and out_mask.shape == mask.shape
        assert np.all(out_mask[..., 0][out_mask[..., 1] > 0] == 1)   # ET stays inside WT
        fired += not np.array_equal(out_mask, mask)
        # the image moves with its mask (one draw for both)
        drawn, drawn_mask = augment.apply(t, 3, 0, i, (mask[..., 0] * 200).astype(np.uint8), mask)
        assert ((drawn > 100) == (drawn_mask[..., 0] > 0)).mean() > 0.97
    assert fired > 0


def test_a_chunk_shares_one_draw_pad_frames_included():
    rng = np.random.default_rng(0)
    chunk = (rng.random((6, 24, 18, 3)) * 255).astype(np.uint8)
    chunk[4:] = 0                                                      # two pad frames at the end
    t = augment.train_transform()
    changed = 0
    for index in range(16):
        out = frames.augment(chunk, t, 7, 2, index)
        assert out.shape == chunk.shape
        for k in range(len(chunk)):                                    # frame by frame, the same seed
            np.testing.assert_array_equal(out[k], frames.augment(chunk[k:k + 1], t, 7, 2, index)[0])
        assert not out[4:].any()                                       # pad frames stay black
        changed += not np.array_equal(out, chunk)
    assert changed > 8


def test_without_an_epoch_the_key_follows_numpy_global_seeding():
    state = np.random.get_state()
    try:
        np.random.seed(1)
        a = augment.sample_key(None)
        np.random.seed(1)
        b = augment.sample_key(None)
    finally:
        np.random.set_state(state)
    assert a == b and a >= 2**32 and augment.sample_key(3) == 3


def test_too_many_frames_for_opencv_is_an_error():
    with pytest.raises(ValueError, match="channels"):
        frames.augment(np.zeros((200, 8, 8, 3), np.uint8), augment.train_transform(), 0, 0, 0)
