"""``make gpu-check`` (benchmarks/gpu_check.py): its CPU mode end to end, so the CUDA check cannot rot,
and the CUDA-only decisions (out of memory -> --accumulate) on stubbed runs.

The CPU mode runs every part with the real scripts at tiny sizes (~1-2 min on 2 busy cores).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def load_gpu_check() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module   # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_cpu_mode_runs_every_part_and_reports_them(tmp_path: Path) -> None:
    out = tmp_path / "check"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["mode"] == "cpu" and result["passed"] and result["environment"]["device"] == "cpu"
    rows = {r["name"]: r for r in result["rows"]}
    ran = [r for r in result["rows"] if r["status"] != "SKIP"]
    assert [r["part"] for r in ran] == [1, 2, 3, 4, 6, 5, 5]
    assert all(r["status"] == "PASS" for r in ran), [(r["name"], r["note"]) for r in ran]
    # what cannot run without CUDA says so, with the reason
    skipped = {r["part"]: r["note"] for r in result["rows"] if r["status"] == "SKIP" and r["name"] != "--sync-bn"}
    assert sorted(skipped) == [2, 3, 4, 5, 6] and all(skipped.values())
    assert "SyncBatchNorm runs on CUDA only" in rows["--sync-bn"]["note"] and rows["--sync-bn"]["status"] == "SKIP"
    seg = rows["stage 1 batch 8 --accumulate 2"]["figures"]
    assert seg["step_steps"] >= 3 and seg["step_img_s"] > 0 and seg["loader_over_step"] >= 1.5
    assert "peak_allocated_gib" not in seg   # torch.cuda.max_memory_allocated: CUDA only
    cls = next(r for r in result["rows"] if r["part"] == 3)["figures"]
    assert cls["frozen_chunks_s"] > 0 and cls["unfrozen_chunks_s"] > 0 and cls["loader_chunks_s"] > 0
    inference = next(r for r in result["rows"] if r["part"] == 4)["figures"]
    assert inference["whole_s"] > 0 and inference["segmenter_fp32_slices_s"] > 0
    assert inference["classifier_slices_s"] > 0 and inference["classifier_dtype"] == "float32"
    # CPU mode compares the CPU with itself: the plumbing must find no difference at all
    assert inference["classifier_max_abs_dprob"] == 0 and inference["segmenter_max_abs_dprob"] == 0
    cam = next(r for r in result["rows"] if r["part"] == 6)["figures"]
    assert cam["prob_abs_diff"] == 0 and cam["top3_frames_same"]
    for r in ran:
        if r["part"] == 5:
            assert r["figures"]["backend"] == "gloo" and r["figures"]["processes"] == 1
            assert "--sync-bn" not in r["name"]
    # one Markdown table: on stdout and in gpu_check.md; the logs stay, the bulky work/ folder goes
    table = (out / "gpu_check.md").read_text()
    assert "| part | what | figures | status | s |" in done.stdout and table.splitlines()[0] in done.stdout
    assert "CPU mode (no CUDA)" in table
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == 1 + len(result["rows"])
    assert not (out / "work").exists() and (out / "logs" / "seg_b8_a2.log").is_file()


def test_the_out_folder_is_new_or_made_by_the_check(tmp_path: Path) -> None:
    gc = load_gpu_check()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "data.csv").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError):
            gc.prepare_out(theirs, overwrite)
    assert (theirs / "data.csv").read_text() == "keep me"
    ours = gc.prepare_out(tmp_path / "ours", False)
    (ours / "gpu_check.json").write_text("{}")
    with pytest.raises(FileExistsError, match="--overwrite"):
        gc.prepare_out(ours, False)
    assert gc.prepare_out(ours, True) == ours and not (ours / "gpu_check.json").exists()


def timed_result(oom: bool, steps: int = 4) -> dict[str, Any]:
    """What benchmarks/timed_training.py writes: a run out of memory, or ``steps`` steps one second apart."""
    if oom:
        return {"status": 1, "oom": True, "error": "OutOfMemoryError: CUDA out of memory", "seconds": 5.0,
                "steps": [], "peak_allocated": None, "peak_reserved": None, "log": "x.log"}
    return {"status": 0, "oom": False, "error": None, "seconds": 9.0, "log": "x.log",
            "steps": [{"epoch": 0, "phase": "unfrozen", "t": float(t), "peak_allocated": 2 ** 30 * (t + 1)}
                      for t in range(steps)],
            "peak_allocated": 2 ** 30 * 5, "peak_reserved": 2 ** 30 * 6}


@pytest.mark.parametrize("fits_at", [2, None])
def test_batch_128_out_of_memory_tries_the_next_accumulate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            fits_at: int | None) -> None:
    gc = load_gpu_check()
    profile = replace(gc.CPU_PROFILE, seg_runs=((32, 1), (128, 1)), seg_fallback=(2, 4))
    check = gc.GpuCheck(profile, torch.device("cpu"), gc.Paths(tmp_path), 1, gc.Budget(60))
    calls: list[list[str]] = []

    def timed_script(name: str, script: str, args: list[str], cap: float) -> dict[str, Any]:
        calls.append(args)
        batch, k = int(args[args.index("--batch-size") + 1]), int(args[args.index("--accumulate") + 1])
        return timed_result(oom=batch == 128 and (fits_at is None or k < fits_at))

    monkeypatch.setattr(check, "timed_script", timed_script)
    monkeypatch.setattr(check, "loader_rate", lambda dataset, micro: {"steady": 1000.0, "with_startup": 500.0})
    rows = pd.DataFrame({"case": ["00001"], "image_file": ["a.npy"], "image_row": [0], "mask_file": ["m.npy"],
                         "mask_row": [0]})
    monkeypatch.setattr("mgmt2d.segmentation.dataset.load_index", lambda root: rows.assign(fold=[1]))
    monkeypatch.setattr("mgmt2d.segmentation.dataset.split_by_fold", lambda index, fold: (rows, rows))
    check.stage1()
    got = [(r.name, r.status) for r in check.rows]
    if fits_at == 2:
        assert got == [("stage 1 batch 32", "PASS"), ("stage 1 batch 128", "SKIP"),
                       ("stage 1 batch 128 --accumulate 2", "PASS")]
        fitted = check.rows[-1].figures
        # steps 1..2 of 4 (the first and the last left out) took 2 s: 2 x 128 images
        assert fitted["step_img_s"] == 128 and fitted["peak_allocated_gib"] == 5 and fitted["micro_batch"] == 64
        assert fitted["loader_over_step"] == round(1000 / 128, 2)
        assert "--accumulate 2" in check.rows[1].note
    else:
        assert got == [("stage 1 batch 32", "PASS"), ("stage 1 batch 128", "SKIP"),
                       ("stage 1 batch 128 --accumulate 2", "SKIP"), ("stage 1 batch 128 --accumulate 4", "FAIL")]
        assert "out of GPU memory" in check.rows[-1].note
    assert check.seg_models is not None   # batch 32's checkpoints feed inference
