"""Multi-frame (Enhanced MR) slices and folders holding several volumes; slice-size and spacing checks.

The real Enhanced MR samples are compared with dcm2niix's conversions beside them (values, slice
count and placement); the multi-volume folders are written here with pydicom, small.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from test_dicom import AXIAL, SAGITTAL, write_slice

from mgmt2d.data import dicom, nifti
from mgmt2d.data.dicom import DicomSeriesError, SliceHeader, group_volumes, read_series, slice_headers

SHAPE = (16, 16)   # the smallest slice dicom.MIN_SLICE_SIZE lets through


@pytest.fixture(scope="module")
def enhanced_dir(shared_data: Path) -> Path:
    path = shared_data / "dicom-enhanced-mr"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


def canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The array and affine reoriented to the closest RAS+ axes, so two converters' layouts compare."""
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data), affine))
    return np.asarray(img.dataobj), img.affine


def as_reference(volume: np.ndarray, meta: dicom.SeriesMeta) -> tuple[np.ndarray, np.ndarray]:
    """Our (S, H, W) volume as a canonical NIfTI array, placed by its own geometry."""
    affine = nifti.series_affine(meta.positions, meta.orientation, meta.pixel_spacing, meta.slice_spacing)
    return canonical(nifti.to_nifti_array(volume), affine)


def reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """dcm2niix's NIfTI (stored values: its scl_slope is unset) and its affine."""
    img = nib.load(path)
    return np.asanyarray(img.dataobj.get_unscaled()), img.affine


# --------------------------------------------------------------------------- Enhanced MR, real files


def test_siemens_xa_enhanced_time_series_equals_dcm2niix(enhanced_dir: Path) -> None:
    """4 files of 6 frames: 6 slice positions x 4 time points (TemporalPositionIndex), one volume per file."""
    folder = enhanced_dir / "In" / "Siemens" / "XA10"
    ref, ref_affine = reference(enhanced_dir / "Ref" / "Siemens_REST1_w_SMS_PF7-8_6.nii")
    assert ref.shape == (64, 64, 6, 4)
    volume, meta = read_series(folder, rescale=False)
    split = meta.volumes
    assert split is not None and split.n_volumes == 4 and split.by == ["TemporalPositionIndex"]
    assert meta.volume == split.chosen == 0 and volume.shape == (6, 64, 64)
    assert meta.order_by == "position" and meta.plane == "axial"
    assert meta.frames == [1, 2, 3, 4, 5, 6] and {p.name for p in meta.files} == {"6_1.dcm"}
    assert meta.slice_spacing == pytest.approx(2.4, abs=1e-3) and meta.pixel_spacing == (3.375, 3.375)
    for t in range(4):
        vol_t, meta_t = read_series(folder, rescale=False, volume=t)
        ours, ours_affine = as_reference(vol_t, meta_t)
        theirs, theirs_affine = canonical(ref[..., t], ref_affine)
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_allclose(ours_affine, theirs_affine, atol=1e-3)
        assert {p.name for p in meta_t.files} == {f"6_{t + 1}.dcm"}
    rescaled, _ = read_series(folder)   # slope 1, intercept 0 in every frame
    np.testing.assert_array_equal(rescaled, volume)


def test_philips_enhanced_field_map_is_two_volumes_equal_to_dcm2niix(enhanced_dir: Path) -> None:
    """One file of 64 frames: a magnitude echo and a field map at the same 32 positions."""
    folder = enhanced_dir / "In" / "Philips"
    volume, meta = read_series(folder, rescale=False)
    split = meta.volumes
    assert split is not None and split.n_volumes == 2 and split.by == ["EffectiveEchoTime"]
    # Ascending echo time lists the field map (TE 0) first; the magnitude echo is the one read.
    assert [v.structural for v in split.volumes] == [False, True] and split.chosen == meta.volume == 1
    assert volume.shape == (32, 64, 64) and "structural" in split.reason
    for index, name in [(1, "Philips_WIP_B0_NS_801_e1"), (0, "Philips_WIP_B0_NS_801_e2_fieldmaphz")]:
        vol, m = read_series(folder, rescale=False, volume=index)
        ours, ours_affine = as_reference(vol, m)
        theirs, theirs_affine = canonical(*reference(enhanced_dir / "Ref" / f"{name}.nii"))
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_allclose(ours_affine, theirs_affine, atol=1e-3)


