"""Tiny stage-1 and stage-2 weights for running the real scripts on small synthetic data in seconds.

The segmenter is the real UNet++ with a head that marks whole tumour everywhere and enhancing
tumour nowhere, so every non-empty slice is kept; the classifiers are timm's tiny ``test_nfnet``
behind the real BiLSTM, random but seeded, at 32 px, 4-slice chunks. Checkpoints are written in
our layout (``segmentation/fold0/best.pt``, ``classification/<type>/fold<k>/best.pt``) with the
contract they were "trained" on, as train_classification.py records it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from mgmt2d.classification.model import build_classifier
from mgmt2d.data import dicom
from mgmt2d.data.contract import OURS, InputContract
from mgmt2d.dev import synth
from mgmt2d.segmentation import model as segmenter

REPO = Path(__file__).resolve().parents[1]
TINY = OURS.with_overrides(seg_image_size=32, image_size=32, seq_len=4, stride=4)
BACKBONE = "test_nfnet"


def tiny_weights(root: Path, classifiers: Sequence[tuple[str, int]] = (("pooled", 0),),
                 contract: InputContract = TINY) -> Path:
    """``root`` holding a segmenter and one classifier per (type, fold); returns ``root``."""
    torch.manual_seed(0)
    seg = segmenter.build_segmenter()
    with torch.no_grad():
        seg.segmentation_head[0].weight.zero_()
        seg.segmentation_head[0].bias.copy_(torch.tensor([5.0, -5.0]))
    (root / "segmentation/fold0").mkdir(parents=True)
    torch.save(seg.state_dict(), root / "segmentation/fold0/best.pt")
    for k, (mri_type, fold) in enumerate(classifiers):
        torch.manual_seed(k + 1)
        model = build_classifier(BACKBONE, seq_len=contract.seq_len)
        folder = root / "classification" / mri_type / f"fold{fold}"
        folder.mkdir(parents=True)
        torch.save({"model": model.state_dict(),
                    "config": {"backbone": BACKBONE, "seq_len": contract.seq_len, "contract": contract.to_dict()}},
                   folder / "best.pt")
    return root


def trim_series(task2_dir: Path, keep: int = 10) -> None:
    """Keep the middle ``keep`` slices (in anatomical order) of every series under ``task2_dir``: CPU time."""
    for series in sorted(task2_dir.glob("*/*/*/")):
        files = dicom.read_series(series)[1].files
        start = max((len(files) - keep) // 2, 0)
        for f in files[:start] + files[start + keep:]:
            f.unlink()


def settings_for(root: Path, data: Path, **paths: str | Path) -> Path:
    """SETTINGS.json for a synthetic dataset at ``data`` (synth.generate's), work under ``root``; ``paths`` override."""
    values = {k: str(data / v) if k in ("DICOM_DATA_DIR", "TASK1_DIR", "CLASSIFICATION_RAW_JPG") else str(root / v)
              for k, v in synth.settings_json().items()}
    values.update({k: str(v) for k, v in paths.items()})
    path = root / "SETTINGS.json"
    path.write_text(json.dumps(values))
    return path


def run_script(script: str, *args: str | Path, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """A top-level script or ``-m mgmt2d`` as a user runs it, with this checkout's package first."""
    argv = ["-m", "mgmt2d", *args[1:]] if script == "-m" else [str(REPO / script), *args]
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, cwd=cwd,
                          env=environment, timeout=600)


def one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2, exactly one ``error:`` line on stderr holding every needle, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]
