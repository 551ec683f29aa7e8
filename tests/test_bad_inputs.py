"""The third round of bad inputs (issue 25, the input side): each gives the right result or one line.

Every refusal is asserted as a user meets it: exit status 2, one ``error:`` line naming the file or
flag and the fix, no traceback, and nothing written that looks complete. The models are tiny
(tests/helpers_scripts.py); the data is synthetic or written here with pydicom.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pydicom
import pytest
from helpers_scripts import TINY, one_error_line, run_script, settings_for, tiny_weights, trim_series
from test_dicom import write_slice

from mgmt2d import cli
from mgmt2d.classification.prepare import read_fold_table
from mgmt2d.data import task2
from mgmt2d.data.contract import REFERENCE, InputContract, contract_of
from mgmt2d.data.weights import WeightsError, WeightsLayout
from mgmt2d.dev import synth
from mgmt2d.inference import report
from mgmt2d.inference.pipeline import PatientResult, PredictOptions, Predictor
from mgmt2d.segmentation import prepare as segdata
from mgmt2d.tools.info import describe


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> SimpleNamespace:
    """One synthetic test patient (10 slices per series), tiny weights (pooled fold 0), the models loaded."""
    root = tmp_path_factory.mktemp("bad")
    summary = synth.generate(root / "synth", patients=2, seed=11, size="small")
    trim_series(root / "synth" / "task2")
    weights = tiny_weights(root / "weights")
    predictor = Predictor.from_weights(weights, "cpu", ["FLAIR", "T1wCE"], [0])
    return SimpleNamespace(root=root, data=root / "synth", test=root / "synth/task2/test", weights=weights,
                           patient=summary["task2_test_ids"][0], predictor=predictor)


def _patient(kit, folder: Path, types: dict[str, str]) -> Path:
    """A patient folder whose type folders (named as ``types`` says) link to the kit patient's series."""
    folder.mkdir(parents=True)
    for mri_type, name in types.items():
        (folder / name).symlink_to(kit.test / kit.patient / mri_type, target_is_directory=True)
    return folder


def _infer(kit, cwd: Path, *extra: str | Path):
    settings = settings_for(cwd, kit.data)
    return run_script("inference_on_test.py", "--settings", settings, "--weights-dir", kit.weights, "--output",
                      cwd / "out" / "sub.csv", "--mri-types", "FLAIR", "T1wCE", "--workers", "1", "--device", "cpu",
                      *extra, cwd=cwd)


# --------------------------------------------------------------------------- item 3: type folders in any case


def test_type_folders_are_found_in_any_case_and_two_of_one_type_are_refused(kit, tmp_path: Path):
    inp = tmp_path / "test"
    _patient(kit, inp / "10001", {"FLAIR": "FLAIR", "T1wCE": "T1wCE"})
    _patient(kit, inp / "10002", {"FLAIR": "flair", "T1wCE": "T1WCE"})
    sub, detail = kit.predictor.predict(["10001", "10002"], inp, PredictOptions(["FLAIR", "T1wCE"]))
    assert sub.MGMT_value.iloc[0] == pytest.approx(sub.MGMT_value.iloc[1], abs=1e-6)
    assert (detail.kept > 0).all() and not (detail.note == "series missing").any()
    a, b = (detail[detail.BraTS21ID == p].drop(columns="BraTS21ID").reset_index(drop=True) for p in ("10001", "10002"))
    pd.testing.assert_frame_equal(a, b)
    # FLAIR and flair: which is the series is not ours to guess
    _patient(kit, inp / "10003", {"FLAIR": "FLAIR", "T1wCE": "T1wCE"})
    (inp / "10003" / "flair").symlink_to(kit.test / kit.patient / "T2w", target_is_directory=True)
    pd.DataFrame({"BraTS21ID": ["10003"], "MGMT_value": [0.5]}).to_csv(tmp_path / "sample.csv", index=False)
    proc = _infer(kit, tmp_path, "--input", inp, "--sample-submission", tmp_path / "sample.csv")
    one_error_line(proc, str(inp / "10003"), "holds FLAIR and flair, both the FLAIR series", "keep one")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_info_describes_a_patient_whose_type_folders_are_lower_case(kit, tmp_path: Path):
    out = describe(_patient(kit, tmp_path / "p", {"FLAIR": "flair", "T1wCE": "t1wce"}))
    assert out["kind"] == "patient" and sorted(out["series"]) == ["FLAIR", "T1wCE"]
    assert out["missing_types"] == ["T1w", "T2w"] and out["series"]["FLAIR"]["n_slices"] == 10


