"""A patient's series, wherever they come from, read as the input contract says: the one entry point of
both stage-2 scripts and the report.

* ``dicom``: the Task 2 layout, ``<input>/<patient>/<type>/`` folders of DICOM files, read by
  :func:`mgmt2d.data.dicom.read_series` (``slice_order``, ``pixel_values``);
* ``nifti``: a cohort, ``<input>/<case>/`` folders with one NIfTI file per type in one of the
  namings of :mod:`mgmt2d.data.cohort`, each volume sliced in ``nifti_plane`` by
  :func:`mgmt2d.data.nifti_series.read_nifti_series`.

Either way a series is ``(volume (S, H, W) float32, SeriesMeta)`` in reading order, and reading
runs ahead of the caller (:func:`mgmt2d.data.dicom.read_ahead`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from mgmt2d.data import cohort, dicom, task2
from mgmt2d.data.contract import InputContract
from mgmt2d.data.dicom import SeriesMeta
from mgmt2d.data.nifti_series import read_nifti_series

Reader = Callable[[Path], tuple[np.ndarray, SeriesMeta]]


def reader(contract: InputContract) -> Reader:
    """How one series (a DICOM folder or a NIfTI file) is read under ``contract``."""
    if contract.input_format == "nifti":
        return functools.partial(read_nifti_series, plane=contract.nifti_plane)
    if contract.input_format != "dicom":
        raise ValueError(f"input format {contract.input_format!r} is read by prepare_classification.py only")
    return functools.partial(dicom.read_series, order=contract.slice_order, rescale=contract.pixel_values == "modality",
                             min_size=contract.min_slice_size)


def read_many(paths: Iterable[str | Path], contract: InputContract,
              workers: int = 1) -> Iterator[tuple[Path, np.ndarray | Exception, SeriesMeta | None]]:
    """:func:`reader` over ``paths`` in the background, in order; a failed series is yielded as its exception."""
    return dicom.read_ahead(iter(paths), max(int(workers), 1), reader(contract))


def patient_series(input_dir: Path, patient: str, mri_types: Sequence[str],
                   input_format: str = "dicom") -> list[tuple[str, Path]]:
    """(type, path) of each of ``mri_types`` the patient has: a DICOM folder or a NIfTI file.

    The patient's folder by :func:`mgmt2d.data.task2.find_patient_folder` (a numeric ID may be
    spelled unpadded on disk); DICOM type folders in any case (``flair``), two of one type refused.
    """
    folder = task2.find_patient_folder(input_dir, patient)
    if folder is None:
        return []
    if input_format == "nifti":
        found = cohort.discover_case(folder).series
        return [(t, found[t]) for t in mri_types if t in found]
    return list(task2.series_folders(folder, mri_types).items())


def slice_names(meta: SeriesMeta) -> list[str]:
    """A name per slice in reading order, without spaces (the per-type CSV lists them space-separated):
    the file name of a single-frame DICOM, ``file:frame<n>`` of a multi-frame one, ``file:slice<k>`` of
    a NIfTI volume (``k`` from 0 in reading order)."""
    names = []
    for k, path in enumerate(meta.files):
        frame = meta.frames[k] if k < len(meta.frames) else None
        if is_nifti(path):
            names.append(f"{path.name}:slice{k}")
        elif frame is not None:
            names.append(f"{path.name}:frame{frame}")
        else:
            names.append(path.name)
    return names


def is_nifti(path: Path) -> bool:
    return path.name.endswith(cohort.NIFTI_SUFFIXES)
