"""The training augmentation of both stages, and the one way it is seeded.

Why one module: stage 1 (slices) and stage 2 (35-frame chunks) train with the same published
recipe, and seeding albumentations is easy to get wrong. ``Compose.set_random_seed(s)`` hands
the same ``s`` to every child, so HorizontalFlip, VerticalFlip and the affine then draw the same
first random number and fire together (all three or none). :func:`seed_transform` gives every
child its own stream instead, derived from (base seed, epoch, sample index).

Recipe (the published one of both stages, the albumentations defaults of 2021): HorizontalFlip(0.5),
VerticalFlip(0.5), ShiftScaleRotate(0.5) with shift 0.0625, scale 0.1, rotate 45, bilinear,
border reflect-101; applied at the native slice size, then resized, then normalised (the
callers do the last two). Masks follow the image with nearest-neighbour interpolation.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np

SHIFT_LIMIT = 0.0625
SCALE_LIMIT = 0.1
ROTATE_LIMIT = 45.0
P_FLIP = 0.5
P_SHIFT_SCALE_ROTATE = 0.5


def shift_scale_rotate(p: float = P_SHIFT_SCALE_ROTATE) -> A.Affine:
    """The 2021 ``ShiftScaleRotate()`` (albumentations 1.x defaults) spelled as ``A.Affine``.

    albumentations 1.x sampled, when the transform fired: angle ~ U(-45, 45), ONE isotropic
    scale ~ 1 + U(-0.1, 0.1), and dx, dy ~ U(-0.0625, 0.0625) independently (fractions of
    width and height), then warped about the image centre, bilinear, BORDER_REFLECT_101.
    Today's ``ShiftScaleRotate`` is deprecated and builds ``Affine(keep_ratio=False)``, which
    draws separate x and y scales (an anisotropic stretch the old one never made) and whose
    default border is constant zeros. So: ``Affine`` with the same ranges, ``keep_ratio=True``
    (one scale for both axes), no shear, reflect-101. Remaining difference: Affine truncates
    the shift to whole pixels (at most 1 px at any size), where 1.x shifted by a float.
    """
    return A.Affine(
        translate_percent={"x": (-SHIFT_LIMIT, SHIFT_LIMIT), "y": (-SHIFT_LIMIT, SHIFT_LIMIT)},
        scale=(1.0 - SCALE_LIMIT, 1.0 + SCALE_LIMIT),
        keep_ratio=True,
        rotate=(-ROTATE_LIMIT, ROTATE_LIMIT),
        shear=0.0,
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_REFLECT_101,
        fit_output=False,
        p=p,
    )


def train_transform(save_applied_params: bool = False) -> A.Compose:
    """The published train augmentation of both stages (no resize, no normalise: callers do them).

    ``save_applied_params`` makes each call report what fired (``applied_transforms``): for tests.
    """
    return A.Compose(
        [A.HorizontalFlip(p=P_FLIP), A.VerticalFlip(p=P_FLIP), shift_scale_rotate()],
        save_applied_params=save_applied_params,
    )


def _seed_tree(transform: Any, seed_seq: np.random.SeedSequence) -> None:
    transform.set_random_seed(int(seed_seq.generate_state(1)[0]))
    children = getattr(transform, "transforms", None)
    if children:  # after the parent: Compose.set_random_seed re-seeds its children alike
        for child, child_seq in zip(children, seed_seq.spawn(len(children))):
            _seed_tree(child, child_seq)


def seed_transform(transform: Any, seed: int, epoch: int, index: int) -> None:
    """Seed ``transform`` for one sample from (base seed, epoch, sample index), every child
    transform with its own independent stream (see the module docstring)."""
    _seed_tree(transform, np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]))


def sample_key(epoch: int | None) -> int:
    """The epoch part of a sample's seed: the epoch set by the engine (``set_epoch``), else a
    draw from NumPy's global RNG, which the engine re-seeds per epoch (and per worker);
    offset by 2**32 so it never collides with an epoch number."""
    if epoch is not None:
        return int(epoch)
    return 2**32 + int(np.random.randint(0, 2**32, dtype=np.int64))


def apply(
    transform: A.Compose, seed: int, epoch: int | None, index: int, image: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """One seeded draw of ``transform`` on an (H, W, C) image and optional (H, W, K) mask."""
    seed_transform(transform, seed, sample_key(epoch), index)
    if mask is None:
        return np.ascontiguousarray(transform(image=image)["image"]), None
    out = transform(image=image, mask=mask)
    return np.ascontiguousarray(out["image"]), np.ascontiguousarray(out["mask"])