def test_philips_enhanced_rescale_is_per_frame(enhanced_dir: Path) -> None:
    """Each frame's PixelValueTransformationSequence: the field map in Hz is 0.2442 x stored - 500."""
    folder = enhanced_dir / "In" / "Philips"
    ds = pydicom.dcmread(next(folder.glob("*.dcm")))
    stored = ds.pixel_array.astype(np.float64)
    for index in (0, 1):
        volume, meta = read_series(folder, volume=index)
        for i, frame in enumerate(meta.frames):
            item = ds.PerFrameFunctionalGroupsSequence[frame - 1].PixelValueTransformationSequence[0]
            expected = stored[frame - 1] * float(item.RescaleSlope) + float(item.RescaleIntercept)
            np.testing.assert_allclose(volume[i], expected, rtol=1e-6, atol=1e-3)
    field_map, _ = read_series(folder, volume=0)
    assert field_map.min() < 0 < field_map.max()   # Hz either side of zero: the intercept was applied


def test_enhanced_headers_without_pixels(enhanced_dir: Path) -> None:
    """slice_headers reads frames' geometry from a header-only read, as a header scan would."""
    path = enhanced_dir / "In" / "Philips" / "IM_0027_fMAP.dcm"
    headers = slice_headers(pydicom.dcmread(path, stop_before_pixels=True), path)
    assert len(headers) == 64 and [h.frame for h in headers] == list(range(1, 65))
    assert headers[0].position is not None and headers[0].pixel_spacing == (4.0, 4.0)
    assert {h.echo_time for h in headers} == {0.0, 1.52}
    split = group_volumes(headers)
    assert split.n_volumes == 2 and split.chosen == 1


# --------------------------------------------------------------------------- several volumes in a folder


def write_volumes(folder: Path, n_positions: int, keys: list[dict[str, object]], *, names: str = "shuffled",
                  orientation: tuple[float, ...] = AXIAL, series_uid: str | None = None) -> list[Path]:
    """One volume per entry of ``keys`` (its extra headers) at the same ``n_positions`` positions.

    Pixel value = 100 * volume number + position index, so a read volume tells which slices it got.
    InstanceNumber runs 1..N volume after volume (as a scanner numbers a time series); the file
    names are shuffled so neither they nor the listing order can carry the answer.
    """
    folder.mkdir(parents=True, exist_ok=True)
    uid = series_uid or generate_uid()
    count = len(keys) * n_positions
    rng = np.random.default_rng(len(keys) * 1000 + n_positions)
    numbers = rng.permutation(count) if names == "shuffled" else np.arange(count)
    paths = []
    for v, extra in enumerate(keys):
        for z in range(n_positions):
            k = v * n_positions + z
            normal = np.cross(orientation[:3], orientation[3:])
            paths.append(write_slice(
                folder / f"IM{numbers[k]:05d}", np.full(SHAPE, 100 * v + z), position=tuple(normal * 3.0 * z),
                orientation=orientation, instance=k + 1, SeriesInstanceUID=uid, **extra,
            ))
    return paths


def values(volume: np.ndarray) -> list[int]:
    return [int(v) for v in volume[:, 0, 0]]


def test_ge_fmri_time_series_is_split_not_stacked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """15 slice positions x 10 time points in one folder (150 files) -> 10 volumes of 15 slices."""
    write_volumes(tmp_path, 15, [{"TemporalPositionIdentifier": t + 1, "NumberOfTemporalPositions": 10}
                                 for t in range(10)])
    reads: list[str] = []
    real = pydicom.dcmread
    monkeypatch.setattr(dicom.pydicom, "dcmread", lambda path, *a, **k: reads.append(str(path)) or real(path, *a, **k))
    with caplog.at_level(logging.WARNING, logger="mgmt2d.data.dicom"):
        volume, meta = read_series(tmp_path)
    assert len(reads) == len(set(reads)) == 150                       # each file read once
    assert volume.shape == (15, *SHAPE) and values(volume) == list(range(15))   # time point 1, in order
    split = meta.volumes
    assert split is not None and split.n_volumes == 10 and split.by == ["TemporalPositionIdentifier"]
    assert [len(v.indices) for v in split.volumes] == [15] * 10 and meta.volume == 0
    assert [v.key for v in split.volumes][:2] == [{"TemporalPositionIdentifier": 1.0},
                                                  {"TemporalPositionIdentifier": 2.0}]
    assert any("holds 10 volumes told apart by TemporalPositionIdentifier" in r.getMessage() for r in caplog.records)
    last, _ = read_series(tmp_path, volume=9)
    assert values(last) == [900 + z for z in range(15)]
    with pytest.raises(DicomSeriesError, match="volume 10 does not exist"):
        read_series(tmp_path, volume=10)


