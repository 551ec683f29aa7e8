"""Inference pieces that need no files: TTA views, fold averaging, patient lists."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mgmt2d import frames, inference
from mgmt2d.classifier import build_classifier, predict_series
from mgmt2d.stack import StackedSeries


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return [build_classifier(seq_len=4).eval() for _ in range(2)]


def _stacked(n=7, size=40, seed=0):
    rng = np.random.default_rng(seed)
    images = (rng.random((n, size, size, 3)) * 255).astype(np.uint8)
    return StackedSeries(images, np.arange(n), n, n)


def test_tta_zoom_one_equals_no_tta(models):
    st = _stacked()
    plain = torch.from_numpy(frames.normalise(frames.resize(st.images, 32)))
    want = float(predict_series(models[0], plain, 4, 2).mean())
    got = inference.classify_series(models[:1], st, 32, 4, 2, zoom=1.0, batch_size=8, autocast_dtype=None)
    assert got == pytest.approx(want, abs=1e-7)
    zoomed = inference.classify_series(models[:1], st, 32, 4, 2, zoom=1.2, batch_size=8, autocast_dtype=None)
    assert zoomed != pytest.approx(want, abs=1e-6)   # the zoom view really changes the input


def test_zoom_scales_about_the_centre():
    img = np.zeros((1, 41, 41, 3), np.uint8)
    img[0, 20, 20] = 255
    img[0, 20, 30] = 255
    out = frames.zoom(img, 2.0)
    assert out[0, 20, 20, 0] == 255                     # the centre stays
    assert out[0, 20, 40, 0] > 0 and out[0, 20, 30, 0] == 0   # 10 px right of centre moves to 20 px


def test_fold_models_are_averaged(models):
    st = _stacked(9)
    single = [inference.classify_series([m], st, 32, 4, 2, 1.2, 8, None) for m in models]
    both = inference.classify_series(models, st, 32, 4, 2, 1.2, 8, None)
    assert both == pytest.approx(np.mean(single), abs=1e-7)
    assert single[0] != pytest.approx(single[1], abs=1e-6)


def test_submission_patients_keep_sample_order_and_spelling(tmp_path: Path):
    (tmp_path / "test" / "00012").mkdir(parents=True)
    sample = tmp_path / "sample_submission.csv"
    pd.DataFrame({"BraTS21ID": ["12", "7"], "MGMT_value": 0.5}).to_csv(sample, index=False)
    ids, spelled = inference.submission_patients(tmp_path / "test", sample)
    assert ids == ["00012", "00007"] and spelled == ["12", "7"]
    ids, spelled = inference.submission_patients(tmp_path / "test", None)
    assert ids == spelled == ["00012"]


def test_classifier_checkpoint_prefers_type_then_pooled(tmp_path: Path):
    for name in ("FLAIR", "pooled"):
        (tmp_path / name / "fold0").mkdir(parents=True)
        (tmp_path / name / "fold0" / "best.pt").write_bytes(b"x")
    assert inference.classifier_checkpoint(tmp_path, "FLAIR", 0) == tmp_path / "FLAIR/fold0/best.pt"
    assert inference.classifier_checkpoint(tmp_path, "T2w", 0) == tmp_path / "pooled/fold0/best.pt"
    assert inference.classifier_checkpoint(tmp_path, "T2w", 1) is None