# --------------------------------------------------------------------------- item 4: --tta-zoom


@pytest.mark.parametrize("zoom", ["0", "-1.2"])
def test_tta_zoom_out_of_range_is_one_line(kit, tmp_path: Path, zoom: str):
    proc = _infer(kit, tmp_path, "--tta-zoom", zoom)
    one_error_line(proc, f"--tta-zoom {float(zoom):g} is out of range", "between 0.5 (zoom out) and 2 (zoom in)")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    for bad in (float("nan"), 5.0, 0.4):   # the same check, wherever a contract is made
        with pytest.raises(ValueError, match=f"--tta-zoom {bad:g} is out of range"):
            InputContract(tta_zoom=bad)


def test_tta_zoom_out_is_allowed_and_changes_the_input(kit):
    base = kit.predictor
    zoomed = Predictor(base.segmenter, base.classifiers, base.contract.with_overrides(tta_zoom=0.8))
    plain, _ = base.predict([kit.patient], kit.test, PredictOptions(["T1wCE"]))
    out, _ = zoomed.predict([kit.patient], kit.test, PredictOptions(["T1wCE"]))
    assert 0 <= out.MGMT_value.iloc[0] <= 1 and out.MGMT_value.iloc[0] != pytest.approx(plain.MGMT_value.iloc[0],
                                                                                          abs=1e-7)


# --------------------------------------------------------------------------- item 5: --folds


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_a_fold_without_its_checkpoint_is_refused_never_dropped(tmp_path: Path):
    cls = tmp_path / "classification"
    for rel in ("FLAIR/fold0", "pooled/fold0", "pooled/fold1"):
        _touch(cls / rel / "best.pt")
    ours = WeightsLayout("mgmt2d", tmp_path / "segmentation", cls)
    assert ours.fold_checkpoints("FLAIR", [0]) == [cls / "FLAIR/fold0/best.pt"]
    assert ours.fold_checkpoints("T2w", [0, 1]) == [cls / "pooled/fold0/best.pt", cls / "pooled/fold1/best.pt"]
    # the type's own fold 1 is missing: refused, not made up from the pooled fold 1
    with pytest.raises(WeightsError, match=r"--folds 0 1: .*FLAIR/fold1/best.pt not found \(the FLAIR models, "
                                           r"folds present: 0\); .* --folds 0$"):
        ours.fold_checkpoints("FLAIR", [0, 1])
    # a type without its own models uses the pooled ones: the same rule
    with pytest.raises(WeightsError, match=r"pooled/fold3/best.pt not found \(T2w uses the pooled models, folds "
                                           r"present: 0 1\)"):
        ours.fold_checkpoints("T2w", [0, 3])
    assert WeightsLayout("mgmt2d", tmp_path, tmp_path / "empty").fold_checkpoints("T2w", [0]) == []
    t4e = WeightsLayout("t4e", tmp_path / "seg", tmp_path / "t4e")
    _touch(t4e.classifier("FLAIR", 0))
    with pytest.raises(WeightsError, match="FLAIR_Fold3_eca_nfnet_l0_2d_classification.pth not found"):
        t4e.fold_checkpoints("FLAIR", [0, 3])


def test_folds_0_3_without_fold_3_is_one_line(kit, tmp_path: Path):
    proc = _infer(kit, tmp_path, "--folds", "0", "3")
    one_error_line(proc, "--folds 0 3:", str(kit.weights / "classification/pooled/fold3/best.pt"), "not found",
                   "folds present: 0", "--folds 0")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------- SETTINGS.json through a script


def test_a_duplicated_settings_key_stops_a_script_before_it_writes(kit, tmp_path: Path):
    settings = settings_for(tmp_path, kit.data)
    text = settings.read_text()
    settings.write_text(text[:-1] + f', "TEST_PREDICTION_FILE": "{tmp_path / "other.csv"}"}}')
    proc = run_script("inference_on_test.py", "--settings", settings, "--device", "cpu", cwd=tmp_path)
    one_error_line(proc, str(settings), "gives TEST_PREDICTION_FILE twice", "keep one")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SETTINGS.json"]


# --------------------------------------------------------------------------- blank rows in every CSV


