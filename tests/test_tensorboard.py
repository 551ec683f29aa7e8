"""TensorBoard events of the training engine: tags, steps, images, and a resume without duplicates."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import Dataset

from mgmt2d.classification.train import validation_preview as chunk_preview
from mgmt2d.segmentation.train import validation_preview as slice_preview
from mgmt2d.training.config import TrainConfig
from mgmt2d.training.distributed import make_eval_loader, make_train_loader
from mgmt2d.training.metrics import SegmentationLoss, SegmentationMetrics
from mgmt2d.training.seeding import seed_everything
from mgmt2d.training.tensorboard import TENSORBOARD_DIR, scalar_tags
from mgmt2d.training.trainer import LAST, Trainer


class TinySeg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.encoder(x)))


class Slices(Dataset):
    """What SegmentationSliceDataset offers the preview: items (image, mask) and raw (uint8 image, mask)."""

    def __init__(self, n: int, seed: int) -> None:
        g = np.random.default_rng(seed)
        self.images = (g.random((n, 16, 16)) * 255).astype(np.uint8)
        yy, xx = np.mgrid[:16, :16]
        self.masks = np.stack([np.stack([(yy - 8) ** 2 + (xx - 8) ** 2 <= r * r,
                                         (yy - 8) ** 2 + (xx - 8) ** 2 <= (r // 2) ** 2]) for r in range(n)])
        self.masks = self.masks.astype(np.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[i], self.masks[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.repeat(self.images[i][None] / 255.0, 3, axis=0).astype(np.float32))
        return x, torch.from_numpy(self.masks[i].astype(np.float32))


def trainer(out: Path, epochs: int, resume: bool = False) -> Trainer:
    seed_everything(0)
    model = TinySeg()
    config = TrainConfig(epochs=epochs, lr=1e-2, device="cpu", amp=False, out_dir=str(out), seed=3,
                         progress=False, resume=resume, image_every=1)
    val = Slices(6, 1)
    return Trainer(model, make_train_loader(Slices(8, 0), 4, seed=0), make_eval_loader(val, 4), SegmentationLoss(),
                   SegmentationMetrics(), config, freeze_module=model.encoder, preview=slice_preview(val, n=2))


def events(out: Path) -> EventAccumulator:
    acc = EventAccumulator(str(out / TENSORBOARD_DIR), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in (acc.Images(tag) if tag.startswith("val/contours") else acc.Scalars(tag))]


def test_two_epochs_then_resume_log_each_epoch_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    trainer(out, epochs=2).fit()
    acc = events(out)
    scalars = set(acc.Tags()["scalars"])
    expected = {"train/loss", "val/loss", "train/iou", "val/iou", "lr", "time/epoch_s", "time/samples_per_s"}
    assert expected <= scalars
    for tag in expected:
        assert steps(acc, tag) == [1, 2], tag
    assert acc.Tags()["images"] == ["val/contours"] and steps(acc, "val/contours") == [1, 2]
    image = acc.Images("val/contours")[0]
    assert image.width == 2 * 16 + 6 and image.height > 2 * 16    # 2 slices x [true | predicted], captions
    history = __import__("pandas").read_csv(out / "history.csv")
    assert [v.value for v in acc.Scalars("val/loss")] == pytest.approx(history.val_loss.tolist(), rel=1e-6)

    # An interrupted run logged epoch 3 but died before saving last.pt: the resume replaces it.
    saved = tmp_path / "last_after_2.pt"
    shutil.copy(out / LAST, saved)
    trainer(out, epochs=3, resume=True).fit()
    shutil.copy(saved, out / LAST)
    trainer(out, epochs=4, resume=True).fit()   # restarts at epoch 3
    acc = events(out)
    for tag in expected:
        assert steps(acc, tag) == [1, 2, 3, 4], tag
    assert steps(acc, "val/contours") == [1, 2, 3, 4]
    history = __import__("pandas").read_csv(out / "history.csv")
    assert [v.value for v in acc.Scalars("val/loss")] == pytest.approx(history.val_loss.tolist(), rel=1e-6)


def test_no_tensorboard_and_image_every_zero(tmp_path: Path) -> None:
    t = trainer(tmp_path / "a", epochs=1)
    t.cfg.image_every = 0
    t.fit()
    assert events(tmp_path / "a").Tags()["images"] == []
    t = trainer(tmp_path / "b", epochs=1)
    t.writes = False   # a non-main process
    t.fit()
    assert not (tmp_path / "b" / TENSORBOARD_DIR).exists()
    with pytest.raises(ValueError, match="image_every"):
        TrainConfig(image_every=-1)


def test_scalar_tags_follow_history_columns() -> None:
    record = {"epoch": 3, "phase": "frozen", "lr": 1e-3, "train_loss": 0.5, "val_patient_auc": 0.75, "time": 2.0}
    assert scalar_tags(record) == {"lr": 1e-3, "train/loss": 0.5, "val/patient_auc": 0.75, "time/epoch_s": 2.0}


class Chunks:
    """What ChunkDataset offers the preview."""

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.zeros(4, 3, 16, 16), "label": torch.tensor(1.0), "patient_id": "00012"}

    def chunk_frames(self, i: int) -> np.ndarray:
        frames = np.zeros((4, 16, 16, 3), np.uint8)
        frames[:, 4:12, 4:12, 1] = 255
        return frames


def test_chunk_preview_is_a_strip_with_label_and_probability() -> None:
    class Constant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.shape == (1, 4, 3, 16, 16)
            return torch.full((1,), 2.0)

    image = chunk_preview(Chunks())(Constant(), torch.device("cpu"))["val/chunk"]
    assert image.dtype == np.uint8 and image.shape[1] == 4 * 16 + 5 * 2
    # The WT contour is drawn in each frame (yellow), below the caption band.
    yellow = (image[..., 0] > 200) & (image[..., 1] > 200) & (image[..., 2] < 50)
    assert yellow.sum() >= 4 * 28
