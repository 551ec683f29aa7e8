"""torchrun DDP on CPU (gloo, 2 processes): global batch, gathered validation, rank-0 writes,
resume under torchrun and on another number of processes, SIGTERM on one rank.

End-to-end runs use train_classification.py with stage 2's BatchNorm-free NFNet family
(timm ``test_nfnet``) at 16 px on a tiny prepared split; see tests/helpers_training.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers_training import (
    assert_same_weights,
    classification_data,
    history,
    run_dir,
    run_settings,
    script,
    train_args,
)

from mgmt2d.classification.dataset import ChunkDataset, load_index, split_by_fold
from mgmt2d.classification.model import build_classifier
from mgmt2d.training import distributed
from mgmt2d.training.checkpoint import load_strict, read_state_dict
from mgmt2d.training.distributed import (
    BlockBatchSampler,
    DistContext,
    ResumableDistributedSampler,
    make_eval_loader,
    micro_batch_size,
)
from mgmt2d.training.loop import evaluate
from mgmt2d.training.metrics import ClassificationLoss, ClassificationMetrics

DDP = ("--batch-size", "4")  # global batch 4: 2 per process, 2 optimiser steps per epoch
OUTPUTS = {"best.pt", "last.pt", "history.csv", "curves.png", "train_config.json", "val_patients.csv"}


# --------------------------------------------------------------------------- samplers (no processes)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_block_batches_cover_every_sample_once_in_single_process_order(world: int) -> None:
    single = list(BlockBatchSampler(11, 4))
    blocks = [list(BlockBatchSampler(11, 4, rank, world)) for rank in range(world)]
    assert [b for block in blocks for b in block] == single  # same batches, same order, no padding
    assert sorted(i for b in single for i in b) == list(range(11))


def test_global_step_covers_the_same_samples_on_any_number_of_processes() -> None:
    """Step s of an epoch takes perm[s*B:(s+1)*B] whatever the processes: what N->M resume relies on."""
    data, batch = list(range(16)), 4

    def step_samples(world: int, skip: int = 0) -> list[set[int]]:
        per_rank = []
        for rank in range(world):
            sampler = ResumableDistributedSampler(data, world, rank, seed=7)
            sampler.set_epoch(3)
            sampler.set_start(skip // world)
            per_rank.append(list(sampler))
        micro = batch // world
        steps = len(per_rank[0]) // micro
        return [{i for r in per_rank for i in r[s * micro:(s + 1) * micro]} for s in range(steps)]

    one = step_samples(1)
    assert one == step_samples(2) == step_samples(4)
    assert step_samples(2, skip=8) == one[2:]  # resuming after 2 steps (8 samples)
    assert sorted(i for s in one for i in s) == data


def test_micro_batch_is_global_batch_over_processes_and_accumulation() -> None:
    assert micro_batch_size(128, 1, 8) == 16 and micro_batch_size(128, 2, 4) == 16
    with pytest.raises(ValueError, match="global batch.*multiple of processes \\(3\\)"):
        micro_batch_size(128, 1, 3)


def test_a_rank_other_than_0_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write of the engine is behind Trainer.is_main (a world of one seen as rank 1)."""
    from test_training import seg_trainer

    monkeypatch.setattr(distributed, "context", lambda: DistContext(rank=1, world_size=1))
    trainer = seg_trainer(tmp_path / "run", epochs=2)
    assert not trainer.is_main
    assert trainer.fit().epochs_run == 2
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").iterdir())


# --------------------------------------------------------------------------- first-step gradient


def test_global_batch_2x2_and_accumulation_give_the_1x4_first_step_gradient(tmp_path: Path) -> None:
    worker = "tests/ddp_first_step.py"
    runs = {"2x2": (2, 1), "1x4": (1, 1), "1x2x2 accumulated": (1, 2)}
    grads = {}
    for name, (nproc, accumulate) in runs.items():
        out = tmp_path / f"{nproc}_{accumulate}" / "grad.pt"
        out.parent.mkdir()
        done = script(worker, [str(out), "4", str(accumulate)], nproc=nproc)
        assert done.returncode == 0, done.stderr[-3000:]
        grads[name] = torch.load(out, weights_only=True)
    reference = grads["1x4"]
    assert len(reference) > 50 and max(float(g.abs().max()) for g in reference.values()) > 1e-3
    for name in ("2x2", "1x2x2 accumulated"):
        assert grads[name].keys() == reference.keys()
        for k, g in reference.items():
            assert torch.allclose(grads[name][k], g, atol=1e-6, rtol=1e-5), f"{name}: {k}"


