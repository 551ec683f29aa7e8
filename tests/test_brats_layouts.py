"""Stage 1 reads the BraTS 2023+ Task 1 layout as well as the 2021 one: same cases, same store.

BraTS-GLI-<5 digits>-<3 digits>/BraTS-GLI-...-{t1n,t1c,t2w,t2f,seg}.nii.gz, enhancing tumour 3;
BraTS2021_<id>/BraTS2021_<id>_{t1,t1ce,t2,flair,seg}.nii.gz, enhancing tumour 4.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mgmt2d import cli
from mgmt2d.data import brats
from mgmt2d.segmentation import prepare as segdata

REPO = Path(__file__).resolve().parents[1]
SHAPE = (20, 22, 14)
FILES_2023 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
SETTINGS_KEYS = (
    "DICOM_DATA_DIR", "TASK1_DIR", "CLASSIFICATION_RAW_JPG", "SEGMENT_DATA_DIR",
    "CLASSIFICATION_DATA_DIR", "KFOLD_PATH", "SEGMENT_MODEL_DIR", "CLASSIFICATION_MODEL_DIR",
    "PRETRAINED_DIR", "TEMP_DATA_DIR", "TEST_PREDICTION_FILE",
)


def _phantom(seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Four modality volumes and a 2021-labelled segmentation (edema 2, necrosis 1, enhancing 4)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    c = np.array(SHAPE) / 2 + rng.uniform(-2, 2, 3)
    r = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
    brain = r < 9
    seg = np.zeros(SHAPE, np.uint8)
    seg[r < 5] = 2
    seg[r < 3.5] = 4
    seg[r < 2] = 1
    vols = {m: (brain * (100 + 20 * k + rng.normal(0, 5, SHAPE)) + (seg > 0) * 40).astype(np.float32)
            for k, m in enumerate(brats.MODALITIES)}
    return vols, seg


def _write_case(root: Path, cid: str, layout: str, seed: int, seg_relabel: dict[int, int] | None = None) -> Path:
    vols, seg = _phantom(seed)
    if layout == "2021":
        folder, sep, names = root / f"BraTS2021_{cid}", "_", {m: m for m in brats.MODALITIES}
    else:
        folder, sep, names = root / f"BraTS-GLI-{cid}-000", "-", FILES_2023
        seg = np.where(seg == 4, 3, seg).astype(np.uint8)          # 2023+: enhancing tumour is 3
    for src, dst in (seg_relabel or {}).items():
        seg = np.where(seg == src, dst, seg).astype(np.uint8)
    folder.mkdir(parents=True)
    for mod, data in vols.items():
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(folder / f"{folder.name}{sep}{names[mod]}.nii.gz"))
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(folder / f"{folder.name}{sep}seg.nii.gz"))
    return folder


IDS = ["00002", "00011", "00012", "00020"]


def _task1(root: Path, layout: str, ids: list[str] = IDS) -> Path:
    for k, cid in enumerate(ids):
        _write_case(root, cid, layout, seed=k)
    return root


def _task2(root: Path) -> Path:
    """Only what the leakage filter reads: 00011 is a Task 2 training patient."""
    (root / "train" / "00011").mkdir(parents=True)
    (root / "test").mkdir()
    pd.DataFrame({"BraTS21ID": [11], "MGMT_value": [1]}).to_csv(root / "train_labels.csv", index=False)
    return root


def _settings(tmp: Path, task1: Path, task2: Path, store: Path) -> Path:
    values = {k: str(tmp / k.lower()) for k in SETTINGS_KEYS}
    values.update(TASK1_DIR=str(task1), DICOM_DATA_DIR=str(task2), SEGMENT_DATA_DIR=str(store))
    path = tmp / f"SETTINGS_{store.name}.json"
    path.write_text(json.dumps(values))
    return path


def test_2023_layout_through_the_script_gives_the_2021_store(tmp_path: Path):
    task2 = _task2(tmp_path / "task2")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    stores, logs = {}, {}
    for layout in ("2021", "2023"):
        task1 = _task1(tmp_path / f"task1_{layout}", layout)
        stores[layout] = tmp_path / f"seg_{layout}"
        settings = _settings(tmp_path, task1, task2, stores[layout])
        done = subprocess.run([sys.executable, str(REPO / "prepare_segmentation_data.py"), "--settings", str(settings),
                               "--workers", "1", "--n-folds", "2", "--no-progress", "--modalities", "t2f", "t1c", "t2"],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        logs[layout] = done.stdout + done.stderr
    assert "BraTS 2023+ layout" in logs["2023"] and "BraTS 2021 layout" in logs["2021"]
    a, b = stores["2021"], stores["2023"]
    for name in ("index.csv", "folds.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(a / name, dtype={"case": str}),
                                      pd.read_csv(b / name, dtype={"case": str}))
    index = pd.read_csv(a / "index.csv", dtype={"case": str})
    assert sorted(index["case"].unique()) == ["00002", "00012", "00020"]        # 00011: a Task 2 patient
    assert set(index["modality"]) == {"flair", "t1ce", "t2"}
    arrays = sorted(p.relative_to(a) for p in (a / "cases").rglob("*.npy"))
    assert arrays and arrays == sorted(p.relative_to(b) for p in (b / "cases").rglob("*.npy"))
    for rel in arrays:
        np.testing.assert_array_equal(np.load(a / rel), np.load(b / rel), err_msg=str(rel))
    # the masks really hold ET (bit 1), so the 3 -> ET of 2023+ was tested, not an empty channel
    assert any(np.any(np.load(a / rel) & 2) for rel in arrays if rel.name.endswith("_masks.npy"))
    meta = {k: json.loads((s / "dataset.json").read_text()) for k, s in stores.items()}
    assert meta["2021"]["source"]["task1_layout"]["name"] == "BraTS 2021"
    assert meta["2023"]["source"]["task1_layout"]["name"] == "BraTS 2023+"
    assert meta["2021"]["source"]["task1_layout"]["labels"] == {"known": [0, 1, 2, 4], "WT": [1, 2, 4], "ET": [4]}
    assert meta["2023"]["source"]["task1_layout"]["labels"] == {"known": [0, 1, 2, 3], "WT": [1, 2, 3], "ET": [3]}
    assert meta["2023"]["dropped_task2"] == ["00011"] and meta["2023"]["params"] == meta["2021"]["params"]


def _main(settings: Path, *extra: str) -> int:
    """prepare_segmentation_data.py in this process, through the one error boundary (cli.run)."""
    parser = argparse.ArgumentParser()
    segdata.add_arguments(parser)
    return cli.run(segdata.main, parser, ["--settings", str(settings), "--workers", "1", "--no-progress",
                                          "--modalities", "flair", *extra])


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_label_refusals_follow_the_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    task2 = _task2(tmp_path / "task2")
    # a 2023+ case holding a 4 (the 2021 enhancing tumour) is refused, naming the file
    t23 = tmp_path / "t23"
    _write_case(t23, "00002", "2023", 0)
    _write_case(t23, "00003", "2023", 1, seg_relabel={3: 4})
    settings = _settings(tmp_path, t23, task2, tmp_path / "seg23")
    assert _main(settings) == 2
    line = _one_error_line(capsys)
    assert "BraTS-GLI-00003-000-seg.nii.gz" in line and "[4]" in line and "BraTS 2023+" in line
    assert "--label-map 4:3" in line
    # ... and converted knowingly with --label-map 4:3
    assert _main(settings, "--overwrite", "--label-map", "4:3") == 0
    capsys.readouterr()
    # a 2021 target in a 2023+ folder is refused before any case is read
    assert _main(settings, "--overwrite", "--label-map", "3:4") == 2
    assert "BraTS 2023+ layout does not define" in _one_error_line(capsys)
    # a 2021 case holding a 3 (the 2023+ enhancing tumour) is refused as before
    t21 = tmp_path / "t21"
    _write_case(t21, "00004", "2021", 2, seg_relabel={4: 3})
    assert _main(_settings(tmp_path, t21, task2, tmp_path / "seg21")) == 2
    line = _one_error_line(capsys)
    assert "BraTS2021_00004_seg.nii.gz" in line and "[3]" in line and "--label-map 3:4" in line


def test_task1_dir_in_neither_layout_or_both_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    task2 = _task2(tmp_path / "task2")
    other = tmp_path / "other"
    (other / "patient_1").mkdir(parents=True)
    (other / "BraTS-MEN-00002-000").mkdir()
    (other / "readme.txt").write_text("x")
    assert _main(_settings(tmp_path, other, task2, tmp_path / "seg")) == 2
    line = _one_error_line(capsys)
    assert "BraTS-MEN-00002-000/" in line and "patient_1/" in line and "readme.txt" in line
    assert "BraTS2021_<id>/BraTS2021_<id>_{t1,t1ce,t2,flair,seg}.nii.gz" in line
    assert "BraTS-GLI-<id>-<n>/BraTS-GLI-<id>-<n>-{t1n,t1c,t2w,t2f,seg}.nii.gz" in line
    assert not (tmp_path / "seg").exists()
    both = tmp_path / "both"
    _write_case(both, "00002", "2021", 0)
    _write_case(both, "00003", "2023", 1)
    with pytest.raises(brats.BratsCaseError, match="mixes BraTS layouts"):
        brats.find_task1(both)
    twice = tmp_path / "twice"
    _write_case(twice, "00005", "2023", 0)
    (twice / "BraTS-GLI-00005-001").mkdir()
    with pytest.raises(brats.BratsCaseError, match="BraTS-GLI-00005-000 and BraTS-GLI-00005-001 .* case 00005"):
        brats.find_task1(twice)


def test_layout_reading_units(tmp_path: Path, brats_sample_dir: Path):
    folder = _write_case(tmp_path, "00007", "2023", 3)
    assert brats.layout_of(folder) is brats.BRATS2023 and brats.case_id(folder) == "00007"
    assert brats.case_file(folder, "flair").name == "BraTS-GLI-00007-000-t2f.nii.gz"
    case = brats.read_case(folder, ("t1ce",))
    seg = np.asarray(nib.load(str(folder / "BraTS-GLI-00007-000-seg.nii.gz")).dataobj)
    np.testing.assert_array_equal(case.masks[0], np.isin(seg, [1, 2, 3]))
    np.testing.assert_array_equal(case.masks[1], seg == 3)
    assert case.masks[1].any() and case.layout is brats.BRATS2023
    assert brats.parse_modalities(["t2f", "T1C", "t1n", "t2w", "flair"]) == ("flair", "t1ce", "t1", "t2")
    with pytest.raises(brats.BratsCaseError, match="2023\\+ names"):
        brats.parse_modalities(["t1gd"])
    with pytest.raises(brats.BratsCaseError, match="must be a BraTS label"):
        brats.parse_label_map(["3:5"])
    # the real 2021-layout sample keeps being found as such
    found = brats.find_task1(brats_sample_dir)
    assert found.layout is brats.BRATS2021 and list(found.cases) == ["90003", "90004", "90005", "90006"]
    assert "BraTS 2021 layout" in found.describe()


def test_evaluate_segmentation_reads_2023_and_writes_its_et_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Same model, same images: the same Dice on both layouts; ET written as 3 on 2023+.

    The model is a small fixed convolution standing in for the UNet++ (what is tested is the
    reading of the layouts, not the segmenter), so the test takes a second instead of half a minute.
    """
    import torch

    from mgmt2d.segmentation import evaluate
    from mgmt2d.segmentation import model as segmenter

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.Sigmoid()).eval()
    monkeypatch.setattr(segmenter, "load_segmenter", lambda path, device="cpu": model)
    metrics, preds = {}, {}
    for layout in ("2021", "2023"):
        task1 = _task1(tmp_path / f"task1_{layout}", layout, IDS[:1])
        out = tmp_path / f"eval_{layout}"
        found = brats.find_task1(task1)
        metrics[layout] = evaluate.evaluate(tmp_path / "unused.pt", found, out,
                                            evaluate.EvalOptions(("flair",), torch.device("cpu"), image_size=32))
        (pred,) = out.glob("*_pred.nii.gz")
        preds[layout] = np.asarray(nib.load(str(pred)).dataobj)
    pd.testing.assert_frame_equal(metrics["2021"].drop(columns="case"), metrics["2023"].drop(columns="case"))
    assert metrics["2023"].case.tolist() == ["BraTS-GLI-00002-000"]
    assert (preds["2021"] == 4).any() and (preds["2021"] == 2).any(), "the model must predict ET and WT here"
    np.testing.assert_array_equal(preds["2023"], np.where(preds["2021"] == 4, 3, preds["2021"]))
    assert set(np.unique(preds["2023"])) <= {0, 2, 3}
