"""``python -m mgmt2d organize``: a synthetic hospital export in, the Kaggle layout and series.csv out.

The export (``python -m mgmt2d synth-export``) holds four patients scanned on Siemens, GE,
Philips and Canon scanners with every series of a study (localiser, DWI/ADC, perfusion,
multi-echo, pre- and post-contrast T1, a reformat), nested folders, random names and junk.
Its truth says what each series is; organize must type every series right, list the junk,
lay out the chosen series so the stage scripts read them, and apply an edited series.csv.
The real shared headers (MPRAGE, EPI mosaic, Enhanced MR) are typed here too.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from mgmt2d.data.dicom import read_series
from mgmt2d.dev.synth import settings_json, write_dicom_series
from mgmt2d.dev.synth_export import generate_export
from mgmt2d.tools import info
from mgmt2d.tools.organize import (
    OrganizeError,
    OrganizeOptions,
    Survey,
    apply_edits,
    group_series,
    organize,
    patient_folders,
    read_file,
    scan_export,
    survey,
    type_all,
)

REPO = Path(__file__).resolve().parents[1]
TYPES = ("FLAIR", "T1w", "T1wCE", "T2w")


def run_organize(export: Path, out: Path, **options) -> Survey:
    return organize(OrganizeOptions(input=export, out=out, progress=False, **options))


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "synth"
    generate_export(out, patients=4, seed=0)
    return out


@pytest.fixture(scope="module")
def layout(synth: Path) -> Path:
    out = synth.parent / "layout"
    run_organize(synth / "export", out)
    return out


def series_csv(layout: Path) -> pd.DataFrame:
    return pd.read_csv(layout / "series.csv", dtype=str, keep_default_na=False)


def test_every_series_of_the_export_is_typed_right(synth: Path, layout: Path):
    truth = pd.read_csv(synth / "truth/series.csv", dtype=str, keep_default_na=False)
    got = series_csv(layout)
    assert len(got) == len(truth) == 40 and set(got.series_uid) == set(truth.series_uid)
    both = truth.merge(got, on="series_uid", suffixes=("_truth", ""))
    wrong = both[both.type_truth != both.type]
    assert wrong.empty, wrong[["vendor", "role", "type_truth", "type", "reason"]].to_string()
    assert (both.chosen == np.where(both.type == "other", "no", "yes")).all()
    assert (both.n_files == both.n_files_truth).all()
    assert set(truth.vendor) == {"siemens", "ge", "philips", "canon"}
    assert all(both.reason.str.len() > 20) and all(both.fields.str.len() > 0)
    by_role = both.set_index(["vendor", "role"])
    assert "before" in by_role.loc[("philips", "T1w"), "reason"]                  # timing against the perfusion
    assert "first post-contrast series" in by_role.loc[("ge", "T1w"), "reason"]   # GE: no ContrastBolusStartTime
    assert "EchoNumbers" in by_role.loc[("siemens", "multi-echo"), "reason"]
    assert by_role.loc[("siemens", "multi-echo"), "n_volumes"] == "2"


def test_chosen_series_are_laid_out_in_instance_number_order(synth: Path, layout: Path):
    got = series_csv(layout)
    patients = sorted(p.name for p in layout.iterdir() if p.is_dir())
    assert patients == sorted(pd.read_csv(synth / "truth/patients.csv", dtype=str).patient_id)
    for row in got[got.chosen == "yes"].itertuples():
        folder = layout / row.patient / row.type
        files = sorted(folder.iterdir(), key=lambda p: int(p.stem.split("-")[1]))
        assert [p.name for p in files] == [f"Image-{n}.dcm" for n in range(1, int(row.n_files) + 1)]
        assert all(p.is_symlink() and p.resolve().is_relative_to(synth / "export") for p in files)
        numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in files]
        assert numbers == sorted(numbers)
        assert {pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID for p in files[:3]} == {row.series_uid}
    assert sorted(p.name for p in (layout / patients[0]).iterdir()) == list(TYPES)


def test_junk_files_are_listed_with_their_reason(synth: Path, layout: Path):
    skipped = pd.read_csv(layout / "skipped.csv", dtype=str, keep_default_na=False)
    reasons = {Path(f).relative_to(synth / "export").as_posix(): r for f, r in zip(skipped.file, skipped.reason)}
    junk = pd.read_csv(synth / "truth/skipped.csv", dtype=str, keep_default_na=False)
    assert len(skipped) == len(junk) == 6
    for row in junk.itertuples():
        if row.reason == "duplicate of":   # the same SOP instance twice: either copy is the duplicate
            pair = {row.file, row.of}
            listed = [f for f in pair if f in reasons]
            assert len(listed) == 1 and reasons[listed[0]].startswith("duplicate of")
            assert (pair - set(listed)).pop() in reasons[listed[0]]
        else:
            assert reasons[row.file].startswith(row.reason), (row.file, reasons[row.file])


def test_every_stage_script_reads_the_layout_as_a_task2_split(layout: Path):
    got = series_csv(layout)
    patient = sorted(p.name for p in layout.iterdir() if p.is_dir())[0]
    described = info.describe(layout / patient)
    assert described["kind"] == "patient" and described["missing_types"] == []
    chosen = got[(got.patient == patient) & (got.chosen == "yes")].set_index("type")
    for mri_type in TYPES:
        series = described["series"][mri_type]
        assert "error" not in series, series
        assert series["n_slices"] == int(chosen.loc[mri_type, "n_slices"])
        assert series["plane"] == chosen.loc[mri_type, "plane"]


def _weights(root: Path) -> Path:
    """Random-init weights in our layout, small contract; the segmenter marks everything tumour so the
    classifier runs on every non-empty slice (a random segmenter finds no tumour and the run ends early)."""
    from mgmt2d.classification.model import build_classifier
    from mgmt2d.data.contract import OURS
    from mgmt2d.data.task2 import POOLED
    from mgmt2d.data.weights import WeightsLayout
    from mgmt2d.segmentation.model import build_segmenter

    torch.manual_seed(0)
    layout = WeightsLayout("mgmt2d", root / "segmentation", root / "classification")
    segmenter = build_segmenter()
    with torch.no_grad():
        segmenter.segmentation_head[0].weight.zero_()
        segmenter.segmentation_head[0].bias.fill_(10.0)
    layout.segmenter(0).parent.mkdir(parents=True)
    torch.save({"model": segmenter.state_dict()}, layout.segmenter(0))
    contract = OURS.with_overrides(seg_image_size=32, image_size=32, seq_len=4, stride=4)
    path = layout.classifier(POOLED, 0)
    path.parent.mkdir(parents=True)
    torch.save({"model": build_classifier(seq_len=4).state_dict(),
                "config": {"backbone": "eca_nfnet_l0", "lstm_hidden": 128, "seq_len": 4, "stride": 4,
                           "image_size": 32, "contract": contract.to_dict()}}, path)
    return root


def test_the_pipeline_runs_on_the_layout(layout: Path, tmp_path: Path):
    """inference_on_test.py --input LAYOUT, one patient's T1wCE (one type: every stage runs; the CPU time)."""
    (tmp_path / "SETTINGS.json").write_text(json.dumps(settings_json("data/")))
    patient = sorted(p.name for p in layout.iterdir() if p.is_dir())[0]
    sample = tmp_path / "sample.csv"
    sample.write_text(f"BraTS21ID,MGMT_value\n{patient},0.5\n")
    out = tmp_path / "out" / "sub.csv"
    proc = subprocess.run(
        [sys.executable, str(REPO / "inference_on_test.py"), "--settings", str(tmp_path / "SETTINGS.json"),
         "--input", str(layout), "--weights-dir", str(_weights(tmp_path / "w")), "--sample-submission", str(sample),
         "--output", str(out), "--device", "cpu", "--mri-types", "T1wCE"],
        cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sub = pd.read_csv(out, dtype={"BraTS21ID": str})
    assert sub.BraTS21ID.tolist() == [patient]
    assert 0 < sub.MGMT_value[0] < 1 and sub.MGMT_value[0] != 0.5
    detail = pd.read_csv(out.with_name("sub_per_type.csv"), dtype={"BraTS21ID": str}, keep_default_na=False)
    assert detail.type.tolist() == ["T1wCE"] and (detail.kept.astype(int) > 0).all()


# --------------------------------------------------------------------------- edited series.csv


def test_an_edited_series_csv_is_applied(synth: Path, layout: Path, tmp_path: Path):
    table = series_csv(layout)
    truth = pd.read_csv(synth / "truth/series.csv", dtype=str).set_index("series_uid")
    roles = table.series_uid.map(truth.role)
    patient = table.patient.iloc[0]
    mine = table.patient == patient
    # Use the patient's pre-contrast T1 as its T1wCE (as a user would after reading the reasons), and no T2w.
    table.loc[mine & (roles == "T1wCE"), "chosen"] = "no"
    table.loc[mine & (roles == "T1w"), ["type", "chosen"]] = ["T1wCE", "yes"]
    table.loc[mine & (roles == "T2w"), "chosen"] = "no"
    edited = tmp_path / "edited.csv"
    table.to_csv(edited, index=False)
    out = tmp_path / "layout"
    run_organize(synth / "export", out, series_csv=edited)
    applied = series_csv(out)
    row = applied[(applied.patient == patient) & (applied.series_uid.map(truth.role) == "T1w")].iloc[0]
    assert row.type == "T1wCE" and row.chosen == "yes" and "type set to T1wCE in edited.csv" in row.reason
    assert sorted(p.name for p in (out / patient).iterdir()) == ["FLAIR", "T1wCE"]
    first = pydicom.dcmread(out / patient / "T1wCE" / "Image-1.dcm", stop_before_pixels=True)
    assert first.SeriesInstanceUID == row.series_uid
    others = applied[applied.patient != patient]
    assert (others.drop(columns="reason") == table[table.patient != patient].drop(columns="reason")).all().all()


@pytest.fixture(scope="module")
def surveyed(synth: Path) -> Survey:
    return survey(synth / "export", progress=False)


def _bad_edit(table: pd.DataFrame, roles: pd.Series, edit: str) -> pd.DataFrame:
    first = table.patient == table.patient.iloc[0]
    if edit == "unknown type":
        table.loc[table.index[3], "type"] = "T3"
    elif edit == "two chosen":
        table.loc[first & (roles == "multi-echo"), ["type", "chosen"]] = ["T2w", "yes"]
    elif edit == "other chosen":
        table.loc[first & (roles == "DWI"), "chosen"] = "yes"
    elif edit == "bad chosen":
        table.loc[table.index[0], "chosen"] = "maybe"
    elif edit == "foreign row":
        table.loc[table.index[5], "series_uid"] = "1.2.3.4"
    elif edit == "repeated row":
        table = pd.concat([table, table.iloc[[2]]])
    elif edit == "missing row":
        table = table.drop(index=table.index[7])
    else:
        table = table.drop(columns="chosen")
    return table


@pytest.mark.parametrize(("edit", "needle"), [
    ("unknown type", r"line 5: type 'T3' is not one of FLAIR, T1w, T1wCE, T2w, other"),
    ("two chosen", r"lines \d+ and \d+ both choose a T2w series for patient"),
    ("other chosen", r"line \d+: a series of type other cannot be chosen"),
    ("bad chosen", r"line 2: chosen 'maybe' is not yes or no"),
    ("foreign row", r"line 7: series 1.2.3.4 of patient '\d+' is not in the export"),
    ("repeated row", r"line 42 lists series [\d.]+ again \(line 4\)"),
    ("missing row", r"lacks series [\d.]+ \(#\d+ '.+'\) of patient"),
    ("missing column", r"lacks the column\(s\) chosen"),
])
def test_a_bad_edit_is_refused_naming_the_line(synth: Path, layout: Path, surveyed: Survey, tmp_path: Path,
                                               edit: str, needle: str):
    table = series_csv(layout)
    roles = table.series_uid.map(pd.read_csv(synth / "truth/series.csv", dtype=str).set_index("series_uid").role)
    edited = tmp_path / "edited.csv"
    _bad_edit(table, roles, edit).to_csv(edited, index=False)
    with pytest.raises(OrganizeError, match=needle):
        apply_edits(copy.deepcopy(surveyed.series), edited)


def test_a_bad_edit_is_one_line_and_nothing_is_written(synth: Path, layout: Path, tmp_path: Path):
    table = series_csv(layout)
    table.loc[table.index[3], "type"] = "T3"
    edited = tmp_path / "edited.csv"
    table.to_csv(edited, index=False)
    out = tmp_path / "layout"
    proc = subprocess.run([sys.executable, "-m", "mgmt2d", "organize", "--input", str(synth / "export"),
                           "--out", str(out), "--series-csv", str(edited)], capture_output=True, text=True)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{edited} line 5: type 'T3'" in errors[0] and "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".layout.organize-*"))    # nothing half-written


