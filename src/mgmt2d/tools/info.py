"""``python -m mgmt2d info PATH``: what the readers see, as JSON.

PATH may be a DICOM series folder, a NIfTI file, a Task 2 patient folder
(<id>/{FLAIR,T1w,T1wCE,T2w}) or a BraTS case folder. A series folder that holds several
volumes (time points, echoes, ...) shows them all under ``volumes`` and describes the one the
reader uses, or the one ``--volume K`` names.
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from mgmt2d.data.task2 import MRI_TYPES, series_folders


class UnreadableNiftiError(ValueError):
    """A NIfTI file that nibabel cannot read (not gzip, truncated, not NIfTI at all)."""


def series_info(folder: Path, volume_index: int | None = None) -> dict[str, Any]:
    from mgmt2d.data.dicom import read_series

    volume, meta = read_series(folder, volume=volume_index)
    positions = meta.positions
    split = meta.volumes
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
        "multi_frame": any(f is not None for f in meta.frames),
        "n_volumes": split.n_volumes if split is not None else 1,
        "volume": meta.volume,
        "volumes": split.to_dict() if split is not None and split.n_volumes > 1 else None,
        "pixel_spacings": [{"spacing": list(sp), "slices": n} for sp, n in meta.pixel_spacings],
        "warnings": list(meta.warnings),
    }


def nifti_info(path: Path) -> dict[str, Any]:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except (ImageFileError, EOFError, OSError, ValueError, zlib.error) as err:
        # gzip.BadGzipFile, a truncated stream (EOFError), a header nibabel rejects, ...
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UnreadableNiftiError(
            f"{path} is not a readable NIfTI file ({type(err).__name__}: {reason}); "
            "it may be truncated or not NIfTI at all: copy or export it again"
        ) from None
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


def describe(path: Path, volume: int | None = None) -> dict[str, Any]:
    if path.is_file() and path.name.endswith((".nii", ".nii.gz")):
        return nifti_info(path)
    if not path.is_dir():
        raise ValueError(f"{path} is neither a folder nor a NIfTI file")
    niftis = sorted(path.glob("*.nii*"))
    if niftis:
        return {"path": str(path), "kind": "brats-case", "files": {p.name: nifti_info(p) for p in niftis}}
    typed = series_folders(path)   # type folders in any case (flair, T1WCE)
    if typed:
        out: dict[str, Any] = {"path": str(path), "kind": "patient", "series": {}}
        for mri_type, folder in typed.items():
            try:
                out["series"][mri_type] = series_info(folder)
            except ValueError as err:
                out["series"][mri_type] = {"error": str(err)}
        out["missing_types"] = [t for t in MRI_TYPES if t not in typed]
        return out
    return series_info(path, volume)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="series folder, NIfTI file, patient or BraTS case folder")
    parser.add_argument("--volume", type=int, default=None, metavar="K",
                        help="for a series folder holding several volumes: describe volume K (from 0) "
                             "instead of the one the reader chooses")


def main(args: argparse.Namespace) -> int:
    print(json.dumps(describe(args.path, args.volume), indent=2))
    return 0
