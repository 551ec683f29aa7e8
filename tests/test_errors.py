"""Every failure speaks one clear line (exit status 2, the file named, no traceback) and loses nothing.

Broken inputs are made inside each test; scripts run as a user runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from helpers_scripts import one_error_line
from torch import nn

from mgmt2d import cli
from mgmt2d.data import brats
from mgmt2d.data.dicom import read_series
from mgmt2d.training.config import TrainConfig
from mgmt2d.training.distributed import make_eval_loader, make_train_loader
from mgmt2d.training.metrics import SegmentationLoss, SegmentationMetrics
from mgmt2d.training.seeding import seed_everything
from mgmt2d.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
KEYS = ("DICOM_DATA_DIR", "TASK1_DIR", "CLASSIFICATION_RAW_JPG", "SEGMENT_DATA_DIR", "CLASSIFICATION_DATA_DIR",
        "KFOLD_PATH", "SEGMENT_MODEL_DIR", "CLASSIFICATION_MODEL_DIR", "PRETRAINED_DIR", "TEMP_DATA_DIR",
        "TEST_PREDICTION_FILE")


def run_script(script: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=300)


def write_settings(root: Path, **overrides) -> Path:
    values = {k: f"work/{k.lower()}" for k in KEYS}
    values.update(overrides)
    path = root / "SETTINGS.json"
    path.write_text(json.dumps(values))
    return path


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


# ------------------------------------------------------------------ silent wrong results


def _case(root: Path, labels: dict[int, tuple[slice, slice, slice]]) -> Path:
    case = root / "BraTS2021_00042"
    case.mkdir(parents=True)
    brain = np.zeros((40, 40, 30), np.float32)
    brain[5:35, 5:35, 3:27] = 100.0
    seg = np.zeros(brain.shape, np.uint8)
    for label, where in labels.items():
        seg[where] = label
    for name, data in (("flair", brain), ("seg", seg)):
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(case / f"BraTS2021_00042_{name}.nii.gz"))
    return case


def test_task1_label_3_is_an_error_naming_the_file_until_mapped(tmp_path: Path):
    task1 = tmp_path / "task1"
    box = (slice(12, 28), slice(12, 28), slice(8, 22))
    _case(task1, {3: box})   # all the tumour is label 3 (pre-2021 enhancing tumour)
    settings = write_settings(tmp_path, TASK1_DIR="task1", DICOM_DATA_DIR="task2")
    (tmp_path / "task2").mkdir()
    proc = run_script("prepare_segmentation_data.py", "--settings", str(settings), "--modalities", "flair",
                      "--workers", "1", "--no-progress", cwd=tmp_path)
    line = one_error_line(proc, "BraTS2021_00042_seg.nii.gz", "[0, 3]", "--label-map 3:4")
    assert "[3]" in line
    assert not list((tmp_path / "work").rglob("*.npy"))
    proc = run_script("prepare_segmentation_data.py", "--settings", str(settings), "--modalities", "flair",
                      "--workers", "1", "--no-progress", "--label-map", "3:4", "--overwrite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    index = pd.read_csv(tmp_path / "work/segment_data_dir/index.csv")
    assert len(index) > 0
    with pytest.raises(brats.BratsCaseError, match="FROM:TO"):
        brats.parse_label_map(["3-4"])


@pytest.mark.parametrize("value", [None, 7, "", "  "])
def test_settings_path_values_must_be_non_empty_strings(tmp_path: Path, value):
    settings = write_settings(tmp_path, SEGMENT_DATA_DIR=value, TASK1_DIR="task1")
    (tmp_path / "task1").mkdir()
    proc = run_script("prepare_segmentation_data.py", "--settings", str(settings), cwd=tmp_path)
    one_error_line(proc, "SEGMENT_DATA_DIR", str(settings))
    assert not (tmp_path / "None").exists() and not (tmp_path / "7").exists() and not (tmp_path / "work").exists()


def _test_folder(tmp_path: Path) -> Path:
    (tmp_path / "data/test/00001/T1w").mkdir(parents=True)
    return tmp_path / "data"


@pytest.mark.parametrize("content,needle", [
    ("BraTS21ID,MGMT_value\n1,0.5\n2,0.5\n00001,0.5\n", "lists 00001 twice (lines 2 and 4)"),
    ("", "is empty"),
    ("BraTS21ID,MGMT_value\n", "lists no patient"),
])
def test_bad_sample_submission_is_one_line_before_any_model(tmp_path: Path, content: str, needle: str):
    data = _test_folder(tmp_path)
    (data / "sample_submission.csv").write_text(content)
    settings = write_settings(tmp_path, DICOM_DATA_DIR="data")
    before = snapshot(tmp_path)
    proc = run_script("inference_on_test.py", "--settings", str(settings), "--device", "cpu", cwd=tmp_path)
    one_error_line(proc, "sample_submission.csv", needle)
    assert snapshot(tmp_path) == before   # no model dir needed, nothing written


# ------------------------------------------------------------------ finished work


def test_existing_submission_is_not_replaced_without_overwrite(tmp_path: Path):
    data = _test_folder(tmp_path)
    (data / "sample_submission.csv").write_text("BraTS21ID,MGMT_value\n00001,0.5\n")
    settings = write_settings(tmp_path, DICOM_DATA_DIR="data", TEST_PREDICTION_FILE="sub.csv")
    (tmp_path / "sub.csv").write_text("BraTS21ID,MGMT_value\n00001,0.9\n")
    proc = run_script("inference_on_test.py", "--settings", str(settings), "--device", "cpu", cwd=tmp_path)
    one_error_line(proc, "sub.csv", "--overwrite")
    assert (tmp_path / "sub.csv").read_text().endswith("0.9\n")


def test_unwritable_output_fails_before_the_first_model_call(tmp_path: Path):
    data = _test_folder(tmp_path)
    (data / "sample_submission.csv").write_text("BraTS21ID,MGMT_value\n00001,0.5\n")
    (tmp_path / "blocker").write_text("a file where the output folder should be")
    settings = write_settings(tmp_path, DICOM_DATA_DIR="data")
    proc = run_script("inference_on_test.py", "--settings", str(settings), "--device", "cpu",
                      "--output", str(tmp_path / "blocker/sub.csv"), cwd=tmp_path)
    one_error_line(proc, "cannot write the submission", str(tmp_path / "blocker"))
    # (no weights exist here: the check ran before any model was looked for)


def test_permission_error_is_one_line_naming_the_file():
    err = PermissionError(13, "Permission denied", "/data/out")
    assert "/data/out" in cli.user_message(err)
    assert cli.user_message(RuntimeError("a bug")) is None   # bugs keep their traceback


def test_debug_shows_the_traceback(tmp_path: Path):
    settings = write_settings(tmp_path, SEGMENT_DATA_DIR=None)
    proc = run_script("inference_on_test.py", "--settings", str(settings), "--debug", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    proc = run_script("inference_on_test.py", "--settings", str(settings), cwd=tmp_path, env={"MGMT2D_DEBUG": "1"})
    assert "Traceback" in proc.stderr


def test_cuda_request_without_cuda_is_one_line(tmp_path: Path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    data = _test_folder(tmp_path)
    (data / "sample_submission.csv").write_text("BraTS21ID,MGMT_value\n00001,0.5\n")
    settings = write_settings(tmp_path, DICOM_DATA_DIR="data")
    (tmp_path / "w/segmentation/fold0").mkdir(parents=True)
    proc = run_script("inference_on_test.py", "--settings", str(settings), "--weights-dir", str(tmp_path / "w"),
                      "--device", "cuda", cwd=tmp_path)
    one_error_line(proc, "--device cuda", "--device cpu")


# ------------------------------------------------------------------ smaller


def test_symlink_loop_is_skipped_with_a_reason(tmp_path: Path):
    import test_dicom

    series = tmp_path / "s"
    test_dicom.axial_stack(series, n=3)
    os.symlink(series / "loop_b", series / "loop_a")
    os.symlink(series / "loop_a", series / "loop_b")
    os.symlink(series / "missing.dcm", series / "dangling.dcm")
    volume, meta = read_series(series)
    assert volume.shape[0] == 3
    reasons = {Path(s.file).name: s.reason for s in meta.skipped}
    assert "symbolic link" in reasons["loop_a"].lower() or "levels" in reasons["loop_a"].lower()
    assert reasons["dangling.dcm"] == "broken symbolic link"


def test_dicoms_only_in_a_nested_folder_are_named(tmp_path: Path):
    import test_dicom

    series = tmp_path / "T1w"
    test_dicom.axial_stack(series / "export" / "DICOM", n=2)
    with pytest.raises(ValueError, match=r"\.dcm files lie below it in .*export"):
        read_series(series)


class _BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        out = self.encoder(x)
        if self.training and out.shape[0] == 1:
            raise ValueError("Expected more than 1 value per channel when training")
        return torch.sigmoid(self.head(out))


class _Slices(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, 8, 8, generator=g)
        self.y = (torch.rand(n, 2, 8, 8, generator=g) > 0.5).float()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "mask": self.y[i]}


def test_training_never_hands_batchnorm_a_batch_of_one(tmp_path: Path, caplog):
    train = make_train_loader(_Slices(9), 4, seed=0)   # 9 = 2 * 4 + 1
    assert train.drop_last and len(train) == 2
    assert "last batch of 1" in caplog.text
    assert not make_eval_loader(_Slices(9), 4).drop_last   # validation keeps all
    assert not make_train_loader(_Slices(10), 4, seed=0).drop_last
    seed_everything(0)
    model = _BatchNormNet()
    config = TrainConfig(epochs=1, warmup_epochs=0, lr=1e-2, device="cpu", amp=False, out_dir=str(tmp_path / "r"),
                                seed=1, progress=False)
    val = make_eval_loader(_Slices(4), 4)
    result = Trainer(model, train, val, SegmentationLoss(), SegmentationMetrics(), config,
                            freeze_module=model.encoder).fit()
    assert len(result.history) == 1


# ------------------------------------------------------------------ checkpoints


class _Payload:
    """A pickle that would create a file when unpickled: it must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _weights_dir(tmp_path: Path, segmenter_file: bytes | None = None, payload: bool = False) -> Path:
    from mgmt2d.classification.model import build_classifier

    root = tmp_path / "w"
    seg = root / "segmentation/fold0/best.pt"
    cls = root / "classification/T1w/fold0/best.pt"
    seg.parent.mkdir(parents=True)
    cls.parent.mkdir(parents=True)
    torch.save(build_classifier(seq_len=35).state_dict(), cls)
    if payload:
        torch.save({"model": _Payload(tmp_path / "pwned")}, seg)
    elif segmenter_file is None:
        seg.write_bytes(cls.read_bytes())                 # the other stage's checkpoint in its place
    else:
        seg.write_bytes(segmenter_file)
    return root


