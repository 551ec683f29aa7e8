"""Masks back in DICOM: the SEG read back with highdicom, checked by dciodvfy, and <patient>.json."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

import mgmt2d
from mgmt2d.data.dicom import read_series
from mgmt2d.inference import dicom_seg
from mgmt2d.inference.dicom_seg import DicomSegError, SegOptions, write_seg

SLICES, SIZE = 8, 32
# The invalid source values are on purpose; pydicom warns each time it reads them.
pytestmark = [pytest.mark.filterwarnings("ignore:The value length:UserWarning"),
              pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")]


def write_series(folder: Path, *, patient_sex: str | None = "0000", study_date: str = "20230231", frames: int = 1,
                 geometry: bool = True, patient_id: str = "P0001") -> Path:
    """8 axial single-frame MR slices of 32x32, with real-export faults in the patient/study headers.

    File names run against the slice positions (f7.dcm is the lowest slice), so a SEG that followed
    the file names instead of the reader's order would put every mask on the wrong slice.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    for k in range(SLICES):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"f{SLICES - 1 - k}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.Manufacturer, ds.ImageType = "MR", "ACME", ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Test^Patient", patient_id, "19700101"
        if patient_sex is not None:
            ds.PatientSex = patient_sex
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study, study_date, "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.StudyDescription = "brain " * 14          # over LO's 64 characters
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series, 3, "t2_flair_tra"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.InstanceNumber, ds.PatientPosition, ds.Laterality = k + 1, "HFS", ""
        if geometry:
            ds.ImagePositionPatient = [-8.0, -8.0, 2.5 * k]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 2.5
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
        ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = 10, 500, 1
        ds.Rows = ds.Columns = SIZE
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = rng.integers(0, 400, (frames, SIZE, SIZE)).astype(np.int16).tobytes()
        ds.save_as(path, enforce_file_format=True)
    return folder


def masks(n: int = SLICES) -> tuple[np.ndarray, np.ndarray]:
    """WT on slices 1-5 and ET inside it on 3-4: slices 0, 6, 7 empty in both, 1, 2, 5 without ET; not symmetric
    in the slice order, so a reversed or file-name order shows."""
    wt = np.zeros((n, SIZE, SIZE), np.uint8)
    et = np.zeros_like(wt)
    wt[1:6, 8:22, 10:20] = 1
    wt[4, 3, 30] = 1                      # one stray pixel near the border
    et[3:5, 12:16, 12:17] = 1
    return wt, et


