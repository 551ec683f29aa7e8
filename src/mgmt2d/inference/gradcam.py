"""Grad-CAM through the whole stage-2 model: where, in which frames, the chunk logit comes from.

The classifier maps a chunk (T frames) to one logit through backbone -> BiLSTM -> head, so a
heatmap of one frame alone would explain nothing. :class:`ChunkLogit` wraps the whole model
as a module from one chunk (1, T, 3, H, W) to its logit; ``pytorch_grad_cam.GradCAM`` hooks a
late backbone layer (:func:`target_layer`), which sees the T frames as a batch: one backward pass of the chunk
logit gives every frame's activations and gradients, hence a heatmap per frame that explains
the chunk's logit. Heatmaps are kept unnormalised (the package's per-image min-max would
hide which frames matter), so the frames with the largest heatmap mass can be picked.

Only the report pays for this: one forward and backward pass per explained chunk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from mgmt2d.classification import frames as frame_ops
from mgmt2d.classification.chunks import chunk_index
from mgmt2d.classification.model import MGMTClassifier, normalised_zero_frame
from mgmt2d.classification.stack import StackedSeries
from mgmt2d.data.contract import InputContract


class ChunkLogit(nn.Module):
    """backbone -> BiLSTM -> head as one module: a chunk (1, T, 3, H, W) -> its logit (1, 1)."""

    def __init__(self, model: MGMTClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).reshape(-1, 1)


MIN_CAM_SIZE = 7   # the heatmap grid of the reference: eca_nfnet_l0's final conv at 224 px


def target_layer(model: MGMTClassifier, image_size: int = 224) -> nn.Module:
    """The latest backbone layer whose map is at least MIN_CAM_SIZE wide at ``image_size``.

    Candidates, in network order: the backbone's stages (the residual stream, when it has
    ``stages`` as timm's NFNets do), then its last conv layer. At the reference 224 px that is
    the last conv (eca_nfnet_l0: ``final_conv``, 7x7), the usual Grad-CAM target; smaller inputs
    (the 64 px learning check: 2x2 there) get the latest stage that still resolves the image,
    so the heatmap can point somewhere.
    """
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("the classifier backbone has no Conv2d layer for Grad-CAM")
    candidates = [*getattr(model.backbone, "stages", []), convs[-1]]
    sizes: dict[int, int] = {}
    hooks = [m.register_forward_hook(lambda mod, _i, out: sizes.__setitem__(id(mod), min(out.shape[-2:])))
             for m in candidates]
    was_training = model.backbone.training
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model.backbone.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.backbone.train(was_training)
    large = [m for m in candidates if sizes.get(id(m), 0) >= MIN_CAM_SIZE]
    return large[-1] if large else convs[-1]


@dataclass
class ChunkCam:
    """Grad-CAM of one chunk: per frame the picture the model saw and its heatmap."""

    chunk: int                 # chunk number in the series
    prob: float                # the chunk's probability from this forward pass
    images: np.ndarray         # (T, S, S, 3) uint8 frames as the model saw them (zoomed, resized)
    slices: np.ndarray         # (T,) series slice of each frame, -1 for padding
    cam: np.ndarray            # (T, S, S) float32 heatmaps (ReLU'd, unnormalised: comparable across frames)

    @property
    def mass(self) -> np.ndarray:
        """(T,) heatmap mass per frame (0 for padding frames)."""
        return np.where(self.slices >= 0, self.cam.reshape(len(self.cam), -1).sum(axis=1), 0.0)

    def top_frames(self, k: int) -> list[int]:
        """Chunk positions of the ``k`` real frames with the largest heatmap mass, in chunk order."""
        order = [int(t) for t in np.argsort(-self.mass, kind="stable") if self.slices[t] >= 0]
        return sorted(order[:k])


def chunk_input(stacked: StackedSeries, contract: InputContract, chunk: int) -> tuple[torch.Tensor, np.ndarray,
                                                                                      np.ndarray]:
    """(frames (T, 3, S, S) normalised, uint8 frames (T, S, S, 3), series slice per frame) of one chunk.

    Made as inference makes them (``frames.chunk_frames``): zoom TTA, resize, normalise; a
    padded last chunk in float with black padding frames.
    """
    c = contract
    index = chunk_index(stacked.kept, c.seq_len, c.stride)[chunk]
    real = index[index >= 0]
    shown = frame_ops.chunk_frames(stacked.images, index, c.image_size, c.tta_zoom)
    x = torch.from_numpy(frame_ops.normalise(shown))
    if len(real) < len(index):
        pad = normalised_zero_frame(c.image_size, c.image_size, x.dtype)
        x = torch.cat([x, pad.expand(len(index) - len(real), *pad.shape)])
        shown = np.concatenate([shown, np.zeros((len(index) - len(real), *shown.shape[1:]), shown.dtype)])
    slices = np.full(len(index), -1, np.int64)
    slices[: len(real)] = stacked.slice_index[real]
    return x.float(), np.clip(shown, 0, 255).astype(np.uint8), slices


@contextlib.contextmanager
def torch_backbone(model: MGMTClassifier) -> Iterator[MGMTClassifier]:
    """``model`` with its backbone in torch for the duration: an engine backend (``--backend
    onnxruntime|openvino``) has no gradients, so Grad-CAM runs the module it was converted from."""
    engine = model.backbone
    source = getattr(engine, "source", None)
    if source is None:
        yield model
        return
    model.backbone = source
    try:
        yield model
    finally:
        model.backbone = engine


def chunk_cam(model: MGMTClassifier, stacked: StackedSeries, contract: InputContract, chunk: int) -> ChunkCam:
    """Grad-CAM of ``chunk``'s logit for every frame of the chunk (one forward + backward pass, fp32)."""
    with torch_backbone(model):
        return _chunk_cam(model, stacked, contract, chunk)


def _chunk_cam(model: MGMTClassifier, stacked: StackedSeries, contract: InputContract, chunk: int) -> ChunkCam:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x, images, slices = chunk_input(stacked, contract, chunk)
    device = next(model.parameters()).device
    layer = target_layer(model, contract.image_size)
    wrapped = ChunkLogit(model)
    was_training = model.training
    cam = GradCAM(model=wrapped, target_layers=[layer])   # puts the model in eval mode
    targets = [ClassifierOutputTarget(0)]
    # cuDNN's LSTM has no backward in eval mode: the native kernel computes the same thing.
    no_cudnn = torch.backends.cudnn.flags(enabled=False) if device.type == "cuda" else contextlib.nullcontext()
    try:
        with torch.enable_grad(), no_cudnn:
            inputs = x[None].to(device)
            outputs = cam.activations_and_grads(inputs)
            wrapped.zero_grad(set_to_none=True)
            sum(t(o) for t, o in zip(targets, outputs)).backward()
            activations = cam.activations_and_grads.activations[0].numpy()   # (T, C, h, w)
            gradients = cam.activations_and_grads.gradients[0].numpy()
            raw = cam.get_cam_image(inputs, layer, targets, activations, gradients)   # (T, h, w)
            prob = float(torch.sigmoid(outputs.detach().float()).reshape(-1)[0])
    finally:
        cam.activations_and_grads.release()
        wrapped.zero_grad(set_to_none=True)
        model.train(was_training)
    size = (images.shape[2], images.shape[1])
    heat = np.stack([cv2.resize(np.maximum(r, 0).astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
                     for r in raw])
    return ChunkCam(chunk, prob, images, slices, np.maximum(heat, 0))
