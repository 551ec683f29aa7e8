"""--backend: the engines give torch's outputs, their cache is keyed and validated, choices are checked."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch

from mgmt2d import engines as backends
from mgmt2d.classification.model import backbone_with_backend, build_classifier, predict_series
from mgmt2d.cli import user_message
from mgmt2d.data.io import file_sha256
from mgmt2d.dev.synth import make_phantom, render
from mgmt2d.segmentation import model as segmenter

SEG_SIZE = 64     # UNet++ needs multiples of 32
FRAME_SIZE = 32

ENGINES = [pytest.param(e, marks=pytest.mark.skipif(not backends.engine_installed(e), reason=f"{e} not installed"))
           for e in backends.ENGINES]


@pytest.fixture(scope="module")
def seg_model():
    torch.manual_seed(0)
    return segmenter.build_segmenter().eval()


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(1)
    return build_classifier(seq_len=4).eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("engine-cache")


def _slices(n: int = 5) -> np.ndarray:
    """Synthetic brain slices with a tumour, in [0, 255], as the segmenter gets them."""
    rng = np.random.default_rng(0)
    volume = render(make_phantom((48, 48, 24), 1, rng), "FLAIR", rng, noise=0.02)
    axial = np.moveaxis(volume, 2, 0)[10:10 + n]
    return (255 * (axial - axial.min()) / (axial.max() - axial.min())).astype(np.uint8)


def _frames(n: int = 7) -> torch.Tensor:
    rng = np.random.default_rng(2)
    x = rng.random((n, 3, FRAME_SIZE, FRAME_SIZE), dtype=np.float32)
    return torch.from_numpy((x - 0.45) / 0.225)


@pytest.mark.parametrize("engine", ENGINES)
def test_engine_segmenter_probabilities_equal_torch(engine, seg_model, cache):
    inputs = segmenter.to_input(_slices(5), SEG_SIZE, zoom=1.2)
    backend = backends.make_backend(engine, seg_model, (3, SEG_SIZE, SEG_SIZE), cache, "seg-ckpt", 1,
                                    role="segmenter")
    assert isinstance(backend, backends.EngineBackend) and backend.engine == engine
    cpu = torch.device("cpu")
    want = segmenter.predict_probs(seg_model, inputs, cpu, batch_size=2)   # batches 2, 2, 1: dynamic batch
    got = segmenter.predict_probs(backend, inputs, cpu, batch_size=2)
    assert got.shape == want.shape
    assert backends.probe_problem("segmenter", want, got) is None   # the rule the engine is accepted by
    assert np.abs(got - want).max() <= backends.PROBE.seg_abs
    masks = segmenter.predict_probs(backend, inputs, cpu, batch_size=4, threshold=0.5)
    decided = np.abs(want - 0.5) > backends.PROBE.mask_margin   # float rounding cannot flip these pixels
    np.testing.assert_array_equal(masks[decided], (want > 0.5)[decided])


def test_probe_judges_an_engine_by_what_changes_a_result():
    """Masks must agree except within the stated margin of 0.5; probabilities within fp32-rounding tolerance."""
    rng = np.random.default_rng(0)
    want = rng.random((2, 2, 8, 8)).astype(np.float32)
    want[0, 0, 0, 1] = 0.5 + 3 * backends.PROBE.mask_margin          # decided
    noise = np.float32(1.01e-5)                                       # what an AVX-512/AMX CPU gave (issue 25)
    assert backends.probe_problem("segmenter", want, want + noise) is None
    want[0, 0, 0, 0] = 0.5 + 2e-5                                     # undecided: within the margin of 0.5
    flipped = want.copy()
    flipped[0, 0, 0, 0] = 0.5 - 2e-5                                  # flips, by float rounding: accepted
    assert backends.probe_problem("segmenter", want, flipped) is None
    flipped[0, 0, 0, 1] = 0.49                                        # flips a decided pixel: refused
    assert "1 mask pixel" in backends.probe_problem("segmenter", want, flipped)
    assert "differs from torch" in backends.probe_problem("segmenter", want, want + 10 * backends.PROBE.seg_abs)
    assert backends.probe_problem("segmenter", want, np.full_like(want, np.nan)) is not None
    emb = rng.standard_normal((3, 16)).astype(np.float32)
    assert backends.probe_problem("backbone", emb, emb * (1 + 1e-6)) is None
    assert "differs from torch" in backends.probe_problem("backbone", emb, emb + 1e-2)
    assert "output shape" in backends.probe_problem("backbone", emb, emb[:2])


@pytest.mark.parametrize("engine", ENGINES)
def test_engine_backbone_embeddings_and_chunks_equal_torch(engine, classifier, cache):
    frames = _frames(7)
    with torch.inference_mode():
        want_emb = classifier.backbone(frames)
    want = predict_series(classifier, frames, 4, 2, batch_size=3)   # chunks [0-3] [2-5] [4-6 + pad]
    source = classifier.backbone
    backend = backends.make_backend(engine, source, (3, FRAME_SIZE, FRAME_SIZE), cache, "cls-ckpt", 1)
    classifier.backbone = backend
    try:
        with torch.inference_mode():
            got_emb = classifier.embed_frames(frames, batch_size=3)
        got = predict_series(classifier, frames, 4, 2, batch_size=3)
    finally:
        classifier.backbone = source
    scale = want_emb.abs().amax(dim=1, keepdim=True)
    assert float(((got_emb - want_emb).abs() / scale).max()) <= 1e-4   # per frame, relative
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_torch_backend_runs_the_backbone_channels_last_with_the_same_embeddings():
    torch.manual_seed(3)
    model = build_classifier(seq_len=4).eval()
    frames = _frames(3)
    seen = []
    model.backbone.stem.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous()))
    with torch.inference_mode():
        want = model.backbone(frames)
    keys = list(model.state_dict())
    cpu = backends.resolve_backend("torch", torch.device("cpu"), threads=1)
    out = backbone_with_backend(model, "unused.pt", FRAME_SIZE, cpu, torch.device("cpu"))
    assert out is model and list(model.state_dict()) == keys   # same module, same layer names
    with torch.inference_mode():
        got = model.backbone(frames)
    assert seen == [True, False]   # the second pass got channels-last input
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-4


def _tiny_net(seed: int) -> torch.nn.Module:
    """A small conv net: the cache's logic does not depend on the architecture, and this one converts in no time."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten()).eval()