def source_uids(files: list[Path]) -> list[str]:
    return [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


@pytest.fixture()
def series(tmp_path: Path) -> tuple[np.ndarray, object]:
    return read_series(write_series(tmp_path / "FLAIR"))


# --------------------------------------------------------------------------- the SEG read back


def test_seg_reads_back_as_the_masks_per_source_instance(series, tmp_path: Path, caplog) -> None:
    volume, meta = series
    assert [p.name for p in meta.files][:2] == ["f7.dcm", "f6.dcm"]   # reader order is not file-name order
    wt, et = masks()
    out = tmp_path / "out" / "FLAIR_seg.dcm"
    with caplog.at_level(logging.WARNING, logger="mgmt2d.inference.dicom_seg"):
        assert write_seg(meta.files, wt, et.astype(bool), out, SegOptions(label="FLAIR")) == out

    seg = hd.seg.segread(out)
    uids = source_uids(meta.files)
    pixels = seg.get_pixels_by_source_instance(uids)          # (S, H, W, segments), in the reader's order
    assert pixels.shape == (SLICES, SIZE, SIZE, 2)
    np.testing.assert_array_equal(pixels[..., 0], wt)
    np.testing.assert_array_equal(pixels[..., 1], et)
    # Every source slice has a frame per segment, empty ones included: nothing is left "unmentioned".
    assert int(seg.NumberOfFrames) == 2 * SLICES
    assert seg.SegmentationType == "BINARY" and seg.SegmentsOverlap == "YES"

    # References: the source series, each source instance, and frame by frame its own instance.
    first = pydicom.dcmread(meta.files[0], stop_before_pixels=True)
    assert seg.StudyInstanceUID == first.StudyInstanceUID and seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != first.SeriesInstanceUID
    (ref_series,) = seg.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == first.SeriesInstanceUID
    assert sorted(i.ReferencedSOPInstanceUID for i in ref_series.ReferencedInstanceSequence) == sorted(uids)
    position_of = {str(u): [float(v) for v in pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient]
                   for u, f in zip(uids, meta.files)}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == position_of[source]

    # Segments: coded concepts, AUTOMATIC, algorithm mgmt2d with its version.
    labels = [seg.get_segment_description(n).SegmentLabel for n in (1, 2)]
    assert labels == ["Whole tumour", "Enhancing tumour"]
    types = [(c.value, c.scheme_designator) for c in seg.segmented_property_types]
    assert types == [("108369006", "SCT"), ("C113842", "NCIt")]
    assert {c.value for c in seg.segmented_property_categories} == {"49755003"}
    for n in (1, 2):
        description = seg.get_segment_description(n)
        assert description.algorithm_type.value == "AUTOMATIC"
        algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("mgmt2d", mgmt2d.__version__)
    assert seg.Manufacturer == "mgmt2d" and seg.SoftwareVersions == mgmt2d.__version__
    assert int(seg.SeriesNumber) == 1003 and "FLAIR" in seg.SeriesDescription

    # The invalid source values: the SEG carries them emptied or cut, each change logged.
    assert seg.PatientSex == "" and seg.StudyDate == "" and len(seg.StudyDescription) == 64
    assert (seg.PatientID, str(seg.PatientName)) == ("P0001", "Test^Patient")
    logged = caplog.text
    assert "PatientSex '0000'" in logged and "StudyDate '20230231'" in logged and "StudyDescription" in logged


def test_all_empty_masks_still_give_a_valid_seg(series, tmp_path: Path) -> None:
    _, meta = series
    empty = np.zeros((SLICES, SIZE, SIZE), np.uint8)
    out = write_seg(meta.files, empty, empty, tmp_path / "empty.dcm")
    seg = hd.seg.segread(out)
    assert int(seg.NumberOfFrames) == 2 * SLICES
    assert not seg.get_pixels_by_source_instance(source_uids(meta.files)).any()


def test_highdicom_alone_refuses_the_source_and_lenient_header_fixes_it(series) -> None:
    """The failure the lenient copy exists for: highdicom raises on PatientSex "0000" as it stands."""
    _, meta = series
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in meta.files]
    wt, et = masks()
    args = dict(pixel_array=np.stack([wt, et], -1), segmentation_type="BINARY",
                segment_descriptions=[hd.seg.SegmentDescription(
                    n, f"s{n}", pydicom.sr.codedict.codes.SCT.MorphologicallyAbnormalStructure,
                    pydicom.sr.codedict.codes.SCT.Neoplasm, "MANUAL") for n in (1, 2)],
                series_instance_uid=hd.UID(), series_number=1, sop_instance_uid=hd.UID(), instance_number=1,
                manufacturer="m", manufacturer_model_name="m", software_versions="1", device_serial_number="1")
    with pytest.raises(ValueError, match="0000"):
        hd.seg.Segmentation(source_images=headers, **args)
    fixed = [dicom_seg.lenient_header(headers[0]), *headers[1:]]
    assert hd.seg.Segmentation(source_images=fixed, **args).PatientSex == ""


def test_lenient_header_rules(caplog) -> None:
    ds = pydicom.Dataset()
    ds.PatientID = "X" * 70                 # identity: kept verbatim, even over-long
    ds.PatientBirthDate = "19991345"        # wrong form: emptied
    ds.PatientAge = "0000"                  # AS wrong form: emptied
    ds.StudyDescription = "y" * 70          # only too long: cut
    ds.InstitutionName = "Good Hospital"    # valid: untouched
    ds.StudyInstanceUID = "1.2.3"
    with caplog.at_level(logging.WARNING, logger="mgmt2d.inference.dicom_seg"):
        out = dicom_seg.lenient_header(ds, "x.dcm")
    assert out.PatientID == "X" * 70 and out.PatientBirthDate == "" and out.PatientAge == ""
    assert out.StudyDescription == "y" * 64 and out.InstitutionName == "Good Hospital"
    assert out.PatientSex == "" and out.StudyDate == "" and out.AccessionNumber == ""   # Type 2, added empty
    assert ds.PatientBirthDate == "19991345"                                           # the input is untouched
    assert "x.dcm: PatientID" in caplog.text and "kept verbatim" in caplog.text


