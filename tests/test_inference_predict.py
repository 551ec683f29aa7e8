"""Inference pieces that need no files: TTA views, fold averaging, patient lists."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mgmt2d.classification import frames
from mgmt2d.classification.model import build_classifier, predict_series, predict_series_chunkwise
from mgmt2d.classification.stack import StackedSeries
from mgmt2d.data.contract import InputContract
from mgmt2d.data.weights import WeightsLayout
from mgmt2d.inference import pipeline as inference
from mgmt2d.inference.predict import submission_patients


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return [build_classifier(seq_len=4).eval() for _ in range(2)]


def _stacked(n=7, size=40, seed=0):
    rng = np.random.default_rng(seed)
    images = (rng.random((n, size, size, 3)) * 255).astype(np.uint8)
    return StackedSeries(images, np.arange(n), n, n)


def _contract(zoom=1.2):
    return InputContract(image_size=32, seq_len=4, stride=2, tta_zoom=zoom)


def _classify(models, st, zoom=1.2):
    return float(np.mean(inference.classify_series(models, st, _contract(zoom), batch_size=8, autocast_dtype=None)))


def test_tta_zoom_one_equals_no_tta(models):
    st = _stacked(8)   # 8 frames, chunks of 4 with stride 2: no padded chunk
    plain = torch.from_numpy(frames.normalise(frames.resize(st.images, 32)))
    want = float(predict_series(models[0], plain, 4, 2).mean())
    assert _classify(models[:1], st, zoom=1.0) == pytest.approx(want, abs=1e-7)
    assert _classify(models[:1], st, zoom=1.2) != pytest.approx(want, abs=1e-6)   # the zoom changes the input


def test_padded_chunk_is_made_in_float_like_the_published_code(models):
    """The published inference zoomed and resized a padded chunk as float64 (no uint8 rounding)."""
    st = _stacked(7)   # chunks [0-3], [2-5], [4-6 + pad]
    c = _contract()
    got = inference.classify_series(models[:1], st, c, batch_size=8, autocast_dtype=None)
    as_uint8 = torch.from_numpy(frames.normalise(frames.test_time_view(st.images, 32, 1.2)))
    as_float = torch.from_numpy(frames.normalise(frames.test_time_view(st.images.astype(np.float64), 32, 1.2)))
    assert not torch.equal(as_uint8, as_float)
    chunkwise = predict_series_chunkwise(models[0], as_uint8, 4, 2, padded_chunk_frames=as_float[4:])
    np.testing.assert_allclose(got, chunkwise, atol=1e-6)
    plain = predict_series(models[0], as_uint8, 4, 2)
    np.testing.assert_allclose(got[:2], plain[:2], atol=1e-6)           # full chunks: the uint8 path
    assert abs(got[2] - plain[2]) > 1e-7                                # the padded chunk: the float path


def test_zoom_scales_about_the_centre():
    img = np.zeros((1, 41, 41, 3), np.uint8)
    img[0, 20, 20] = 255
    img[0, 20, 30] = 255
    out = frames.zoom(img, 2.0)
    assert out[0, 20, 20, 0] == 255                     # the centre stays
    assert out[0, 20, 40, 0] > 0 and out[0, 20, 30, 0] == 0   # 10 px right of centre moves to 20 px


def test_fold_models_are_averaged(models):
    st = _stacked(9)
    single = [_classify([m], st) for m in models]
    both = _classify(models, st)
    assert both == pytest.approx(np.mean(single), abs=1e-7)
    assert single[0] != pytest.approx(single[1], abs=1e-6)


def test_submission_patients_keep_sample_order_and_spelling(tmp_path: Path):
    (tmp_path / "test" / "00012").mkdir(parents=True)
    sample = tmp_path / "sample_submission.csv"
    pd.DataFrame({"BraTS21ID": ["12", "7"], "MGMT_value": 0.5}).to_csv(sample, index=False)
    ids, spelled = submission_patients(tmp_path / "test", sample)
    assert ids == ["00012", "00007"] and spelled == ["12", "7"]
    ids, spelled = submission_patients(tmp_path / "test", None)
    assert ids == spelled == ["00012"]


def test_classifier_checkpoint_prefers_type_then_pooled(tmp_path: Path):
    for name in ("FLAIR", "pooled"):
        (tmp_path / name / "fold0").mkdir(parents=True)
        (tmp_path / name / "fold0" / "best.pt").write_bytes(b"x")
    layout = WeightsLayout("mgmt2d", tmp_path / "seg", tmp_path)
    assert layout.classifier_checkpoint("FLAIR", 0) == tmp_path / "FLAIR/fold0/best.pt"
    assert layout.classifier_checkpoint("T2w", 0) == tmp_path / "pooled/fold0/best.pt"
    assert layout.classifier_checkpoint("T2w", 1) is None