def test_a_blank_row_in_a_sample_submission_or_labels_is_one_line(kit, tmp_path: Path):
    sample = tmp_path / "sample.csv"
    sample.write_text(f"BraTS21ID,MGMT_value\n{kit.patient},0.5\n\n00123,0.5\n")
    proc = _infer(kit, tmp_path, "--sample-submission", sample)
    one_error_line(proc, f"{sample} line 3 is blank", "delete the blank line")
    assert not (tmp_path / "out").exists()
    labels = kit.data / "task2" / "train_labels.csv"
    broken = tmp_path / "task2"
    shutil.copytree(kit.data / "task2", broken, symlinks=True)
    (broken / "train_labels.csv").write_text(labels.read_text().replace("\n", "\n\n", 1) + "\n")
    settings = settings_for(tmp_path, kit.data, DICOM_DATA_DIR=broken)
    proc = run_script("prepare_classification.py", "--settings", settings, "--split", "train", "--seg-model",
                      kit.weights / "segmentation/fold0/best.pt", "--device", "cpu", "--image-size", "32", cwd=tmp_path)
    one_error_line(proc, f"{broken / 'train_labels.csv'} line 2 is blank")
    assert not (tmp_path / "work/classification_data/train/done").exists()


def test_a_blank_row_in_the_folds_csv_names_its_line(tmp_path: Path):
    folds = tmp_path / "folds.csv"
    folds.write_text("BraTS21ID,MGMT_value,fold\n1,0,0\n\n2,1,1\n")
    with pytest.raises(task2.Task2Error, match=r"folds.csv line 3 is blank"):
        read_fold_table(folds)
    folds.write_text("BraTS21ID,MGMT_value,fold\n1,0,0\n2,1,one\n")
    with pytest.raises(ValueError, match=r"folds.csv line 3: fold is 'one', not a whole number"):
        read_fold_table(folds)
    folds.write_text("patient,MGMT_value,fold\n1,0,0\n")   # KFOLD_PATH is ours: no flag names its columns
    with pytest.raises(task2.Task2Error, match=r"has no column 'BraTS21ID' \(columns: patient, MGMT_value, fold\); "
                                               r"fix the header line$"):
        read_fold_table(folds)
    folds.write_text("\ufeffBraTS21ID,MGMT_value,fold\n1,0,0\nUPENN-GBM-00002_11,1,1\n")
    assert read_fold_table(folds).BraTS21ID.tolist() == ["00001", "UPENN-GBM-00002_11"]


# --------------------------------------------------------------------------- sample vs. test folders


def test_unlisted_folders_and_listed_patients_without_one_are_named(kit, tmp_path: Path):
    inp = tmp_path / "test"
    shutil.copytree(kit.test / kit.patient, inp / kit.patient, symlinks=True)
    shutil.copytree(kit.test / kit.patient, inp / "UPENN-GBM-00077_11", symlinks=True)   # not in the sample
    sample = tmp_path / "sample.csv"
    sample.write_text(f"BraTS21ID,MGMT_value\n{kit.patient},0.5\n00999,0.5\n")
    proc = _infer(kit, tmp_path, "--input", inp, "--sample-submission", sample)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr
    assert "1 patient folder(s) in" in log and "not listed in" in log and "UPENN-GBM-00077_11" in log
    assert "1 patient(s) listed in" in log and "have no folder" in log and "00999" in log
    assert f"patient 00999: patient folder {inp / '00999'} missing: MGMT_value 0.5" in log
    assert "no usable slice" not in log
    sub = pd.read_csv(tmp_path / "out/sub.csv", dtype={"BraTS21ID": str})
    assert sub.BraTS21ID.tolist() == [kit.patient, "00999"] and sub.MGMT_value.iloc[1] == 0.5
    detail = pd.read_csv(tmp_path / "out/sub_per_type.csv", dtype={"BraTS21ID": str}, keep_default_na=False)
    notes = detail[detail.BraTS21ID == "00999"].note.tolist()
    assert notes == [f"patient folder {inp / '00999'} missing"] * 2


# --------------------------------------------------------------------------- stage 1: every case broken


