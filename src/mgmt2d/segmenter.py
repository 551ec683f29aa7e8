"""The stage-1 segmenter: UNet++ / DenseNet121 predicting WT and ET, and how slices go in and out.

One module for the model, its input transform and its inverse, so training,
whole-volume evaluation, prepare_classification.py and inference_on_test.py agree.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from mgmt2d.intensity import normalise_gray

log = logging.getLogger(__name__)

ENCODER = "densenet121"


def build_segmenter() -> nn.Module:
    """The reference architecture, randomly initialised; state-dict keys equal the published model's."""
    import segmentation_models_pytorch as smp

    return smp.UnetPlusPlus(
        encoder_name=ENCODER, encoder_depth=5, encoder_weights=None, classes=2, activation="sigmoid"
    )


def state_dict_from_file(path: str | Path) -> Mapping[str, torch.Tensor]:
    """Weights from a .pt/.pth (weights_only) or .safetensors file; accepts our checkpoints too."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                return obj[key]
    return obj


def load_segmenter(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """A trained segmenter (ours or the reference's weights) loaded strictly, in eval mode."""
    model = build_segmenter()
    model.load_state_dict(state_dict_from_file(path), strict=True)
    return model.to(device).eval()


def load_encoder_imagenet(model: nn.Module, weights: str | Path) -> None:
    """ImageNet DenseNet121 weights into the encoder; the classifier keys are dropped."""
    state = dict(state_dict_from_file(weights))
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    model.encoder.load_state_dict(state)


# ---------------------------------------------------------------- input / output transforms


def to_input(slices: np.ndarray, image_size: int, zoom: float = 1.0) -> np.ndarray:
    """uint8 (N, H, W) slices -> float32 (N, 3, S, S) network input.

    zoom 1.0 resizes to S (training, evaluation); zoom 1.2 resizes to round(1.2 S) and
    centre-crops S, as the reference does before segmenting Task 2 slices.
    """
    big = int(round(image_size * zoom))
    lo = (big - image_size) // 2
    out = np.empty((len(slices), 3, image_size, image_size), dtype=np.float32)
    for i, sl in enumerate(slices):
        img = cv2.resize(sl, (big, big), interpolation=cv2.INTER_LINEAR)
        out[i] = normalise_gray(img[lo:lo + image_size, lo:lo + image_size])
    return out


def from_output(pred: np.ndarray, shape: tuple[int, int], zoom: float = 1.0, nearest: bool = False) -> np.ndarray:
    """Inverse of to_input for (C, S, S) maps: pad back to the zoomed size, resize to (H, W)."""
    channels, size, _ = pred.shape
    big = int(round(size * zoom))
    lo = (big - size) // 2
    canvas = np.zeros((channels, big, big), dtype=pred.dtype)
    canvas[:, lo:lo + size, lo:lo + size] = pred
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    h, w = shape
    return np.stack([cv2.resize(c, (w, h), interpolation=interp) for c in canvas])


def autocast(device: torch.device, enabled: bool = True):
    """bf16/fp16 autocast on CUDA, a no-op elsewhere."""
    use = enabled and device.type == "cuda"
    dtype = torch.bfloat16 if use and torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=use)


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


def segment_slices(
    model: nn.Module,
    slices: np.ndarray,
    device: torch.device,
    image_size: int = 224,
    zoom: float = 1.0,
    batch_size: int = 32,
    threshold: float = 0.5,
    amp: bool = True,
) -> np.ndarray:
    """uint8 (N, H, W) slices -> uint8 {0,1} masks (N, 2, H, W) [WT, ET] at the slices' own size.

    Thresholds at model resolution, then inverts the transform (the reference's order).
    """
    if len(slices) == 0:
        return np.zeros((0, 2, *slices.shape[1:]), dtype=np.uint8)
    binary = predict_probs(model, to_input(slices, image_size, zoom), device, batch_size, amp, threshold)
    shape = slices.shape[1:]
    return np.stack([from_output(b, shape, zoom, nearest=True) for b in binary])