def test_grouping_from_header_only_reads_matches_the_reader(tmp_path: Path) -> None:
    """group_volumes is pure: records from stop_before_pixels reads give the reader's volumes."""
    write_volumes(tmp_path, 5, [{"TemporalPositionIdentifier": t} for t in (1, 2, 3)])
    headers = [h for f in sorted(tmp_path.iterdir())
               for h in slice_headers(pydicom.dcmread(f, stop_before_pixels=True), f)]
    split = group_volumes(headers)
    assert split.n_volumes == 3 and split.chosen == 0 and split.by == ["TemporalPositionIdentifier"]
    _, meta = read_series(tmp_path)
    # The reader lists a folder's files by name, as here: the same slices form the same volumes.
    assert meta.volumes is not None
    assert [v.indices for v in meta.volumes.volumes] == [v.indices for v in split.volumes]
    assert [v.key for v in meta.volumes.volumes] == [v.key for v in split.volumes]
    first = {headers[i].file for i in split.volumes[0].indices}
    assert {str(p) for p in meta.files} == first
    # Records can also be built by hand: the grouping needs no file.
    hand = [SliceHeader(file=f"f{k}", position=(0.0, 0.0, float(k % 4)), orientation=AXIAL, echo_number=1 + k // 4)
            for k in range(8)]
    assert group_volumes(hand).by == ["EchoNumbers"] and group_volumes(hand).n_volumes == 2


@pytest.mark.parametrize(
    ("keys", "header", "chosen"),
    [
        ([{"EchoNumbers": 1, "EchoTime": 12.0}, {"EchoNumbers": 2, "EchoTime": 90.0}], "EchoNumbers", 0),
        ([{"EchoTime": 90.0}, {"EchoTime": 12.0}], "EchoTime", 0),                     # shortest echo first
        ([{"AcquisitionNumber": 2}, {"AcquisitionNumber": 1}], "AcquisitionNumber", 0),  # a repeated acquisition
        # magnitude and phase at the same positions: the magnitude is read even though P sorts after M
        ([{"ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"]}, {"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"]}],
         "ImageType", 0),
    ],
)
def test_volumes_told_apart_by_each_header(
    tmp_path: Path, keys: list[dict[str, object]], header: str, chosen: int
) -> None:
    write_volumes(tmp_path, 6, keys)
    volume, meta = read_series(tmp_path)
    split = meta.volumes
    assert split is not None and split.n_volumes == 2 and split.by == [header] and meta.volume == chosen
    key_of_read = split.volumes[chosen].key[header]
    written = [k for k in keys if _key_value(k[header]) == key_of_read]
    assert len(written) == 1 and values(volume) == [100 * keys.index(written[0]) + z for z in range(6)]


def _key_value(value: object) -> object:
    return tuple(value) if isinstance(value, list) else float(value)  # type: ignore[arg-type]


