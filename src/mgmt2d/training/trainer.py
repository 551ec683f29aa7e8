"""One training engine for both stages: warm-up freeze, AMP, early stopping, exact resume.

Stage 1 (segmentation) and stage 2 (classification) differ only in the model, the loaders,
the loss function and the metric object they plug in; everything else lives here once.

Plug-in contract
----------------
* ``loss_fn(outputs, batch) -> Tensor``: a scalar loss. ``batch`` is what the loader yields,
  already moved to the device (tensors only; strings such as patient IDs stay as they are).
* ``metrics``: any object with ``reset()``, ``update(outputs, batch)`` and
  ``compute() -> dict[str, float]`` (see :class:`Metrics`). ``compute`` must not change
  the state. An optional ``names`` attribute lets the engine check ``--monitor`` up front.
* Batches are dicts (inputs under ``input_key``, default ``"image"``) or tuples/lists whose
  first item is the input. Extra fields (e.g. ``"patient_id"``) are passed through.

Randomness and exact resume
---------------------------
At the start of every epoch the engine re-seeds Python's ``random``, NumPy's global RNG and
torch (CPU and CUDA) with :func:`epoch_seed` ``(seed, epoch)``, re-seeds the loader's
``generator`` when it has one and calls ``sampler.set_epoch(epoch)`` when the sampler has
it. So shuffling, dropout and augmentation depend only on (seed, epoch), and a run resumed
from ``last.pt`` replays exactly what the uninterrupted run would have done. Datasets should
draw augmentation randomness from those global RNGs (``random``, ``np.random``, ``torch``)
in ``__getitem__``; in loader workers torch seeds each worker from the (per-epoch) loader
seed, and :func:`seed_worker` (used by every engine loader) derives ``random``/NumPy seeds
from ``torch.initial_seed()``. Do not use ``persistent_workers=True`` (workers would keep
their RNG across epochs and resume would no longer be exact).

Several processes, preemption
-----------------------------
Under ``torchrun`` (see :mod:`mgmt2d.training.distributed`) the model is wrapped in
DistributedDataParallel (rebuilt at each phase change, so unfrozen weights are synchronised
too), ranks seed their RNGs from (seed, epoch, rank), results are gathered so every rank
sees the same epoch record (and takes the same scheduler and early-stopping decisions), and
only the main process writes (:attr:`Trainer.is_main`). ``accumulate`` micro-batches make
one optimiser step. SIGTERM/SIGINT (:mod:`mgmt2d.training.preemption`) end the current step,
write ``last.pt`` with the position inside the epoch (steps done, partial loss and metric
terms, RNG states) and raise :class:`~mgmt2d.training.preemption.Preempted`; ``resume``
continues from that step: the loader's sampler skips what was done when it has
``set_start`` (:class:`~mgmt2d.training.distributed.ResumableDistributedSampler`), other
loaders replay the done batches before the RNG states are restored.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mgmt2d.data.io import check_writable, write_csv_atomic, write_run_config
from mgmt2d.device import autocast_dtype, autocast_name, resolve_device
from mgmt2d.faults import FaultHook
from mgmt2d.training import distributed
from mgmt2d.training.checkpoint import load_checkpoint, save_checkpoint
from mgmt2d.training.config import FROZEN, UNFROZEN, TrainConfig, plain
from mgmt2d.training.loop import LossFn, Pass, Step, epoch_result, evaluate, gather_metric_state, progress_bar
from mgmt2d.training.metrics import Batch, Metrics
from mgmt2d.training.plots import plot_history
from mgmt2d.training.preemption import Preempted, StopSignals
from mgmt2d.training.seeding import epoch_seed, rng_state, set_rng_state
from mgmt2d.training.tensorboard import Preview, TensorBoardLog, remove_events

log = logging.getLogger(__name__)

BEST = "best.pt"
LAST = "last.pt"
HISTORY_CSV = "history.csv"
CURVES_PNG = "curves.png"
RUN_CONFIG = "train_config.json"
CHECKPOINT_FORMAT = 1

# --------------------------------------------------------------------------- trainer


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` reports."""

    best_epoch: int | None
    best_value: float | None
    monitor: str
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Train ``model`` on ``train_loader``, validate on ``val_loader``, keep best/last checkpoints.

    ``freeze_module`` (e.g. ``model.encoder`` / ``model.backbone``) is frozen for the first
    ``config.warmup_epochs`` epochs. ``metrics`` is used for both the training and the
    validation pass (reset in between). ``extra_config`` (data paths, fold, batch size...) is
    recorded with the training settings in ``train_config.json`` and in every checkpoint.
    ``on_epoch_end(trainer, record)`` is called after each epoch's outputs are written (in the
    main process only). Under torchrun the loaders must be this rank's share
    (:func:`~mgmt2d.training.distributed.make_train_loader` / ``make_eval_loader``).
    ``preview`` (see :mod:`mgmt2d.training.tensorboard`) draws the stage's validation images
    for TensorBoard, written by the main process only (``writes`` False: none at all).
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: Iterable[Batch],
        val_loader: Iterable[Batch],
        loss_fn: LossFn,
        metrics: Metrics,
        config: TrainConfig,
        freeze_module: nn.Module | None = None,
        input_key: str = "image",
        extra_config: Mapping[str, Any] | None = None,
        on_epoch_end: Callable[[Trainer, dict[str, Any]], None] | None = None,
        preview: Preview | None = None,
        writes: bool = True,
    ) -> None:
        train_ds, val_ds = getattr(train_loader, "dataset", None), getattr(val_loader, "dataset", None)
        if train_loader is val_loader or (train_ds is not None and train_ds is val_ds):
            raise ValueError("train and validation loaders share their data: validate on a held-out split")
        if config.warmup_epochs > 0 and freeze_module is None:
            raise ValueError("warmup_epochs > 0 needs freeze_module (e.g. model.encoder)")
        self.cfg = config
        self.dist = distributed.context()
        self.device = resolve_device(config.device)
        if config.sync_bn and self.dist.active:
            if self.device.type != "cuda":
                raise ValueError("--sync-bn needs CUDA (torch's SyncBatchNorm runs on GPUs only); leave it out on CPU")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameters, same state-dict keys
        elif config.sync_bn:
            log.info("--sync-bn: a single process, plain BatchNorm")
        self.model = model.to(self.device)
        self._ddp: nn.parallel.DistributedDataParallel | None = None  # the training forward under torchrun
        self.train_loader, self.val_loader = train_loader, val_loader
        self.loss_fn, self.metrics = loss_fn, metrics
        self.freeze_module = freeze_module
        self.input_key = input_key
        self.on_epoch_end = on_epoch_end
        self.preview = preview
        self.writes = writes and self.is_main   # TensorBoard events: the main process only
        self.tensorboard: TensorBoardLog | None = None
        self.out_dir = Path(config.out_dir)
        self.use_amp = autocast_dtype(self.device, bool(config.amp)) is not None
        self.config: dict[str, Any] = plain(
            {
                **asdict(config),
                "resolved_device": str(self.device),
                "amp_active": self.use_amp,
                "autocast": autocast_name(self.device, bool(config.amp)),
                "world_size": self.dist.world_size,
                **(extra_config or {}),
            }
        )
        names = getattr(metrics, "names", None)
        if names is not None:
            known = {f"{split}_{n}" for split in ("train", "val") for n in ("loss", *names)}
            if config.monitor not in known:
                raise ValueError(f"--monitor {config.monitor} unknown; choose from {sorted(known)}")
        # Parameters this trainer freezes/unfreezes (only those trainable at start).
        self._freezable = [p for p in freeze_module.parameters() if p.requires_grad] if freeze_module else []
        self.phase = UNFROZEN
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.epoch = 0  # completed epochs
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.stopped_early = False
        self.history: list[dict[str, Any]] = []
        self._position: dict[str, Any] | None = None  # where a mid-epoch last.pt stopped
        self._fault = FaultHook.from_env(self.dist.rank)

    @property
    def _progress(self) -> bool | None:
        return self.cfg.progress if self.is_main else False

    @property
    def is_main(self) -> bool:
        """Whether this process writes (checkpoints, history, plots, logs): rank 0, or the only one."""
        return self.dist.is_main

    # ---- optimiser / phases

    def _set_phase(self, phase: str) -> None:
        """Freeze or unfreeze, then a fresh AdamW over the trainable params and a fresh scheduler."""
        for p in self._freezable:
            p.requires_grad_(phase == UNFROZEN)
        self.phase = phase
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters (is freeze_module the whole model?)")
        self.optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        if self.dist.active:  # DDP registers the parameters trainable now: rebuilt at each phase
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        factor, patience = self.cfg.plateau(phase)
        # plateau_on is a loss, so always "min" (whatever --monitor's direction is)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=factor, patience=patience
        )

    @property
    def lr(self) -> float:
        assert self.optimizer is not None
        return float(self.optimizer.param_groups[0]["lr"])

    # ---- checkpoint state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly; plain tensors/lists only (weights_only)."""
        assert self.optimizer is not None and self.scheduler is not None
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "phase": self.phase,
            "early_stopping": {
                "monitor": self.cfg.monitor,
                "mode": self.cfg.mode,
                "best_value": self.best_value,
                "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs,
                "stopped": self.stopped_early,
            },
            "rng": rng_state(),
            "config": self.config,
            "history": [dict(r) for r in self.history],
        }

    def load_state_dict(self, ckpt: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (the optimiser is rebuilt for the saved phase first)."""
        self.model.load_state_dict(ckpt["model"], strict=True)
        self._set_phase(ckpt["phase"])
        assert self.optimizer is not None and self.scheduler is not None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.use_amp and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt["epoch"])
        es = ckpt["early_stopping"]
        self.best_value, self.best_epoch = es["best_value"], es["best_epoch"]
        self.bad_epochs, self.stopped_early = int(es["bad_epochs"]), bool(es["stopped"])
        self.history = [dict(r) for r in ckpt["history"]]
        set_rng_state(ckpt["rng"])
        self._position = dict(ckpt["position"]) if ckpt.get("position") else None

    # ---- loops

    def _seed_epoch(self, epoch: int) -> None:
        # rank 0 (and a single process) uses (seed, epoch); other ranks draw their own dropout etc.
        s = epoch_seed(self.cfg.seed, epoch, *([self.dist.rank] if self.dist.rank else []))
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        for loader in (self.train_loader, self.val_loader):
            gen = getattr(loader, "generator", None)
            if isinstance(gen, torch.Generator):
                gen.manual_seed(s)
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            dataset = getattr(loader, "dataset", None)
            if hasattr(dataset, "set_epoch"):  # datasets that seed augmentation per (seed, epoch, index)
                dataset.set_epoch(epoch)
            if getattr(loader, "persistent_workers", False):
                log.warning("persistent_workers=True: resume will not be exact")

    def _validate(self) -> dict[str, float]:
        """The validation pass (on the unwrapped model: ranks may hold different numbers of batches)."""
        return evaluate(self.model, self.val_loader, self.loss_fn, self.metrics, self.device, self.input_key,
                        self.use_amp, self._progress, gather=self.dist.active)

    def _train_pass(self, epoch: int, desc: str, stop: StopSignals) -> dict[str, float]:
        """One training epoch (or its rest, after a mid-epoch ``last.pt``): ``accumulate``
        micro-batches per optimiser step; after each step, a stop signal on any rank writes
        ``last.pt`` with the position and raises :class:`Preempted`."""
        k = self.cfg.accumulate
        self.metrics.reset()
        terms: list[float] = []
        counts: list[int] = []
        steps, skipped, total = 0, 0, self._len(self.train_loader)
        batches: Iterator[Batch] | None = None  # iter() once: it draws from the loader's generator
        position, self._position = self._position, None
        if position is not None and int(position["epoch"]) == epoch:
            steps = int(position["steps"])
            if self.is_main:  # the partial results of every rank were merged into rank 0's
                terms, counts = list(position["loss_terms"]), [int(c) for c in position["counts"]]
                self.metrics.load_state(position["metrics"])
            skipped, batches, total = self._skip(int(position["samples"]))
            set_rng_state(position["rng"])
            if self.dist.rank:  # rank 0's states were saved; the others continue from their own seed
                torch.manual_seed(epoch_seed(self.cfg.seed, epoch, self.dist.rank, steps))
            log.info("resuming epoch %d after step %d (%d batches of this process skipped)", epoch + 1, steps, skipped)
        model = self._ddp or self.model
        model.train()
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)

        def in_step(i: int) -> tuple[int, bool]:
            """(micro-batches in the optimiser step of this process's micro-batch ``i``, whether it ends it)."""
            b = skipped + i  # this process's micro-batch index within the epoch
            first = (b // k) * k
            n = min(k, total - first)  # the epoch's last step may have fewer micro-batches
            return n, b - first == n - 1

        def backward(i: int, loss: Tensor) -> None:
            n, _ = in_step(i)
            self.scaler.scale(loss / n if n > 1 else loss).backward()

        def context(i: int) -> AbstractContextManager:
            return self._ddp.no_sync() if (self._ddp is not None and not in_step(i)[1]) else nullcontext()

        def after(i: int) -> None:
            nonlocal steps
            if not in_step(i)[1]:
                return
            self._step()
            steps += 1
            self._fault.reached("step")
            signum = distributed.max_over_ranks(stop.signum or 0)
            if signum:
                self._save_position(epoch, steps, terms, counts)
                raise Preempted(signum, f"stopped by {_signal_name(signum)} after step {steps} of epoch {epoch + 1}: "
                                        f"{self.out_dir / LAST} holds the position; continue with --resume")

        bar = progress_bar(total - skipped, desc, self._progress)
        try:
            Pass(model, self.loss_fn, self.metrics, self.device, self.input_key, self.use_amp).run(
                batches or self.train_loader, terms, counts, bar, Step(backward, context, after))
        finally:
            bar.close()
        return epoch_result(terms, counts, self.metrics, self.dist.active, desc)

    @staticmethod
    def _len(loader: Iterable[Batch]) -> int:
        if not hasattr(loader, "__len__"):
            raise TypeError("the training loader needs a length (a DataLoader has one)")
        return len(loader)  # type: ignore[arg-type]

    def _global_batch(self) -> int:
        micro = getattr(self.train_loader, "batch_size", None)
        if not micro:
            raise ValueError("resuming mid-epoch needs a training DataLoader with a batch_size")
        return int(micro) * self.dist.world_size * self.cfg.accumulate

    def _skip(self, samples: int) -> tuple[int, Iterator[Batch], int]:
        """Start the training loader after ``samples`` (over all processes) of this epoch; returns
        (micro-batches of this process skipped, the iterator over the rest, the epoch's micro-batches)."""
        micro = int(getattr(self.train_loader, "batch_size", 0) or 0)
        if samples % self._global_batch():
            raise ValueError(f"{self.out_dir / LAST} stopped mid-epoch after {samples} samples, not a multiple of "
                             f"this run's global batch {self._global_batch()}: resume with the same --batch-size")
        local = samples // self.dist.world_size
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_start"):
            sampler.set_start(local)
            return local // micro, iter(self.train_loader), local // micro + self._len(self.train_loader)
        if self.dist.active:
            raise ValueError("resuming mid-epoch under torchrun needs a sampler with set_start "
                             "(distributed.make_train_loader)")
        it = iter(self.train_loader)  # replay: the RNG states are restored after it
        for _ in range(local // micro):
            next(it)
        return local // micro, it, self._len(self.train_loader)

    def _save_position(self, epoch: int, steps: int, terms: list[float], counts: list[int]) -> None:
        """Write ``last.pt`` in the middle of ``epoch`` (collective: every rank must call it)."""
        merged = {
            "loss_terms": distributed.concat_over_ranks(terms),
            "counts": distributed.concat_over_ranks(counts),
            "metrics": gather_metric_state(self.metrics) if self.dist.active else self.metrics.state(),
        }
        if not self.is_main:
            return
        state = self.state_dict()
        state["position"] = {"epoch": epoch, "steps": steps, "samples": steps * self._global_batch(),
                             "rng": state["rng"], **merged}
        self._save_last(state)

    def _save_last(self, state: Mapping[str, Any]) -> None:
        save_checkpoint(self.out_dir / LAST, state, before_rename=lambda: self._fault.reached("checkpoint"))

    def _step(self) -> None:
        """Apply the accumulated gradients (clip, AMP-scaled step), then clear them."""
        assert self.optimizer is not None
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if self.cfg.mode == "min" else value > self.best_value

    # ---- main entry

    def _start(self) -> None:
        last = self.out_dir / LAST
        if self.cfg.resume:
            if not last.is_file():
                raise FileNotFoundError(f"--resume: no {LAST} in {self.out_dir}")
            self.load_state_dict(load_checkpoint(last))
            log.info("resumed %s at epoch %d (%s)", last, self.epoch, self.phase)
        else:
            if last.exists() and not self.cfg.overwrite:
                raise FileExistsError(
                    f"{self.out_dir} already holds a run ({LAST}); pass --resume to continue or --overwrite"
                )
            if self.cfg.overwrite and self.is_main:  # only this engine's own outputs, never the folder
                for name in (BEST, LAST, HISTORY_CSV, CURVES_PNG):
                    (self.out_dir / name).unlink(missing_ok=True)
                remove_events(self.out_dir)
            self._set_phase(FROZEN if self.cfg.warmup_epochs > 0 else UNFROZEN)
        if self.is_main:
            for name in (BEST, LAST, HISTORY_CSV, CURVES_PNG):  # temp files of a killed write, never used
                for stale in self.out_dir.glob(f".{name}.tmp*"):
                    stale.unlink()
            check_writable(self.out_dir, "training run")
            write_run_config(self.out_dir, RUN_CONFIG, {
                **self.config, "resumed_at_epoch": self.epoch,
                "resumed_at_step": int(self._position["steps"]) if self._position else 0,
            })
        if self.cfg.tensorboard and self.writes:
            self.tensorboard = TensorBoardLog(self.out_dir, self.epoch + 1, self.cfg.image_every, self.preview)

    def fit(self) -> FitResult:
        """Train until ``epochs`` or early stopping; returns the best epoch and the history.

        Raises :class:`Preempted` after SIGTERM/SIGINT, once ``last.pt`` is written.
        """
        with StopSignals() as stop:
            self._start()
            try:
                return self._fit(stop)
            finally:
                if self.tensorboard is not None:
                    self.tensorboard.close()
                    self.tensorboard = None

    def _fit(self, stop: StopSignals) -> FitResult:
        cfg = self.cfg
        while self.epoch < cfg.epochs and not self.stopped_early:
            epoch = self.epoch  # 0-based index of the epoch being run
            self._seed_epoch(epoch)
            if self.phase == FROZEN and epoch >= cfg.warmup_epochs:
                self._set_phase(UNFROZEN)
                # The unfrozen model gets a full patience to beat the best (the published code
                # kept counting across the unfreeze; a deliberate difference, see the README).
                self.bad_epochs = 0
                log.info("epoch %d: encoder unfrozen, fresh AdamW (lr %g)", epoch + 1, cfg.lr)
            t0 = time.perf_counter()
            lr = self.lr
            tag = f"epoch {epoch + 1}/{cfg.epochs}"
            train = self._train_pass(epoch, f"{tag} train", stop)
            train_seconds = time.perf_counter() - t0
            val = self._validate()
            record: dict[str, Any] = {"epoch": epoch + 1, "phase": self.phase, "lr": lr}
            record.update({f"train_{k}": v for k, v in train.items()})
            record.update({f"val_{k}": v for k, v in val.items()})
            if cfg.monitor not in record:
                raise KeyError(f"--monitor {cfg.monitor} not among {sorted(k for k in record if '_' in k)}")
            value = float(record[cfg.monitor])
            assert self.scheduler is not None
            self.scheduler.step(float(record[cfg.plateau_on]))  # once per epoch, as published (both stages)
            improved = self._improved(value)
            if improved:
                self.best_value, self.best_epoch, self.bad_epochs = value, epoch + 1, 0
            else:
                self.bad_epochs += 1
            self.epoch = epoch + 1
            if self.phase == UNFROZEN and self.bad_epochs >= cfg.patience:
                self.stopped_early = True
            record["time"] = round(time.perf_counter() - t0, 3)
            self.history.append(record)
            if self.is_main:
                state = self.state_dict()
                if improved:
                    save_checkpoint(self.out_dir / BEST, state)
                self._save_last(state)
                self._fault.reached("epoch-end")
                self._write_history()
                self._log_tensorboard(record, train_seconds)
            log.info(
                "%s %s lr %.3g | %s%s", tag, self.phase, lr,
                " ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith(("train_", "val_"))),
                " *" if improved else "",
            )
            if self.on_epoch_end is not None and self.is_main:
                self.on_epoch_end(self, record)
            signum = distributed.max_over_ranks(stop.signum or 0)
            if signum:
                raise Preempted(signum, f"stopped by {_signal_name(signum)} at the end of epoch {epoch + 1}: "
                                        f"{self.out_dir / LAST} written; continue with --resume")
        if self.stopped_early:
            log.info("early stop: no %s improvement for %d epochs (best %s at epoch %s)",
                     cfg.monitor, self.bad_epochs, self.best_value, self.best_epoch)
        return FitResult(
            best_epoch=self.best_epoch,
            best_value=self.best_value,
            monitor=cfg.monitor,
            epochs_run=self.epoch,
            stopped_early=self.stopped_early,
            history=[dict(r) for r in self.history],
        )

    def _log_tensorboard(self, record: dict[str, Any], train_seconds: float) -> None:
        """This epoch's scalars, and the preview images every ``image_every`` epochs."""
        if self.tensorboard is None:
            return
        dataset = getattr(self.train_loader, "dataset", None)
        samples = len(dataset) if hasattr(dataset, "__len__") else 0
        self.tensorboard.epoch(record, samples / train_seconds if samples and train_seconds > 0 else None)
        if self.tensorboard.wants_images(int(record["epoch"])):
            self.tensorboard.images(self.model, self.device, int(record["epoch"]))

    def _write_history(self) -> None:
        import pandas as pd

        write_csv_atomic(self.out_dir / HISTORY_CSV, pd.DataFrame(self.history))
        plot_history(self.history, self.out_dir / CURVES_PNG, self.cfg.warmup_epochs, self.best_epoch, self.cfg.monitor)


def _signal_name(signum: int) -> str:
    return signal.Signals(signum).name
