"""A synthetic hospital DICOM export: each patient's study as a PACS dump, for ``python -m mgmt2d organize``.

    python -m mgmt2d synth-export --out DIR --patients 4 --seed 0

Why: the Kaggle data came sorted into FLAIR / T1w / T1wCE / T2w folders; a hospital export
does not. This writes what one looks like, so that series typing can be tested against a
known answer and the whole pipeline can run on what ``organize`` makes of it:

- one study per patient, each patient scanned on another vendor's scanner (Siemens, GE,
  Philips, Canon in turn) with that vendor's series names and sequence headers
  (ScanningSequence, SequenceVariant, SequenceName, TR / TE / TI, ImageType, ...);
- per study: a localiser (three orientations), T2w, FLAIR, a DWI trace and its ADC map, a
  pre-contrast T1, a multi-echo series (two or three echoes at the same positions), a DSC
  perfusion series (time points at the same positions) during which the contrast agent is
  given, a post-contrast T1 and a reformat (MPR) of it; ContrastBolusAgent /
  ContrastBolusStartTime as each vendor records them (or only the series name says it);
- the four structural series are the phantoms of :mod:`mgmt2d.dev.synth` (``make_phantom``,
  ``render``, ``write_dicom_series``), skull on, so the pipeline can run on them;
- nested folders, random file names with and without ``.dcm``, series split over folders,
  and junk: a DICOMDIR, a text file, an empty file, a report without pixel data, a copy of
  an image cut short in its pixel data, and an exact duplicate of an image.

Writes ``DIR/export/`` (the dump), ``DIR/truth/series.csv`` (every series with the type a
correct typing gives it), ``DIR/truth/skipped.csv`` (the junk and why it is junk),
``DIR/truth/patients.csv`` and ``DIR/synth_export.json`` (written last: a complete export).
Deterministic by seed.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset

from mgmt2d.data.io import write_csv_atomic, write_json_atomic
from mgmt2d.dev.synth import SIZES, check_request, make_phantom, render, stable_uid, write_dicom_series

__all__ = ["ROLES", "VENDORS", "Acquisition", "Vendor", "add_arguments", "generate_export", "main"]

logger = logging.getLogger(__name__)

_MR = "1.2.840.10008.5.1.4.1.1.4"
_BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"


@dataclass(frozen=True)
class Acquisition:
    """How one vendor names and runs one kind of series (times in ms)."""

    description: str
    scanning_sequence: str
    sequence_variant: str
    sequence_name: str
    tr: float
    te: float | tuple[float, ...]          # several: a multi-echo series, one volume per echo
    image_type: str
    ti: float | None = None
    acquisition: str = "2D"
    extra: dict[str, Any] = field(default_factory=dict)   # other header values (DiffusionBValue, ...)


@dataclass(frozen=True)
class Vendor:
    manufacturer: str
    model: str
    series: dict[str, Acquisition]
    agent_on: tuple[str, ...]            # roles whose headers carry ContrastBolusAgent
    start_time_on: tuple[str, ...]       # roles whose headers carry ContrastBolusStartTime


# The series of a study in acquisition order, the MRI type each must be typed as, and how
# the synthetic images of each are made: (render type or None, plane, slices, matrix).
ROLES: dict[str, tuple[str, str, str, int | None, int | None]] = {
    "localiser": ("other", "T2w", "axial, sagittal, coronal", 3, 64),
    "T2w": ("T2w", "T2w", "axial", None, None),
    "FLAIR": ("FLAIR", "FLAIR", "axial", None, None),
    "DWI": ("other", "T2w", "axial", 20, 64),
    "ADC": ("other", "FLAIR", "axial", 20, 64),
    "T1w": ("T1w", "T1w", "sagittal", None, None),
    "multi-echo": ("other", "T2w", "axial", 16, 64),
    "perfusion": ("other", "T2w", "axial", 12, 64),
    "T1wCE": ("T1wCE", "T1wCE", "sagittal", None, None),
    "MPR": ("other", "T1wCE", "coronal", 24, 64),
}
_PERFUSION_TIME_POINTS = 8

_SIEMENS_MPRAGE = dict(scanning_sequence="GR\\IR", sequence_variant="SK\\SP\\MP", sequence_name="*tfl3d1_16ns",
                       tr=2300.0, te=2.32, ti=900.0, acquisition="3D", image_type="ORIGINAL\\PRIMARY\\M\\ND\\NORM")
_GE_BRAVO = dict(scanning_sequence="GR\\IR", sequence_variant="SK\\SP\\MP\\SS", sequence_name="efgre3d", tr=8.2,
                 te=3.2, ti=450.0, acquisition="3D", image_type="ORIGINAL\\PRIMARY\\OTHER")
_PHILIPS_TFE = dict(scanning_sequence="GR", sequence_variant="SK", sequence_name="T1TFE", tr=8.1, te=3.7, ti=0.0,
                    acquisition="3D", image_type="ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE")
_CANON_SE = dict(scanning_sequence="SE", sequence_variant="NONE", sequence_name="SE", tr=500.0, te=10.0,
                 image_type="ORIGINAL\\PRIMARY\\OTHER")

VENDORS: dict[str, Vendor] = {
    "siemens": Vendor("SIEMENS", "MAGNETOM Skyra", {
        "localiser": Acquisition("AAHead_Scout_64ch-head-coil", "GR", "SP", "*fl2d1", 8.6, 4.0,
                                 "ORIGINAL\\PRIMARY\\M\\ND\\NORM"),
        "T2w": Acquisition("t2_tse_tra_512_p2", "SE", "SK\\SP\\OSP", "*tse2d1_16", 5000.0, 98.0,
                           "ORIGINAL\\PRIMARY\\M\\ND\\NORM"),
        "FLAIR": Acquisition("t2_tirm_tra_dark-fluid", "SE\\IR", "SK\\SP\\MP\\OSP", "*tir2d1_16", 9000.0, 81.0,
                             "ORIGINAL\\PRIMARY\\M\\ND\\NORM", ti=2500.0),
        "DWI": Acquisition("ep2d_diff_3scan_trace_p2", "EP", "SK\\SP", "*ep_b1000t", 5300.0, 91.0,
                           "ORIGINAL\\PRIMARY\\DIFFUSION\\TRACEW\\ND\\NORM", extra={"DiffusionBValue": 1000}),
        "ADC": Acquisition("ep2d_diff_3scan_trace_p2_ADC", "EP", "SK\\SP", "*ep_b0_1000", 5300.0, 91.0,
                           "DERIVED\\PRIMARY\\DIFFUSION\\ADC\\ND\\NORM"),
        "T1w": Acquisition("t1_mprage_sag_p2_iso", **_SIEMENS_MPRAGE),
        "multi-echo": Acquisition("pd+t2_tse_tra", "SE", "SK\\SP\\OSP", "*tse2d2_5", 3000.0, (12.0, 96.0),
                                  "ORIGINAL\\PRIMARY\\M\\ND\\NORM"),
        "perfusion": Acquisition("ep2d_perf_p2", "EP", "SK", "*epfid2d1_128", 1500.0, 30.0,
                                 "ORIGINAL\\PRIMARY\\M\\ND\\NORM"),
        "T1wCE": Acquisition("t1_mprage_sag_p2_iso_KM", **_SIEMENS_MPRAGE),
        "MPR": Acquisition("t1_mprage_sag_p2_iso_KM_MPR_cor", "GR\\IR", "SK\\SP\\MP", "*tfl3d1_16ns", 2300.0, 2.32,
                           "DERIVED\\SECONDARY\\MPR\\CSA MPR\\CSAPARALLEL\\M\\ND\\NORM", ti=900.0),
    }, agent_on=("perfusion", "T1wCE", "MPR"), start_time_on=("perfusion", "T1wCE", "MPR")),
    "ge": Vendor("GE MEDICAL SYSTEMS", "DISCOVERY MR750", {
        "localiser": Acquisition("3Plane Loc SSFSE", "SE", "SK\\SS", "", 1500.0, 80.0,
                                 "ORIGINAL\\PRIMARY\\LOCALIZER"),
        "T2w": Acquisition("Ax T2 FRFSE", "SE", "SK\\OSP", "", 4500.0, 102.0, "ORIGINAL\\PRIMARY\\OTHER"),
        "FLAIR": Acquisition("Ax T2 FLAIR", "SE\\IR", "SK\\SP\\MP\\OSP", "", 9000.0, 120.0,
                             "ORIGINAL\\PRIMARY\\OTHER", ti=2250.0),
        "DWI": Acquisition("Ax DWI 1000b", "EP\\SE", "SK\\SS", "", 7000.0, 80.0, "ORIGINAL\\PRIMARY\\OTHER"),
        "ADC": Acquisition("Apparent Diffusion Coefficient (mm2/s)", "EP\\SE", "SK\\SS", "", 7000.0, 80.0,
                           "DERIVED\\PRIMARY\\ADC\\ADC"),
        "T1w": Acquisition("Sag T1 BRAVO", **_GE_BRAVO),
        "multi-echo": Acquisition("Ax T2 MERGE", "GR", "SP", "", 600.0, (5.0, 12.0, 19.0),
                                  "ORIGINAL\\PRIMARY\\OTHER"),
        "perfusion": Acquisition("Ax Perfusion", "EP\\GR", "SK", "", 1500.0, 35.0, "ORIGINAL\\PRIMARY\\OTHER"),
        "T1wCE": Acquisition("Sag T1 BRAVO +C", **_GE_BRAVO),
        "MPR": Acquisition("Cor T1 BRAVO +C Reformatted", "GR\\IR", "SK\\SP\\MP\\SS", "efgre3d", 8.2, 3.2,
                           "DERIVED\\SECONDARY\\REFORMATTED\\AVERAGE", ti=450.0, acquisition="3D"),
    }, agent_on=("T1wCE", "MPR"), start_time_on=()),
    "philips": Vendor("Philips Medical Systems", "Ingenia", {
        "localiser": Acquisition("SURVEY", "GR", "SK", "", 11.0, 4.6, "ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE"),
        "T2w": Acquisition("T2W_TSE", "SE", "SK", "TSE", 3000.0, 80.0, "ORIGINAL\\PRIMARY\\M_SE\\M\\SE"),
        "FLAIR": Acquisition("T2W_FLAIR", "IR", "SK\\MP", "IR", 11000.0, 125.0, "ORIGINAL\\PRIMARY\\M_IR\\M\\IR",
                             ti=2800.0),
        "DWI": Acquisition("DWI_SENSE", "SE", "SK", "", 4000.0, 70.0, "ORIGINAL\\PRIMARY\\M_SE\\M\\SE",
                           extra={"DiffusionBValue": 1000}),
        "ADC": Acquisition("dADC_DWI_SENSE", "SE", "SK", "", 4000.0, 70.0, "DERIVED\\PRIMARY\\ADC\\ADC"),
        "T1w": Acquisition("T1W_3D_TFE", **_PHILIPS_TFE),
        "multi-echo": Acquisition("DUAL_TSE", "SE", "SK", "TSE", 3000.0, (10.0, 100.0),
                                  "ORIGINAL\\PRIMARY\\M_SE\\M\\SE"),
        "perfusion": Acquisition("PERFUSION", "GR", "SK", "", 1400.0, 40.0, "ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE"),
        "T1wCE": Acquisition("T1W_3D_TFE +C", **_PHILIPS_TFE),
        "MPR": Acquisition("T1W_3D_TFE +C MPR", "GR", "SK", "T1TFE", 8.1, 3.7,
                           "DERIVED\\SECONDARY\\MPR\\M\\FFE", ti=0.0, acquisition="3D"),
    }, agent_on=("perfusion",), start_time_on=()),
    "canon": Vendor("CANON_MEC", "Vantage Orian", {
        "localiser": Acquisition("Locator", "GR", "SP", "", 20.0, 5.0, "ORIGINAL\\PRIMARY\\OTHER"),
        "T2w": Acquisition("T2WI_FSE_AX", "SE", "SK", "FSE", 4000.0, 100.0, "ORIGINAL\\PRIMARY\\OTHER"),
        "FLAIR": Acquisition("FLAIR_AX", "IR", "SK\\MP", "FLAIR", 10000.0, 100.0, "ORIGINAL\\PRIMARY\\OTHER",
                             ti=2500.0),
        "DWI": Acquisition("DWI_AX", "EP", "SK", "", 5000.0, 80.0, "ORIGINAL\\PRIMARY\\OTHER"),
        "ADC": Acquisition("ADC_AX", "EP", "SK", "", 5000.0, 80.0, "DERIVED\\SECONDARY\\ADC"),
        "T1w": Acquisition("T1WI_SE_AX", **_CANON_SE),
        "multi-echo": Acquisition("PD_T2_FSE_AX", "SE", "SK", "FSE", 3500.0, (15.0, 105.0), "ORIGINAL\\PRIMARY\\OTHER"),
        "perfusion": Acquisition("DSC_Perfusion", "EP", "SK", "", 1500.0, 30.0, "ORIGINAL\\PRIMARY\\OTHER"),
        "T1wCE": Acquisition("T1WI_SE_AX_GD", **_CANON_SE),
        "MPR": Acquisition("T1WI_SE_AX_GD_MPR_COR", "SE", "NONE", "SE", 500.0, 10.0, "DERIVED\\SECONDARY\\MPR"),
    }, agent_on=("perfusion", "T1wCE", "MPR"), start_time_on=("perfusion", "T1wCE", "MPR")),
}
_VENDOR_ORDER = ("siemens", "ge", "philips", "canon")
# Canon's T1 spin echo is an axial 2-D series; the others' T1 are sagittal 3-D.
_PLANE_OVERRIDE = {("canon", "T1w"): "axial", ("canon", "T1wCE"): "axial"}


class _Names:
    """Random, unique file and folder names in a PACS dump's styles."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.used: set[Path] = set()

    def token(self, n: int = 8) -> str:
        return "".join(self.rng.choice(list("0123456789ABCDEF"), size=n))

    def folder(self, root: Path) -> Path:
        depth = int(self.rng.integers(1, 4))
        style = int(self.rng.integers(0, 3))
        parts = [("DICOM" if style == 0 else self.token(8)) if k == 0 else
                 (f"S{self.rng.integers(0, 10**7):07d}" if style == 1 else self.token(8)) for k in range(depth)]
        return root.joinpath(*parts)

    def file(self, folder: Path) -> Path:
        while True:
            style = int(self.rng.integers(0, 3))
            name = (f"IM{self.rng.integers(0, 10**6):06d}" if style == 0 else
                    f"{self.token(12).lower()}.dcm" if style == 1 else f"1.3.{self.rng.integers(0, 10**9)}.dcm")
            path = folder / name
            if path not in self.used:
                self.used.add(path)
                return path


