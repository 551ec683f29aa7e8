"""Pictures of what the pipeline sees: slices with WT/ET contours, captions, grids, heatmaps.

Pure functions on uint8 RGB arrays (OpenCV drawing only), shared by the TensorBoard previews
of both trainers and by the per-patient report, so a contour looks the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# RGB colours: WT (whole tumour) yellow, ET (enhancing tumour) red, notes orange.
WT_COLOUR = (255, 220, 0)
ET_COLOUR = (255, 40, 40)
NOTE_COLOUR = (255, 150, 0)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Any 2-D array -> uint8 by min-max (a constant image becomes black)."""
    image = np.asarray(image, dtype=np.float32)
    if image.size == 0:
        return np.zeros(image.shape, np.uint8)
    lo, hi = float(np.min(image)), float(np.max(image))
    if not hi > lo:
        return np.zeros(image.shape, np.uint8)
    return ((image - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def contour_overlay(
    image: np.ndarray, wt: np.ndarray | None = None, et: np.ndarray | None = None, thickness: int = 1
) -> np.ndarray:
    """Gray slice (H, W) with the outlines of the {0,1} WT and ET masks -> RGB uint8 (H, W, 3)."""
    gray = image if image.dtype == np.uint8 else to_uint8(image)
    rgb = np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    for mask, colour in ((wt, WT_COLOUR), (et, ET_COLOUR)):
        if mask is None:
            continue
        binary = (np.asarray(mask) > 0).astype(np.uint8)
        if binary.shape != gray.shape:
            binary = cv2.resize(binary, gray.shape[::-1], interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, colour, thickness)
    return rgb


def stacked_overlay(frame: np.ndarray) -> np.ndarray:
    """A stacked stage-2 frame (H, W, 3) [slice, WT*255, ET*255] -> the slice with its contours."""
    frame = np.asarray(frame)
    return contour_overlay(frame[..., 0].astype(np.uint8), frame[..., 1] > 127, frame[..., 2] > 127)


def caption(image: np.ndarray, text: str, colour: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """``image`` (H, W, 3) with ``text`` (one line per ``\\n``) on a black band above it."""
    h, w = image.shape[:2]
    lines = text.split("\n")
    scale = max(0.3, min(0.6, w / 350))
    line_h = int(26 * scale) + 4
    out = np.zeros((h + line_h * len(lines) + 2, w, 3), np.uint8)
    out[line_h * len(lines) + 2:] = image
    for n, line in enumerate(lines):
        cv2.putText(out, line, (2, line_h * (n + 1) - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return out


def mark_dropped(image: np.ndarray, reason: str) -> np.ndarray:
    """A dropped slice: darkened, crossed by a diagonal, captioned with why it was not kept."""
    dim = (np.asarray(image, np.float32) * 0.45).astype(np.uint8)
    h, w = dim.shape[:2]
    cv2.line(dim, (0, 0), (w - 1, h - 1), NOTE_COLOUR, 1, cv2.LINE_AA)
    return caption(dim, reason, NOTE_COLOUR)


def grid(tiles: Sequence[np.ndarray], columns: int, pad: int = 2) -> np.ndarray:
    """Tiles (each (h, w, 3), padded to the largest) in a grid of ``columns``, row by row."""
    if not tiles:
        raise ValueError("grid of no tiles")
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    out = np.zeros((rows * (th + pad) + pad, columns * (tw + pad) + pad, 3), np.uint8)
    for n, tile in enumerate(tiles):
        r, c = divmod(n, columns)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        out[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    return out


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, vmax: float | None = None, alpha: float = 0.45) -> np.ndarray:
    """RGB (H, W, 3) blended with the jet-coloured ``heat`` (H, W) scaled by ``vmax`` (default its max)."""
    heat = np.asarray(heat, np.float32)
    top = float(heat.max()) if vmax is None else float(vmax)
    scaled = np.clip(heat / top, 0, 1) if top > 0 else np.zeros_like(heat)
    colour = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    if colour.shape[:2] != image.shape[:2]:
        colour = cv2.resize(colour, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    return (image.astype(np.float32) * (1 - alpha) + colour.astype(np.float32) * alpha).astype(np.uint8)


def resize_tile(image: np.ndarray, width: int) -> np.ndarray:
    """``image`` scaled to ``width`` pixels wide, keeping its aspect ratio (nearest when enlarging)."""
    h, w = image.shape[:2]
    if w == width:
        return image
    height = max(1, round(h * width / w))
    interp = cv2.INTER_AREA if width < w else cv2.INTER_NEAREST
    return cv2.resize(image, (width, height), interpolation=interp)