# --------------------------------------------------------------------------- end to end under torchrun


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return classification_data(tmp_path_factory.mktemp("cls"))


@pytest.fixture(scope="module")
def ddp_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 epochs (warm-up + unfrozen) with 2 processes, uninterrupted; returns its settings."""
    settings = run_settings(tmp_path_factory.mktemp("ddp"), data)
    done = script("train_classification.py", train_args(settings, *DDP), nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    return settings


def test_torchrun_run_writes_once_and_logs_the_single_process_validation(data: Path, ddp_run: Path) -> None:
    out = run_dir(ddp_run)
    assert {p.name for p in out.iterdir()} == OUTPUTS | {"tensorboard"}
    events = list((out / "tensorboard").iterdir())   # one writer: rank 0's
    assert len(events) == 1 and events[0].name.startswith("events.out.tfevents"), events
    config = json.loads((out / "train_config.json").read_text())["config"]
    assert config["world_size"] == 2 and config["batch_size"] == 4
    log = history(ddp_run)
    assert list(log.epoch) == [1, 2] and list(log.phase) == ["frozen", "unfrozen"]
    # The best checkpoint evaluated by one process on the same validation set gives the logged numbers.
    best = torch.load(out / "best.pt", weights_only=True)
    row = log[log.epoch == best["early_stopping"]["best_epoch"]].iloc[0]
    model = build_classifier("test_nfnet", lstm_hidden=4, seq_len=4)
    load_strict(model, read_state_dict(out / "best.pt"), out / "best.pt", "the classifier")
    _, val_rows = split_by_fold(load_index(data / "train", "FLAIR"), 0)
    val = ChunkDataset(val_rows, data / "train", 16, 4, 4, augment=False)
    metrics = ClassificationMetrics()
    single = evaluate(model, make_eval_loader(val, 4, ctx=DistContext()), ClassificationLoss(), metrics)
    assert not np.isnan(single["patient_auc"])
    for name in ("loss", "chunk_auc", "patient_auc"):
        assert single[name] == pytest.approx(row[f"val_{name}"], abs=1e-6), name
    pd.testing.assert_frame_equal(pd.read_csv(out / "val_patients.csv", dtype={"patient_id": str}),
                                  metrics.patient_table(), atol=1e-6)


def test_sigterm_on_one_rank_stops_both_and_resume_under_torchrun_and_on_one_process(
    data: Path, ddp_run: Path, tmp_path: Path
) -> None:
    settings = run_settings(tmp_path, data)
    # rank 0 receives SIGTERM after step 3 (epoch 2, step 1); rank 1 learns it at the same step
    stopped = script("train_classification.py", train_args(settings, *DDP), nproc=2, fault="step:3:TERM")
    assert stopped.returncode != 0
    assert "stopped by SIGTERM after step 1 of epoch 2" in stopped.stderr
    position = torch.load(run_dir(settings) / "last.pt", weights_only=True)["position"]
    assert (position["epoch"], position["steps"], position["samples"]) == (1, 1, 4)
    resumed = script("train_classification.py", train_args(settings, *DDP, "--resume"), nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(run_dir(settings) / "last.pt", run_dir(ddp_run) / "last.pt")
    pd.testing.assert_frame_equal(history(settings), history(ddp_run), rtol=0, atol=1e-6)
    # a checkpoint of 2 processes continues on 1 (same global batch)
    more = script("train_classification.py", train_args(settings, *DDP, "--resume", "--epochs", "3"))
    assert more.returncode == 0, more.stderr[-3000:]
    log = history(settings)
    assert list(log.epoch) == [1, 2, 3]
    assert json.loads((run_dir(settings) / "train_config.json").read_text())["config"]["world_size"] == 1

