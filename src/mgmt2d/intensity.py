"""Min-max scaling to uint8, shared by every stage so they see the same pixels."""

from __future__ import annotations

import numpy as np


def minmax_uint8(volume: np.ndarray) -> np.ndarray | None:
    """Scale to uint8 [0, 255] over the whole array; None for a constant array (nothing to see)."""
    volume = np.asarray(volume, dtype=np.float32)
    lo, hi = float(volume.min()), float(volume.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return None
    scaled = (volume - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