def test_every_task1_case_broken_fails_and_marks_nothing_complete(tmp_path: Path, capsys: pytest.CaptureFixture):
    task1 = tmp_path / "task1"
    for cid in ("00001", "00002"):
        case = task1 / f"BraTS2021_{cid}"
        case.mkdir(parents=True)
        for kind in ("flair", "t1", "t1ce", "t2", "seg"):
            (case / f"BraTS2021_{cid}_{kind}.nii.gz").write_bytes(b"not a gzip")
    store = tmp_path / "store"
    values = {k: str(tmp_path / k.lower()) for k in synth.settings_json()}
    values.update(TASK1_DIR=str(task1), SEGMENT_DATA_DIR=str(store))
    (tmp_path / "S.json").write_text(json.dumps(values))
    parser = argparse.ArgumentParser()
    segdata.add_arguments(parser)
    code = cli.run(segdata.main, parser, ["--settings", str(tmp_path / "S.json"), "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert f"every one of the 2 Task 1 case(s) in {task1} is broken" in errors[0] and "00001:" in errors[0]
    assert json.loads((store / "dataset.json").read_text())["status"] == "incomplete"
    assert not (store / "index.csv").exists() and not (store / "folds.csv").exists()


# --------------------------------------------------------------------------- pixel spacing, slice size


def test_several_pixel_spacings_are_in_the_per_type_note_and_the_report(kit, tmp_path: Path):
    series = tmp_path / "test" / "20001" / "T1wCE"
    shutil.copytree(kit.test / kit.patient / "T1wCE", series)
    files = sorted(series.iterdir())
    for f in files[: len(files) // 2]:
        ds = pydicom.dcmread(f)
        ds.PixelSpacing = [float(v) * 1.25 for v in ds.PixelSpacing]
        ds.save_as(f)
    results: list[PatientResult] = []
    _, detail = kit.predictor.predict(["20001"], tmp_path / "test", PredictOptions(["T1wCE"]), results.append)
    (note,) = detail.note.tolist()
    assert "its slices differ in PixelSpacing" in note and f"({len(files) // 2} slices)" in note
    page = report.write_report(tmp_path / "reports", results[0], kit.predictor, {})
    summary = json.loads((page.parent / "report.json").read_text())["types"]["T1wCE"]
    assert any("differ in PixelSpacing" in n for n in summary["notes"]) and len(summary["pixel_spacings"]) == 2
    assert "differ in PixelSpacing" in page.read_text()


def test_slices_too_small_to_be_an_mri_are_refused_by_the_contract(kit, tmp_path: Path):
    tiny = tmp_path / "test" / "30001" / "T1wCE"
    tiny.mkdir(parents=True)
    for z in range(200):
        write_slice(tiny / f"Image-{z}.dcm", np.full((4, 4), z % 7), position=(0.0, 0.0, float(z)))
    _, detail = kit.predictor.predict(["30001"], tmp_path / "test", PredictOptions(["T1wCE"]))
    assert detail.kept.tolist() == [0] and "4x4 pixels, too small to be an MRI (at least 16x16)" in detail.note[0]
    # the floor is the contract's: raise it and the 64-112 px synthetic series are refused, saying so
    strict = Predictor(kit.predictor.segmenter, kit.predictor.classifiers,
                       kit.predictor.contract.with_overrides(min_slice_size=200))
    sub, detail = strict.predict([kit.patient], kit.test, PredictOptions(["T1wCE"]))
    assert sub.MGMT_value.tolist() == [0.5] and "(at least 200x200)" in detail.note[0]


def test_min_slice_size_is_recorded_and_old_checkpoints_still_load():
    assert REFERENCE.min_slice_size == InputContract().min_slice_size == 16
    old = {k: v for k, v in TINY.to_dict().items() if k != "min_slice_size"}   # a checkpoint from before the field
    assert contract_of({"contract": old}) == TINY
    assert contract_of({}) == REFERENCE and "min_slice_size" in REFERENCE.to_dict()
    with pytest.raises(ValueError, match="min_slice_size must be a whole number"):
        InputContract(min_slice_size=0)


def test_min_slice_size_flag_reaches_the_reader_in_prepare(kit, tmp_path: Path):
    settings = settings_for(tmp_path, kit.data)
    proc = run_script("prepare_classification.py", "--settings", settings, "--split", "test", "--seg-model",
                      kit.weights / "segmentation/fold0/best.pt", "--device", "cpu", "--image-size", "32",
                      "--workers", "1", "--min-slice-size", "500", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    test = tmp_path / "work/classification_data/test"
    index = pd.read_csv(test / "index.csv", dtype={"patient": str}, keep_default_na=False)
    assert (index.kept == 0).all() and index.note.str.contains(r"too small to be an MRI \(at least 500x500\)").all()
    assert json.loads((test / "prepare_config.json").read_text())["config"]["contract"]["min_slice_size"] == 500
