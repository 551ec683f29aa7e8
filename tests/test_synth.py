"""Synthetic data generator: layouts, determinism, DICOM geometry truth, visible label."""

from __future__ import annotations

import argparse
import hashlib
import io
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from mgmt2d.dev import synth
from mgmt2d.dev.synth import (
    MRI_TYPES,
    TASK1_MODALITIES,
    generate,
    make_phantom,
    render,
    write_dicom_series,
)

N_PATIENTS = 6
SEED = 3
ID_RE = re.compile(r"^\d{5}$")
FILE_RE = re.compile(r"^Image-(\d+)\.dcm$")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "data"
    summary = generate(out, N_PATIENTS, SEED, "small")
    return out, summary


@pytest.fixture(scope="module")
def phantom_image() -> np.ndarray:
    phantom = make_phantom(synth.SIZES["small"].grid, 1, np.random.default_rng(11))
    return render(phantom, "T1wCE", np.random.default_rng(12))


def _read_ids(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"BraTS21ID": str})


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- layout


def test_task2_layout_and_csvs(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    train = _read_ids(out / "task2" / "train_labels.csv")
    sub = _read_ids(out / "task2" / "sample_submission.csv")
    assert list(train.columns) == ["BraTS21ID", "MGMT_value"]
    assert list(sub.columns) == ["BraTS21ID", "MGMT_value"]
    assert all(ID_RE.match(i) for i in [*train.BraTS21ID, *sub.BraTS21ID])
    assert set(train.MGMT_value) <= {0, 1}
    assert (sub.MGMT_value == 0.5).all()
    # IDs are written zero-padded in the file itself
    first_row = (out / "task2" / "train_labels.csv").read_text().splitlines()[1]
    assert ID_RE.match(first_row.split(",")[0])

    assert sorted(p.name for p in (out / "task2" / "train").iterdir()) == sorted(train.BraTS21ID)
    assert sorted(p.name for p in (out / "task2" / "test").iterdir()) == sorted(sub.BraTS21ID)
    assert not set(train.BraTS21ID) & set(sub.BraTS21ID)
    assert len(train) + len(sub) == N_PATIENTS
    assert len(sub) == max(1, round(N_PATIENTS / 4))
    # balanced labels over all Task 2 patients, both labels in train
    test_truth = _read_ids(out / "truth" / "test_labels.csv")
    all_labels = [*train.MGMT_value, *test_truth.MGMT_value]
    assert abs(sum(all_labels) - N_PATIENTS / 2) <= 0.5
    assert set(train.MGMT_value) == {0, 1}

    for split, ids in (("train", train.BraTS21ID), ("test", sub.BraTS21ID)):
        for pid in ids:
            folders = sorted(p.name for p in (out / "task2" / split / pid).iterdir())
            assert folders == sorted(MRI_TYPES)
            for mri_type in MRI_TYPES:
                files = list((out / "task2" / split / pid / mri_type).iterdir())
                numbers = sorted(int(FILE_RE.match(f.name).group(1)) for f in files)
                assert numbers == list(range(1, len(files) + 1))
                ds = pydicom.dcmread(files[0])
                assert ds.PatientID == pid
                assert ds.SeriesDescription == mri_type
                assert ds.Modality == "MR"
                assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
                assert ds.SOPClassUID == pydicom.uid.MRImageStorage
                assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
                assert ds.PhotometricInterpretation == "MONOCHROME2"
                assert ds.BitsAllocated == 16
                assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
                assert int(ds.InstanceNumber) == int(FILE_RE.match(files[0].name).group(1))
                assert 24 <= len(files) <= 64 and max(ds.Rows, ds.Columns) <= 112


def test_dicom_variety(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    series = pd.read_csv(out / "truth" / "series.csv", dtype={"BraTS21ID": str})
    assert len(series) == 4 * N_PATIENTS
    assert set(series.plane) == {"axial", "sagittal", "coronal"}
    assert series.groupby("BraTS21ID").plane.nunique().min() >= 2
    assert {"ascending", "descending", "shuffled"} <= set(series.order)
    assert ((series.slope != 1) | (series.intercept != 0)).any()
    assert ((series.blank_start + series.blank_end) > 0).any()
    assert series.rows.nunique() > 1 and series.slices.nunique() > 1


def test_every_generated_series_reads_back(dataset: tuple[Path, dict]) -> None:
    dicom = pytest.importorskip("mgmt2d.data.dicom")
    out, _ = dataset
    series = pd.read_csv(out / "truth" / "series.csv", dtype={"BraTS21ID": str})
    for row in series.itertuples():
        volume, meta = dicom.read_series(out / "task2" / row.split / row.BraTS21ID / row.type)
        assert volume.shape == (row.slices, row.rows, row.cols)
        assert meta.plane == row.plane and meta.order_by == "position"
        assert not volume[: row.blank_start].any()
        assert not volume[row.slices - row.blank_end:].any()
        assert volume.min() == 0.0  # background is exactly 0 after rescale
        assert volume[row.slices // 2].max() > 100


def test_dicom_files_are_what_pydicom_writes(dataset: tuple[Path, dict]) -> None:
    """The hand-assembled files equal pydicom's own Part-10 encoding, byte for byte."""
    out, _ = dataset
    files = sorted((out / "task2").rglob("*.dcm"))[::41]
    for path in files:
        ds = pydicom.dcmread(path)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        assert buf.getvalue() == path.read_bytes(), path


def test_task1_layout(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    cases = sorted((out / "task1").iterdir())
    assert len(cases) == N_PATIENTS
    ids = [c.name.removeprefix("BraTS2021_") for c in cases]
    assert all(c.name.startswith("BraTS2021_") and ID_RE.match(i) for c, i in zip(cases, ids))
    task2_ids = set(summary["task2_train_ids"]) | set(summary["task2_test_ids"])
    shared = set(ids) & task2_ids
    assert len(shared) in (N_PATIENTS // 2, (N_PATIENTS + 1) // 2)
    assert set(summary["shared_ids"]) == shared
    for case, pid in zip(cases, ids):
        names = sorted(p.name for p in case.iterdir())
        expected = sorted(f"BraTS2021_{pid}_{m}.nii.gz" for m in [*TASK1_MODALITIES, "seg"])
        assert names == expected
        seg_img = nib.load(case / f"BraTS2021_{pid}_seg.nii.gz")
        seg = np.asarray(seg_img.dataobj)
        assert seg.dtype == np.uint8
        assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4}
        assert np.count_nonzero(seg == 4) > 0 and np.count_nonzero(seg == 2) > 0
        assert seg.shape == synth.SIZES["small"].grid
        np.testing.assert_allclose(np.abs(np.diag(seg_img.affine)), [1, 1, 1, 1])
        assert np.count_nonzero(seg_img.affine[:3, :3] - np.diag(np.diag(seg_img.affine[:3, :3]))) == 0
        for mod in TASK1_MODALITIES:
            img = nib.load(case / f"BraTS2021_{pid}_{mod}.nii.gz")
            data = np.asarray(img.dataobj)
            assert data.shape == seg.shape and data.dtype in (np.int16, np.float32)
            np.testing.assert_array_equal(img.affine, seg_img.affine)
            # skull-stripped: zero background, tumour inside the non-zero brain
            assert data[0, 0, 0] == 0 and (data > 0).mean() > 0.1
            assert np.all(data[seg > 0] > 0)


def test_synth_json_and_settings(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    import json

    stored = json.loads((out / "synth.json").read_text())
    assert stored["task2_train_ids"] == summary["task2_train_ids"]
    assert stored["seed"] == SEED and stored["size"] == "small"
    settings = json.loads((out / "SETTINGS.json").read_text())
    assert (out / settings["DICOM_DATA_DIR"] / "train_labels.csv").is_file()
    assert (out / settings["TASK1_DIR"]).is_dir()


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    generate(tmp_path / "a", 2, 7, "small")
    generate(tmp_path / "b", 2, 7, "small")
    generate(tmp_path / "c", 2, 8, "small")
    a, b, c = (_tree_digest(tmp_path / n) for n in "abc")
    assert len(a) > 100
    assert a == b
    assert a != c


def test_refuses_non_empty_output(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate(tmp_path, 1, 0, "small")
    assert (tmp_path / "x.txt").read_text() == "keep me"


def test_cli_entry_points(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "d"), "--patients", "1", "--seed", "5"])
    assert synth.main(args) == 0
    assert (tmp_path / "d" / "synth.json").is_file()
    assert len(list((tmp_path / "d" / "task2" / "train").iterdir())) == 1
    assert synth.main(args) == 2  # folder now not empty


# --------------------------------------------------------------------------- DICOM truth

READER_CASES = [
    dict(plane="axial", order="ascending", rescale=(1.0, 0.0), rescale_tags=False, signed=False,
         tilt_deg=0.0, blank=(0, 0)),
    dict(plane="sagittal", order="shuffled", rescale=(0.5, -512.0), signed=True, tilt_deg=5.0,
         blank=(2, 1)),
    dict(plane="coronal", order="descending", rescale=(2.0, 2048.0), signed=True, tilt_deg=0.0,
         blank=(3, 3)),
    dict(plane="axial", order="shuffled", rescale=(0.25, -250.0), signed=False, tilt_deg=7.0,
         blank=(1, 0), matrix=(64, 96)),
    dict(plane="coronal"),
    dict(plane="sagittal"),
    dict(plane="axial"),
]


@pytest.mark.parametrize("index", range(len(READER_CASES)))
def test_reader_matches_generator_truth(
    index: int, phantom_image: np.ndarray, tmp_path: Path
) -> None:
    dicom = pytest.importorskip("mgmt2d.data.dicom")
    case = READER_CASES[index]
    rng = np.random.default_rng([2024, index])
    options = {k: v for k, v in case.items() if k != "plane"}
    truth = write_dicom_series(tmp_path / "s", phantom_image, case["plane"], rng, noise=0.02,
                               **options)
    s, h, w = truth.volume.shape
    assert len(list((tmp_path / "s").glob("Image-*.dcm"))) == s
    # truth itself: blank ends, head in the middle, positions ascending along the normal
    b0, b1 = truth.blank
    assert not truth.volume[:b0].any() and not truth.volume[s - b1:].any()
    assert truth.volume[s // 2].max() > 0
    assert np.all(np.diff(truth.positions @ truth.normal) > 0)
    if truth.order == "descending":
        assert np.all(np.diff(truth.file_numbers) < 0)

    volume, meta = dicom.read_series(tmp_path / "s")
    assert volume.dtype == np.float32 and volume.shape == (s, h, w)
    assert meta.plane == truth.plane == case["plane"]
    np.testing.assert_allclose(volume, truth.volume, rtol=0, atol=1e-3)
    np.testing.assert_allclose(np.asarray(meta.positions), truth.positions, atol=1e-4)


def test_shuffled_series_is_out_of_anatomical_file_order(
    phantom_image: np.ndarray, tmp_path: Path
) -> None:
    truth = write_dicom_series(tmp_path / "s", phantom_image, "axial", np.random.default_rng(0),
                               order="shuffled", n_slices=30, blank=(0, 0))
    assert sorted(truth.file_numbers.tolist()) == list(range(1, 31))
    assert truth.file_numbers.tolist() != sorted(truth.file_numbers.tolist())
    for i in (0, 13, 29):  # the file named n holds anatomical slice i
        ds = pydicom.dcmread(tmp_path / "s" / f"Image-{truth.file_numbers[i]}.dcm")
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], truth.positions[i])
        assert int(ds.InstanceNumber) == truth.file_numbers[i]


def test_write_dicom_series_rejects_bad_rescale(phantom_image: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_dicom_series(tmp_path / "s", phantom_image, "axial", np.random.default_rng(0),
                           rescale=(2.0, 0.0), rescale_tags=False)
    with pytest.raises(ValueError):
        write_dicom_series(tmp_path / "s", phantom_image, "oblique", np.random.default_rng(0))


# --------------------------------------------------------------------------- label


def _necrotic_fraction(seg: np.ndarray) -> float:
    nc, et = np.count_nonzero(seg == 1), np.count_nonzero(seg == 4)
    return nc / max(nc + et, 1)


def test_label_visible_in_segmentation() -> None:
    grid = synth.SIZES["small"].grid
    fractions = {0: [], 1: []}
    for k in range(16):
        label = k % 2
        ph = make_phantom(grid, label, np.random.default_rng([99, k]))
        fractions[label].append(_necrotic_fraction(ph.seg))
    assert min(fractions[1]) > 0.15 > max(fractions[0])


def test_label_visible_on_dicom_slices(tmp_path: Path) -> None:
    """Labels resampled with the series: necrosis is dark in T1CE, the rim bright."""
    grid = synth.SIZES["small"].grid
    for label in (0, 1):
        ph = make_phantom(grid, label, np.random.default_rng([5, label]))
        img = render(ph, "T1wCE", np.random.default_rng(0))
        truth = write_dicom_series(tmp_path / str(label), img, "coronal",
                                   np.random.default_rng(1), labels_xyz=ph.seg)
        seg = truth.seg
        assert seg is not None and seg.shape == truth.volume.shape
        assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4} and (seg == 4).any()
        assert np.all(truth.volume[seg > 0] > 0)
        et = truth.volume[seg == 4].mean()
        assert et > truth.volume[seg == 2].mean()
        if label == 1:
            assert truth.volume[seg == 1].mean() < 0.5 * et
            assert _necrotic_fraction(seg) > 0.15
        else:
            assert _necrotic_fraction(seg) < 0.15


def test_label_visible_in_images(dataset: tuple[Path, dict]) -> None:
    """On the axial slice with most tumour, T1CE inside the tumour is darker for label 1."""
    out, summary = dataset
    stats = {0: [], 1: []}
    for pid in summary["task1_ids"]:
        case = out / "task1" / f"BraTS2021_{pid}"
        seg = np.asarray(nib.load(case / f"BraTS2021_{pid}_seg.nii.gz").dataobj)
        t1ce = np.asarray(nib.load(case / f"BraTS2021_{pid}_t1ce.nii.gz").dataobj, dtype=np.float32)
        core = (seg == 1) | (seg == 4)
        z = int(np.argmax(core.sum(axis=(0, 1))))
        inside = t1ce[:, :, z][core[:, :, z]]
        rim = t1ce[:, :, z][seg[:, :, z] == 4]
        stats[summary["labels"][pid]].append(float(inside.mean() / np.percentile(rim, 90)))
    assert stats[0] and stats[1]
    assert max(stats[1]) < min(stats[0])
