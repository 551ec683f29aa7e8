"""The stage-1 segmenter: UNet++ / DenseNet121 predicting WT and ET, and how slices go in and out.

One module for the model, its input transform and its inverse, so training,
whole-volume evaluation, prepare_classification.py and inference_on_test.py agree.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from mgmt2d import pretrained
from mgmt2d.data.intensity import normalise_gray
from mgmt2d.data.io import file_sha256
from mgmt2d.device import autocast
from mgmt2d.engines import BackendOptions, make_backend
from mgmt2d.training.checkpoint import load_strict, read_state_dict

log = logging.getLogger(__name__)

ENCODER = "densenet121"


def build_segmenter() -> nn.Module:
    """The reference architecture, randomly initialised; state-dict keys equal the published model's."""
    import segmentation_models_pytorch as smp

    return smp.UnetPlusPlus(
        encoder_name=ENCODER, encoder_depth=5, encoder_weights=None, classes=2, activation="sigmoid"
    )


def load_segmenter(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """A trained segmenter (ours or the reference's weights) loaded strictly, in eval mode."""
    model = build_segmenter()
    load_strict(model, read_state_dict(path), path, "the segmenter (UNet++ / DenseNet121, 2 outputs)")
    return model.to(device).eval()


def with_backend(model: nn.Module, checkpoint: str | Path, image_size: int, opts: BackendOptions) -> nn.Module:
    """The segmenter loaded from ``checkpoint``, run as ``opts`` says (``mgmt2d.engines``) on (N, 3, S, S) inputs.

    torch runs the module as it is (channels-last gained nothing for UNet++ on the CPU); an
    engine converts it, its cache keyed by the checkpoint's SHA-256.
    """
    if opts.name == "torch":
        return make_backend("torch", model, (3, image_size, image_size), role="segmenter")
    return make_backend(opts.name, model, (3, image_size, image_size), opts.cache_dir, file_sha256(checkpoint),
                        opts.threads, opts.precision, role="segmenter")


def load_pretrained(model: nn.Module, weights: str | Path) -> str:
    """Initialise from ``weights``, strictly: a whole UNet++ (like the published stage-1 init file) or an encoder.

    A file with decoder keys is a whole model and must match it key for key; otherwise it
    is DenseNet121 encoder weights (ImageNet), whose classifier keys are dropped. Returns
    "whole model" or "encoder".
    """
    state = read_state_dict(weights)
    if any(k.startswith(("decoder.", "segmentation_head.")) for k in state):
        load_strict(model, state, weights, "a whole UNet++ / DenseNet121 with 2 outputs")
        return "whole model"
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    load_strict(model.encoder, state, weights, "DenseNet121 encoder weights")
    return "encoder"


# ---------------------------------------------------------------- ImageNet weights of the encoder


def _build_encoder() -> nn.Module:
    from segmentation_models_pytorch.encoders import get_encoder

    return get_encoder(ENCODER, in_channels=3, depth=5, weights=None)


def _fetch_encoder(cache_dir: Path) -> pretrained.FetchedWeights:
    """smp's own weight source for the encoder (its Hugging Face repo and pinned revision), needs the internet.

    smp 0.6.0's ``get_encoder`` has no cache-dir argument, so the same two ``hf_hub_download``
    calls it makes are made here with ``cache_dir``; smp's encoder then loads the file (it
    renames old torchvision keys) and its state dict is what gets stored.
    """
    import huggingface_hub
    from safetensors.torch import load_file
    from segmentation_models_pytorch import __version__ as smp_version
    from segmentation_models_pytorch.encoders import encoders

    hub = encoders[ENCODER]["pretrained_settings"]["imagenet"]
    repo_id, revision = hub["repo_id"], hub["revision"]
    huggingface_hub.hf_hub_download(repo_id, filename="config.json", revision=revision, cache_dir=cache_dir)
    weights = huggingface_hub.hf_hub_download(repo_id, filename="model.safetensors", revision=revision,
                                              cache_dir=cache_dir)
    encoder = _build_encoder()
    encoder.load_state_dict(load_file(weights, device="cpu"))
    source = {"library": f"segmentation-models-pytorch {smp_version}", "hf_repo_id": repo_id, "revision": revision,
              "filename": "model.safetensors"}
    return pretrained.FetchedWeights(encoder.state_dict(), source)


pretrained.register(pretrained.PretrainedSource(
    ENCODER, f"segmentation_models_pytorch.UnetPlusPlus(encoder_name='{ENCODER}').encoder", _build_encoder,
    _fetch_encoder), default=True)


# ---------------------------------------------------------------- input / output transforms


def zoomed_size(image_size: int, zoom: float) -> int:
    """The side the slices are resized to before the centre crop: int(), as the reference (224 * 1.2 -> 268)."""
    return int(image_size * zoom)


def to_input(slices: np.ndarray, image_size: int, zoom: float = 1.0) -> np.ndarray:
    """(N, H, W) slices in [0, 255] (uint8, or float as stage 2 passes them) -> float32 (N, 3, S, S).

    zoom 1.0 resizes to S (training, evaluation); zoom 1.2 resizes to int(1.2 S) and
    centre-crops S, as the reference does before segmenting Task 2 slices. Float slices
    are resized in float64 (the reference's precision), then normalised in float32.
    """
    big = zoomed_size(image_size, zoom)
    lo = (big - image_size) // 2
    out = np.empty((len(slices), 3, image_size, image_size), dtype=np.float32)
    for i, sl in enumerate(slices):
        src = sl if sl.dtype == np.uint8 else sl.astype(np.float64, copy=False)
        img = cv2.resize(src, (big, big), interpolation=cv2.INTER_LINEAR)
        out[i] = normalise_gray(img[lo:lo + image_size, lo:lo + image_size])
    return out


def from_output(pred: np.ndarray, shape: tuple[int, int], zoom: float = 1.0) -> np.ndarray:
    """Inverse of to_input for (C, S, S) maps: pad back to the zoomed size, resize bilinearly to (H, W).

    The padding mirrors the border (reflect-101, albumentations' PadIfNeeded default, which
    the reference used), so a mask touching the crop edge continues into the margin. uint8
    {0,1} masks stay {0,1} under bilinear resizing (OpenCV rounds), as in the reference.
    """
    channels, size, _ = pred.shape
    big = zoomed_size(size, zoom)
    top = (big - size) // 2
    bottom = big - size - top
    h, w = shape
    out = np.empty((channels, h, w), dtype=pred.dtype)
    for c in range(channels):
        plane = np.ascontiguousarray(pred[c])
        if big > size:
            plane = cv2.copyMakeBorder(plane, top, bottom, top, bottom, cv2.BORDER_REFLECT_101)
        out[c] = cv2.resize(plane, (w, h), interpolation=cv2.INTER_LINEAR)
    return out


@torch.inference_mode()
def predict_probs(
    model: nn.Module,
    inputs: np.ndarray,
    device: torch.device,
    batch_size: int = 32,
    amp: bool = True,
    threshold: float | None = None,
) -> np.ndarray:
    """Sigmoid probabilities (N, 2, S, S) for prepared inputs, in batches of ``batch_size``.

    With ``threshold`` the result is the uint8 {0,1} mask instead (a quarter of the memory).
    """
    model.eval()
    dtype = np.float32 if threshold is None else np.uint8
    out = np.empty((len(inputs), 2, *inputs.shape[2:]), dtype=dtype)
    for start in range(0, len(inputs), batch_size):
        batch = torch.from_numpy(inputs[start:start + batch_size])
        if device.type == "cuda":
            batch = batch.pin_memory().to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            probs = model(batch)
        probs = probs.float()
        if threshold is not None:
            probs = probs > threshold
        out[start:start + len(batch)] = probs.cpu().numpy()
    return out
