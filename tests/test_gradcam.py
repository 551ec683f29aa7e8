"""Grad-CAM through backbone -> BiLSTM -> head explains the chunk inference scores (random-init model, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mgmt2d.classification.model import build_classifier
from mgmt2d.classification.stack import StackedSeries
from mgmt2d.data.contract import InputContract
from mgmt2d.inference.gradcam import ChunkLogit, chunk_cam, target_layer
from mgmt2d.inference.pipeline import classify_series


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_classifier("eca_nfnet_l0", lstm_hidden=8, seq_len=4).eval()


def stacked_series(n: int = 6, size: int = 40) -> StackedSeries:
    rng = np.random.default_rng(1)
    images = np.zeros((n, size, size, 3), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for k in range(n):
        images[k, ..., 0] = (rng.random((size, size)) * 200).astype(np.uint8)
        tumour = (yy - 20) ** 2 + (xx - 18 - k) ** 2 <= 36
        images[k, ..., 1] = tumour * 255
        images[k, ..., 2] = ((yy - 20) ** 2 + (xx - 18 - k) ** 2 <= 9) * 255
    return StackedSeries(images, np.arange(3, 3 + n), n + 5, n)


def test_chunk_cam_scores_what_inference_scores(model):
    contract = InputContract(image_size=32, seq_len=4, stride=4, tta_zoom=1.2)
    stacked = stacked_series()   # 6 kept slices: chunks [0..3] and [4, 5, pad, pad]
    probs = classify_series([model], stacked, contract, 8, None)
    assert len(probs) == 2
    for chunk in (0, 1):
        cam = chunk_cam(model, stacked, contract, chunk)
        assert cam.prob == pytest.approx(float(probs[chunk]), abs=1e-5)
        assert cam.images.shape == (4, 32, 32, 3) and cam.cam.shape == (4, 32, 32)
        assert (cam.cam >= 0).all() and cam.mass.sum() > 0
    assert cam.slices.tolist() == [7, 8, -1, -1]          # series slices; padding marked -1
    assert cam.mass[2:].tolist() == [0.0, 0.0]
    assert set(cam.top_frames(3)) <= {0, 1}
    assert all(p.grad is None for p in model.parameters())   # nothing left behind


def test_wrapper_is_the_whole_model(model):
    x = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ChunkLogit(model)(x).reshape(-1), model(x))
    assert target_layer(model, 224) is model.backbone.final_conv            # 7x7, the usual target
    small = target_layer(model, 32)                                           # final_conv is 1x1 there
    assert small is not model.backbone.final_conv
    names = [n for n, m in model.backbone.named_modules() if m is small]
    assert names and names[0].startswith("stages.")


def test_chunk_cam_under_an_engine_backend_uses_the_torch_backbone(model, tmp_path):
    """--backend onnxruntime: the report's Grad-CAM runs through the torch module the engine was
    converted from (an engine has no gradients), with the same heatmaps; the engine stays in place."""
    pytest.importorskip("onnxruntime")
    import copy

    from mgmt2d.engines import make_backend

    contract = InputContract(image_size=32, seq_len=4, stride=4, tta_zoom=1.2)
    stacked = stacked_series()
    reference = chunk_cam(model, stacked, contract, 0)
    engined = copy.deepcopy(model)
    engined.backbone = make_backend("onnxruntime", engined.backbone, (3, 32, 32), tmp_path, "0" * 64, threads=1)
    engine = engined.backbone
    cam = chunk_cam(engined, stacked, contract, 0)
    assert engined.backbone is engine
    assert cam.prob == pytest.approx(reference.prob, abs=1e-5)
    np.testing.assert_allclose(cam.cam, reference.cam, rtol=1e-4, atol=1e-6)