def test_two_series_mixed_in_one_folder_are_refused_in_one_line(tmp_path: Path) -> None:
    """Issue 25 item 1: FLAIR and T1wCE files in one folder are never read as one volume."""
    write_volumes(tmp_path, 6, [{"SeriesDescription": "FLAIR", "SeriesNumber": 4}])
    write_volumes(tmp_path / "t1", 6, [{"SeriesDescription": "T1wCE", "SeriesNumber": 9}])
    for f in (tmp_path / "t1").iterdir():
        shutil.move(f, tmp_path / f"T1-{f.name}")
    (tmp_path / "t1").rmdir()
    with pytest.raises(DicomSeriesError) as info:
        read_series(tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message
    assert "holds 2 series (SeriesInstanceUID)" in message and "'FLAIR' (6 slices)" in message
    assert "'T1wCE' (6 slices)" in message
    # Each series is still a volume one can ask for by index (SeriesNumber order).
    volume, meta = read_series(tmp_path, volume=1)
    assert meta.volumes is not None and meta.volumes.by == ["SeriesInstanceUID"] and meta.volumes.chosen is None
    assert all(p.name.startswith("T1-") for p in meta.files) and volume.shape[0] == 6


def test_a_few_slices_in_another_orientation_are_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 25 item 2: 20 axial + 3 sagittal slices of one series -> the 20 axial, said, with a regular affine."""
    uid = generate_uid()
    write_volumes(tmp_path, 20, [{}], series_uid=uid)
    for k in range(3):
        write_slice(tmp_path / f"sag{k}.dcm", np.full(SHAPE, 7), position=(5.0 * k, 0, 0), orientation=SAGITTAL,
                    instance=100 + k, SeriesInstanceUID=uid)
    with caplog.at_level(logging.WARNING, logger="mgmt2d.data.dicom"):
        volume, meta = read_series(tmp_path)
    assert volume.shape == (20, *SHAPE) and values(volume) == list(range(20))
    assert meta.plane == "axial" and meta.order_by == "position"
    split = meta.volumes
    assert split is not None and split.by == ["ImageOrientationPatient"] and split.n_volumes == 2
    assert "3 of 23 slices in another orientation left out" in split.reason
    assert any("left out" in r.getMessage() for r in caplog.records)
    affine = nifti.series_affine(meta.positions, meta.orientation, meta.pixel_spacing, meta.slice_spacing)
    assert abs(np.linalg.det(affine[:3, :3])) > 1e-6


def test_orientations_without_a_majority_are_refused(tmp_path: Path) -> None:
    uid = generate_uid()
    write_volumes(tmp_path / "a", 4, [{}], series_uid=uid)
    write_volumes(tmp_path / "b", 4, [{}], series_uid=uid, orientation=SAGITTAL)
    for sub in ("a", "b"):
        for f in (tmp_path / sub).iterdir():
            shutil.move(f, tmp_path / f"{sub}{f.name}")
        (tmp_path / sub).rmdir()
    with pytest.raises(DicomSeriesError, match=r"holds slices in 2 orientations \(4, 4 slices\)"):
        read_series(tmp_path)


def test_indistinguishable_duplicates_are_one_line_error(tmp_path: Path) -> None:
    """The same 8 positions twice with nothing to tell the copies apart: 16 slices at 8 positions."""
    write_volumes(tmp_path, 8, [{}, {}])
    with pytest.raises(DicomSeriesError) as info:
        read_series(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path} holds 16 slices at 8 positions") and "\n" not in message
    assert "no header tells apart" in message
    headers = [h for f in sorted(tmp_path.iterdir()) for h in slice_headers(pydicom.dcmread(f), f)]
    split = group_volumes(headers)
    assert split.chosen is None and split.volumes[0].problem is not None


def test_partial_last_time_point_reads_a_complete_one(tmp_path: Path) -> None:
    """A time series stopped mid-volume: the first volume with every position is read."""
    write_volumes(tmp_path, 6, [{"TemporalPositionIdentifier": 1}, {"TemporalPositionIdentifier": 2}])
    for f in tmp_path.iterdir():   # drop the first time point's last three slices
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if int(ds.TemporalPositionIdentifier) == 1 and float(ds.ImagePositionPatient[2]) >= 9.0:
            f.unlink()
    volume, meta = read_series(tmp_path)
    assert meta.volumes is not None and [len(v.indices) for v in meta.volumes.volumes] == [3, 6]
    assert meta.volume == 1 and values(volume) == [100 + z for z in range(6)]


# --------------------------------------------------------------------------- size and spacing


def test_slices_too_small_to_be_an_mri_are_refused(tmp_path: Path) -> None:
    """Issue 25: 4x4-pixel slices (1000 of them made 250 chunks of noise) -> one line naming the folder."""
    for z in range(60):
        write_slice(tmp_path / f"s{z:04d}.dcm", np.full((4, 4), z), position=(0, 0, float(z)))
    with pytest.raises(DicomSeriesError) as info:
        read_series(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "4x4 pixels, too small to be an MRI" in message and "\n" not in message
    assert f"at least {dicom.MIN_SLICE_SIZE}x{dicom.MIN_SLICE_SIZE}" in message
    volume, _ = read_series(tmp_path, min_size=4)   # the threshold is a parameter for the contract
    assert volume.shape == (60, 4, 4)
    results = list(dicom.read_series_many([tmp_path]))
    assert isinstance(results[0][1], DicomSeriesError)


def test_a_series_at_the_size_floor_is_read(tmp_path: Path) -> None:
    for z in range(3):
        write_slice(tmp_path / f"s{z}.dcm", np.full((dicom.MIN_SLICE_SIZE, 40), z), position=(0, 0, float(z)))
    volume, meta = read_series(tmp_path)
    assert volume.shape == (3, dicom.MIN_SLICE_SIZE, 40) and not meta.warnings


def test_pixel_spacing_mismatch_is_warned_and_recorded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for z in range(6):
        spacing = (0.9, 0.9) if z in (2, 3) else (0.5, 0.5)
        write_slice(tmp_path / f"s{z}.dcm", np.full(SHAPE, z), position=(0, 0, float(z)), pixel_spacing=spacing)
    with caplog.at_level(logging.WARNING, logger="mgmt2d.data.dicom"):
        volume, meta = read_series(tmp_path)
    assert volume.shape == (6, *SHAPE)
    assert meta.pixel_spacing == (0.5, 0.5)
    assert meta.pixel_spacings == [((0.5, 0.5), 4), ((0.9, 0.9), 2)]
    assert len(meta.warnings) == 1 and "differ in PixelSpacing" in meta.warnings[0]
    assert any("differ in PixelSpacing" in r.getMessage() for r in caplog.records)
    assert meta.to_dict()["pixel_spacings"][1] == {"spacing": [0.9, 0.9], "slices": 2}


def test_resized_slices_with_matching_field_of_view_are_no_spacing_mismatch(tmp_path: Path) -> None:
    """A 32x32 slice at 0.25 mm among 16x16 at 0.5 mm covers the same field: resized, no warning."""
    for z in range(4):
        write_slice(tmp_path / f"s{z}.dcm", np.full(SHAPE, z), position=(0, 0, float(z)), pixel_spacing=(0.5, 0.5))
    write_slice(tmp_path / "big.dcm", np.full((32, 32), 9), position=(0, 0, 4.0), pixel_spacing=(0.25, 0.25))
    _, meta = read_series(tmp_path)
    assert meta.resized and not meta.pixel_spacings and not meta.warnings


# --------------------------------------------------------------------------- the pure grouping


def records(n_positions: int, **per_volume: list[object]) -> list[SliceHeader]:
    """Hand-built records: one volume per index of the lists in ``per_volume`` (field -> value per volume)."""
    n_volumes = len(next(iter(per_volume.values())))
    return [SliceHeader(file=f"v{v}z{z}", position=(0.0, 0.0, 2.0 * z), orientation=AXIAL,
                        **{name: values[v] for name, values in per_volume.items()})
            for v in range(n_volumes) for z in range(n_positions)]


def test_a_pair_of_headers_tells_volumes_apart() -> None:
    """2 time points x 2 echoes: neither header alone separates the 4 volumes, the pair does."""
    split = group_volumes(records(3, temporal_position=[1, 1, 2, 2], echo_number=[1, 2, 1, 2]))
    assert split.n_volumes == 4 and split.by == ["TemporalPositionIdentifier", "EchoNumbers"]
    assert [v.key for v in split.volumes] == [
        {"TemporalPositionIdentifier": t, "EchoNumbers": e} for t in (1, 2) for e in (1, 2)]
    assert split.chosen == 0 and all(v.positions == 3 for v in split.volumes)


def test_structural_beats_complete() -> None:
    """A complete phase volume and a magnitude one missing a slice: the magnitude is read."""
    headers = records(4, echo_time=[5.0, 10.0], image_type=[("ORIGINAL", "PRIMARY", "P"), ("ORIGINAL", "PRIMARY", "M")])
    headers = [h for h in headers if not (h.echo_time == 10.0 and h.position == (0.0, 0.0, 6.0))]
    split = group_volumes(headers)
    assert [len(v.indices) for v in split.volumes] == [4, 3] and split.chosen == 1
    assert [v.structural for v in split.volumes] == [False, True]


def test_a_key_unique_per_slice_does_not_split() -> None:
    """AcquisitionNumber different on every slice (some scanners) is not a volume key: 8 groups for 2 volumes."""
    headers = records(4, echo_number=[None, None])
    headers = [SliceHeader(file=h.file, position=h.position, orientation=h.orientation, acquisition_number=k)
               for k, h in enumerate(headers)]
    split = group_volumes(headers)
    assert split.chosen is None and "8 slices at 4 positions" in split.reason


def test_one_ordinary_series_is_one_volume() -> None:
    split = group_volumes(records(5, acquisition_number=[1]))
    assert split.n_volumes == 1 and split.chosen == 0 and split.by == [] and split.reason == "one volume"
    assert group_volumes([]).chosen is None
