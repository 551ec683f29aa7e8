"""Stage-2 classifier: published state-dict layout, weight loading, embedding reuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from mgmt2d.classification.chunks import n_chunks
from mgmt2d.classification.model import (
    MGMTClassifier,
    build_classifier,
    load_backbone_weights,
    load_trained_classifier,
    normalised_zero_frame,
    predict_series,
    predict_series_chunkwise,
)
from mgmt2d.training.checkpoint import CheckpointError, load_strict, read_state_dict

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference_state_dicts.json"
SIZE = 64
SEQ, STRIDE = 5, 2


@pytest.fixture(scope="module")
def small_model() -> MGMTClassifier:
    """eca_nfnet_l0 with a 5-frame head: the real backbone, small enough for CPU tests."""
    torch.manual_seed(0)
    return build_classifier(seq_len=SEQ).eval()


def _frames(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=g)


def test_state_dict_matches_reference() -> None:
    if not REFERENCE.is_file():
        pytest.skip(f"{REFERENCE} is absent")
    reference = json.loads(REFERENCE.read_text())["classifier"]
    model = build_classifier()  # eca_nfnet_l0, hidden 128, 35 steps
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == reference  # same keys, same shapes
    assert ours["lstm.weight_ih_l0"] == [512, 2304]
    assert ours["clf_head.weight"] == [1, 2 * 128 * 35]


def test_forward_shapes(small_model: MGMTClassifier) -> None:
    x = _frames(2 * SEQ).reshape(2, SEQ, 3, SIZE, SIZE)
    with torch.no_grad():
        logits = small_model(x)
        emb = small_model.embed_frames(x.reshape(-1, 3, SIZE, SIZE), batch_size=3)
    assert logits.shape == (2,)
    assert emb.shape == (2 * SEQ, 2304)
    with pytest.raises(ValueError):
        small_model(_frames(2 * 4).reshape(2, 4, 3, SIZE, SIZE))  # wrong number of time steps


def test_state_dict_round_trip(small_model: MGMTClassifier, tmp_path: Path) -> None:
    x = _frames(SEQ).unsqueeze(0)
    with torch.no_grad():
        expected = small_model(x)
    raw = tmp_path / "raw.pth"
    torch.save(small_model.state_dict(), raw)
    wrapped = tmp_path / "ckpt.pth"
    torch.save({"model": small_model.state_dict(), "epoch": 3}, wrapped)
    for path in (raw, wrapped):
        torch.manual_seed(123)  # a different random init
        fresh = build_classifier(seq_len=SEQ).eval()
        load_strict(fresh, read_state_dict(path), path, "the stage-2 classifier")
        with torch.no_grad():
            assert torch.equal(fresh(x), expected)
    # strict: a head for another sequence length must not load
    other = build_classifier(seq_len=SEQ + 1)
    with pytest.raises(CheckpointError, match="does not fit"):   # one line naming the file
        load_strict(other, read_state_dict(raw), raw, "the stage-2 classifier")


def test_trained_classifier_is_built_from_its_checkpoint_config(small_model: MGMTClassifier, tmp_path: Path) -> None:
    """inference's loader: architecture from the saved config, weights strict, eval mode."""
    x = _frames(SEQ).unsqueeze(0)
    with torch.no_grad():
        expected = small_model(x)
    config = {"backbone": "eca_nfnet_l0", "lstm_hidden": 128, "seq_len": SEQ, "image_size": SIZE}
    path = tmp_path / "best.pt"
    torch.save({"model": small_model.state_dict(), "config": config, "epoch": 3}, path)
    model, loaded = load_trained_classifier(path, "cpu")
    assert loaded == config and not model.training and model.seq_len == SEQ
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    # a raw state dict has no config: the reference's 35 steps, so a 5-step head must not load
    raw = tmp_path / "raw.pth"
    torch.save(small_model.state_dict(), raw)
    with pytest.raises(CheckpointError, match="raw.pth does not fit"):
        load_trained_classifier(raw, "cpu")


def test_backbone_weights_ignore_only_the_classifier(tmp_path: Path) -> None:
    full = timm.create_model("eca_nfnet_l0", pretrained=False)  # with its ImageNet head
    path = tmp_path / "eca_nfnet_l0.pth"
    torch.save(full.state_dict(), path)
    model = build_classifier(seq_len=SEQ, pretrained=path)
    assert torch.equal(model.backbone.stem.conv1.weight, full.stem.conv1.weight)
    backbone = timm.create_model("eca_nfnet_l0", pretrained=False, num_classes=0)
    assert load_backbone_weights(backbone, path) == ["head.fc.bias", "head.fc.weight"]
    # anything else missing is an error
    state = full.state_dict()
    del state["final_conv.bias"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_backbone_weights(backbone, path)


def test_backbone_weights_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    full = timm.create_model("eca_nfnet_l0", pretrained=False)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    backbone = timm.create_model("eca_nfnet_l0", pretrained=False, num_classes=0)
    assert load_backbone_weights(backbone, path) == ["head.fc.bias", "head.fc.weight"]
    assert torch.equal(backbone.final_conv.weight, full.final_conv.weight)


@pytest.mark.parametrize("n", [12, 3, 5])
def test_embedding_reuse_equals_chunkwise(small_model: MGMTClassifier, n: int) -> None:
    frames = _frames(n, seed=n)
    fast = predict_series(small_model, frames, stride=STRIDE, batch_size=4)
    slow = predict_series_chunkwise(small_model, frames, stride=STRIDE, batch_size=2 * SEQ)
    assert fast.shape == slow.shape == (n_chunks(n, SEQ, STRIDE),)
    assert fast.dtype == np.float32
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-5)
    assert ((fast > 0) & (fast < 1)).all()


def test_pad_frame_is_used(small_model: MGMTClassifier) -> None:
    frames = _frames(3)
    default = predict_series(small_model, frames, stride=STRIDE)
    explicit = predict_series(small_model, frames, stride=STRIDE, pad_frame=normalised_zero_frame(SIZE, SIZE))
    np.testing.assert_array_equal(default, explicit)
    zeros = torch.zeros(3, SIZE, SIZE)
    fast = predict_series(small_model, frames, stride=STRIDE, pad_frame=zeros)
    slow = predict_series_chunkwise(small_model, frames, stride=STRIDE, pad_frame=zeros)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-5)
    assert not np.allclose(fast, default, rtol=0, atol=1e-7)


def test_normalised_zero_frame() -> None:
    pad = normalised_zero_frame(4, 5)
    assert pad.shape == (3, 4, 5)
    assert pad[:, 0, 0].tolist() == pytest.approx([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225])


def test_predict_restores_mode_and_rejects_empty(small_model: MGMTClassifier) -> None:
    small_model.train()
    try:
        predict_series(small_model, _frames(2), stride=STRIDE)
        assert small_model.training
    finally:
        small_model.eval()
    with pytest.raises(ValueError):
        predict_series(small_model, torch.zeros(0, 3, SIZE, SIZE), stride=STRIDE)