@pytest.mark.parametrize("case", ["truncated", "other_stage", "payload"])
def test_bad_segmenter_checkpoint_is_one_line_naming_the_file(tmp_path: Path, case: str):
    data = _test_folder(tmp_path)
    (data / "sample_submission.csv").write_text("BraTS21ID,MGMT_value\n00001,0.5\n")
    settings = write_settings(tmp_path, DICOM_DATA_DIR="data")
    if case == "truncated":
        good = tmp_path / "good.pt"
        torch.save({"w": torch.zeros(1000)}, good)
        weights = _weights_dir(tmp_path, segmenter_file=good.read_bytes()[:500])
    else:
        weights = _weights_dir(tmp_path, payload=case == "payload")
    proc = run_script("inference_on_test.py", "--settings", str(settings), "--weights-dir", str(weights),
                      "--device", "cpu", cwd=tmp_path)
    needle = {"truncated": "cannot be read", "other_stage": "does not fit the segmenter",
              "payload": "not a plain weights file"}[case]
    line = one_error_line(proc, "segmentation/fold0/best.pt", needle)
    assert "weights_only=False" not in proc.stderr and "weights_only" not in line
    assert not (tmp_path / "pwned").exists()          # the payload never ran
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]   # nothing written


def test_truncated_last_checkpoint_on_resume_names_the_file(tmp_path: Path):
    import test_training

    test_training.seg_trainer(tmp_path / "run", epochs=1).fit()
    last = tmp_path / "run" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(ValueError) as info:
        test_training.seg_trainer(tmp_path / "run", epochs=2, resume=True).fit()
    message = cli.user_message(info.value)
    assert str(last) in message and "cannot be read" in message and "\n" not in message


def test_rerun_without_resume_is_one_line(tmp_path: Path):
    import test_training

    test_training.seg_trainer(tmp_path / "run", epochs=1).fit()
    with pytest.raises(FileExistsError) as info:
        test_training.seg_trainer(tmp_path / "run", epochs=1).fit()
    assert "--resume" in cli.user_message(info.value)
