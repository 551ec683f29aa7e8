"""Tiny stage-2 training runs for the preemption and torchrun tests (CPU, seconds).

A prepared CLASSIFICATION_DATA_DIR/train of FLAIR series with both labels in both folds, and
the flags of a run of train_classification.py on it with stage 2's BatchNorm-free NFNet family
(timm's ``test_nfnet``) at 16 px.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mgmt2d.data.settings import KEYS

REPO = Path(__file__).resolve().parents[1]


def classification_data(root: Path, patients: int = 8) -> Path:
    """CLASSIFICATION_DATA_DIR with ``patients`` FLAIR series (labels 0,0,1,1,..., folds 0,1,0,1,...)."""
    train = root / "train"
    (train / "series").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(patients):
        pid = f"{i + 1:05d}"
        kept = 6 + i % 3
        np.save(train / "series" / f"{pid}_FLAIR.npy", (rng.random((kept, 12, 10, 3)) * 255).astype(np.uint8))
        rows.append({"patient": pid, "type": "FLAIR", "kept": kept, "total": kept, "file": f"series/{pid}_FLAIR.npy",
                     "label": (i // 2) % 2, "fold": i % 2, "note": ""})
    pd.DataFrame(rows).to_csv(train / "index.csv", index=False)
    return root


def run_settings(run_dir: Path, data: Path) -> Path:
    """SETTINGS.json of one run: the shared data, models under ``run_dir``/models."""
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = {k: str(run_dir / "unused" / k.lower()) for k in KEYS}
    settings.update({"CLASSIFICATION_DATA_DIR": str(data), "CLASSIFICATION_MODEL_DIR": str(run_dir / "models")})
    path = run_dir / "SETTINGS.json"
    path.write_text(json.dumps(settings))
    return path


def train_args(settings: Path, *extra: str) -> list[str]:
    return [
        "--settings", str(settings), "--device", "cpu", "--pretrained", "none", "--workers", "0", "--no-progress",
        "--backbone", "test_nfnet", "--image-size", "16", "--seq-len", "4", "--stride", "4", "--lstm-hidden", "4",
        "--mri-type", "FLAIR", "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "2", "--lr", "1e-3",
        *extra,
    ]


def run_dir(settings: Path) -> Path:
    return settings.parent / "models" / "FLAIR" / "fold0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def script(name: str, args: list[str], nproc: int = 1, fault: str | None = None,
           timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a top-level script (under torchrun with ``nproc`` > 1), optionally with MGMT2D_FAULT."""
    # One thread, like torchrun's processes and the in-process runs (single_thread): results of
    # CPU kernels may depend on the thread count, and 2 threads on 2 busy cores are slower.
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    env.pop("MGMT2D_FAULT", None)
    if fault:
        env["MGMT2D_FAULT"] = fault
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port())]
    return subprocess.run([*launcher, str(REPO / name), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@contextmanager
def single_thread() -> Iterator[None]:
    """torch on one thread in this process (restored after), as in the script runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def model_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    wa, wb = model_weights(a), model_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=atol, rtol=0), f"{k} differs"


def history(path: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir(path) / "history.csv").drop(columns=["time"])