# --------------------------------------------------------------------------- output folder, patients


def _tiny_export(root: Path, patient_ids: list[str]) -> Path:
    """One small T2w series per PatientID (16 slices of 32x32 px), enough for organize's checks."""
    rng = np.random.default_rng(0)
    volume = np.zeros((24, 24, 20), np.float32)
    volume[4:20, 4:20, 2:18] = 1.0
    for k, pid in enumerate(patient_ids):
        folder = root / f"p{k}"
        write_dicom_series(folder, volume, "axial", rng, mri_type="T2w", patient_id=pid, matrix=(32, 32),
                           n_slices=16, blank=(0, 0), series_number=k + 1)
        for path in folder.iterdir():
            ds = pydicom.dcmread(path)
            ds.SeriesDescription, ds.ScanningSequence, ds.RepetitionTime, ds.EchoTime = "Ax T2 FSE", "SE", 4000, 100
            ds.save_as(path)
    return root


def test_patient_folder_names_are_safe_and_never_shared():
    assert patient_folders(["4711", "0815"], number=False) == {"4711": "4711", "0815": "0815"}
    assert patient_folders(["ANON B", "ANON-A"], number=True) == {"ANON B": "00001", "ANON-A": "00002"}
    with pytest.raises(OrganizeError, match="'A B' and 'A_B' would both become the patient folder 'A_B'"):
        patient_folders(["A B", "A_B"], number=False)
    with pytest.raises(OrganizeError, match="'007' and '7' are both patient 00007"):
        patient_folders(["7", "007"], number=False)
    assert patient_folders(["ANON-7", "UPENN-GBM-00002_11"], number=False) == {
        "ANON-7": "ANON-7", "UPENN-GBM-00002_11": "UPENN-GBM-00002_11"}
    with pytest.raises(OrganizeError, match="'ANON-7' and 'anon-7' differ only in case.*--number-patients"):
        patient_folders(["ANON-7", "anon-7"], number=False)


