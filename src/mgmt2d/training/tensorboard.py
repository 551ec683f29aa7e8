"""TensorBoard logging of a training run: ``<run folder>/tensorboard/``.

The global step is the epoch number (1-based, as in history.csv), so a resumed run opens the
writer with ``purge_step`` = the first epoch it will run: anything an interrupted run logged
from that epoch on is discarded by readers, and no step appears twice.

Scalars per epoch: every numeric column of history.csv as ``<split>/<name>`` (``train/loss``,
``val/iou``...), ``lr``, ``time/epoch_s`` and ``time/samples_per_s``. Images every
``image_every`` epochs: whatever the stage's preview callback returns (tag -> RGB uint8).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
# A stage's preview: (model in eval mode, device) -> {tag: RGB uint8 image (H, W, 3)}.
Preview = Callable[[nn.Module, torch.device], Mapping[str, np.ndarray]]


def scalar_tags(record: Mapping[str, Any]) -> dict[str, float]:
    """history.csv record -> {tag: value}: ``train_loss`` -> ``train/loss``, ``lr`` and ``time`` kept apart."""
    tags: dict[str, float] = {}
    for key, value in record.items():
        if key == "epoch" or isinstance(value, str | bool) or not isinstance(value, int | float):
            continue
        if key.startswith(("train_", "val_")):
            split, name = key.split("_", 1)
            tags[f"{split}/{name}"] = float(value)
        elif key == "time":
            tags["time/epoch_s"] = float(value)
        else:
            tags[key] = float(value)
    return tags


class TensorBoardLog:
    """One run's event writer; ``first_step`` is the epoch number the run starts with."""

    def __init__(self, run_dir: str | Path, first_step: int, image_every: int = 5,
                 preview: Preview | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.image_every = int(image_every)
        self.preview = preview
        # purge_step: readers drop events at steps >= first_step written before (an interrupted run's).
        self.writer = SummaryWriter(str(self.log_dir), purge_step=first_step)

    def epoch(self, record: Mapping[str, Any], samples_per_s: float | None = None) -> None:
        step = int(record["epoch"])
        for tag, value in scalar_tags(record).items():
            self.writer.add_scalar(tag, value, step)
        if samples_per_s is not None:
            self.writer.add_scalar("time/samples_per_s", samples_per_s, step)
        self.writer.flush()

    def wants_images(self, step: int) -> bool:
        return self.preview is not None and self.image_every > 0 and step % self.image_every == 0

    def images(self, model: nn.Module, device: torch.device, step: int) -> None:
        """The stage's preview images at ``step`` (eval mode, no gradient; the model's mode is restored)."""
        assert self.preview is not None
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                images = dict(self.preview(model, device))
        finally:
            model.train(was_training)
        for tag, image in images.items():
            self.writer.add_image(tag, np.asarray(image, np.uint8), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def remove_events(run_dir: str | Path) -> None:
    """Delete the event files of an earlier run (``--overwrite``); nothing else in the folder."""
    folder = Path(run_dir) / TENSORBOARD_DIR
    if folder.is_dir():
        for path in folder.glob("events.out.tfevents.*"):
            path.unlink()
