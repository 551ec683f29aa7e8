"""The shared training engine, on a tiny conv model and random tensors (CPU, seconds)."""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from mgmt2d.training.checkpoint import CheckpointError, load_checkpoint, load_strict, read_state_dict, save_checkpoint
from mgmt2d.training.config import TrainConfig, add_train_arguments
from mgmt2d.training.distributed import DistContext, make_eval_loader, make_train_loader
from mgmt2d.training.loop import evaluate
from mgmt2d.training.metrics import (
    ClassificationLoss,
    ClassificationMetrics,
    SegmentationLoss,
    SegmentationMetrics,
    dice_loss,
    iou_score,
)
from mgmt2d.training.seeding import epoch_seed, rng_state, seed_everything, set_rng_state
from mgmt2d.training.trainer import Trainer


class TinySeg(nn.Module):
    """Encoder + head with dropout; sigmoid output like the UNet++."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(4, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.encoder(x)))


class TinyClf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.clf_head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf_head(self.backbone(x)).squeeze(-1)


class SegData(Dataset):
    """Random images/masks with random flips drawn from the global RNGs (like albumentations)."""

    def __init__(self, n: int = 12, augment: bool = True, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 3, 8, 8, generator=g)
        self.y = (torch.rand(n, 2, 8, 8, generator=g) > 0.6).float()
        self.augment = augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.x[i], self.y[i]
        if self.augment:
            if np.random.rand() < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            if random.random() < 0.5:
                x, y = x.flip(-2), y.flip(-2)
            x = x + 0.05 * torch.randn_like(x)
        return {"image": x, "mask": y}


class ClfData(Dataset):
    """Tuple batches (image, label, patient_id): 4 chunks for each of 6 patients."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.pid = [f"{i // 4:05d}" for i in range(24)]
        self.y = torch.tensor([float(int(p) % 2) for p in self.pid])
        self.x = torch.rand(24, 3, 8, 8, generator=g) + self.y[:, None, None, None] * 0.3

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        return self.x[i], self.y[i], self.pid[i]


def seg_trainer(out: Path, model: nn.Module | None = None, num_workers: int = 0, **cfg: Any) -> Trainer:
    if model is None:
        seed_everything(0)
        model = TinySeg()
    settings = {"epochs": 2, "lr": 1e-2, "device": "cpu", "amp": False, "out_dir": str(out), "seed": 7,
                "progress": False, **cfg}
    config = TrainConfig(**settings)
    one = DistContext()   # a single process's loaders, whatever distributed.context() says
    train = make_train_loader(SegData(12, augment=True), 4, config.seed, num_workers=num_workers, ctx=one)
    val = make_eval_loader(SegData(6, augment=False, seed=1), 4, ctx=one)
    return Trainer(model, train, val, SegmentationLoss(), SegmentationMetrics(), config,
                   freeze_module=model.encoder, extra_config={"fold": 0})


def strip_time(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "time"} for r in history]


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize(("num_workers", "warmup"), [(0, 1), (2, 1), (0, 0)])
def test_resume_equals_uninterrupted_run(tmp_path: Path, num_workers: int, warmup: int) -> None:
    """Stop after epoch 1, resume to 2 == 2 epochs at once; warm-up 1 puts the unfreeze at the
    resume point, warm-up 0 makes the AdamW moments carry over."""
    full = seg_trainer(tmp_path / "full", num_workers=num_workers, warmup_epochs=warmup)
    res_full = full.fit()
    assert [r["phase"] for r in res_full.history] == (["frozen", "unfrozen"] if warmup else ["unfrozen"] * 2)

    first = seg_trainer(tmp_path / "split", num_workers=num_workers, warmup_epochs=warmup, epochs=1)
    first.fit()
    torch.manual_seed(123)  # a different fresh model: everything must come from last.pt
    resumed = seg_trainer(tmp_path / "split", model=TinySeg(), num_workers=num_workers,
                          warmup_epochs=warmup, resume=True)
    res_split = resumed.fit()

    assert strip_time(res_split.history) == strip_time(res_full.history)
    assert_same_weights(resumed.model, full.model)
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["early_stopping"] == b["early_stopping"]
    csv = pd.read_csv(tmp_path / "split" / "history.csv")
    assert list(csv["epoch"]) == [1, 2]