def test_patient_ids_that_are_not_numbers_are_folders_the_stage_scripts_read(tmp_path: Path):
    from mgmt2d.data import task2

    export = _tiny_export(tmp_path / "export", ["ANON^7", "ANON 8"])
    run_organize(export, tmp_path / "a")
    got = series_csv(tmp_path / "a")
    assert dict(zip(got.patient_id, got.patient)) == {"ANON 8": "ANON_8", "ANON^7": "ANON_7"}
    assert list(task2.patient_folders(tmp_path / "a")) == ["ANON_7", "ANON_8"]   # what the stage scripts read
    run_organize(export, tmp_path / "b", number_patients=True)
    got = series_csv(tmp_path / "b")
    assert dict(zip(got.patient_id, got.patient)) == {"ANON 8": "00001", "ANON^7": "00002"}
    assert (tmp_path / "b" / "00002" / "T2w" / "Image-16.dcm").is_file()


def test_a_series_without_patient_id_is_listed_not_laid_out(tmp_path: Path):
    export = _tiny_export(tmp_path / "export", ["12", ""])
    run_organize(export, tmp_path / "out")
    got = series_csv(tmp_path / "out")
    row = got[got.patient_id == ""].iloc[0]
    assert row.patient == "" and row.chosen == "no" and "no PatientID" in row.reason
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["12"]
    with pytest.raises(OrganizeError, match="none of the 1 series has a PatientID"):
        run_organize(_tiny_export(tmp_path / "export2", [""]), tmp_path / "out2")


