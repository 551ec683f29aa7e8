"""train_classification.py --fold all: every fold of KFOLD_PATH, resumable, and out-of-fold predictions.

A hand-made prepared split (tiny random frames, timm's ``test_resnet`` at 16 px, 4-slice chunks):
6 patients in 3 folds of KFOLD_PATH, plus a 7th in the folds file without a usable series.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers_training import script, single_thread

from mgmt2d import cli
from mgmt2d.classification import crossval
from mgmt2d.classification import train as classification_train
from mgmt2d.classification.dataset import ChunkDataset, load_index
from mgmt2d.classification.model import build_classifier
from mgmt2d.data.io import file_sha256
from mgmt2d.data.settings import KEYS
from mgmt2d.data.task2 import MRI_TYPES
from mgmt2d.faults import FAULT_ENV

PATIENTS = [f"{i + 1:05d}" for i in range(6)]
NO_SERIES = "00007"          # in the folds file, every series unusable (kept 0)
FOLD = {pid: i % 3 for i, pid in enumerate(PATIENTS)} | {NO_SERIES: 0}
LABEL = {pid: i % 2 for i, pid in enumerate(PATIENTS)} | {NO_SERIES: 1}


def cv_split(root: Path, types: tuple[str, ...] = ("FLAIR",), missing: tuple[tuple[str, str], ...] = ()) -> Path:
    """CLASSIFICATION_DATA_DIR/train and KFOLD_PATH of the patients above; ``missing`` (patient, type) series
    are unusable (kept 0, as prepare_classification.py lists them). Returns SETTINGS.json."""
    train = root / "cls" / "train"
    (train / "series").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, pid in enumerate([*PATIENTS, NO_SERIES]):
        for mri_type in types:
            kept = 0 if pid == NO_SERIES or (pid, mri_type) in missing else 3 + i % 4
            if kept:
                frames = (rng.random((kept, 12, 10, 3)) * 255).astype(np.uint8)
                np.save(train / "series" / f"{pid}_{mri_type}.npy", frames)
            rows.append({"patient": pid, "type": mri_type, "kept": kept, "total": 6,
                         "file": f"series/{pid}_{mri_type}.npy" if kept else "", "label": LABEL[pid],
                         "fold": FOLD[pid], "note": "" if kept else "no slice kept"})
    pd.DataFrame(rows).to_csv(train / "index.csv", index=False)
    folds = pd.DataFrame({"BraTS21ID": list(FOLD), "MGMT_value": [LABEL[p] for p in FOLD], "fold": list(FOLD.values())})
    folds.to_csv(root / "folds.csv", index=False)
    pd.DataFrame({"BraTS21ID": list(LABEL), "MGMT_value": list(LABEL.values())}).to_csv(root / "labels.csv",
                                                                                         index=False)
    settings = {k: f"unused/{k.lower()}" for k in KEYS}
    settings.update({"CLASSIFICATION_DATA_DIR": "cls", "CLASSIFICATION_MODEL_DIR": "models", "KFOLD_PATH": "folds.csv"})
    (root / "SETTINGS.json").write_text(json.dumps(settings))
    return root / "SETTINGS.json"


def argv(settings: Path, *extra: str) -> list[str]:
    return ["--settings", str(settings), "--device", "cpu", "--pretrained", "none", "--workers", "0", "--no-progress",
            "--backbone", "test_resnet", "--image-size", "16", "--seq-len", "4", "--stride", "2", "--lstm-hidden", "4",
            "--epochs", "2", "--warmup-epochs", "0", "--batch-size", "2", "--lr", "3e-3", "--mri-type", "FLAIR",
            "--fold", "all", *extra]


def train(settings: Path, *extra: str) -> int:
    """train_classification.py in this process through cli.run (exit status, one-line errors)."""
    parser = argparse.ArgumentParser()
    classification_train.add_arguments(parser)
    return cli.run(classification_train.main, parser, argv(settings, *extra))


def oof(settings: Path, mri_type: str = "FLAIR") -> pd.DataFrame:
    return pd.read_csv(settings.parent / "models" / mri_type / crossval.OOF_CSV, dtype={"BraTS21ID": str})


def oof_bytes(settings: Path, mri_type: str = "FLAIR") -> bytes:
    return (settings.parent / "models" / mri_type / crossval.OOF_CSV).read_bytes()


def rescore(run: Path, patient: str, data_dir: Path, mri_type: str = "FLAIR") -> float:
    """A patient's mean chunk probability under ``run``'s best.pt, computed here without the training code."""
    ckpt = torch.load(run / "best.pt", weights_only=True)
    config = ckpt["config"]
    model = build_classifier(config["backbone"], config["lstm_hidden"], config["seq_len"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    index = load_index(data_dir, mri_type)
    chunks = ChunkDataset(index[index.patient == patient], data_dir, 16, 4, 2)
    with torch.no_grad():
        return float(np.mean([torch.sigmoid(model(chunks[i]["image"][None]))[0].item() for i in range(len(chunks))]))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    with single_thread():   # as the subprocess runs (OMP_NUM_THREADS=1): the same arithmetic
        yield


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted --fold all run; returns its SETTINGS.json."""
    settings = cv_split(tmp_path_factory.mktemp("full"))
    assert train(settings) == 0
    return settings