def test_best_checkpoint_reproduces_recorded_val_loss(tmp_path: Path) -> None:
    trainer = seg_trainer(tmp_path, epochs=3)
    result = trainer.fit()
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["epoch"] == result.best_epoch
    recorded = result.history[result.best_epoch - 1]
    model = TinySeg()
    load_strict(model, read_state_dict(tmp_path / "best.pt"), tmp_path / "best.pt", "TinySeg")
    val = make_eval_loader(SegData(6, augment=False, seed=1), 4)
    got = evaluate(model, val, SegmentationLoss(), SegmentationMetrics())
    assert got["loss"] == pytest.approx(recorded["val_loss"], rel=1e-6, abs=1e-7)
    assert got["iou"] == pytest.approx(recorded["val_iou"], rel=1e-6, abs=1e-7)
    with pytest.raises(CheckpointError, match="does not fit"):  # strict: a different architecture does not load
        load_strict(TinyClf(), read_state_dict(tmp_path / "best.pt"), tmp_path / "best.pt", "TinyClf")


def test_warmup_freezes_encoder_then_fresh_optimiser(tmp_path: Path) -> None:
    seed_everything(0)
    model = TinySeg()
    enc0 = [p.detach().clone() for p in model.encoder.parameters()]
    head0 = [p.detach().clone() for p in model.head.parameters()]
    n_all = len(list(model.parameters()))
    seen: list[dict[str, Any]] = []

    def spy(trainer: Trainer, record: dict[str, Any]) -> None:
        seen.append({
            "phase": record["phase"],
            "opt": id(trainer.optimizer),
            "n_opt": sum(len(g["params"]) for g in trainer.optimizer.param_groups),
            "enc_same": all(torch.equal(a, b) for a, b in zip(enc0, trainer.model.encoder.parameters())),
            "head_same": all(torch.equal(a, b) for a, b in zip(head0, trainer.model.head.parameters())),
            "enc_grad": all(p.requires_grad for p in trainer.model.encoder.parameters()),
        })

    trainer = seg_trainer(tmp_path, model=model, epochs=3, warmup_epochs=2)
    trainer.on_epoch_end = spy
    trainer.fit()
    assert [s["phase"] for s in seen] == ["frozen", "frozen", "unfrozen"]
    assert [s["enc_same"] for s in seen] == [True, True, False]
    assert [s["head_same"] for s in seen] == [False, False, False]
    assert [s["enc_grad"] for s in seen] == [False, False, True]
    assert seen[0]["opt"] == seen[1]["opt"] != seen[2]["opt"]
    n_enc = len(list(model.encoder.parameters()))
    assert [s["n_opt"] for s in seen] == [n_all - n_enc, n_all - n_enc, n_all]