def _tm(when: datetime) -> str:
    return when.strftime("%H%M%S.%f")[:13]


def _da(when: datetime) -> str:
    return when.strftime("%Y%m%d")


def _scaled_pixels(ds: Dataset, factor: float) -> bytes:
    dtype = np.dtype("<i2") if int(ds.PixelRepresentation) == 1 else np.dtype("<u2")
    stored = np.frombuffer(ds.PixelData, dtype=dtype).astype(np.float64)
    info = np.iinfo(dtype)
    return np.clip(np.rint(stored * factor), info.min, info.max).astype(dtype).tobytes()


def _write(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


@dataclass
class _Study:
    patient_id: str
    vendor: str
    study_uid: str
    frame_uid: str
    start: datetime


def _headers(ds: Dataset, study: _Study, vendor: Vendor, role: str, number: int, series_uid: str,
             acquired: datetime, injection: datetime) -> None:
    """Set the patient, study and series headers of ``role`` on one file's dataset."""
    acq = vendor.series[role]
    ds.PatientID = study.patient_id
    ds.PatientName = f"SYNTH^{study.patient_id}"
    ds.StudyInstanceUID = study.study_uid
    ds.FrameOfReferenceUID = study.frame_uid
    ds.StudyDate = _da(study.start)
    ds.StudyTime = _tm(study.start)
    ds.Manufacturer = vendor.manufacturer
    ds.ManufacturerModelName = vendor.model
    ds.MagneticFieldStrength = "3"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = acq.description
    ds.ProtocolName = acq.description
    ds.ImageType = acq.image_type.split("\\")
    ds.ScanningSequence = acq.scanning_sequence.split("\\")
    ds.SequenceVariant = acq.sequence_variant.split("\\")
    if acq.sequence_name:
        ds.SequenceName = acq.sequence_name
    ds.MRAcquisitionType = acq.acquisition
    ds.RepetitionTime = f"{acq.tr:g}"
    ds.EchoTime = f"{acq.te if isinstance(acq.te, float) else acq.te[0]:g}"
    if acq.ti is not None:
        ds.InversionTime = f"{acq.ti:g}"
    for keyword, value in acq.extra.items():
        setattr(ds, keyword, value)
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = _da(acquired)
    ds.AcquisitionTime = _tm(acquired)
    ds.SeriesTime = ds.ContentTime = _tm(acquired + timedelta(minutes=3))   # written when the series ends
    if role in vendor.agent_on:
        ds.ContrastBolusAgent = "Gadovist"
    if role in vendor.start_time_on:
        ds.ContrastBolusStartTime = _tm(injection)


def _write_role(staging: Path, export: Path, names: _Names, rng: np.random.Generator, phantom: Any, study: _Study,
                role: str, number: int, acquired: datetime, injection: datetime, size: str) -> dict[str, Any]:
    """Write one series into the export (random folders and names); returns its truth row."""
    vendor = VENDORS[study.vendor]
    acq = vendor.series[role]
    expected, render_type, plane, n_slices, matrix = ROLES[role]
    series_uid = stable_uid("export-series", study.study_uid, role)
    folder = staging / role
    echoes = acq.te if isinstance(acq.te, tuple) else (acq.te,)
    planes = _PLANE_OVERRIDE.get((study.vendor, role), plane).split(", ")
    sources: list[Path] = []
    for k, pl in enumerate(planes):
        img = render(phantom, render_type, rng)
        part = folder / str(k)
        write_dicom_series(part, img, pl, rng, mri_type=render_type, patient_id=study.patient_id,
                           size=size, n_slices=n_slices, matrix=None if matrix is None else (matrix, matrix),
                           noise=float(rng.uniform(0.015, 0.035)), tilt_deg=0.0 if role == "localiser" else None,
                           blank=(0, 0) if n_slices is not None else None, series_number=number,
                           study_uid=study.study_uid, frame_uid=study.frame_uid)
        sources += sorted(part.glob("*.dcm"), key=lambda p: int(p.stem.split("-")[1]))
    volumes: list[dict[str, Any]] = []
    if role == "perfusion":
        for t in range(_PERFUSION_TIME_POINTS):
            drop = 1.0 - 0.35 * np.exp(-((t - 3) ** 2) / 2.0)   # the bolus passing
            volumes.append({"TemporalPositionIdentifier": t + 1, "NumberOfTemporalPositions": _PERFUSION_TIME_POINTS,
                            "AcquisitionNumber": t + 1, "_scale": drop, "_dt": timedelta(seconds=1.5 * t)})
    elif len(echoes) > 1:
        for e, te in enumerate(echoes):
            volumes.append({"EchoNumbers": e + 1, "EchoTime": f"{te:g}", "_scale": float(np.exp(-te / 90.0)),
                            "_dt": timedelta(0)})
    else:
        volumes.append({"_scale": 1.0, "_dt": timedelta(0)})
    # A series is spread over one or two folders of the dump.
    folders = [names.folder(export) for _ in range(int(rng.integers(1, 3)))]
    n_per_volume = len(sources)
    n_files = 0
    for v, extra in enumerate(volumes):
        for i, source in enumerate(sources):
            ds = pydicom.dcmread(source)
            _headers(ds, study, vendor, role, number, series_uid, acquired + extra["_dt"], injection)
            for keyword, value in extra.items():
                if not keyword.startswith("_"):
                    setattr(ds, keyword, value)
            if extra["_scale"] != 1.0:
                ds.PixelData = _scaled_pixels(ds, extra["_scale"])
            instance = v * n_per_volume + int(ds.InstanceNumber) if role != "localiser" else i + 1
            ds.InstanceNumber = str(instance)
            sop = stable_uid("export-image", series_uid, v, i)
            ds.SOPInstanceUID = sop
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            _write(ds, names.file(folders[int(rng.integers(0, len(folders)))]))
            n_files += 1
    shutil.rmtree(folder)
    return {"patient_id": study.patient_id, "vendor": study.vendor, "study_uid": study.study_uid,
            "series_uid": series_uid, "series_number": number, "role": role, "description": acq.description,
            "n_files": n_files, "type": expected}


def _junk(export: Path, names: _Names, rng: np.random.Generator, some_image: Path, seed: int) -> list[dict[str, str]]:
    """Files a real dump holds beside the images; each with the start of the reason organize must give."""
    rows = []
    dicomdir = Dataset()
    dicomdir.file_meta = FileMetaDataset()
    dicomdir.file_meta.MediaStorageSOPClassUID = _DICOMDIR_CLASS
    dicomdir.file_meta.MediaStorageSOPInstanceUID = stable_uid("dicomdir", seed)
    dicomdir.file_meta.TransferSyntaxUID = _EXPLICIT_LE
    dicomdir.FileSetID = "SYNTH"
    dicomdir.DirectoryRecordSequence = []
    _write(dicomdir, export / "DICOMDIR")
    rows.append({"file": "DICOMDIR", "reason": "DICOMDIR"})
    (export / "README.TXT").write_text("Exported by a PACS. Open with the viewer on this disc.\n")
    rows.append({"file": "README.TXT", "reason": "not a DICOM file"})
    empty = names.file(names.folder(export))
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.write_bytes(b"")
    rows.append({"file": str(empty.relative_to(export)), "reason": "not a DICOM file: empty file"})
    report = Dataset()
    report.file_meta = FileMetaDataset()
    report.file_meta.MediaStorageSOPClassUID = _BASIC_TEXT_SR
    report.file_meta.MediaStorageSOPInstanceUID = stable_uid("report", seed)
    report.file_meta.TransferSyntaxUID = _EXPLICIT_LE
    report.SOPClassUID = _BASIC_TEXT_SR
    report.SOPInstanceUID = report.file_meta.MediaStorageSOPInstanceUID
    report.Modality = "SR"
    report.PatientID = "0"
    path = names.file(names.folder(export))
    _write(report, path)
    rows.append({"file": str(path.relative_to(export)), "reason": "DICOM without pixel data"})
    data = some_image.read_bytes()
    cut = names.file(some_image.parent)
    cut.write_bytes(data[: len(data) - int(rng.integers(200, 2000))])
    rows.append({"file": str(cut.relative_to(export)), "reason": "truncated"})
    twin = names.file(names.folder(export))
    twin.parent.mkdir(parents=True, exist_ok=True)
    twin.write_bytes(data)   # the same SOP instance twice: either copy is skipped as the other's duplicate
    rows.append({"file": str(twin.relative_to(export)), "reason": "duplicate of",
                 "of": str(some_image.relative_to(export))})
    return rows


def generate_export(out: Path, patients: int = 4, seed: int = 0, size: str = "small") -> dict[str, Any]:
    """Write the export, its truth and ``synth_export.json`` under ``out`` (absent or empty); returns a summary."""
    from mgmt2d import __version__

    out = Path(out)
    check_request(out, size, patients, seed)
    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 0xE4907])
    names = _Names(rng)
    export = out / "export"
    export.mkdir(parents=True)
    ids = sorted({f"{int(v)}" for v in rng.integers(10**7, 10**8, size=patients)})
    while len(ids) < patients:
        ids = sorted(set(ids) | {f"{int(rng.integers(10**7, 10**8))}"})
    series_rows: list[dict[str, Any]] = []
    patient_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix=".synth-export-", dir=out) as staging:
        for k, pid in enumerate(ids):
            label = int(rng.integers(0, 2))
            phantom = make_phantom(SIZES[size].grid, label, np.random.default_rng([seed, k, 1]))
            start = datetime(2024, 1, 8, 8, 0) + timedelta(days=int(rng.integers(0, 300)), minutes=45 * k)
            study = _Study(pid, _VENDOR_ORDER[k % len(_VENDOR_ORDER)], stable_uid("export-study", seed, pid),
                           stable_uid("export-frame", seed, pid), start)
            roles = list(ROLES)
            times = {role: start + timedelta(minutes=5 * r + int(rng.integers(0, 3))) for r, role in enumerate(roles)}
            injection = times["perfusion"] + timedelta(seconds=20)
            # Philips numbers series 101, 201, ...; the others 1, 2, ...
            numbers = {role: 100 * (r + 1) + 1 if study.vendor == "philips" else r + 1 for r, role in enumerate(roles)}
            for role in roles:
                series_rows.append(_write_role(Path(staging), export, names, rng, phantom, study, role, numbers[role],
                                               times[role], injection, size))
            patient_rows.append({"patient_id": pid, "vendor": study.vendor, "MGMT_value": label})
    images = sorted(p for p in export.rglob("*") if p.is_file())
    junk = _junk(export, names, rng, images[int(rng.integers(0, len(images)))], seed)
    write_csv_atomic(out / "truth" / "series.csv", pd.DataFrame(series_rows))
    write_csv_atomic(out / "truth" / "skipped.csv", pd.DataFrame(junk))
    write_csv_atomic(out / "truth" / "patients.csv", pd.DataFrame(patient_rows))
    summary = {"generator": f"mgmt2d.synth --export {__version__}", "seed": int(seed), "patients": ids,
               "vendors": [r["vendor"] for r in patient_rows], "series": len(series_rows),
               "files": sum(r["n_files"] for r in series_rows), "junk": len(junk), "size": size}
    write_json_atomic(out / "synth_export.json", summary)
    return {**summary, "out": str(out), "export": str(export), "seconds": round(time.perf_counter() - t0, 2)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m mgmt2d synth-export``."""
    parser.add_argument("--out", type=Path, required=True, help="new or empty folder: export/, truth/")
    parser.add_argument("--patients", type=int, default=4,
                        help="patients, one study each, on Siemens, GE, Philips and Canon scanners in turn")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> identical files")
    parser.add_argument("--size", choices=sorted(SIZES), default="small",
                        help="size of the structural series (as python -m mgmt2d synth --size)")


def main(args: argparse.Namespace) -> int:
    done = generate_export(args.out, args.patients, args.seed, args.size)
    logger.info("wrote a DICOM export of %d patients (%s): %d series in %d files, %d junk files, in %.1f s",
                len(done["patients"]), ", ".join(done["vendors"]), done["series"], done["files"], done["junk"],
                done["seconds"])
    print(json.dumps({k: done[k] for k in ("out", "export", "files", "seconds")}))
    return 0