def test_links_to_folders_and_broken_links_are_listed_not_followed(tmp_path: Path):
    export = _tiny_export(tmp_path / "export", ["12"])
    (export / "loop").symlink_to(export, target_is_directory=True)    # would walk forever if followed
    (export / "gone.dcm").symlink_to(tmp_path / "nowhere.dcm")
    found = survey(export, progress=False)
    assert {Path(k.file).name: k.reason for k in found.skipped} == {
        "loop": "symbolic link to a folder: not followed", "gone.dcm": "broken symbolic link"}
    assert len(found.series) == 1 and found.n_files == 16


def test_an_existing_layout_is_replaced_only_with_overwrite(tmp_path: Path):
    export = _tiny_export(tmp_path / "export", ["12"])
    out = tmp_path / "out"
    run_organize(export, out)
    before = sorted(p.name for p in export.rglob("*"))
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        run_organize(export, out)
    run_organize(export, out, overwrite=True, copy=True)
    image = out / "12" / "T2w" / "Image-1.dcm"
    assert image.is_file() and not image.is_symlink()
    assert sorted(p.name for p in export.rglob("*")) == before          # replacing links never touched the export
    assert not list(tmp_path.glob(".out.organize-*"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(OrganizeError, match="not a layout written by organize"):
        run_organize(export, mine, overwrite=True)
    with pytest.raises(OrganizeError, match="overlap"):
        run_organize(export, export / "layout")
    assert (mine / "notes.txt").read_text() == "keep"


# --------------------------------------------------------------------------- real headers (shared samples)


def _typed(folder: Path) -> list:
    records, skipped = scan_export(folder, progress=False)
    series = group_series(records, skipped)
    type_all(series)
    return series


def test_real_mprage_is_a_sagittal_t1w(mprage_dir: Path):
    (series,) = _typed(mprage_dir)
    assert series.typing.type == "T1w", series.typing.reason
    assert series.plane == "sagittal" and series.summary.n_slices == 176 and len(series.files) == 176
    assert "t1_MPRAGEcr_noGRAPPA" in series.typing.reason and "TI 850" in series.typing.reason
    assert "InversionTime" in series.typing.fields


def test_real_epi_mosaic_and_enhanced_mr_are_other(shared_data: Path):
    for folder, needle in (("dicom-transfer-syntaxes/In", "EPI"),
                           ("dicom-enhanced-mr/In/Siemens", "EPI"),
                           ("dicom-enhanced-mr/In/Philips", "field map")):
        if not (shared_data / folder).is_dir():
            pytest.skip(f"{shared_data / folder} is absent")
        (series,) = _typed(shared_data / folder)
        assert series.typing.type == "other" and needle in series.typing.reason, (folder, series.typing.reason)
    (philips,) = _typed(shared_data / "dicom-enhanced-mr/In/Philips")
    assert philips.summary.enhanced and philips.summary.tr == pytest.approx(3.8045, abs=1e-3)
    assert philips.summary.n_volumes == 2 and philips.multi_frame


def test_a_multi_frame_series_is_one_file_the_reader_reads_from_the_layout(shared_data: Path, tmp_path: Path):
    """Enhanced MR: Image-<n>.dcm are the multi-frame files in InstanceNumber order; read_series reads the
    same volume from the layout as from the export (the user chose the series by hand: it is an fMRI)."""
    source = shared_data / "dicom-enhanced-mr/In/Siemens/XA10"
    if not source.is_dir():
        pytest.skip(f"{source} is absent")
    export = tmp_path / "export"
    shutil.copytree(source, export / "disc" / "A")
    for path, name in zip(sorted((export / "disc" / "A").iterdir()), ("z9", "k2", "b7", "a1")):
        path.rename(path.with_name(name))   # names that do not follow the instance numbers
    run_organize(export, tmp_path / "first", number_patients=True)
    table = series_csv(tmp_path / "first")
    assert table.type.tolist() == ["other"] and table.n_files.tolist() == ["4"] and table.n_slices.tolist() == ["6"]
    table[["type", "chosen"]] = ["T2w", "yes"]
    table.to_csv(tmp_path / "edited.csv", index=False)
    run_organize(export, tmp_path / "out", number_patients=True, series_csv=tmp_path / "edited.csv")
    laid_out = tmp_path / "out" / "00001" / "T2w"
    assert sorted(p.name for p in laid_out.iterdir()) == [f"Image-{n}.dcm" for n in range(1, 5)]
    numbers = [int(pydicom.dcmread(laid_out / f"Image-{n}.dcm", stop_before_pixels=True).InstanceNumber)
               for n in range(1, 5)]
    assert numbers == sorted(numbers)
    want, want_meta = read_series(export / "disc" / "A")
    got, got_meta = read_series(laid_out)
    np.testing.assert_array_equal(got, want)
    assert got_meta.volumes.n_volumes == want_meta.volumes.n_volumes == 4 and got_meta.frames == want_meta.frames


@pytest.mark.parametrize("number", [1, 3, 9])   # explicit LE, explicit big endian, JPEG 2000 (encapsulated)
def test_a_file_cut_short_in_its_pixel_data_is_skipped_as_truncated(shared_data: Path, tmp_path: Path, number: int):
    source = shared_data / f"dicom-transfer-syntaxes/In/{number}.dcm"
    if not source.is_file():
        pytest.skip(f"{source} is absent")
    assert not isinstance(read_file(source), str)
    data = source.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 100])
    assert read_file(cut).startswith("truncated")


def test_synth_export_command(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "mgmt2d", "synth-export", "--out", str(tmp_path / "x"),
                           "--patients", "1", "--seed", "5"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    truth = pd.read_csv(tmp_path / "x/truth/series.csv")
    assert truth.vendor.unique().tolist() == ["siemens"] and len(truth) == 10
    assert json.loads((tmp_path / "x/synth_export.json").read_text())["patients"] == [str(truth.patient_id[0])]
    generate_export(tmp_path / "y", patients=1, seed=5)      # deterministic by seed: the same files, byte for byte

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert files(tmp_path / "x") == files(tmp_path / "y")
