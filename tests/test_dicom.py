"""DICOM series reader: real headers, pydicom's sample files, and hand-built bad input."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from mgmt2d.data import dicom
from mgmt2d.data.dicom import (
    DicomSeriesError,
    SeriesMeta,
    plane_from_orientation,
    read_series,
    read_series_many,
    slice_order,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


@pytest.fixture(autouse=True)
def _small_slices_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-built series here are a few pixels wide so their values read at a glance; the
    size floor (dicom.MIN_SLICE_SIZE) has its own tests in test_dicom_volumes.py."""
    monkeypatch.setattr(dicom, "MIN_SLICE_SIZE", 1)


# --------------------------------------------------------------------------- helpers


def write_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    position: Sequence[float] | None = None,
    orientation: Sequence[float] | None = AXIAL,
    instance: int | None = None,
    slope: float | None = None,
    intercept: float | None = None,
    photometric: str = "MONOCHROME2",
    pixel_spacing: Sequence[float] | None = (0.5, 0.75),
    with_pixels: bool = True,
    **headers: object,
) -> Path:
    """A minimal single-frame MR slice, Explicit VR Little Endian, 16-bit signed.

    ``headers``: further attributes by keyword (SeriesInstanceUID=..., EchoNumbers=...).
    """
    pixels = np.asarray(pixels, dtype=np.int16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [float(v) for v in orientation]
    if instance is not None:
        ds.InstanceNumber = instance
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if pixel_spacing is not None:
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
    for keyword, value in headers.items():
        setattr(ds, keyword, value)
    if with_pixels:
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def axial_stack(folder: Path, n: int = 4, shape: tuple[int, int] = (16, 16)) -> list[Path]:
    """n slices whose pixel values equal their anatomical index; files named in order."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_slice(
            folder / f"{i:03d}.dcm", np.full(shape, i), position=(0, 0, 2.0 * i), instance=i + 1
        )
        for i in range(n)
    ]


def slice_values(volume: np.ndarray) -> list[float]:
    """The (constant) value of each slice, to read back an order."""
    return [float(v) for v in volume.reshape(len(volume), -1)[:, 0]]


@pytest.fixture(scope="module")
def mprage(mprage_dir: Path) -> tuple[np.ndarray, SeriesMeta]:
    return read_series(mprage_dir)


def sample_file(name: str) -> Path:
    path = pydicom.data.get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not shipped offline")
    return Path(path)


def single_file_series(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / Path(name).stem
    folder.mkdir()
    shutil.copyfile(sample_file(name), folder / name)
    return folder


# --------------------------------------------------------------------------- real series


def test_mprage_geometry(mprage: tuple[np.ndarray, SeriesMeta]) -> None:
    volume, meta = mprage
    assert volume.shape == (176, 256, 256)
    assert volume.dtype == np.float32 and volume.flags.c_contiguous
    assert meta.plane == "sagittal"
    assert meta.order_by == "position"
    assert len(meta.files) == 176 and not meta.skipped and not meta.resized
    assert meta.pixel_spacing == pytest.approx((1.0, 1.0), abs=0.05)
    assert meta.slice_spacing == pytest.approx(1.0, abs=0.05)
    assert meta.positions is not None and meta.positions.shape == (176, 3)
    first = pydicom.dcmread(meta.files[0], stop_before_pixels=True)
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    steps = np.diff(meta.positions @ normal)
    assert np.all(steps > 0.5), "projected positions must strictly increase"
    assert volume.min() >= 0 and volume.max() > 100
    json.dumps(meta.to_dict())


def test_mprage_matches_pydicom_pixels(mprage: tuple[np.ndarray, SeriesMeta]) -> None:
    volume, meta = mprage
    for i in (0, 88, 175):
        expected = pydicom.dcmread(meta.files[i]).pixel_array.astype(np.float32)
        np.testing.assert_array_equal(volume[i], expected)


def test_mprage_shuffled_names_same_volume(
    mprage: tuple[np.ndarray, SeriesMeta], mprage_dir: Path, tmp_path: Path
) -> None:
    volume, meta = mprage
    sources = sorted(mprage_dir.iterdir())
    names = [p.name for p in sources]
    shuffled = np.random.default_rng(7).permutation(names)
    assert list(shuffled) != names
    for src, name in zip(sources, shuffled):
        shutil.copyfile(src, tmp_path / name)
    volume2, meta2 = read_series(tmp_path)
    assert meta2.order_by == "position"
    np.testing.assert_array_equal(volume2, volume)
    np.testing.assert_array_equal(meta2.positions, meta.positions)


# --------------------------------------------------------------------------- pydicom samples


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"])
def test_single_file_series_applies_rescale(tmp_path: Path, name: str) -> None:
    ds = pydicom.dcmread(sample_file(name))
    expected = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )
    volume, meta = read_series(single_file_series(tmp_path, name))
    assert volume.shape == (1, *expected.shape)
    np.testing.assert_allclose(volume[0], expected, rtol=1e-6)
    assert len(meta.files) == 1 and not meta.skipped
    assert meta.pixel_spacing == pytest.approx(tuple(float(v) for v in ds.PixelSpacing))


def test_ct_small_is_axial_with_negative_intercept(tmp_path: Path) -> None:
    volume, meta = read_series(single_file_series(tmp_path, "CT_small.dcm"))
    assert meta.plane == "axial" and meta.order_by == "position"
    assert volume.min() < 0  # intercept -1024 applied


@pytest.mark.parametrize(
    "name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"]
)
def test_compressed_equals_uncompressed_twin(tmp_path: Path, name: str) -> None:
    reference, _ = read_series(single_file_series(tmp_path, "MR_small.dcm"))
    volume, meta = read_series(single_file_series(tmp_path, name))
    assert not meta.skipped
    np.testing.assert_array_equal(volume, reference)


def test_rgb_is_read_as_luminance(tmp_path: Path) -> None:
    rgb = pydicom.dcmread(sample_file("SC_rgb_rle.dcm")).pixel_array.astype(np.float64)
    volume, meta = read_series(single_file_series(tmp_path, "SC_rgb_rle.dcm"))
    expected = rgb @ np.array([0.299, 0.587, 0.114])
    assert volume.shape == (1, *rgb.shape[:2])
    np.testing.assert_allclose(volume[0], expected, atol=1e-3)
    assert meta.plane == "unknown" and meta.positions is None


def test_multiframe_file_without_geometry_reads_its_frames_in_order(tmp_path: Path) -> None:
    # Multi-frame images are read (they were refused before Enhanced MR support): frames
    # without positions keep their stored order, each one a slice.
    rgb = pydicom.dcmread(sample_file("SC_rgb_rle_2frame.dcm")).pixel_array.astype(np.float64)
    volume, meta = read_series(single_file_series(tmp_path, "SC_rgb_rle_2frame.dcm"))
    assert volume.shape == (2, *rgb.shape[1:3]) and meta.frames == [1, 2]
    np.testing.assert_allclose(volume, rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-3)
    assert meta.volumes is not None and meta.volumes.n_volumes == 1 and not meta.skipped


# --------------------------------------------------------------------------- bad input


def test_missing_and_empty_folders_raise_naming_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DicomSeriesError, match="nope"):
        read_series(missing)
    empty = tmp_path / "empty_series"
    empty.mkdir()
    with pytest.raises(DicomSeriesError, match="empty_series") as info:
        read_series(empty)
    assert isinstance(info.value, ValueError)


def test_folder_of_junk_raises_with_reasons(tmp_path: Path) -> None:
    (tmp_path / "a.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(DicomSeriesError, match=r"a\.dcm: not a DICOM file"):
        read_series(tmp_path)


def test_junk_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    axial_stack(tmp_path, n=3, shape=(6, 5))
    (tmp_path / "garbage.dcm").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 200)
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "sub").mkdir()  # folders are not files: ignored
    write_slice(tmp_path / "header_only.dcm", np.zeros((6, 5)), with_pixels=False)
    volume, meta = read_series(tmp_path)
    assert volume.shape == (3, 6, 5)
    reasons = {Path(s.file).name: s.reason for s in meta.skipped}
    assert set(reasons) == {"garbage.dcm", ".DS_Store", "empty.dcm", "header_only.dcm"}
    assert reasons["empty.dcm"] == "not a DICOM file: empty file"
    assert reasons["garbage.dcm"].startswith("not a DICOM file")
    assert reasons[".DS_Store"].startswith("not a DICOM file")
    assert reasons["header_only.dcm"] == "DICOM without pixel data"
    json.dumps(meta.to_dict())


def test_truncated_file_is_skipped(tmp_path: Path) -> None:
    files = axial_stack(tmp_path, n=3, shape=(32, 32))
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) - 700])  # cut into the pixel data
    head = tmp_path / "head_cut.dcm"
    head.write_bytes(data[:200])  # cut inside the header
    volume, meta = read_series(tmp_path)
    assert slice_values(volume) == [0.0, 2.0]
    skipped = {Path(s.file).name: s.reason for s in meta.skipped}
    assert set(skipped) == {files[1].name, "head_cut.dcm"}
    assert all(skipped.values())


def test_pydicom_truncated_sample_is_skipped(tmp_path: Path) -> None:
    folder = single_file_series(tmp_path, "MR_truncated.dcm")
    shutil.copyfile(sample_file("MR_small.dcm"), folder / "MR_small.dcm")
    volume, meta = read_series(folder)
    assert volume.shape == (1, 64, 64)
    assert [Path(s.file).name for s in meta.skipped] == ["MR_truncated.dcm"]
    assert "decoded" in meta.skipped[0].reason


def test_mixed_sizes_resized_to_majority(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(3):
        write_slice(tmp_path / f"s{i}.dcm", np.full((8, 10), 7), position=(0, 0, i))
    odd = write_slice(tmp_path / "s3.dcm", np.full((16, 20), 9), position=(0, 0, 3))
    with caplog.at_level(logging.WARNING, logger="mgmt2d.data.dicom"):
        volume, meta = read_series(tmp_path)
    assert volume.shape == (4, 8, 10)
    assert meta.resized == [str(odd)]
    np.testing.assert_allclose(volume[3], 9.0)
    assert any("resized 1 of 4" in r.getMessage() for r in caplog.records)


def test_constant_and_blank_slices_read_without_warnings(tmp_path: Path) -> None:
    for i, value in enumerate([0, 0, 5, -3]):
        write_slice(tmp_path / f"c{i}.dcm", np.full((4, 4), value), position=(0, 0, i))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        volume, _ = read_series(tmp_path)
    assert slice_values(volume) == [0.0, 0.0, 5.0, -3.0]
    assert np.isfinite(volume).all()


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = np.arange(12).reshape(3, 4) * 10
    write_slice(tmp_path / "a.dcm", pixels, photometric="MONOCHROME1", position=(0, 0, 0))
    write_slice(tmp_path / "b.dcm", pixels + 5, photometric="MONOCHROME1", position=(0, 0, 1))
    volume, _ = read_series(tmp_path)
    top = 115.0  # brightest stored value over the series
    np.testing.assert_array_equal(volume[0], top - pixels)
    np.testing.assert_array_equal(volume[1], top - (pixels + 5))
    assert volume.min() == 0.0


def test_rescale_slope_intercept_per_slice(tmp_path: Path) -> None:
    pixels = np.arange(20).reshape(4, 5)
    write_slice(tmp_path / "a.dcm", pixels, slope=2.5, intercept=-100, position=(0, 0, 0))
    write_slice(tmp_path / "b.dcm", pixels, slope=1, intercept=10, position=(0, 0, 1))
    write_slice(tmp_path / "c.dcm", pixels, position=(0, 0, 2))
    volume, _ = read_series(tmp_path)
    np.testing.assert_allclose(volume[0], pixels * 2.5 - 100)
    np.testing.assert_allclose(volume[1], pixels + 10)
    np.testing.assert_allclose(volume[2], pixels)


def test_each_file_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    axial_stack(tmp_path, n=5)
    calls: list[str] = []
    real = pydicom.dcmread

    def counting(path: object, *args: object, **kwargs: object) -> pydicom.FileDataset:
        calls.append(str(path))
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dicom.pydicom, "dcmread", counting)
    read_series(tmp_path)
    assert len(calls) == 5 and len(set(calls)) == 5


# --------------------------------------------------------------------------- ordering


def test_position_beats_instance_and_filename(tmp_path: Path) -> None:
    # Files and instance numbers count upward while the anatomy goes downward.
    for i in range(5):
        write_slice(
            tmp_path / f"Image-{i + 1}.dcm", np.full((3, 3), i), position=(0, 0, -i), instance=i + 1
        )
    volume, meta = read_series(tmp_path)
    assert meta.order_by == "position"
    assert slice_values(volume) == [4.0, 3.0, 2.0, 1.0, 0.0]  # inferior -> superior
    assert meta.slice_spacing == pytest.approx(1.0)
    assert meta.plane == "axial"
    assert meta.positions is not None
    assert np.all(np.diff(meta.positions[:, 2]) > 0)


def test_missing_position_falls_back_to_instance(tmp_path: Path) -> None:
    instances = [3, 1, 4, 2]
    for i, inst in enumerate(instances):
        write_slice(tmp_path / f"Image-{i + 1}.dcm", np.full((3, 3), inst), instance=inst)
    volume, meta = read_series(tmp_path)
    assert meta.order_by == "instance"
    assert slice_values(volume) == [1.0, 2.0, 3.0, 4.0]
    assert meta.positions is None
    assert meta.plane == "axial"  # orientation alone still gives the plane


def test_missing_position_and_instance_fall_back_to_filename(tmp_path: Path) -> None:
    for n in [1, 2, 9, 10, 11, 100]:
        write_slice(tmp_path / f"Image-{n}.dcm", np.full((2, 2), n), orientation=None)
    volume, meta = read_series(tmp_path)
    assert meta.order_by == "filename"
    assert slice_values(volume) == [1.0, 2.0, 9.0, 10.0, 11.0, 100.0]
    assert meta.plane == "unknown" and meta.slice_spacing is None


def test_duplicate_positions_no_header_tells_apart_are_refused(tmp_path: Path) -> None:
    # Slices sharing a position are several volumes: never stacked (they were ordered by
    # InstanceNumber before); with no header to tell them apart, one line says so.
    for i, inst in enumerate([2, 1, 3]):
        write_slice(
            tmp_path / f"x{i}.dcm", np.full((2, 2), inst), position=(0, 0, 0), instance=inst
        )
    with pytest.raises(DicomSeriesError, match="holds 3 slices at 1 position"):
        read_series(tmp_path)


def test_slice_order_pure() -> None:
    names = ["Image-10.dcm", "Image-9.dcm", "Image-1.dcm"]
    positions = [(0, 0, 5.0), (0, 0, -1.0), (0, 0, 2.0)]
    order, by = slice_order(positions, AXIAL, [1, 2, 3], names)
    assert by == "position" and order.tolist() == [1, 2, 0]
    # Per-slice orientations; sagittal normal here is -x, so larger x reads first.
    order, by = slice_order([(3, 0, 0), (1, 0, 0), (2, 0, 0)], [SAGITTAL] * 3, None, names)
    assert by == "position" and order.tolist() == [0, 2, 1]
    # Disagreeing orientations are inconsistent geometry.
    order, by = slice_order(positions, [AXIAL, AXIAL, SAGITTAL], [3, 1, 2], names)
    assert by == "instance" and order.tolist() == [1, 2, 0]
    # A missing position, then duplicate instance numbers.
    order, by = slice_order([None, (0, 0, 1), (0, 0, 2)], AXIAL, [2, 2, 1], names)
    assert by == "filename" and order.tolist() == [2, 1, 0]
    order, by = slice_order(None, None, None, ["b", "a", "c7", "c10"])
    assert by == "filename" and order.tolist() == [2, 3, 1, 0]


def test_slice_order_accepts_arrays() -> None:
    positions = np.array([[0, 0, 3.0], [0, 0, 1.0], [0, 0, 2.0]])
    order, by = slice_order(positions, np.array(AXIAL), np.array([1, 2, 3]), ["a", "b", "c"])
    assert by == "position" and order.tolist() == [1, 2, 0]
    order, by = slice_order(positions, np.tile(AXIAL, (3, 1)), None, ["a", "b", "c"])
    assert by == "position" and order.tolist() == [1, 2, 0]


def test_single_slice_spacing_falls_back_to_header(tmp_path: Path) -> None:
    path = write_slice(tmp_path / "one.dcm", np.ones((3, 3)), position=(1, 2, 3))
    ds = pydicom.dcmread(path)
    ds.SliceThickness = 2.5
    ds.save_as(path)
    volume, meta = read_series(tmp_path)
    assert volume.shape == (1, 3, 3) and meta.order_by == "position"
    assert meta.slice_spacing == 2.5
    assert meta.pixel_spacing == (0.5, 0.75)


@pytest.mark.parametrize(
    ("orientation", "plane"),
    [(AXIAL, "axial"), (CORONAL, "coronal"), (SAGITTAL, "sagittal"), (None, "unknown"),
     ((0, 0, 0, 0, 0, 0), "unknown"), ((0.1, 0.99, 0, 0, 0.1, -0.99), "sagittal")],
)
def test_plane_from_orientation(orientation: Sequence[float] | None, plane: str) -> None:
    assert plane_from_orientation(orientation) == plane


# --------------------------------------------------------------------------- many


class CountingIterable:
    """Records how many folders the reader has pulled, to check its look-ahead."""

    def __init__(self, items: list[Path]) -> None:
        self.items = items
        self.pulled = 0

    def __iter__(self) -> Iterator[Path]:
        for item in self.items:
            self.pulled += 1
            yield item


@pytest.mark.parametrize(("workers", "executor"), [(1, None), (2, None), (2, "process")])
def test_read_series_many_order_errors_and_lookahead(
    tmp_path: Path, workers: int, executor: str | None
) -> None:
    folders = []
    for k in range(6):
        folder = tmp_path / f"series{k}"
        axial_stack(folder, n=k + 1, shape=(4, 4))
        folders.append(folder)
    folders.insert(2, tmp_path / "missing")
    source = CountingIterable(folders)
    results = read_series_many(source, workers=workers, executor=executor)  # type: ignore[arg-type]
    assert source.pulled == 0  # lazy until the first item is asked for
    first = next(results)
    assert source.pulled <= workers + 2
    rest = list(results)
    got = [first, *rest]
    assert [f for f, _, _ in got] == folders
    assert isinstance(got[2][1], DicomSeriesError) and got[2][2] is None
    sizes = [v.shape[0] for _, v, _ in got if isinstance(v, np.ndarray)]
    assert sizes == [1, 2, 3, 4, 5, 6]
    assert all(m is not None and m.order_by == "position" for _, v, m in got if m is not None)


def test_read_series_many_can_stop_early(tmp_path: Path) -> None:
    folders = []
    for k in range(4):
        axial_stack(tmp_path / f"s{k}", n=2, shape=(3, 3))
        folders.append(tmp_path / f"s{k}")
    results = read_series_many(folders, workers=2)
    folder, volume, _ = next(results)
    assert folder == folders[0] and isinstance(volume, np.ndarray)
    results.close()  # type: ignore[attr-defined]  # must not hang or raise


def test_read_series_many_rejects_bad_workers() -> None:
    with pytest.raises(ValueError):
        read_series_many([], workers=0)


# --------------------------------------------------------------------------- the published reading


def test_filename_order_uses_the_trailing_integer(tmp_path: Path) -> None:
    # file numbers that run against anatomy, and 10 sorting after 9 (not as text)
    for n, z in [(9, 0.0), (10, 1.0), (2, 2.0), (1, 3.0)]:
        write_slice(tmp_path / f"Image-{n}.dcm", np.full((4, 4), n), position=(0, 0, z), instance=n)
    anatomical, meta_a = read_series(tmp_path)
    by_name, meta_f = read_series(tmp_path, order="filename")
    assert meta_a.order_by == "position" and slice_values(anatomical) == [9, 10, 2, 1]
    assert meta_f.order_by == "filename" and slice_values(by_name) == [1, 2, 9, 10]
    assert [p.name for p in meta_f.files] == ["Image-1.dcm", "Image-2.dcm", "Image-9.dcm", "Image-10.dcm"]


def test_stored_values_skip_rescale_and_monochrome1(tmp_path: Path) -> None:
    pixels = np.arange(12).reshape(3, 4)
    write_slice(tmp_path / "a.dcm", pixels, slope=2.0, intercept=-1024.0, photometric="MONOCHROME1", position=(0, 0, 0))
    rescaled, meta = read_series(tmp_path)
    stored, _ = read_series(tmp_path, rescale=False)
    np.testing.assert_array_equal(stored[0], pixels)
    assert not np.array_equal(rescaled[0], pixels)
    # the near-empty test reads stored values either way: 11 of 12 pixels are > 0
    assert meta.positive_fraction.tolist() == [11 / 12]


def test_positive_fraction_ignores_the_rescale_intercept(tmp_path: Path) -> None:
    tissue = np.zeros((10, 10))
    tissue[:3] = 50               # 30 % stored values > 0
    write_slice(tmp_path / "a.dcm", tissue, intercept=-1024.0, position=(0, 0, 0))
    write_slice(tmp_path / "b.dcm", np.zeros((10, 10)), intercept=-1024.0, position=(0, 0, 1))
    volume, meta = read_series(tmp_path)
    assert (volume < 0).all()     # every rescaled value is negative...
    assert meta.positive_fraction.tolist() == [0.3, 0.0]   # ...but the stored values tell tissue


def test_real_sagittal_sample_orders_reverse_under_the_two_rules(mprage_dir: Path, tmp_path: Path) -> None:
    """The MPRAGE sample laid out as Kaggle does (Image-<InstanceNumber>.dcm): the two orders are reverses."""
    for f in sorted(mprage_dir.glob("*.dcm")):
        number = int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber)
        (tmp_path / f"Image-{number}.dcm").symlink_to(f)
    anatomical, meta_a = read_series(tmp_path)
    by_name, meta_f = read_series(tmp_path, order="filename")
    assert meta_a.order_by == "position" and meta_f.order_by == "filename"
    assert [p.name for p in meta_f.files] == [p.name for p in reversed(meta_a.files)]
    np.testing.assert_array_equal(by_name, anatomical[::-1])
