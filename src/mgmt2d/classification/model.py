"""Stage-2 classifier: a timm CNN per frame, a bidirectional LSTM over the chunk, one linear head.

Layout (module names fixed so the published checkpoints load with ``strict=True``)::

    backbone  timm.create_model(name, num_classes=0)   (N, 3, H, W) -> (N, F)   F = 2304 for eca_nfnet_l0
    lstm      nn.LSTM(F, hidden, 1 layer, batch_first, bidirectional)   (B, T, F) -> (B, T, 2*hidden)
    clf_head  nn.Linear(2 * hidden * seq_len, 1) on the time-major flattening of the LSTM output

The backbone sees every frame independently, so at inference each frame's embedding is
computed once per series and shared by all overlapping chunks (:func:`predict_series`);
:func:`predict_series_chunkwise` is the chunk-by-chunk reference it must match.

Padding convention: a padding position of a short chunk holds the *black frame before
normalisation* (uint8 zeros, see ``mgmt2d.classification.chunks.gather_frames``), which after ImageNet
normalisation is the constant image ``-mean / std`` (:func:`normalised_zero_frame`). The
dataset and inference both follow this; ``pad_frame`` lets a caller state otherwise.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

from mgmt2d import pretrained
from mgmt2d.classification.chunks import SEQ_LEN, STRIDE, chunk_index
from mgmt2d.data.intensity import imagenet_normalise
from mgmt2d.data.io import file_sha256
from mgmt2d.device import autocast
from mgmt2d.engines import BackendOptions, make_backend
from mgmt2d.training.checkpoint import (
    checkpoint_config,
    load_strict,
    read_state_dict,
    read_weights_file,
    unwrap_state_dict,
)

log = logging.getLogger(__name__)


DEFAULT_BACKBONE = "eca_nfnet_l0"   # the reference's; --backbone takes any timm model name
LSTM_HIDDEN = 128


class MGMTClassifier(nn.Module):
    """CNN embedding per frame -> BiLSTM over ``seq_len`` frames -> one logit per chunk."""

    def __init__(self, backbone: nn.Module, lstm_hidden: int = LSTM_HIDDEN, seq_len: int = SEQ_LEN) -> None:
        super().__init__()
        self.seq_len = int(seq_len)
        self.lstm_hidden = int(lstm_hidden)
        self.backbone = backbone
        self.num_features = int(backbone.num_features)
        self.lstm = nn.LSTM(
            input_size=self.num_features,
            hidden_size=self.lstm_hidden,
            num_layers=1,
            batch_first=True,
            bidirectional=True,
        )
        self.clf_head = nn.Linear(2 * self.lstm_hidden * self.seq_len, 1)

    def embed_frames(
        self, frames: torch.Tensor, batch_size: int | None = None, channels_last: bool = False
    ) -> torch.Tensor:
        """Backbone embeddings (N, F) of independent frames (N, 3, H, W), ``batch_size`` at a time.

        Frames are moved to the model's device batch by batch, so a whole series can stay on
        the CPU. Gradients flow unless the caller disables them.
        """
        if frames.ndim != 4:
            raise ValueError(f"frames must be (N, 3, H, W), got shape {tuple(frames.shape)}")
        device = _model_device(self)
        n = frames.shape[0]
        if n == 0:
            return frames.new_zeros((0, self.num_features), device=device)
        step = n if batch_size is None or batch_size >= n else max(int(batch_size), 1)
        outs = []
        for start in range(0, n, step):
            x = frames[start : start + step].to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            outs.append(self.backbone(x))
        return torch.cat(outs, dim=0)

    def forward_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        """LSTM + head on per-frame embeddings (B, seq_len, F) -> logits (B,)."""
        if emb.ndim != 3 or emb.shape[1] != self.seq_len or emb.shape[2] != self.num_features:
            raise ValueError(
                f"embeddings must be (B, {self.seq_len}, {self.num_features}), got {tuple(emb.shape)}"
            )
        out, _ = self.lstm(emb)  # (B, T, 2*hidden): per step [forward, backward]
        # Time-major flattening: [t0 fwd, t0 bwd, t1 fwd, ...] -> 2*hidden*T features.
        return self.clf_head(out.reshape(out.shape[0], -1)).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Chunks (B, seq_len, 3, H, W) -> logits (B,) (use BCE-with-logits on float labels (B,))."""
        if x.ndim != 5:
            raise ValueError(f"input must be (B, T, 3, H, W), got shape {tuple(x.shape)}")
        b, t = x.shape[:2]
        emb = self.backbone(x.reshape(b * t, *x.shape[2:]))
        return self.forward_embeddings(emb.reshape(b, t, -1))


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def build_classifier(
    backbone: str = DEFAULT_BACKBONE,
    lstm_hidden: int = LSTM_HIDDEN,
    seq_len: int = SEQ_LEN,
    pretrained: str | Path | None = None,
) -> MGMTClassifier:
    """Build the classifier; ``pretrained`` is a local timm backbone weights file or None (random).

    Never downloads: fetch ImageNet weights beforehand (download_models.py) and pass the file.
    """
    net = timm.create_model(backbone, pretrained=False, num_classes=0)
    if pretrained is not None:
        ignored = load_backbone_weights(net, pretrained)
        if ignored:
            log.info("backbone weights %s: ignored classifier keys %s", pretrained, ignored)
    return MGMTClassifier(net, lstm_hidden=lstm_hidden, seq_len=seq_len)


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> list[str]:
    """Load timm ImageNet weights into a classifier-less backbone; returns the ignored head keys.

    Strict except for the removed classifier (e.g. ``head.fc.*``): any other missing or
    unexpected key is an error, so a wrong architecture cannot load silently.
    """
    state = read_state_dict(path, ("state_dict", "model"))
    head = getattr(backbone, "default_cfg", {}).get("classifier") or "head.fc"
    heads = (head,) if isinstance(head, str) else tuple(head)
    own = set(backbone.state_dict())
    ignored = sorted(k for k in state if k not in own and any(k.startswith(h + ".") for h in heads))
    for k in ignored:
        del state[k]
    load_strict(backbone, state, path, "this backbone")
    return ignored


