"""Any patient ID (issue 22, section 2): a case folder's name is the ID, only numbers get the 5-digit padding.

A synthetic Task 2 cohort whose patients are named like UPENN-GBM (``UPENN-GBM-00123_11``), plus one
numeric folder spelled without its padding (``7``), goes through the real scripts: stage-2
preparation (test and train, the labels CSV with its own column names), sharded inference with the
report, ``python -m mgmt2d evaluate`` on what inference wrote, and the report of one patient.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from helpers_scripts import one_error_line, run_script, settings_for, tiny_weights, trim_series

from mgmt2d.data import task2
from mgmt2d.dev import synth
from mgmt2d.inference import report
from mgmt2d.segmentation.prepare import filter_task2_overlap

TEMPLATE = "UPENN-GBM-{}_11"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> SimpleNamespace:
    """3 training and 1 test patient with UPENN-style IDs (10 slices per series); the test split gets a copy of
    its patient as ``7``; train_labels.csv names its columns ``case,methylated``; tiny weights."""
    root = tmp_path_factory.mktemp("ids")
    summary = synth.generate(root / "synth", patients=4, seed=5, size="small", id_template=TEMPLATE)
    task2_dir = root / "synth" / "task2"
    trim_series(task2_dir)
    (test_id,) = summary["task2_test_ids"]
    shutil.copytree(task2_dir / "test" / test_id, task2_dir / "test" / "7")
    labels = pd.read_csv(task2_dir / "train_labels.csv", dtype=str)
    labels.rename(columns={"BraTS21ID": "case", "MGMT_value": "methylated"}).to_csv(
        task2_dir / "train_labels.csv", index=False)
    weights = tiny_weights(root / "weights")
    return SimpleNamespace(root=root, data=root / "synth", task2=task2_dir, summary=summary, test_id=test_id,
                           weights=weights, labels=dict(zip(labels.BraTS21ID, labels.MGMT_value.astype(int))))


def test_synthetic_cohort_has_the_ids_it_was_asked_for(cohort):
    train_ids = cohort.summary["task2_train_ids"]
    assert all(i.startswith("UPENN-GBM-") and i.endswith("_11") for i in [*train_ids, cohort.test_id])
    assert sorted(task2.patient_folders(cohort.task2 / "train")) == sorted(train_ids)
    assert sorted(task2.patient_folders(cohort.task2 / "test")) == ["00007", cohort.test_id]
    # the stage-1 leakage filter: another cohort's IDs match no BraTS case, and nothing breaks
    # (train_labels.csv names its ID column "case": the filter takes the IDs from the folders, and says so)
    assert task2.task2_patient_ids(cohort.task2) == {*train_ids, cohort.test_id, "00007"}
    task1 = sorted(p.name.split("_")[1] for p in (cohort.data / "task1").iterdir())
    kept, dropped = filter_task2_overlap(task1, {*train_ids, cohort.test_id, "00007"})
    assert kept == [c for c in task1 if c != "00007"] and dropped == [c for c in task1 if c == "00007"]
    with pytest.raises(ValueError, match="--id-template"):
        synth.generate(cohort.root / "bad", patients=2, seed=0, id_template="{}1")   # "000121": a number


def test_stage2_preparation_with_any_ids_and_named_label_columns(cohort, tmp_path: Path):
    settings = settings_for(tmp_path, cohort.data)
    folds = tmp_path / "work/classification_folds.csv"   # KFOLD_PATH given: 3 patients cannot fill 5 new folds
    folds.parent.mkdir(parents=True)
    folds.write_text("BraTS21ID,MGMT_value,fold\n" + "".join(f"{p},{v},{k % 2}\n" for k, (p, v) in
                                                            enumerate(sorted(cohort.labels.items()))))
    prep = ["--settings", settings, "--seg-model", cohort.weights / "segmentation/fold0/best.pt", "--image-size",
            "32", "--workers", "1", "--device", "cpu"]
    # without the column flags: one line naming the file, the column and the flag; nothing prepared
    proc = run_script("prepare_classification.py", *prep, "--split", "train", cwd=tmp_path)
    one_error_line(proc, str(cohort.task2 / "train_labels.csv"), "no column 'BraTS21ID'", "--id-column")
    assert not (tmp_path / "work/classification_data/train/index.csv").exists()
    proc = run_script("prepare_classification.py", *prep, "--split", "train", "--id-column", "case",
                      "--label-column", "methylated", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = tmp_path / "work/classification_data/train"
    index = pd.read_csv(train / "index.csv", dtype={"patient": str}, keep_default_na=False)
    assert sorted(index.patient.unique()) == sorted(cohort.labels)
    assert dict(zip(index.patient, index.label)) == cohort.labels
    for row in index[index.kept > 0].itertuples():
        assert row.file == f"series/{row.patient}_{row.type}.npy" and (train / row.file).is_file()
    assert sorted(p.name for p in (train / "done").iterdir()) == sorted(f"{p}.csv" for p in cohort.labels)
    assert dict(zip(index.patient, index.fold)) == {p: k % 2 for k, p in enumerate(sorted(cohort.labels))}
    config = json.loads((train / "prepare_config.json").read_text())["config"]
    assert config["label_columns"] == ["case", "methylated"]

    proc = run_script("prepare_classification.py", *prep, "--split", "test", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    test = tmp_path / "work/classification_data/test"
    index = pd.read_csv(test / "index.csv", dtype={"patient": str}, keep_default_na=False)
    assert sorted(index.patient.unique()) == ["00007", cohort.test_id]
    assert (test / "series" / f"{cohort.test_id}_T1wCE.npy").is_file() and (test / "series/00007_T1wCE.npy").is_file()
    a, b = (index[index.patient == p].drop(columns="patient").reset_index(drop=True) for p in ("00007", cohort.test_id))
    pd.testing.assert_frame_equal(a.drop(columns="file"), b.drop(columns="file"))   # "7" is a copy


def test_inference_report_shards_and_evaluate_with_any_ids(cohort, tmp_path: Path):
    settings = settings_for(tmp_path, cohort.data)
    sample = tmp_path / "sample.csv"
    sample.write_text(f"case,prob\n{cohort.test_id},0.5\n7,0.5\n")
    infer = ["--settings", settings, "--weights-dir", cohort.weights, "--input", cohort.task2 / "test",
             "--sample-submission", sample, "--id-column", "case", "--label-column", "prob", "--mri-types",
             "T1wCE", "FLAIR", "--workers", "1", "--device", "cpu"]
    out = tmp_path / "out" / "sub.csv"
    for shard in ("2/2", "1/2"):   # in two shards (the unsharded run gives the same bytes: test_pipeline.py)
        proc = run_script("inference_on_test.py", *infer, "--output", out, "--shard", shard, "--report-dir",
                          tmp_path / "reports", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "assembled from 2 shards" in proc.stdout
    sub = pd.read_csv(out, dtype={"case": str})
    assert sub.columns.tolist() == ["case", "prob"] and sub.case.tolist() == [cohort.test_id, "7"]   # as spelled
    assert sub.prob.between(0, 1).all() and sub.prob.iloc[0] == pytest.approx(sub.prob.iloc[1], abs=1e-6)
    detail = pd.read_csv(out.with_name("sub_per_type.csv"), dtype={"case": str}, keep_default_na=False)
    assert detail.columns[0] == "case" and detail.case.tolist() == [cohort.test_id] * 2 + ["00007"] * 2
    assert (detail.kept > 0).all()
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["00007", cohort.test_id]
    for pid in ("00007", cohort.test_id):
        assert json.loads((tmp_path / "reports" / pid / "report.json").read_text())["patient"] == pid

    # unsharded, killed after its first patient, then --resume: the sharded submission byte for byte,
    # in the sample's columns (the kept patient is stored under its ID, the row keeps its spelling)
    whole = tmp_path / "whole" / "sub.csv"
    killed = run_script("inference_on_test.py", *infer, "--output", whole, cwd=tmp_path,
                        env={"MGMT2D_FAULT": "patient-done:1"})
    assert killed.returncode == -9 and not whole.exists(), killed.stderr[-3000:]
    proc = run_script("inference_on_test.py", *infer, "--output", whole, "--resume", cwd=tmp_path)
    assert proc.returncode == 0 and "--resume: 1 of 2 patients already finished" in proc.stdout, proc.stderr[-3000:]
    assert whole.read_bytes() == out.read_bytes()
    assert whole.with_name("sub_per_type.csv").read_bytes() == out.with_name("sub_per_type.csv").read_bytes()

    # evaluate reads what inference wrote with the same column flags (labels: a cohort file of its own)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"case,methylated\n{cohort.test_id},1\n00007,0\n")
    proc = run_script("-m", "mgmt2d", "evaluate", "--predictions", out, "--labels", labels, "--per-type",
                      out.with_name("sub_per_type.csv"), "--id-column", "case", "--label-column", "methylated",
                      "--prediction-column", "prob", "--out", tmp_path / "eval", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert metrics["patients"]["scored"] == ["00007", cohort.test_id]
    assert set(metrics["per_type"]) == {"FLAIR", "T1wCE"}


def test_report_of_one_patient_by_any_id(cohort, tmp_path: Path):
    settings = settings_for(tmp_path, cohort.data)
    common = ["--settings", settings, "--weights-dir", cohort.weights, "--input", cohort.task2 / "test",
              "--mri-types", "T1wCE", "--workers", "1", "--device", "cpu", "--out", tmp_path / "r"]
    proc = run_script("-m", "mgmt2d", "report", *common, "--patient", cohort.test_id, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "r" / cohort.test_id / "index.html").is_file()
    # an ID that would leave the output folder is refused before anything is written
    proc = run_script("-m", "mgmt2d", "report", *common, "--patient", "../escape", cwd=tmp_path)
    one_error_line(proc, "--patient: patient ID '../escape' holds '/'")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [cohort.test_id]
    # a report folder another run is writing (inference --report-dir, or a second report) is refused, untouched
    with report.report_lock(tmp_path / "r"):
        proc = run_script("-m", "mgmt2d", "report", *common, "--patient", "7", cwd=tmp_path)
        one_error_line(proc, "is being written by another run", "choose another report folder")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [cohort.test_id]