@pytest.mark.skipif(not backends.engine_installed("onnxruntime"), reason="onnxruntime not installed")
def test_cache_is_reused_and_a_corrupt_or_stale_entry_is_rebuilt(tmp_path, caplog):
    net = _tiny_net(4)
    shape = (3, FRAME_SIZE, FRAME_SIZE)
    x = _frames(2)
    with torch.inference_mode():
        want = net(x)

    def make(digest="ckpt-a"):
        return backends.make_backend("onnxruntime", net, shape, tmp_path, digest, 1)

    def check(backend):
        with torch.inference_mode():
            assert float((backend(x) - want).abs().max() / want.abs().max()) <= 1e-4

    first = make()
    assert first.cache_status == "built"
    (entry,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert sorted(p.name for p in entry.iterdir()) == ["manifest.json", "model.onnx"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp left behind
    assert make().cache_status == "loaded"

    # Corrupt: flip bytes in the middle of the weights (the file keeps its size).
    model_file = entry / "model.onnx"
    data = bytearray(model_file.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(255 - b for b in data[mid:mid + 64])
    model_file.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="mgmt2d.engines"):
        rebuilt = make()
    assert rebuilt.cache_status == "rebuilt" and "model.onnx is missing or altered" in caplog.text
    check(rebuilt)

    # Stale: the manifest says another engine version made it.
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["key"]["engine_version"] = "0.0.1"
    (entry / "manifest.json").write_text(json.dumps(manifest))
    assert make().cache_status == "rebuilt"

    # Truncated manifest (a crash mid-write of an older version): rebuilt too.
    (entry / "manifest.json").write_text("{")
    assert make().cache_status == "rebuilt"

    # A manifest that checks out but a model that does not match torch (altered and re-hashed): rebuilt.
    other = _tiny_net(5)
    backends.OnnxRuntimeBackend.convert(other, torch.zeros(1, *shape), entry)
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = file_sha256(model_file)
    (entry / "manifest.json").write_text(json.dumps(manifest))
    again = make()
    assert again.cache_status == "rebuilt"
    check(again)

    # Another checkpoint or input shape: its own entry.
    assert make("ckpt-b").cache_status == "built"
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2


def test_missing_engine_is_a_one_line_error_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)   # import openvino -> ImportError
    with pytest.raises(backends.BackendError) as err:
        backends.resolve_backend("openvino", torch.device("cpu"))
    message = user_message(err.value)
    assert "openvino is not installed" in message and "requirements-cpu.txt" in message
    assert 'mgmt2d[cpu-engines]' in message and "\n" not in message


def test_auto_prefers_the_fixed_engine_order_on_cpu_and_torch_on_cuda(monkeypatch):
    cuda = backends.resolve_backend("auto", torch.device("cuda"))
    assert cuda.name == "torch"
    for engine in backends.ENGINES:
        monkeypatch.setattr(backends, "engine_installed", lambda name, engine=engine: name == engine)
        assert backends.resolve_backend("auto", torch.device("cpu")).name == engine
    monkeypatch.setattr(backends, "engine_installed", lambda name: True)
    assert backends.resolve_backend("auto", torch.device("cpu")).name == next(iter(backends.ENGINES))
    monkeypatch.setattr(backends, "engine_installed", lambda name: False)
    assert backends.resolve_backend("auto", torch.device("cpu")).name == "torch"


def test_invalid_choices_are_refused():
    with pytest.raises(backends.BackendError, match="--device cpu"):
        backends.resolve_backend("onnxruntime", torch.device("cuda"))
    with pytest.raises(backends.BackendError, match="openvino only"):
        backends.resolve_backend("torch", torch.device("cpu"), precision="engine-default")
    with pytest.raises(backends.BackendError, match="--threads 0"):
        backends.resolve_backend("torch", torch.device("cpu"), threads=0)
    opts = backends.resolve_backend("torch", torch.device("cpu"))
    assert opts.threads == backends.available_cores() and opts.cache_dir == backends.default_cache_dir()


@pytest.mark.parametrize("engine", ENGINES)
def test_engine_refuses_another_input_size_and_handles_any_batch(engine, tmp_path):
    net = _tiny_net(6)
    backend = backends.make_backend(engine, net, (3, 16, 16), tmp_path, "tiny", 1)
    with pytest.raises(ValueError, match="converted for inputs"):
        backend(torch.zeros(1, 3, 32, 32))
    for n in (1, 3, 0):
        x = torch.randn(n, 3, 16, 16)
        with torch.inference_mode():
            np.testing.assert_allclose(backend(x).numpy(), net(x).numpy(), atol=1e-6)