def load_trained_classifier(
    path: str | Path, device: torch.device | str, channels_last: bool = False, backbone: str = DEFAULT_BACKBONE
) -> tuple[MGMTClassifier, dict]:
    """A trained classifier ready for inference, built from the config saved in its checkpoint.

    The file is read once. A raw state dict (no ``config``) gets ``backbone`` and the
    reference sizes (hidden 128, 35 slices). Returns the model and that config.
    """
    obj = read_weights_file(path)
    config = checkpoint_config(obj)
    model = build_classifier(config.get("backbone", backbone), int(config.get("lstm_hidden", LSTM_HIDDEN)),
                             int(config.get("seq_len", SEQ_LEN)))
    load_strict(model, unwrap_state_dict(obj, path), path, "the stage-2 classifier (CNN + BiLSTM)")
    return prepare_for_inference(model, device, channels_last), config


def _timm_source(name: str) -> pretrained.PretrainedSource | None:
    """Any timm model with pretrained weights: built without its classifier (``num_classes=0``), as the
    classifier uses it; fetched by timm's own hub loader."""
    if not timm.is_model(name) or not timm.is_model_pretrained(name):
        return None

    def build() -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=0)

    def fetch(cache_dir: Path) -> pretrained.FetchedWeights:
        model = timm.create_model(name, pretrained=True, num_classes=0, cache_dir=cache_dir)
        cfg = dict(model.pretrained_cfg)
        return pretrained.FetchedWeights(model.state_dict(), {
            "library": f"timm {timm.__version__}",
            "call": f"timm.create_model('{name}', pretrained=True, num_classes=0, cache_dir=...)",
            "hf_hub_id": cfg.get("hf_hub_id"), "url": cfg.get("url"), "tag": cfg.get("tag"),
        })

    return pretrained.PretrainedSource(name, f"timm.create_model('{name}', pretrained=False, num_classes=0)",
                                       build, fetch)


