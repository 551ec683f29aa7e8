"""SIGTERM / SIGINT mid-epoch and SIGKILL at any point of training: --resume == uninterrupted.

Stage 2 (train_classification.py) on a tiny prepared split, 2 epochs of 4 optimiser steps with
a warm-up epoch (the unfreeze falls between them). The ``MGMT2D_FAULT`` test aid makes the run
send itself the signal at an exact point (mgmt2d.training.preemption).
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from pathlib import Path

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
    single_thread,
    train_args,
)

from mgmt2d import cli
from mgmt2d.classification import train as classification_train
from mgmt2d.faults import FAULT_ENV, FaultHook
from mgmt2d.training.preemption import Preempted


def train(settings: Path, *extra: str) -> int:
    """train_classification.py in this process, through cli.run (exit status, one-line messages)."""
    parser = argparse.ArgumentParser()
    classification_train.add_arguments(parser)
    return cli.run(classification_train.main, parser, train_args(settings, *extra))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return classification_data(tmp_path_factory.mktemp("cls"))


@pytest.fixture(scope="module")
def uninterrupted(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = run_settings(tmp_path_factory.mktemp("full"), data)
    assert train(settings) == 0
    assert len(history(settings)) == 2
    return settings


def assert_same_run(settings: Path, reference: Path) -> None:
    for name in ("last.pt", "best.pt"):
        assert_same_weights(run_dir(settings) / name, run_dir(reference) / name)
    pd.testing.assert_frame_equal(history(settings), history(reference), rtol=0, atol=1e-9)
    assert not [p.name for p in run_dir(settings).iterdir() if p.name.startswith(".")]  # no temp file left


@pytest.mark.parametrize(("sig", "step", "epoch", "in_epoch"), [("TERM", 6, 2, 2), ("INT", 3, 1, 3)])
def test_signal_mid_epoch_then_resume_equals_uninterrupted(
    data: Path, uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
    sig: str, step: int, epoch: int, in_epoch: int,
) -> None:
    settings = run_settings(tmp_path, data)
    monkeypatch.setenv(FAULT_ENV, f"step:{step}:{sig}")
    status = train(settings)
    signum = int(getattr(signal, f"SIG{sig}"))
    assert status == 128 + signum  # 143 for SIGTERM, 130 for SIGINT
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith(f"stopped by SIG{sig} after step {in_epoch} of epoch {epoch}:")
    assert "--resume" in message
    last = torch.load(run_dir(settings) / "last.pt", weights_only=True)
    assert last["position"]["epoch"] == epoch - 1 and last["position"]["steps"] == in_epoch
    assert last["position"]["samples"] == 2 * in_epoch and len(last["position"]["loss_terms"]) == in_epoch
    monkeypatch.delenv(FAULT_ENV)
    assert train(settings, "--resume") == 0
    assert_same_run(settings, uninterrupted)


@pytest.mark.parametrize("fault", [
    "step:6:KILL",        # mid-epoch 2: nothing of epoch 2 saved, last.pt is epoch 1's
    "checkpoint:2:KILL",  # epoch 2's last.pt fully in its temp file, not renamed
    "epoch-end:1:KILL",   # epoch 1's last.pt in place, history.csv not yet written
])
def test_sigkill_then_resume_equals_uninterrupted(data: Path, uninterrupted: Path, tmp_path: Path, fault: str) -> None:
    settings = run_settings(tmp_path, data)
    killed = script("train_classification.py", train_args(settings), fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    if fault.startswith("checkpoint"):
        assert [p for p in run_dir(settings).iterdir() if p.name.startswith(".last.pt.tmp")]  # the half-done write
    resumed = script("train_classification.py", train_args(settings, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(settings, uninterrupted)


def test_fault_hook_spec() -> None:
    assert FaultHook(None).point is None
    assert FaultHook("step:3:TERM:1", rank=0).point is None  # meant for rank 1
    hook = FaultHook("epoch-end:2:KILL", rank=0)
    assert (hook.point, hook.count, hook.signum) == ("epoch-end", 2, signal.SIGKILL)
    default = FaultHook("merge")   # the preparation form: first time, SIGKILL
    assert (default.point, default.count, default.signum) == ("merge", 1, signal.SIGKILL)
    for bad in ("step:three", ":3"):
        with pytest.raises(ValueError, match="POINT"):
            FaultHook(bad)


@pytest.mark.parametrize(("accumulate", "step"), [(1, 4), (2, 3)])
def test_sigterm_resume_of_a_plain_loader_replays_the_epoch_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accumulate: int, step: int
) -> None:
    """A loader without set_start (RandomSampler), a model with dropout and augmentation drawn
    from the global RNGs: the resume replays the done batches, then restores the RNG states.
    With --accumulate 2 the epoch's 3 micro-batches make a step of 2 and a last step of 1."""
    from test_training import assert_same_weights as same_model
    from test_training import seg_trainer

    full = seg_trainer(tmp_path / "full", accumulate=accumulate)
    full.fit()
    monkeypatch.setenv(FAULT_ENV, f"step:{step}:TERM")
    with pytest.raises(Preempted) as stopped:
        seg_trainer(tmp_path / "split", accumulate=accumulate).fit()
    assert stopped.value.exit_status == 143 and "after step 1 of epoch 2" in str(stopped.value)
    monkeypatch.delenv(FAULT_ENV)
    resumed = seg_trainer(tmp_path / "split", accumulate=accumulate, resume=True)
    result = resumed.fit()
    same_model(resumed.model, full.model)
    assert [r["train_loss"] for r in result.history] == [r["train_loss"] for r in full.history]