def test_every_patient_once_scored_by_the_best_checkpoint_of_the_fold_that_held_it_out(full: Path):
    models, data_dir = full.parent / "models" / "FLAIR", full.parent / "cls" / "train"
    table = oof(full)
    assert table.columns.tolist() == ["BraTS21ID", "MGMT_value", "fold"]
    assert table.BraTS21ID.tolist() == PATIENTS                 # once each; NO_SERIES has nothing to score
    assert table.fold.tolist() == [FOLD[p] for p in PATIENTS]
    assert table.MGMT_value.between(0, 1).all()
    last_epoch_differs = 0
    for row in table.itertuples():
        run = models / f"fold{row.fold}"
        assert row.MGMT_value == pytest.approx(rescore(run, row.BraTS21ID, data_dir), abs=1e-6)
        other = models / f"fold{(row.fold + 1) % 3}"
        assert abs(row.MGMT_value - rescore(other, row.BraTS21ID, data_dir)) > 1e-4   # another fold's model differs
        best = torch.load(run / "best.pt", weights_only=True)["early_stopping"]["best_epoch"]
        last_epoch_differs += best != torch.load(run / "last.pt", weights_only=True)["epoch"]
    assert last_epoch_differs, "no fold whose best epoch is not its last: the test cannot tell best.pt from last.pt"
    # val_patients.csv of an uninterrupted run holds the same numbers (the validation pass of the best epoch)
    for fold in range(3):
        val = pd.read_csv(models / f"fold{fold}" / "val_patients.csv", dtype={"patient_id": str})
        mine = table[table.fold == fold]
        assert val.patient_id.tolist() == mine.BraTS21ID.tolist()
        np.testing.assert_allclose(val.prob, mine.MGMT_value, rtol=0, atol=1e-12)


def test_sidecar_names_folds_checkpoints_and_held_out_patients(full: Path):
    models = full.parent / "models" / "FLAIR"
    record = json.loads((models / crossval.OOF_CONFIG).read_text())["config"]
    assert record["folds"] == [0, 1, 2] and record["mri_type"] == "FLAIR"
    assert record["folds_file"] == str(full.parent / "folds.csv")
    assert record["folds_file_sha256"] == file_sha256(full.parent / "folds.csv")
    assert record["sha256"] == file_sha256(models / crossval.OOF_CSV)
    for fold in range(3):
        ckpt = record["checkpoints"][str(fold)]
        assert ckpt["checkpoint"] == str(models / f"fold{fold}" / "best.pt")
        assert ckpt["sha256"] == file_sha256(models / f"fold{fold}" / "best.pt")
        assert ckpt["held_out"] == [p for p in PATIENTS if FOLD[p] == fold]
    assert record["not_scored"]["patients"] == [NO_SERIES]
    assert record["patients"] == len(PATIENTS)