pretrained.register_family(_timm_source)
pretrained.register(_timm_source(DEFAULT_BACKBONE), default=True)


def normalised_zero_frame(
    height: int,
    width: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The padding frame (3, H, W): a black image after normalisation, bit for bit as frames.normalise makes it."""
    value = torch.from_numpy(imagenet_normalise(np.zeros(3, np.float32)))
    return value.to(dtype).view(-1, 1, 1).expand(3, height, width).contiguous().to(device)


def prepare_for_inference(
    model: MGMTClassifier, device: torch.device | str, channels_last: bool = False
) -> MGMTClassifier:
    """Move to ``device``, eval mode, and optionally channels-last weights (faster convs on CUDA)."""
    model = model.to(device).eval()
    if channels_last:
        model.backbone.to(memory_format=torch.channels_last)
    return model


def backbone_with_backend(model: MGMTClassifier, checkpoint: str | Path, image_size: int, opts: BackendOptions,
                          device: torch.device) -> MGMTClassifier:
    """Put ``model.backbone`` under ``opts``' backend (``mgmt2d.engines``; the BiLSTM and head stay in torch).

    On CUDA torch is left as loaded (:func:`prepare_for_inference` handles channels-last there);
    on the CPU torch runs the backbone channels-last, an engine a conversion cached by the
    checkpoint's SHA-256. Returns ``model``.
    """
    if opts.name == "torch" and torch.device(device).type != "cpu":
        return model
    digest = None if opts.name == "torch" else file_sha256(checkpoint)
    model.backbone = make_backend(opts.name, model.backbone, (3, image_size, image_size), opts.cache_dir, digest,
                                  opts.threads, opts.precision, role="backbone")
    return model


@contextlib.contextmanager
def _eval_inference(model: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None) -> Iterator[None]:
    """Eval mode + inference_mode (+ autocast when ``autocast_dtype`` is set, the policy of ``mgmt2d.device``)
    for the block; the previous train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            with autocast(device, autocast_dtype is not None):
                yield
    finally:
        model.train(was_training)


def _check_batch_size(batch_size: int) -> int:
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return batch_size


def _check_series(frames: torch.Tensor, pad_frame: torch.Tensor | None) -> torch.Tensor:
    """Validate (N, 3, H, W) frames and return the (3, H, W) padding frame to use."""
    if frames.ndim != 4:
        raise ValueError(f"frames must be (N, C, H, W), got shape {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise ValueError("a series with no kept slice yields no chunk; skip it before predicting")
    if not frames.is_floating_point():
        raise TypeError(f"frames must be normalised floats, got {frames.dtype}")
    if pad_frame is None:
        pad_frame = normalised_zero_frame(frames.shape[2], frames.shape[3], dtype=frames.dtype, device=frames.device)
    if tuple(pad_frame.shape) != tuple(frames.shape[1:]):
        raise ValueError(f"pad_frame shape {tuple(pad_frame.shape)} != frame shape {tuple(frames.shape[1:])}")
    return pad_frame.to(device=frames.device, dtype=frames.dtype)


def _padded_index(n: int, seq_len: int, stride: int, padded_chunk_frames: torch.Tensor | None) -> torch.Tensor:
    """chunk_index, with the padded last chunk's frames pointing past the pad frame (n) when given."""
    index = torch.from_numpy(chunk_index(n, seq_len, stride))
    if padded_chunk_frames is None or not bool((index[-1] < 0).any()):
        return index
    real = int((index[-1] >= 0).sum())
    if padded_chunk_frames.shape[0] != real:
        raise ValueError(f"padded_chunk_frames has {padded_chunk_frames.shape[0]} frames, the padded chunk {real}")
    index[-1, :real] = torch.arange(n + 1, n + 1 + real)
    return index


def predict_series(
    model: MGMTClassifier,
    frames: torch.Tensor,
    seq_len: int | None = None,
    stride: int = STRIDE,
    batch_size: int = 32,
    pad_frame: torch.Tensor | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    padded_chunk_frames: torch.Tensor | None = None,
) -> np.ndarray:
    """Chunk probabilities (n_chunks,) of one series, each frame through the backbone once.

    ``frames`` (N, 3, H, W) are the series' kept slices, in order, already normalised (may
    live on the CPU). The backbone runs on the N frames (``batch_size`` at a time) plus, when
    the last chunk is short, once on ``pad_frame`` (default :func:`normalised_zero_frame`);
    the embeddings are then gathered with ``chunks.chunk_index`` and only the LSTM and head
    run per chunk (``batch_size`` chunks at a time). Equal to :func:`predict_series_chunkwise`
    up to float rounding. ``autocast_dtype`` (e.g. torch.float16 on CUDA) enables autocast.

    ``padded_chunk_frames``: when the last chunk is short (padded), its real frames made
    another way (the published code made a padded chunk in float, without the uint8 rounding
    of the others); they replace that chunk's frames, and only that chunk's.
    """
    seq_len = model.seq_len if seq_len is None else int(seq_len)
    batch_size = _check_batch_size(batch_size)
    pad_frame = _check_series(frames, pad_frame)
    index = _padded_index(frames.shape[0], seq_len, stride, padded_chunk_frames)
    device = _model_device(model)
    with _eval_inference(model, device, autocast_dtype):
        emb = model.embed_frames(frames, batch_size=batch_size, channels_last=channels_last)
        if bool((index < 0).any()):
            extra = [pad_frame.unsqueeze(0)]
            if padded_chunk_frames is not None:
                extra.append(padded_chunk_frames.to(frames.dtype))
            more = model.embed_frames(torch.cat(extra), batch_size=batch_size, channels_last=channels_last)
            emb = torch.cat([emb, more.to(emb.dtype)], dim=0)
            index = torch.where(index < 0, frames.shape[0], index)
        index = index.to(emb.device)
        probs = []
        for start in range(0, index.shape[0], batch_size):
            rows = index[start : start + batch_size]
            logits = model.forward_embeddings(emb[rows])
            probs.append(torch.sigmoid(logits.float()))
        return torch.cat(probs).cpu().numpy()


def predict_series_chunkwise(
    model: MGMTClassifier,
    frames: torch.Tensor,
    seq_len: int | None = None,
    stride: int = STRIDE,
    batch_size: int = 32,
    pad_frame: torch.Tensor | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    padded_chunk_frames: torch.Tensor | None = None,
) -> np.ndarray:
    """Reference schedule: the full model on every (seq_len, 3, H, W) chunk, as the published code did.

    Each frame goes through the backbone once per chunk containing it (up to seq_len/stride
    times). ``batch_size`` counts frames, so max(batch_size // seq_len, 1) chunks run per
    forward pass. Used to test and benchmark :func:`predict_series`.
    """
    seq_len = model.seq_len if seq_len is None else int(seq_len)
    batch_size = _check_batch_size(batch_size)
    pad_frame = _check_series(frames, pad_frame)
    index = _padded_index(frames.shape[0], seq_len, stride, padded_chunk_frames)
    extra = [pad_frame.unsqueeze(0)] + (
        [padded_chunk_frames.to(frames.dtype)] if padded_chunk_frames is not None else []
    )
    padded = torch.cat([frames, *extra], dim=0)
    index = torch.where(index < 0, frames.shape[0], index)
    device = _model_device(model)
    per_pass = max(batch_size // seq_len, 1)
    with _eval_inference(model, device, autocast_dtype):
        probs = []
        for start in range(0, index.shape[0], per_pass):
            x = padded[index[start : start + per_pass]].to(device, non_blocking=True)  # (b, T, C, H, W)
            b = x.shape[0]
            frames_in = x.reshape(b * seq_len, *x.shape[2:])
            if channels_last:
                frames_in = frames_in.contiguous(memory_format=torch.channels_last)
            # Same computation as model(x), split so channels_last reaches the backbone.
            logits = model.forward_embeddings(model.backbone(frames_in).reshape(b, seq_len, -1))
            probs.append(torch.sigmoid(logits.float()))
        return torch.cat(probs).cpu().numpy()