def test_absent_patient_sex_and_an_over_long_patient_id_go_through(tmp_path: Path) -> None:
    """No PatientSex at all (Kaggle's anonymised files) and a 70-character PatientID (kept: it files the SEG)."""
    long_id = "ID" * 35
    _, meta = read_series(write_series(tmp_path / "s", patient_sex=None, study_date="20230101", patient_id=long_id))
    wt, et = masks()
    seg = hd.seg.segread(write_seg(meta.files, wt, et, tmp_path / "seg.dcm"))
    assert seg.PatientSex == "" and seg.StudyDate == "20230101" and seg.PatientID == long_id


# --------------------------------------------------------------------------- refusals


def test_refusals_are_one_line_and_write_nothing(series, tmp_path: Path) -> None:
    _, meta = series
    wt, et = masks()
    out = tmp_path / "seg.dcm"
    cases = [
        ((meta.files, wt[:-1], et, out), "shape"),
        ((meta.files, wt * 255, et, out), "other than 0 and 1"),
        (([], wt, et, out), "no source files"),
    ]
    for args, message in cases:
        with pytest.raises(DicomSegError, match=message) as err:
            write_seg(*args)
        assert "\n" not in str(err.value)
    assert not out.exists()
    out.write_bytes(b"earlier output")
    with pytest.raises(DicomSegError, match="already exists"):
        write_seg(meta.files, wt, et, out)
    assert out.read_bytes() == b"earlier output"
    write_seg(meta.files, wt, et, out, SegOptions(overwrite=True))
    assert hd.seg.segread(out).Modality == "SEG"


def test_sources_a_seg_cannot_lie_over_are_refused(tmp_path: Path) -> None:
    wt, et = masks()
    flat = write_series(tmp_path / "nogeo", geometry=False)
    with pytest.raises(DicomSegError, match="ImagePositionPatient"):
        write_seg(sorted(flat.iterdir()), wt, et, tmp_path / "a.dcm")
    multi = write_series(tmp_path / "multi", frames=2)
    with pytest.raises(DicomSegError, match="multi-frame"):
        write_seg(sorted(multi.iterdir()), wt, et, tmp_path / "b.dcm")
    one, two = write_series(tmp_path / "one"), write_series(tmp_path / "two")
    mixed = [*sorted(one.iterdir())[:4], *sorted(two.iterdir())[:4]]
    with pytest.raises(DicomSegError, match="differs"):
        write_seg(mixed, wt, et, tmp_path / "c.dcm")
    assert not any((tmp_path / n).exists() for n in ("a.dcm", "b.dcm", "c.dcm"))


