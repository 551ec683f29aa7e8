"""``python -m mgmt2d info PATH``: what the readers see, as JSON.

PATH may be a DICOM series folder, a NIfTI file, a Task 2 patient folder
(<id>/{FLAIR,T1w,T1wCE,T2w}) or a BraTS case folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mgmt2d.data.task2 import MRI_TYPES


def series_info(folder: Path) -> dict[str, Any]:
    from mgmt2d.data.dicom import read_series

    volume, meta = read_series(folder)
    positions = meta.positions
    return {
        "path": str(folder),
        "kind": "dicom-series",
        "plane": meta.plane,
        "order_by": meta.order_by,
        "n_slices": int(volume.shape[0]),
        "shape": list(volume.shape),
        "pixel_spacing": list(meta.pixel_spacing) if meta.pixel_spacing else None,
        "slice_spacing": meta.slice_spacing,
        "first_position": positions[0].tolist() if positions is not None else None,
        "last_position": positions[-1].tolist() if positions is not None else None,
        "intensity_range": [float(volume.min()), float(volume.max())],
        "blank_slices": int(np.sum(np.ptp(volume.reshape(len(volume), -1), axis=1) == 0)),
        "resized": list(meta.resized),
        "skipped": [{"file": s.file, "reason": s.reason} for s in meta.skipped],
    }


def nifti_info(path: Path) -> dict[str, Any]:
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    info: dict[str, Any] = {
        "path": str(path),
        "kind": "nifti",
        "shape": list(data.shape),
        "dtype": str(data.dtype),
        "voxel_size": [float(v) for v in img.header.get_zooms()],
        "axis_codes": list(nib.aff2axcodes(img.affine)),
        "intensity_range": [float(data.min()), float(data.max())],
    }
    if path.name.endswith(("_seg.nii.gz", "_seg.nii")):
        labels, counts = np.unique(data, return_counts=True)
        info["labels"] = {str(int(k)): int(v) for k, v in zip(labels, counts)}
    return info


def describe(path: Path) -> dict[str, Any]:
    if path.is_file() and path.name.endswith((".nii", ".nii.gz")):
        return nifti_info(path)
    if not path.is_dir():
        raise ValueError(f"{path} is neither a folder nor a NIfTI file")
    niftis = sorted(path.glob("*.nii*"))
    if niftis:
        return {"path": str(path), "kind": "brats-case", "files": {p.name: nifti_info(p) for p in niftis}}
    typed = [path / t for t in MRI_TYPES if (path / t).is_dir()]
    if typed:
        out: dict[str, Any] = {"path": str(path), "kind": "patient", "series": {}}
        for folder in typed:
            try:
                out["series"][folder.name] = series_info(folder)
            except ValueError as err:
                out["series"][folder.name] = {"error": str(err)}
        out["missing_types"] = [t for t in MRI_TYPES if not (path / t).is_dir()]
        return out
    return series_info(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="series folder, NIfTI file, patient or BraTS case folder")


def main(args: argparse.Namespace) -> int:
    try:
        info = describe(args.path)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    return 0
