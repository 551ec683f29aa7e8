"""The stage-1 slice store: its layout, mask encoding and index columns, written by
:mod:`mgmt2d.segmentation.prepare` and read by :mod:`mgmt2d.segmentation.dataset`.

Why a store and not one file per slice: the reference wrote hundreds of thousands of
``.npy`` files. Here each case gets a handful of memory-mappable arrays (one per plane),
so the training loader reads a single slice without loading a case, and a killed run is
resumed case by case.

Store layout (``SEGMENT_DATA_DIR``)::

    dataset.json                       parameters, counts, skipped/broken cases, versions
    index.csv                          one row per slice (all cases, with their fold)
    folds.csv                          case,fold
    cases/<case_id>/<plane>_images.npy uint8 (N, H, W): the kept slices of every modality
    cases/<case_id>/<plane>_masks.npy  uint8 (M, H, W): bit 0 = WT, bit 1 = ET
    cases/<case_id>/index.csv          the case's rows (without fold)
    cases/<case_id>/case.json          done marker, written last

Planes keep the NIfTI array order (no transpose): sagittal = axis 0 -> (Y, Z),
coronal = axis 1 -> (X, Z), axial = axis 2 -> (X, Y); for BraTS 240x155, 240x155 and
240x240, which is why arrays are per plane rather than padded. A mask row is shared by
every modality that kept the same slice (``mask_row`` in the index), which keeps the
masks from dominating the store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

STORE_FORMAT = 1
PLANES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
CASE_MARKER = "case.json"
CASE_INDEX = "index.csv"
STORE_LAYOUT = {
    "cases/<case>/<plane>_images.npy": "uint8 (N, H, W); row image_row of the index",
    "cases/<case>/<plane>_masks.npy": "uint8 (M, H, W); bit 0 = WT, bit 1 = ET; row mask_row",
    "planes": "sagittal = axis 0 (Y, Z), coronal = axis 1 (X, Z), axial = axis 2 (X, Y); no transpose",
    "index.csv": "one row per slice, with fold; paths relative to this folder",
}
INDEX_COLUMNS = [
    "case", "modality", "plane", "slice", "fold", "tumour_ratio", "tumour_pixels",
    "brain_pixels", "height", "width", "image_file", "image_row", "mask_file", "mask_row",
]
CASE_COLUMNS = [c for c in INDEX_COLUMNS if c != "fold"]   # a case's own index: the fold is assigned at assembly


class SegDataError(ValueError):
    """A store problem the user must fix; the message is one line and names the fix."""


def encode_masks(wt: np.ndarray, et: np.ndarray) -> np.ndarray:
    """WT/ET -> one uint8 array, bit 0 = WT, bit 1 = ET (exact; half the bytes of two channels)."""
    return ((np.asarray(wt) > 0).astype(np.uint8) | ((np.asarray(et) > 0).astype(np.uint8) << 1))


def decode_masks(code: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_masks`: (..., H, W) -> uint8 (..., 2, H, W) [WT, ET]."""
    code = np.asarray(code)
    return np.stack([code & 1, (code >> 1) & 1], axis=-3).astype(np.uint8)


def case_store_paths(case: str) -> dict[str, str]:
    """Store-relative file names of one case's arrays (the keys of ``image_file``/``mask_file``)."""
    out = {}
    for plane in PLANES:
        out[f"{plane}_images"] = f"cases/{case}/{plane}_images.npy"
        out[f"{plane}_masks"] = f"cases/{case}/{plane}_masks.npy"
    return out


def case_dir_of(out_dir: Path, case: str) -> Path:
    return Path(out_dir) / "cases" / case


def is_case_done(out_dir: Path, case: str) -> bool:
    """A case is finished once its marker (written last) exists."""
    return (case_dir_of(out_dir, case) / CASE_MARKER).is_file()


def read_case_marker(out_dir: Path, case: str) -> dict[str, Any]:
    return json.loads((case_dir_of(out_dir, case) / CASE_MARKER).read_text())