def test_a_failed_save_leaves_no_file(series, tmp_path: Path, monkeypatch) -> None:
    _, meta = series
    wt, et = masks()

    def broken(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(hd.seg.Segmentation, "save_as", broken)
    with pytest.raises(OSError, match="disk full"):
        write_seg(meta.files, wt, et, tmp_path / "out" / "seg.dcm")
    assert list((tmp_path / "out").iterdir()) == []


# --------------------------------------------------------------------------- dciodvfy


def dciodvfy_errors(path: Path) -> set[str]:
    """dciodvfy's error lines for one file (its verdict on the object's IOD and values)."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed: apt-get install dicom3tools")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    return {re.sub(r"\s+", " ", line).strip() for line in lines if line.startswith("Error")}


def test_dciodvfy_finds_no_error_in_the_seg_that_the_source_does_not_have(series, tmp_path: Path) -> None:
    _, meta = series
    wt, et = masks()
    out = write_seg(meta.files, wt, et, tmp_path / "seg.dcm")
    source_errors = set().union(*(dciodvfy_errors(f) for f in meta.files))
    assert any("Patient's Sex" in e for e in source_errors)       # the fault is real in the source
    assert dciodvfy_errors(out) - source_errors == set()


def test_real_mprage_slices_through_seg_and_dciodvfy(mprage_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mprage"
    folder.mkdir()
    for name in ("00086.dcm", "00087.dcm", "00088.dcm", "00089.dcm", "00090.dcm"):
        (folder / name).symlink_to(mprage_dir / name)
    volume, meta = read_series(folder)
    assert meta.plane == "sagittal" and volume.shape == (5, 256, 256)
    wt = (volume > np.percentile(volume, 95)).astype(np.uint8)   # a synthetic "tumour": the brightest 5 %
    wt[0] = 0
    et = np.zeros_like(wt)
    et[2, 100:140, 100:140] = wt[2, 100:140, 100:140]
    out = write_seg(meta.files, wt, et, tmp_path / "T1w_seg.dcm", SegOptions(label="T1w"))
    seg = hd.seg.segread(out)
    pixels = seg.get_pixels_by_source_instance(source_uids(meta.files))
    np.testing.assert_array_equal(pixels[..., 0], wt)
    np.testing.assert_array_equal(pixels[..., 1], et)
    first = pydicom.dcmread(meta.files[0], stop_before_pixels=True)
    assert (seg.PatientID, seg.PatientSex, seg.StudyDate) == (first.PatientID, first.PatientSex, first.StudyDate)
    assert int(seg.SeriesNumber) == 1000 + int(first.SeriesNumber)
    source_errors = set().union(*(dciodvfy_errors(f) for f in meta.files))
    assert dciodvfy_errors(out) - source_errors == set()


# --------------------------------------------------------------------------- <patient>.json


def test_patient_json_schema(tmp_path: Path) -> None:
    weights = tmp_path / "fold0.pt"
    weights.write_bytes(b"weights")
    hashes = dicom_seg.weights_sha256([weights])
    assert hashes == {str(weights): hashlib.sha256(b"weights").hexdigest()}
    record = dicom_seg.patient_record(
        "00123", 0.61, fallback=False,
        types={"FLAIR": {"prob": np.float32(0.7), "kept": 40, "total": 155, "note": "", "seg": Path("FLAIR_seg.dcm"),
                         "chunks": [{"start_slice": 10, "prob": 0.7}]},
               "T2w": {"prob": float("nan"), "kept": 0, "total": 20, "note": "no slice with enough tumour"}},
        contract={"seq_len": 35, "stride": 5}, weights=hashes)
    path = dicom_seg.write_patient_json(tmp_path / "00123.json", record)
    loaded = json.loads(path.read_text())                        # strict JSON: NaN became null
    assert loaded["schema"] == dicom_seg.PATIENT_SCHEMA and loaded["patient"] == "00123"
    assert loaded["MGMT_value"] == 0.61 and loaded["fallback"] is False
    assert loaded["types"]["FLAIR"] == {"prob": pytest.approx(0.7), "kept": 40, "total": 155,
                                        "chunks": [{"start_slice": 10, "prob": 0.7}], "note": "",
                                        "seg": "FLAIR_seg.dcm"}
    assert loaded["types"]["T2w"]["prob"] is None and loaded["types"]["T2w"]["seg"] is None
    assert loaded["types"]["T2w"]["note"] == "no slice with enough tumour"
    assert loaded["contract"] == {"seq_len": 35, "stride": 5} and loaded["weights"] == hashes
    assert loaded["mgmt2d_version"] == mgmt2d.__version__ and loaded["created"].endswith("+00:00")
    with pytest.raises(FileExistsError, match="already exists"):
        dicom_seg.write_patient_json(path, record)
    with pytest.raises(ValueError, match="not in mgmt2d.patient/1"):
        dicom_seg.patient_record("1", 0.5, fallback=True, types={"FLAIR": {"probability": 0.5}},
                                 contract={}, weights={})