def test_a_half_finished_run_continued_with_resume_gives_the_same_file(full: Path, tmp_path: Path):
    """Fold 0 alone first (what a --fold all killed after fold 0 leaves), then the command with --resume:
    fold 0 is skipped (not retrained), folds 1 and 2 are trained, the same out-of-fold file."""
    settings = cv_split(tmp_path)
    assert train(settings, "--fold", "0") == 0
    fold0 = settings.parent / "models/FLAIR/fold0/last.pt"
    before = fold0.stat().st_mtime_ns
    with pytest.raises(crossval.CrossValError, match="fold 1 of .*folds.csv is missing .*not started"):
        crossval.out_of_fold(settings.parent / "models/FLAIR", load_index(settings.parent / "cls/train", "FLAIR"),
                             settings.parent / "cls/train", settings.parent / "folds.csv", crossval.ScoreOptions())
    assert not (settings.parent / "models/FLAIR" / crossval.OOF_CSV).exists()
    assert train(settings, "--resume") == 0
    assert fold0.stat().st_mtime_ns == before
    assert oof_bytes(settings) == oof_bytes(full)


def test_sigkill_mid_run_then_resume_gives_the_same_file(full: Path, tmp_path: Path):
    """SIGKILL at fold 0's first epoch end: its best.pt and last.pt are in place, its val_patients.csv
    is not (the hook runs after). --resume continues fold 0, starts folds 1 and 2: the same file."""
    settings = cv_split(tmp_path)
    killed = script("train_classification.py", argv(settings), fault="epoch-end:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run0 = settings.parent / "models/FLAIR/fold0"
    assert (run0 / "best.pt").is_file() and not (run0 / "val_patients.csv").exists()
    assert crossval.run_state(run0).describe() == "unfinished, epoch 1 of 2"
    resumed = script("train_classification.py", argv(settings, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "FLAIR fold 0 (unfinished, epoch 1 of 2): continue from last.pt" in resumed.stderr
    assert "FLAIR fold 1 (not started): train" in resumed.stderr
    assert oof_bytes(settings) == oof_bytes(full)


def test_flags_over_existing_runs(full: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    settings = tmp_path / "SETTINGS.json"
    shutil.copytree(full.parent, tmp_path, dirs_exist_ok=True)
    last = tmp_path / "models/FLAIR/fold2/last.pt"
    before = last.stat().st_mtime_ns
    assert train(settings) == 2                              # no flag: refused before any training
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "fold0 (finished, epoch 2 of 2)" in err and "--resume" in err
    assert train(settings, "--resume", "--overwrite") == 2
    assert "pass one of them" in capsys.readouterr().err
    assert last.stat().st_mtime_ns == before
    # every fold finished: --resume trains nothing and writes the same file again
    assert train(settings, "--resume") == 0
    assert last.stat().st_mtime_ns == before and oof_bytes(settings) == oof_bytes(full)
    # a fold without best.pt: refused, naming it, no file written
    (tmp_path / "models/FLAIR/fold1/best.pt").unlink()
    (tmp_path / "models/FLAIR" / crossval.OOF_CSV).unlink()
    assert train(settings, "--resume") == 2
    assert "fold 1 has no" in capsys.readouterr().err
    assert not (tmp_path / "models/FLAIR" / crossval.OOF_CSV).exists()
    # --overwrite: every fold afresh, the same file (deterministic on CPU)
    assert train(settings, "--overwrite") == 0
    assert oof_bytes(settings) == oof_bytes(full)
    # folds changed after training (index.csv and the folds file alike): continuing or keeping a run refused
    for path, column in ((tmp_path / "cls/train/index.csv", "patient"), (tmp_path / "folds.csv", "BraTS21ID")):
        table = pd.read_csv(path, dtype={column: str}, keep_default_na=False)
        table.loc[table[column] == "00001", "fold"] = 1
        table.to_csv(path, index=False)
    assert train(settings, "--resume") == 2
    err = capsys.readouterr().err
    assert "fold0/last.pt holds out other patients than fold 0" in err and "--overwrite" in err
    # nothing started: --resume has nothing to continue
    empty = cv_split(tmp_path / "empty")
    assert train(empty, "--resume") == 2
    assert "none of this command's runs has started" in capsys.readouterr().err


@pytest.mark.parametrize(("edit", "message"), [
    ("twice", r"patient 00002 is listed 2 times \(folds 1, 2\)"),
    ("no fold", "patient 00003 is in no fold"),
    ("absent", "patient 00004 of .*index.csv is in no fold"),
    ("moved", "index.csv trains patient 00005 in fold 1 but .*folds.csv puts it in fold 0"),
])
def test_a_patient_in_no_fold_or_in_two_is_refused_naming_the_folds_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, edit: str, message: str
):
    settings = cv_split(tmp_path)
    path = tmp_path / "folds.csv"
    folds = pd.read_csv(path, dtype=str)
    if edit == "twice":
        folds = pd.concat([folds, pd.DataFrame([{"BraTS21ID": "00002", "MGMT_value": "1", "fold": "2"}])])
    elif edit == "no fold":
        folds.loc[folds.BraTS21ID == "00003", "fold"] = ""
    elif edit == "absent":
        folds = folds[folds.BraTS21ID != "00004"]
    else:
        folds.loc[folds.BraTS21ID == "00005", "fold"] = "0"
    folds.to_csv(path, index=False)
    assert train(settings) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and str(path) in err
    assert re.search(message, err), err
    assert not (tmp_path / "models").exists()


def test_mri_type_all_writes_each_type_and_their_mean_that_evaluate_reads(full: Path, tmp_path: Path):
    """FLAIR's folds first (--mri-type FLAIR --fold all), then --mri-type all --fold all --resume: FLAIR's
    runs are kept, the other types trained; per type a file, and their per-patient mean (00006 has no T2w)."""
    from mgmt2d.tools import evaluate

    settings = cv_split(tmp_path, types=MRI_TYPES, missing=(("00006", "T2w"),))
    assert train(settings, "--epochs", "1") == 0
    flair = oof_bytes(settings)
    assert train(settings, "--epochs", "1", "--mri-type", "all") == 2           # FLAIR's runs exist: a flag, please
    assert train(settings, "--epochs", "1", "--mri-type", "all", "--resume") == 0
    assert oof_bytes(settings) == flair
    models = tmp_path / "models"
    per_type = {t: oof(settings, t).set_index("BraTS21ID") for t in MRI_TYPES}
    assert "00006" not in per_type["T2w"].index and len(per_type["FLAIR"]) == 6
    combined = pd.read_csv(models / crossval.OOF_CSV, dtype={"BraTS21ID": str})
    assert combined.BraTS21ID.tolist() == PATIENTS and combined.fold.tolist() == [FOLD[p] for p in PATIENTS]
    for row in combined.itertuples():
        present = [per_type[t].MGMT_value[row.BraTS21ID] for t in MRI_TYPES if row.BraTS21ID in per_type[t].index]
        assert len(present) == (3 if row.BraTS21ID == "00006" else 4)
        assert row.MGMT_value == pytest.approx(np.mean(present), abs=1e-15)
    record = json.loads((models / crossval.OOF_CONFIG).read_text())["config"]
    assert record["types"]["T2w"]["sha256"] == file_sha256(models / "T2w" / crossval.OOF_CSV)
    assert record["not_scored"]["patients"] == [NO_SERIES]
    # python -m mgmt2d evaluate reads it, the per-type rows too
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    out = tmp_path / "eval"
    assert cli.run(evaluate.main, parser, [
        "--predictions", str(models / crossval.OOF_CSV), "--labels", str(tmp_path / "labels.csv"),
        "--per-type", str(models / crossval.OOF_PER_TYPE), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["patients"]["scored"] == PATIENTS
    assert metrics["patients"]["labelled_without_prediction"] == [NO_SERIES]   # named, not dropped silently
    assert set(metrics["per_type"]) == set(MRI_TYPES)


def test_a_single_run_keeps_the_trainers_rules(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch):
    """--fold K of one type: --resume needs its last.pt, as before (no plan, no out-of-fold file)."""
    settings = cv_split(tmp_path)
    assert train(settings, "--fold", "1", "--resume") == 2
    assert "no last.pt" in capsys.readouterr().err
    monkeypatch.delenv(FAULT_ENV, raising=False)
    assert train(settings, "--fold", "1") == 0
    assert not (tmp_path / "models/FLAIR" / crossval.OOF_CSV).exists()