def test_trainer_argument_checks(tmp_path: Path) -> None:
    model = TinySeg()
    loader = make_eval_loader(SegData(4), 2)
    with pytest.raises(ValueError, match="freeze_module"):
        Trainer(model, loader, make_eval_loader(SegData(4), 2), SegmentationLoss(), SegmentationMetrics(),
                TrainConfig(warmup_epochs=1, device="cpu", out_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="held-out"):
        Trainer(model, loader, loader, SegmentationLoss(), SegmentationMetrics(),
                TrainConfig(device="cpu", out_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="held-out"):
        Trainer(model, loader, make_eval_loader(loader.dataset, 3), SegmentationLoss(), SegmentationMetrics(),
                TrainConfig(device="cpu", out_dir=str(tmp_path)))
    # AMP is only ever active on CUDA
    trainer = Trainer(model, loader, make_eval_loader(SegData(4), 2), SegmentationLoss(), SegmentationMetrics(),
                      TrainConfig(amp=True, device="cpu", out_dir=str(tmp_path)))
    assert not trainer.use_amp and not trainer.scaler.is_enabled() and trainer.config["amp_active"] is False


def test_early_stopping_after_patience(tmp_path: Path) -> None:
    result = seg_trainer(tmp_path / "a", lr=0.0, epochs=20, patience=2).fit()
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    assert len(pd.read_csv(tmp_path / "a" / "history.csv")) == 3
    # Never stops while frozen; the unfrozen phase gets a full patience of its own.
    result = seg_trainer(tmp_path / "b", lr=0.0, epochs=20, patience=1, warmup_epochs=3).fit()
    assert result.stopped_early and result.epochs_run == 4
    # A stopped run resumed does nothing more.
    again = seg_trainer(tmp_path / "b", lr=0.0, epochs=20, patience=1, warmup_epochs=3, resume=True).fit()
    assert again.epochs_run == 4


def test_outputs_written_every_epoch_atomically(tmp_path: Path) -> None:
    checks: list[tuple[int, int, bool]] = []

    def spy(trainer: Trainer, record: dict[str, Any]) -> None:
        rows = len(pd.read_csv(tmp_path / "history.csv"))
        ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
        checks.append((rows, ckpt["epoch"], (tmp_path / "curves.png").stat().st_size > 1000))

    trainer = seg_trainer(tmp_path, epochs=2, warmup_epochs=1)
    trainer.on_epoch_end = spy
    trainer.fit()
    assert checks == [(1, 1, True), (2, 2, True)]
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(tmp_path / name, weights_only=True)
        assert {"model", "optimizer", "scheduler", "scaler", "epoch", "phase", "early_stopping", "rng",
                "config", "history"} <= set(ckpt)
        assert set(ckpt["rng"]) == {"python", "numpy", "torch", "cuda"}
        assert ckpt["config"]["fold"] == 0 and ckpt["config"]["warmup_epochs"] == 1
    csv = pd.read_csv(tmp_path / "history.csv")
    assert list(csv.columns) == ["epoch", "phase", "lr", "train_loss", "train_dice_loss", "train_iou",
                                 "val_loss", "val_dice_loss", "val_iou", "time"]
    assert (tmp_path / "train_config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    with pytest.raises(FileExistsError):  # an existing run is never silently overwritten
        seg_trainer(tmp_path).fit()
    assert seg_trainer(tmp_path, epochs=1, overwrite=True).fit().epochs_run == 1
    assert len(pd.read_csv(tmp_path / "history.csv")) == 1
    with pytest.raises(FileNotFoundError):
        seg_trainer(tmp_path / "new", resume=True).fit()


def test_classification_run_monitors_patient_auc(tmp_path: Path) -> None:
    seed_everything(0)
    model = TinyClf()
    train = make_train_loader(ClfData(0), 5, seed=0)
    val = make_eval_loader(ClfData(1), 5)
    cfg = TrainConfig(epochs=2, warmup_epochs=1, lr=1e-2, plateau_factor=(0.67, 0.1), plateau_patience=(3, 10),
                      monitor="patient_auc", device="cpu", out_dir=str(tmp_path), progress=False)
    assert (cfg.monitor, cfg.mode) == ("val_patient_auc", "max")
    result = Trainer(model, train, val, ClassificationLoss(), ClassificationMetrics(), cfg,
                     freeze_module=model.backbone).fit()
    assert result.epochs_run == 2
    assert {"val_chunk_auc", "val_patient_auc", "train_patient_auc"} <= set(result.history[0])
    assert 0.0 <= result.history[-1]["val_patient_auc"] <= 1.0
    with pytest.raises(ValueError, match="monitor"):
        Trainer(model, train, val, ClassificationLoss(), ClassificationMetrics(),
                TrainConfig(monitor="val_iou", device="cpu", out_dir=str(tmp_path / "x")))


def test_dice_loss_matches_smp() -> None:
    smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")
    ref = smp_losses.DiceLoss(mode="binary", from_logits=False)
    g = torch.Generator().manual_seed(3)
    for shape in [(4, 2, 16, 16), (3, 1, 7, 5)]:
        probs = torch.rand(shape, generator=g)
        target = (torch.rand(shape, generator=g) > 0.7).float()
        assert torch.allclose(dice_loss(probs, target), ref(probs, target), atol=1e-6)
        empty = torch.zeros(shape)
        assert torch.allclose(dice_loss(probs, empty), ref(probs, empty))
    assert float(dice_loss(target, target)) == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(probs.half(), target.half()).dtype == torch.float32


def test_iou_at_threshold() -> None:
    probs = torch.tensor([[[[0.9, 0.6], [0.4, 0.1]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    # prediction {0,1}, target {0,2}: intersection 1, union 3
    assert float(iou_score(probs, target)) == pytest.approx(1 / 3, rel=1e-5)
    assert float(iou_score(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))) == pytest.approx(1.0)


def test_patient_auc_is_mean_chunk_probability() -> None:
    from sklearn.metrics import roc_auc_score

    # patient A (1): .9 .2 .7 -> .6;  B (0): .1 .5 -> .3;  C (0): .8 .6 .7 -> .7
    # mean: A > B, A < C -> 0.5 (a max over chunks would give 1.0: A .9 > C .8)
    probs = [0.9, 0.1, 0.8, 0.2, 0.5, 0.6, 0.7, 0.7]
    pids = ["A", "B", "C", "A", "B", "C", "A", "C"]
    labels = {"A": 1.0, "B": 0.0, "C": 0.0}
    m = ClassificationMetrics(activation=None)
    for lo, hi in [(0, 3), (3, 8)]:
        batch = {"label": torch.tensor([labels[p] for p in pids[lo:hi]]), "patient_id": pids[lo:hi]}
        m.update(torch.tensor(probs[lo:hi]), batch)
    out = m.compute()
    assert out["patient_auc"] == pytest.approx(0.5)
    assert out["patient_auc"] == pytest.approx(roc_auc_score([1, 0, 0], [0.6, 0.3, 0.7]))
    assert out["chunk_auc"] == pytest.approx(roc_auc_score([labels[p] for p in pids], probs))
    table = m.patient_table()
    assert table["n_chunks"].tolist() == [3, 2, 3]
    # logits in, sigmoid applied; one class only -> NaN
    m2 = ClassificationMetrics()
    m2.update(torch.tensor([0.0, 2.0]), (None, torch.tensor([1.0, 1.0]), ["A", "B"]))
    assert math.isnan(m2.compute()["patient_auc"])


def test_rng_state_roundtrip_and_epoch_seed(tmp_path: Path) -> None:
    seed_everything(5)
    state = rng_state()
    save_checkpoint(tmp_path / "r.pt", {"rng": state})
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    assert epoch_seed(1, 1) != epoch_seed(2, 0)
    assert epoch_seed(1, 1) == epoch_seed(1, 1)


def test_cli_flags_map_to_config() -> None:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser, plateau_factor=(0.67, 0.1), plateau_patience=(3, 10), warmup_epochs=5)
    args = parser.parse_args(["--epochs", "80", "--lr", "1e-6", "--no-amp", "--resume", "--monitor", "patient_auc"])
    cfg = TrainConfig.from_args(args, out_dir="x", device="cpu")
    assert (cfg.epochs, cfg.lr, cfg.amp, cfg.resume, cfg.warmup_epochs) == (80, 1e-6, False, True, 5)
    assert (cfg.plateau_on, cfg.monitor, cfg.mode) == ("train_loss", "val_patient_auc", "max")
    assert cfg.plateau("frozen") == (0.67, 3) and cfg.plateau("unfrozen") == (0.1, 10)
    args = parser.parse_args(["--plateau-on", "val_loss", "--plateau-factor", "0.5", "--plateau-patience", "2", "4"])
    cfg = TrainConfig.from_args(args, out_dir="x")
    assert cfg.plateau_on == "val_loss" and cfg.plateau_factor == (0.5, 0.5) and cfg.plateau_patience == (2, 4)
    for bad in (["--plateau-on", "val_auc"], ["--plateau-factor", "0.1", "0.2", "0.3"], ["--plateau-factor", "1.5"]):
        with pytest.raises((SystemExit, ValueError)):
            TrainConfig.from_args(parser.parse_args(bad), out_dir="x")


class ScriptedLoss:
    """A stand-in loss whose value per epoch is read from a script, whatever the model does."""

    def __init__(self, train: list[float], val: list[float], trainer_ref: list[Trainer]) -> None:
        self.train, self.val, self.ref = train, val, trainer_ref

    def __call__(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        epoch = self.ref[0].epoch
        value = (self.train if self.ref[0].model.training else self.val)[epoch]
        return outputs.sum() * 0.0 + value  # differentiable, exactly ``value``


def scripted_run(tmp_path: Path, train: list[float], val: list[float], **cfg: Any) -> list[dict[str, Any]]:
    seed_everything(0)
    model = TinySeg()
    ref: list[Trainer] = []
    settings = {"epochs": len(train), "lr": 1.0, "device": "cpu", "amp": False, "out_dir": str(tmp_path),
                "progress": False, "patience": 100, **cfg}
    trainer = Trainer(model, make_eval_loader(SegData(4), 4), make_eval_loader(SegData(4, seed=1), 4),
                      ScriptedLoss(train, val, ref), SegmentationMetrics(), TrainConfig(**settings),
                      freeze_module=model.encoder)
    ref.append(trainer)
    return trainer.fit().history


def test_plateau_steps_on_training_loss_with_per_phase_factor_and_patience(tmp_path: Path, monkeypatch) -> None:
    """Scripted losses -> the lr of every epoch. Warm-up (0.67, 3) then a fresh AdamW and a
    fresh plateau (0.1, 10), as stage 2 publishes; the validation loss (falling) is ignored."""
    monkeypatch.setattr("mgmt2d.training.trainer.plot_history", lambda *a, **k: None)  # 60 epochs: skip the PNGs
    flat = [1.0] * 20                       # the training loss never improves after epoch 1
    falling = [1.0 / (e + 1) for e in range(20)]
    history = scripted_run(tmp_path / "train", flat, falling, warmup_epochs=6,
                           plateau_factor=(0.67, 0.1), plateau_patience=(3, 10))
    lrs = [r["lr"] for r in history]
    # warm-up: epoch 1 sets the best, epochs 2-4 are 3 bad epochs, the 4th bad one (epoch 5)
    # exceeds patience 3 -> epoch 6 runs at 0.67
    assert lrs[:6] == pytest.approx([1.0] * 5 + [0.67])
    # unfreeze at epoch 7: lr back to 1.0; fresh scheduler: best = epoch 7, 11 bad epochs
    # (8..18) pass patience 10 -> epoch 19 runs at 0.1
    assert [r["phase"] for r in history] == ["frozen"] * 6 + ["unfrozen"] * 14
    assert lrs[6:] == pytest.approx([1.0] * 12 + [0.1] * 2)
    # --plateau-on val_loss: the falling validation loss never triggers a reduction
    history = scripted_run(tmp_path / "val", flat, falling, warmup_epochs=6, plateau_on="val_loss",
                           plateau_factor=(0.67, 0.1), plateau_patience=(3, 10))
    assert [r["lr"] for r in history] == pytest.approx([1.0] * 20)
    # stage 1's published values: 0.1 / 10 in both phases; a warm-up of 10 never reduces
    history = scripted_run(tmp_path / "seg", [1.0] * 23, [1.0] * 23, warmup_epochs=10,
                           plateau_factor=0.1, plateau_patience=10)
    lrs = [r["lr"] for r in history]
    assert lrs[:10] == pytest.approx([1.0] * 10) and lrs[10:22] == pytest.approx([1.0] * 12)
    assert lrs[22] == pytest.approx(0.1)
