"""``make gpu-check``: the CUDA path of mgmt2d in one command, with the figures a GPU user needs.

    python benchmarks/gpu_check.py [--device auto|cuda|cpu] [--out DIR] [--overwrite] [--keep] [--budget S]
                                   [--parts 2 3 4 5 6] [--workers N]

On CUDA, at the reference sizes (each part is the real script or library call, not a copy):

1. data: a synthetic ``--size full`` dataset (``mgmt2d.dev.synth``, a few patients), its stage-1 slice
   store (``mgmt2d.segmentation.prepare``) and its stage-2 series stacked with the generator's true
   masks (``mgmt2d.dev.synth_stack``), made once;
2. stage 1: ``train_segmentation.py`` at 224 px with AMP, batch 32 and 128 (128 again with
   ``--accumulate 2, 4, 8`` while it runs out of memory), ``--workers`` = the cores: images/s of the
   training step (``benchmarks/timed_training.py`` times the optimiser steps of the real script) and
   of the training loader alone (``make_train_loader`` over the same slices), peak GPU memory
   (``torch.cuda.max_memory_allocated``); the loader keeps up when loader / step >= 1.5;
3. stage 2: ``train_classification.py`` at 224 px, 35-slice chunks, batch 4, AMP, one frozen-backbone
   and one unfrozen epoch: chunks/s of each and peak memory (the loader alone: information);
4. inference on one synthetic patient with ``Predictor.from_weights`` on the checkpoints of 2 and 3
   (random-init ones, said so, where a stage wrote none): the whole ``predict`` time (``Timer``), the
   segmenter's fp32 slices/s, the classifier's fp16 slices/s; then the same weights on the CPU: the
   same kept slices and segmenter masks, chunk probabilities within 1e-3 (also on the series stacked
   with the true masks, so the comparison does not depend on what a briefly trained segmenter keeps);
5. ``torchrun --standalone --nproc_per_node <GPUs>`` of both trainers at once (nccl), stage 1 with
   ``--sync-bn``: exit 0, ``world_size`` recorded, the nccl process group in the log;
6. Grad-CAM of one chunk (``gradcam.chunk_cam``, cuDNN off for the LSTM backward) on CUDA and on the CPU;
7. one Markdown table on stdout and in ``OUT/gpu_check.md``, everything in ``OUT/gpu_check.json``
   (GPU, torch / CUDA / cuDNN versions, TF32 settings, each figure, PASS / FAIL / SKIP per row);
   exit status 1 when a row failed. Meant to take < 8 minutes on one H100.

Without CUDA (or with ``--device cpu``) the same code runs every part on the CPU at tiny sizes (32 px,
a few steps, a tiny timm backbone, one torchrun process on gloo, one thread): what cannot run there
says so. ``tests/test_gpu_check.py`` runs that mode in ``make test``, so the check cannot rot; its
figures are no performance claim. Every part is time-boxed within ``--budget`` seconds; a part the
budget cannot cover fails with that reason. ``OUT`` (default: a new temp folder) keeps the table, the
JSON and each step's log (``logs/``); its ``work/`` folder (synthetic data, stores, checkpoints: a few
GB on CUDA) is removed at the end unless ``--keep``. ``--parts`` reruns some parts only (part 1 always
runs; 6 needs 4; 4 uses random-init weights when 2 or 3 do not run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
MARKER = ".mgmt2d-gpu-check"          # marks a folder this script made (and may replace with --overwrite)
LOADER_KEEPS_UP = 1.5                 # stage 1: loader images/s over training-step images/s
PROB_TOL = 1e-3                       # device vs CPU chunk probabilities (the device classifier runs fp16)
PARTS = (2, 3, 4, 5, 6)
GIB = 2 ** 30


@dataclass(frozen=True)
class Profile:
    """The sizes of one mode: the reference's on CUDA, tiny ones on the CPU (the same code runs)."""

    name: str
    patients: int                            # synthetic patients (Task 1 cases and Task 2 patients each)
    synth_size: str                          # mgmt2d synth --size
    seg_modalities: tuple[str, ...]
    seg_keep_rate: float                     # 0.001: every slice with tumour, so an epoch has many steps
    seg_image_size: int
    seg_runs: tuple[tuple[int, int], ...]    # (global batch, --accumulate) of each stage-1 run
    seg_fallback: tuple[int, ...]            # --accumulate tried for the last run while it runs out of memory
    cls_image_size: int
    cls_backbone: str
    cls_mri_type: str                        # train_classification.py --mri-type
    seq_len: int
    stride: int
    cls_batch: int
    loader_waves: int                        # loader alone: batches per worker
    compare_slices: int                      # segmenter probabilities compared with the CPU on this many slices
    seg_rate_slices: int                     # segmenter slices/s over this many slices (0: every non-empty one)
    torchrun_epochs: int                     # with 2+ processes (one process: 1 epoch, there is no DDP to rebuild)
    tensorboard: bool
    budget_s: float
    threads: int | None                      # torch / OpenMP threads of every process (None: torch's default)


CUDA_PROFILE = Profile(
    name="cuda", patients=4, synth_size="full", seg_modalities=("t1", "t1ce", "t2", "flair"), seg_keep_rate=0.001,
    seg_image_size=224, seg_runs=((32, 1), (128, 1)), seg_fallback=(2, 4, 8), cls_image_size=224,
    cls_backbone="eca_nfnet_l0", cls_mri_type="pooled", seq_len=35, stride=5, cls_batch=4, loader_waves=3,
    compare_slices=16, seg_rate_slices=0, torchrun_epochs=2, tensorboard=True, budget_s=480.0, threads=None,
)
CPU_PROFILE = Profile(
    name="cpu", patients=4, synth_size="small", seg_modalities=("flair",), seg_keep_rate=0.5, seg_image_size=32,
    seg_runs=((8, 2),), seg_fallback=(), cls_image_size=32, cls_backbone="test_nfnet", cls_mri_type="T1wCE",
    seq_len=8, stride=8, cls_batch=2, loader_waves=3, compare_slices=4, seg_rate_slices=8, torchrun_epochs=1,
    tensorboard=False, budget_s=300.0,
    threads=1,   # a smoke run on shared cores, where OpenMP with 2 threads was 10-40x slower than with 1
)


# --------------------------------------------------------------------------- rows, budget, subprocesses


@dataclass
class Row:
    """One line of the table: a part (1-7), its figures (JSON) and what the table says of them."""

    part: int
    name: str
    status: str = "FAIL"          # PASS, FAIL or SKIP
    figures: dict[str, Any] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    note: str = ""
    seconds: float = 0.0

    def say(self, text: str) -> None:
        self.summary.append(text)

    def fail(self, why: str) -> None:
        self.status, self.note = "FAIL", _join(self.note, why)

    def judge(self, problems: list[str], note: str = "") -> None:
        """PASS when ``problems`` is empty, else FAIL naming them."""
        self.status = "FAIL" if problems else "PASS"
        self.note = _join(note, "; ".join(problems))


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


class Budget:
    """The global time budget: each part gets at most what is left."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def require(self, seconds: float, what: str) -> None:
        if self.left() < seconds:
            raise TimeoutError(f"not run: {what} needs ~{seconds:.0f} s, {max(self.left(), 0):.0f} s of the "
                               f"{self.seconds:.0f} s budget left (--budget)")


class Launched:
    """A command started in its own process group, stdout and stderr to ``log``."""

    def __init__(self, cmd: list[str], log: Path, threads: int | None = None) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        self.log = log
        with open(log, "w") as fh:
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait(self, timeout: float) -> int:
        """Its exit status; after ``timeout`` s the group is killed (torchrun and its workers) and TimeoutError."""
        try:
            return self.proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            self.stop()
            raise TimeoutError(f"killed after {timeout:.0f} s (time budget); see {self.log}") from None
        except BaseException:   # Ctrl-C, SIGTERM: the group runs in its own session and would not see them
            self.stop()
            raise

    def stop(self) -> None:
        """Kill the group if it still runs (a check that failed half-way leaves nothing behind)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)   # the group this object started, nothing else
            self.proc.wait()


def run_logged(cmd: list[str], log: Path, timeout: float, threads: int | None = None) -> int:
    return Launched(cmd, log, threads).wait(timeout)


def log_tail(log: Path, lines: int = 3) -> str:
    text = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.is_file() else []
    return " / ".join(text[-lines:])[-400:]


def rate(count: float, seconds: float) -> float:
    return round(count / seconds, 2) if seconds > 0 else math.nan


def step_rate(steps: list[dict[str, Any]], epoch: int, batch: int) -> tuple[float | None, int]:
    """(samples/s, steps) of one epoch of a timed run: the steps after the first (start-up) and before the last
    (it may be short) over the time they took; None with fewer than 3 steps."""
    t = [s["t"] for s in steps if s["epoch"] == epoch]
    if len(t) < 3:
        return None, len(t)
    return rate((len(t) - 2) * batch, t[-2] - t[0]), len(t)


# --------------------------------------------------------------------------- the check


@dataclass(frozen=True)
class Paths:
    out: Path

    @property
    def work(self) -> Path:
        return self.out / "work"

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    @property
    def synth(self) -> Path:
        return self.work / "synth"

    @property
    def seg_store(self) -> Path:
        return self.work / "segmentation_data"

    @property
    def cls_data(self) -> Path:
        return self.work / "classification_data"


class GpuCheck:
    """The parts in order; each fills its rows, timed, within the budget."""

    def __init__(self, profile: Profile, device: torch.device, paths: Paths, workers: int, budget: Budget) -> None:
        self.p, self.device, self.paths, self.workers, self.budget = profile, device, paths, workers, budget
        self.cuda = device.type == "cuda"
        self.rows: list[Row] = []
        self.seg_models: Path | None = None      # SEGMENT_MODEL_DIR of the stage-1 run inference uses
        self.cls_models: Path | None = None      # CLASSIFICATION_MODEL_DIR of the stage-2 run
        self.for_gradcam: dict[str, Any] = {}    # part 4's models and a stacked series

    # ---- plumbing

    @contextmanager
    def row(self, part: int, name: str) -> Iterator[Row]:
        """A table row: timed; an exception fails it with its message (traceback in logs/gpu_check.log)."""
        row = Row(part, name)
        self.rows.append(row)
        print(f"== {part} {name} ({max(self.budget.left(), 0):.0f} s of the budget left)", flush=True)
        t0 = time.monotonic()
        try:
            yield row
        except Exception as err:
            self.paths.logs.mkdir(parents=True, exist_ok=True)
            with open(self.paths.logs / "gpu_check.log", "a") as fh:
                fh.write(f"--- {part} {name}\n{traceback.format_exc()}\n")
            row.fail(f"{type(err).__name__}: {' '.join(str(err).split())[:300]}")
        except BaseException:
            row.fail("interrupted (SIGTERM or Ctrl-C)")
            raise
        finally:
            row.seconds = round(time.monotonic() - t0, 1)
            print(f"   {row.status} ({row.seconds:.0f} s) {'; '.join(row.summary)} {row.note}", flush=True)

    def skip(self, part: int, name: str, why: str) -> None:
        """A row for what cannot run here, and why."""
        self.rows.append(Row(part, name, "SKIP", note=why))
        print(f"== {part} {name}\n   SKIP {why}", flush=True)

    def settings(self, name: str, **dirs: Path) -> Path:
        """A SETTINGS.json for one run: the shared data, this run's own model folders."""
        from mgmt2d.data.settings import KEYS

        run = self.paths.work / "runs" / name
        run.mkdir(parents=True, exist_ok=True)
        values = {k: str(run / k.lower()) for k in KEYS}
        paths = self.paths
        values.update({"DICOM_DATA_DIR": str(paths.synth / "task2"), "TASK1_DIR": str(paths.synth / "task1"),
                       "SEGMENT_DATA_DIR": str(paths.seg_store), "CLASSIFICATION_DATA_DIR": str(paths.cls_data)})
        values.update({k: str(v) for k, v in dirs.items()})
        path = run / "SETTINGS.json"
        path.write_text(json.dumps(values, indent=1))
        return path

    def script_args(self, settings: Path, workers: int, device: str | None = None) -> list[str]:
        """Flags every training run here shares: random init (nothing to download), no progress bars."""
        return ["--settings", str(settings), "--device", device or str(self.device), "--pretrained", "none",
                "--workers", str(workers), "--no-progress"]

    def stage2_args(self, batch: int) -> list[str]:
        p = self.p
        return ["--mri-type", p.cls_mri_type, "--backbone", p.cls_backbone, "--image-size", str(p.cls_image_size),
                "--seq-len", str(p.seq_len), "--stride", str(p.stride), "--batch-size", str(batch)]

    def tensorboard_args(self) -> list[str]:
        return ["--tensorboard", "--image-every", "1"] if self.p.tensorboard else ["--no-tensorboard"]

    def timed_script(self, name: str, script: str, args: list[str], cap: float) -> dict[str, Any]:
        """Run ``script`` through benchmarks/timed_training.py; its result (steps, peak memory, status)."""
        out = self.paths.work / "runs" / name / "timed.json"
        log = self.paths.logs / f"{name}.log"
        self.budget.require(20, name)
        code = run_logged([sys.executable, str(REPO / "benchmarks" / "timed_training.py"), str(out),
                           str(REPO / script), *args], log, min(cap, self.budget.left()), self.p.threads)
        if not out.is_file():
            raise RuntimeError(f"{script} exited {code} without a result; see {log}: {log_tail(log)}")
        result = json.loads(out.read_text())
        result["log"] = str(log)
        return result

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    # ---- 1. data

    def data(self) -> bool:
        from mgmt2d.classification.chunks import n_chunks
        from mgmt2d.dev import synth
        from mgmt2d.dev.synth_stack import prepare_from_synth
        from mgmt2d.segmentation.prepare import PrepareParams, RunOptions, prepare

        p = self.p
        with self.row(1, f"synthetic data, {p.patients} patients --size {p.synth_size}") as row:
            t0 = time.monotonic()
            synth.generate(self.paths.synth, p.patients, 0, p.synth_size, series_seg=True)
            t1 = time.monotonic()
            # Every Task 1 case (--keep-task2-overlap): label leakage does not matter to a benchmark.
            store = prepare(self.paths.synth / "task1", self.paths.seg_store,
                            PrepareParams(modalities=p.seg_modalities, keep_rate=p.seg_keep_rate, n_folds=p.patients,
                                          keep_task2_overlap=True),
                            RunOptions(workers=max(self.workers, 1), progress=False))
            t2 = time.monotonic()
            index = prepare_from_synth(self.paths.synth, self.paths.cls_data / "train", n_folds=p.patients)
            chunks = sum(n_chunks(int(k), p.seq_len, p.stride) for k in index.kept if k > 0)
            series = int((index.kept > 0).sum())
            row.figures = {"synth_s": round(t1 - t0, 1), "stage1_slices": store.n_slices,
                           "stage1_prepare_s": round(t2 - t1, 1), "stage2_series": series,
                           "stage2_kept_slices": int(index.kept.sum()), "stage2_chunks": chunks,
                           "stage2_stack_s": round(time.monotonic() - t2, 1)}
            row.say(f"synth {t1 - t0:.0f} s; stage 1: {store.n_slices} slices ({' '.join(p.seg_modalities)}) in "
                    f"{t2 - t1:.0f} s; stage 2: {chunks} chunks of {p.seq_len} from {series} series (true masks)")
            row.judge([] if store.n_slices and chunks else ["no stage-1 slice or no stage-2 chunk"])
        return row.status == "PASS"

    # ---- loaders alone

    def loader_rate(self, dataset: Any, micro: int) -> dict[str, float]:
        """Samples per second of ``make_train_loader`` alone, as the trainer builds it (workers, pinned memory).

        Each worker makes whole batches, so batches arrive in waves of ``workers``; the rate is taken over the
        waves after the first (worker start-up and the first batch left out), the rate with start-up too."""
        from mgmt2d.training.distributed import DistContext, make_train_loader
        from mgmt2d.training.metrics import batch_field
        from mgmt2d.training.seeding import epoch_seed

        wave = max(self.workers, 1)
        n = wave * max(self.p.loader_waves, 2)
        loader = make_train_loader(dataset, micro, 0, self.device, self.workers, 1, DistContext())
        if len(loader) < n:
            raise ValueError(f"loader check: {len(dataset)} samples give {len(loader)} batches, need {n}")
        dataset.set_epoch(0)
        loader.sampler.set_epoch(0)
        loader.generator.manual_seed(epoch_seed(0, 0))
        stamps: list[float] = []
        sizes: list[int] = []
        t0 = time.perf_counter()
        for batch in loader:
            stamps.append(time.perf_counter())
            sizes.append(int(batch_field(batch, "image", 0).shape[0]))
            if len(stamps) == n:
                break
        return {"steady": rate(sum(sizes[wave:]), stamps[-1] - stamps[wave - 1]),
                "with_startup": rate(sum(sizes), stamps[-1] - t0), "batches": n}

    def loader_samples(self, micro: int) -> int:
        """Samples the loader check reads: its waves and one batch more."""
        return micro * (max(self.workers, 1) * max(self.p.loader_waves, 2) + 1)

    @staticmethod
    def repeat_rows(rows: pd.DataFrame, times: int) -> pd.DataFrame:
        """``rows`` ``times`` over: a longer epoch of the same samples, the same cost per sample."""
        return pd.concat([rows] * max(times, 1), ignore_index=True)

    # ---- 2. stage 1

    def stage1(self) -> None:
        from mgmt2d.segmentation.dataset import load_index, split_by_fold

        train_rows, _ = split_by_fold(load_index(self.paths.seg_store), 0)
        for i, (batch, accumulate) in enumerate(self.p.seg_runs):
            last = i == len(self.p.seg_runs) - 1
            tries = [accumulate, *(k for k in self.p.seg_fallback if k > accumulate)] if last else [accumulate]
            for j, k in enumerate(tries):
                if not self.stage1_run(batch, k, train_rows, tries[j + 1] if j + 1 < len(tries) else None):
                    break   # fitted (or failed otherwise): no more --accumulate

    def stage1_run(self, batch: int, k: int, train_rows: pd.DataFrame, next_k: int | None) -> bool:
        """One stage-1 run at global ``batch`` with ``--accumulate k``; True when it ran out of memory and
        ``next_k`` is to be tried."""
        from mgmt2d.segmentation.dataset import SegmentationSliceDataset
        from mgmt2d.training import augment

        p = self.p
        with self.row(2, f"stage 1 batch {batch}" + (f" --accumulate {k}" if k > 1 else "")) as row:
            micro = batch // k
            need = self.loader_samples(micro)
            dataset = SegmentationSliceDataset(self.paths.seg_store,
                                               self.repeat_rows(train_rows, math.ceil(need / len(train_rows))),
                                               p.seg_image_size, augment.train_transform(), seed=0)
            self.budget.require(10, "the stage-1 loader")
            loader = self.loader_rate(dataset, micro)
            run = f"seg_b{batch}_a{k}"
            models = self.paths.work / "runs" / run / "models"
            args = [*self.script_args(self.settings(run, SEGMENT_MODEL_DIR=models), self.workers),
                    "--image-size", str(p.seg_image_size), "--batch-size", str(batch), "--accumulate", str(k),
                    "--epochs", "1", "--warmup-epochs", "0", "--amp", *self.tensorboard_args()]
            result = self.timed_script(run, "train_segmentation.py", args, cap=150)
            if result["oom"] and next_k is not None:   # the published batch may not fit: accumulate, same recipe
                row.status = "SKIP"
                row.note = f"out of GPU memory in one pass; next: --accumulate {next_k}"
                row.figures["error"] = result["error"]
                return True
            rates = self.report_training(row, result, batch, {0: "step"}, "img")
            if result["status"] == 0 and self.seg_models is None:
                self.seg_models = models
            row.figures.update({"loader_img_s": loader["steady"], "loader_img_s_with_startup": loader["with_startup"],
                                "loader_workers": self.workers, "micro_batch": micro})
            if rates.get("step"):
                ratio = round(loader["steady"] / rates["step"], 2)
                row.figures["loader_over_step"] = ratio
                row.say(f"loader {loader['steady']:.0f} img/s with {workers(self.workers)} = {ratio}x the step")
                if ratio < LOADER_KEEPS_UP:
                    row.fail(f"the loader does not keep up: loader/step {ratio} < {LOADER_KEEPS_UP}")
        return False

    def report_training(self, row: Row, result: dict[str, Any], batch: int, epochs: dict[int, str],
                        unit: str) -> dict[str, float]:
        """Fill ``row`` from a timed run: per epoch of ``epochs`` ({epoch: label}) its steady rate and peak
        memory, then the run's peak; returns {label: rate}."""
        row.figures.update({"run_s": round(result["seconds"], 1), "log": result["log"]})
        if result["status"] != 0:
            row.fail(("out of GPU memory: " if result["oom"] else f"exit status {result['status']}: ")
                     + (result.get("error") or log_tail(Path(result["log"]))))
            return {}
        problems, rates = [], {}
        for epoch, label in epochs.items():
            value, n = step_rate(result["steps"], epoch, batch)
            row.figures[f"{label}_steps"] = n
            if value is None:
                problems.append(f"epoch {epoch + 1} had {n} optimiser steps; a rate needs 3")
                continue
            rates[label] = row.figures[f"{label}_{unit}_s"] = value
            peak = [s["peak_allocated"] for s in result["steps"] if s["epoch"] == epoch][-1]   # the run's so far
            if peak is not None:
                row.figures[f"{label}_peak_gib"] = round(peak / GIB, 2)
            row.say(f"{label} {value} {unit}/s ({n} steps" + (f", peak {peak / GIB:.2f} GiB by its end)"
                                                              if peak is not None else ")"))
        if result["peak_allocated"] is not None:
            row.figures["peak_allocated_gib"] = round(result["peak_allocated"] / GIB, 2)
            row.figures["peak_reserved_gib"] = round(result["peak_reserved"] / GIB, 2)
            row.say(f"peak {row.figures['peak_allocated_gib']} GiB allocated ({row.figures['peak_reserved_gib']} "
                    "reserved)")
        row.judge(problems, row.note)
        return rates

    # ---- 3. stage 2

    def stage2(self) -> None:
        from mgmt2d.classification.dataset import ChunkDataset, load_index, split_by_fold

        p = self.p
        with self.row(3, f"stage 2 batch {p.cls_batch}, {p.seq_len}-slice chunks, --mri-type {p.cls_mri_type}") as row:
            train_rows, _ = split_by_fold(load_index(self.paths.cls_data / "train", p.cls_mri_type), 0)

            def chunks(rows: pd.DataFrame) -> ChunkDataset:
                return ChunkDataset(rows, self.paths.cls_data / "train", p.cls_image_size, p.seq_len, p.stride,
                                    augment=True, seed=0)

            times = math.ceil(self.loader_samples(p.cls_batch) / len(chunks(train_rows)))
            self.budget.require(10, "the stage-2 loader")
            loader = self.loader_rate(chunks(self.repeat_rows(train_rows, times)), p.cls_batch)
            models = self.paths.work / "runs" / "cls" / "models"
            args = [*self.script_args(self.settings("cls", CLASSIFICATION_MODEL_DIR=models), self.workers),
                    *self.stage2_args(p.cls_batch), "--epochs", "2", "--warmup-epochs", "1", "--amp",
                    *self.tensorboard_args()]
            result = self.timed_script("cls", "train_classification.py", args, cap=200)
            rates = self.report_training(row, result, p.cls_batch, {0: "frozen", 1: "unfrozen"}, "chunks")
            if result["status"] == 0:
                self.cls_models = models
            row.figures.update({"loader_chunks_s": loader["steady"], "loader_workers": self.workers})
            if rates.get("unfrozen"):
                ratio = round(loader["steady"] / rates["unfrozen"], 2)
                row.figures["loader_over_unfrozen"] = ratio
                row.say(f"loader {loader['steady']:.1f} chunks/s with {workers(self.workers)} = {ratio}x unfrozen "
                        "(information, not a criterion)")

    # ---- 4. inference

    def weights(self) -> tuple[Any, str]:
        """Stages 1 and 2's checkpoints in our layout; random-init ones (said so) where a stage wrote none."""
        from mgmt2d.classification.model import build_classifier
        from mgmt2d.data.contract import OURS
        from mgmt2d.data.weights import WeightsLayout
        from mgmt2d.segmentation.model import build_segmenter

        p, root = self.p, self.paths.work / "random_weights"
        seg, cls, note = self.seg_models, self.cls_models, []
        torch.manual_seed(0)
        if seg is None:
            seg = root / "segmentation"
            (seg / "fold0").mkdir(parents=True, exist_ok=True)
            torch.save({"model": build_segmenter().state_dict()}, seg / "fold0" / "best.pt")
            note.append("random-init segmenter (no stage-1 checkpoint)")
        if cls is None:
            cls = root / "classification"
            (cls / p.cls_mri_type / "fold0").mkdir(parents=True, exist_ok=True)
            contract = replace(OURS, image_size=p.cls_image_size, seq_len=p.seq_len, stride=p.stride)
            config = {"backbone": p.cls_backbone, "lstm_hidden": 128, "seq_len": p.seq_len, "stride": p.stride,
                      "image_size": p.cls_image_size, "contract": contract.to_dict()}
            torch.save({"model": build_classifier(p.cls_backbone, 128, p.seq_len).state_dict(), "config": config},
                       cls / p.cls_mri_type / "fold0" / "best.pt")
            note.append("random-init classifier (no stage-2 checkpoint)")
        return WeightsLayout("mgmt2d", seg, cls), "; ".join(note) or "weights: the checkpoints of parts 2 and 3"

    def inference(self) -> None:
        from mgmt2d.data import task2
        from mgmt2d.inference.pipeline import Predictor

        meta = json.loads((self.paths.synth / "synth.json").read_text())
        split = "test" if meta["task2_test_ids"] else "train"
        patient = meta[f"task2_{split}_ids"][0]
        folder = self.paths.synth / "task2" / split / patient
        types = [t for t in task2.MRI_TYPES if (folder / t).is_dir()
                 and self.p.cls_mri_type in (task2.POOLED, t)]   # the types stage 2 trained a model for
        # The CPU repeats one series, the one with the fewest files: UNet++ at 224 costs ~0.2 s a slice on a CPU.
        ctype = min(types, key=lambda t: len(list((folder / t).iterdir())))
        with self.row(4, f"inference, patient {patient} ({' '.join(types)}; the CPU repeats {ctype})") as row:
            layout, weights_note = self.weights()
            overrides = {"seg_image_size": self.p.seg_image_size}
            self.budget.require(30, "inference")
            ondev = Predictor.from_weights(layout, self.device, types, [0], overrides)
            cpu = Predictor.from_weights(layout, torch.device("cpu"), [ctype], [0], overrides)
            problems = self.whole_patient(row, ondev, cpu, folder, types, ctype)
            problems += self.segmenter_vs_cpu(row, ondev, cpu, folder, types, ctype)
            problems += self.classifier_vs_cpu(row, ondev, cpu, folder, types, ctype)
            row.judge(problems, weights_note)
        if not self.cuda:
            self.skip(4, "the GPU against the CPU (fp16 classifier, fp32 segmenter on CUDA)",
                      "no CUDA: autocast stays off and the CPU is compared with itself (the plumbing only)")

    def whole_patient(self, row: Row, ondev: Any, cpu: Any, folder: Path, types: list[str], ctype: str) -> list[str]:
        """``Predictor.predict`` of the patient on the device (timed), and of ``ctype`` on the CPU: the same
        kept slices and chunk probabilities within PROB_TOL."""
        from mgmt2d.inference.pipeline import PredictOptions, Timer

        c = ondev.contract
        with torch.inference_mode():   # untimed warm-up: CUDA context, cuDNN algorithms, the allocator
            ondev.segmenter(torch.zeros(2, 3, c.seg_image_size, c.seg_image_size, device=self.device))
            ondev.classifiers[types[0]][0].backbone(torch.zeros(2, 3, c.image_size, c.image_size, device=self.device))
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.sync()
        timer, seen = Timer(), []
        _, rows = ondev.predict([folder.name], folder.parent, PredictOptions(types, workers=2), seen.append, timer)
        self.sync()
        whole = sum(timer.seconds.values())
        kept = {s.mri_type: f"{s.stacked.kept}/{s.stacked.total}" for s in seen[0].series if s.stacked}
        row.figures.update({"whole_s": round(whole, 2), **{f"{k}_s": round(v, 2) for k, v in timer.seconds.items()},
                            "kept": kept, "segmented_slices": sum(s.stacked.nonempty for s in seen[0].series
                                                                  if s.stacked)})
        row.say(f"predict {whole:.1f} s (" + ", ".join(f"{k} {v:.1f}" for k, v in timer.seconds.items())
                + "); kept " + ", ".join(f"{t} {k}" for t, k in kept.items()))
        if self.cuda:
            row.figures["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(self.device) / GIB, 2)
            row.say(f"peak {row.figures['peak_allocated_gib']} GiB")
        t0 = time.monotonic()
        _, cpu_rows = cpu.predict([folder.name], folder.parent, PredictOptions([ctype], workers=1), None, Timer())
        row.figures["cpu_predict_s"] = round(time.monotonic() - t0, 1)
        a, b = rows[rows.type == ctype].iloc[0], cpu_rows[cpu_rows.type == ctype].iloc[0]
        if a.kept_files != b.kept_files or a.kept != b.kept:
            return [f"{ctype}: kept slices differ from the CPU's ({a.kept} vs {b.kept})"]
        diff = chunk_difference(a.chunk_probs, b.chunk_probs) if a.kept else 0.0
        row.figures["predict_max_abs_dprob"] = diff
        row.say(f"CPU predict of {ctype}: same kept slices" + (f", chunk probabilities within {diff:.1e}"
                                                                if a.kept else " (none)"))
        return [] if diff <= PROB_TOL else [f"{ctype}: chunk probabilities differ from the CPU's by {diff:.2e}"]

    def segmenter_vs_cpu(self, row: Row, ondev: Any, cpu: Any, folder: Path, types: list[str],
                         ctype: str) -> list[str]:
        """The segmenter as inference runs it (fp32): slices/s on the device over the patient's non-empty slices;
        its probabilities against the CPU's on ``compare_slices`` of them: the same masks wherever the CPU's
        probability is more than 1e-3 from the threshold (the engines' rule, ``engines.ProbeTolerance``)."""
        from mgmt2d.classification import stack
        from mgmt2d.data import dicom
        from mgmt2d.engines import ProbeTolerance, probe_problem
        from mgmt2d.segmentation import model as segmenter

        c = ondev.contract
        inputs = {}
        for t in types:
            volume, meta = dicom.read_series(folder / t, order=c.slice_order, rescale=c.pixel_values == "modality")
            _, scaled, _ = stack.prepare_series(volume, meta.positive_fraction, c)
            if scaled is not None:
                inputs[t] = segmenter.to_input(scaled, c.seg_image_size, c.seg_zoom)
        if ctype not in inputs:
            return [f"{ctype}: no non-empty slice to segment"]
        batch = np.concatenate(list(inputs.values()))
        batch = central(batch, self.p.seg_rate_slices) if self.p.seg_rate_slices else batch
        segmenter.predict_probs(ondev.segmenter, batch[:4], self.device, 32, False, c.threshold)   # warm-up
        self.sync()
        t0 = time.perf_counter()
        segmenter.predict_probs(ondev.segmenter, batch, self.device, 32, False, c.threshold)
        self.sync()
        row.figures["segmenter_fp32_slices_s"] = rate(len(batch), time.perf_counter() - t0)
        some = central(inputs[ctype], self.p.compare_slices)
        on_device = segmenter.predict_probs(ondev.segmenter, some, self.device, 32, False, None)
        on_cpu = segmenter.predict_probs(cpu.segmenter, some, torch.device("cpu"), 32, False, None)
        diff = float(np.abs(on_device - on_cpu).max())
        row.figures["segmenter_max_abs_dprob"] = diff
        row.say(f"segmenter fp32 {row.figures['segmenter_fp32_slices_s']} slices/s ({len(batch)} slices), "
                f"max abs(p - p_cpu) {diff:.1e} on {len(some)}")
        masks = probe_problem("segmenter", on_cpu, on_device, ProbeTolerance(seg_abs=math.inf))   # masks (and NaN)
        return [f"segmenter vs CPU on {len(some)} {ctype} slices: {masks}"] if masks else []

    def classifier_vs_cpu(self, row: Row, ondev: Any, cpu: Any, folder: Path, types: list[str],
                          ctype: str) -> list[str]:
        """The classifier as inference runs it (fp16 autocast on CUDA) on the series stacked with the true masks
        (``synth_stack``: kept slices whatever the trained segmenter does): slices/s on the device, and chunk
        probabilities within PROB_TOL of the CPU's (fp32) for one series."""
        from mgmt2d.data import dicom
        from mgmt2d.dev.synth_stack import stack_with_truth
        from mgmt2d.device import autocast_dtype
        from mgmt2d.inference.pipeline import classify_series

        c = ondev.contract
        truth_dir = self.paths.synth / "truth" / "series_seg" / folder.name
        stacks = {}
        for t in types:
            volume, meta = dicom.read_series(folder / t, order=c.slice_order, rescale=c.pixel_values == "modality")
            stacked = stack_with_truth(volume, np.load(truth_dir / f"{t}.npz")["seg"], meta.positive_fraction, c)
            if stacked.kept:
                stacks[t] = stacked
        if not stacks:
            return [f"patient {folder.name}: the true masks keep no slice; the classifier was not run"]
        amp = autocast_dtype(self.device, True)
        first = next(iter(stacks))
        classify_series(ondev.classifiers[first], stacks[first], c, 32, amp)   # warm-up
        self.sync()
        t0 = time.perf_counter()
        probs = {t: classify_series(ondev.classifiers[t], s, c, 32, amp) for t, s in stacks.items()}
        self.sync()
        slices = sum(s.kept for s in stacks.values())
        row.figures.update({"classifier_slices_s": rate(slices, time.perf_counter() - t0),
                            "classifier_dtype": str(amp or torch.float32).replace("torch.", "")})
        used = ctype if ctype in stacks else first
        cpu_models = cpu.classifiers[ctype]   # the model of ctype; with --mri-type pooled the same for every type
        diff = float(np.abs(probs[used] - classify_series(cpu_models, stacks[used], c, 32, None)).max())
        row.figures["classifier_max_abs_dprob"] = diff
        row.say(f"classifier {row.figures['classifier_dtype']} {row.figures['classifier_slices_s']} slices/s "
                f"({slices} true-mask slices), max abs(p - p_cpu) {diff:.1e} ({used})")
        self.for_gradcam = {"model": ondev.classifiers[used][0], "cpu_model": cpu_models[0], "stacked": stacks[used],
                            "type": used, "contract": c}
        return [] if diff <= PROB_TOL else [f"{used} chunk probabilities differ from the CPU's by {diff:.2e}"]

    # ---- 5. torchrun

    def torchrun(self) -> None:
        """Both trainers under torchrun at once (a functional check, not timed: they share the GPUs and cores)."""
        p = self.p
        n = torch.cuda.device_count() if self.cuda else 1
        epochs = p.torchrun_epochs if n > 1 else 1   # 2: the unfreeze rebuilds DDP
        per_rank = {"stage 1": max(math.ceil(p.seg_runs[0][0] / n), 2), "stage 2": max(math.ceil(p.cls_batch / n), 1)}
        runs = {"stage 1": ("train_segmentation.py", "SEGMENT_MODEL_DIR",
                            ["--image-size", str(p.seg_image_size), "--batch-size", str(n * per_rank["stage 1"]),
                             *(["--sync-bn"] if self.cuda else [])]),
                "stage 2": ("train_classification.py", "CLASSIFICATION_MODEL_DIR",
                            self.stage2_args(n * per_rank["stage 2"]))}
        self.budget.require(30, "torchrun")
        jobs: dict[str, tuple[Launched, Path]] = {}
        t0 = time.monotonic()
        try:
            for stage, (script, key, extra) in runs.items():
                name = f"torchrun_{script.split('.')[0]}"
                models = self.paths.work / "runs" / name / "models"
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                       str(REPO / script), *self.script_args(self.settings(name, **{key: models}),
                                                             max(self.workers // (2 * n), 1), self.device.type),
                       "--epochs", str(epochs), "--warmup-epochs", str(epochs - 1), "--no-tensorboard", *extra]
                jobs[stage] = (Launched(cmd, self.paths.logs / f"{name}.log", p.threads), models)
            for stage, (job, models) in jobs.items():
                script, _, extra = runs[stage]
                with self.row(5, " ".join(["torchrun --nproc_per_node", str(n), script,
                                           *(["--sync-bn"] if "--sync-bn" in extra else [])])) as row:
                    code = job.wait(min(150, self.budget.left()))
                    row.figures.update({"processes": n, "epochs": epochs, "log": str(job.log),
                                        "took_s": round(time.monotonic() - t0, 1)})
                    row.judge(self.torchrun_problems(row, code, job.log, models, n))
        finally:
            for job, _ in jobs.values():
                job.stop()   # after a failure half-way: nothing of ours keeps running
        if n == 1:
            self.skip(5, "DistributedDataParallel over 2+ processes" + (", SyncBatchNorm" if self.cuda else ""),
                      "one GPU here" if self.cuda else
                      "one process, as on a 1-GPU machine (tests/test_distributed.py runs DDP with 2 on the CPU)")
        if not self.cuda:
            self.skip(5, "--sync-bn", "SyncBatchNorm runs on CUDA only (the trainer refuses it on the CPU)")

    def torchrun_problems(self, row: Row, code: int, log: Path, models: Path, n: int) -> list[str]:
        """Exit 0, ``world_size`` n in train_config.json, the log naming the process group's backend."""
        backend = "nccl" if self.cuda else "gloo"
        row.figures["backend"] = backend
        row.say(f"{n} process(es), {backend}, {row.figures['epochs']} epoch(s), exit {code} after "
                f"{row.figures['took_s']:.0f} s (both jobs at once)")
        if code != 0:
            return [f"exit status {code}: {log_tail(log)}"]
        problems = []
        configs = list(models.rglob("train_config.json"))
        world = json.loads(configs[0].read_text())["config"].get("world_size") if configs else None
        if world != n:
            problems.append(f"train_config.json world_size {world}, expected {n}")
        if f"backend {backend}" not in log.read_text(errors="replace"):
            problems.append(f"the log does not show the {backend} process group")
        return problems

    # ---- 6. Grad-CAM

    def gradcam(self) -> None:
        from mgmt2d.inference.gradcam import chunk_cam

        with self.row(6, "Grad-CAM of one chunk") as row:
            if not self.for_gradcam:
                raise RuntimeError("needs part 4's models and a stacked series; part 4 did not get that far")
            g = self.for_gradcam
            self.budget.require(10, "Grad-CAM")
            t0 = time.perf_counter()
            cam = chunk_cam(g["model"], g["stacked"], g["contract"], 0)
            row.figures["device_s"] = round(time.perf_counter() - t0, 2)
            ref = chunk_cam(g["cpu_model"], g["stacked"], g["contract"], 0)
            if not np.isfinite(cam.cam).all() or cam.cam.shape != ref.cam.shape:
                row.judge([f"heatmaps not finite or of shape {cam.cam.shape} (CPU {ref.cam.shape})"])
                return
            heat = float(np.abs(cam.cam - ref.cam).max()) / max(float(ref.cam.max()), 1e-12)
            row.figures.update({"prob_abs_diff": abs(cam.prob - ref.prob), "heatmap_max_rel_diff": heat,
                                "top3_frames_same": cam.top_frames(3) == ref.top_frames(3)})
            row.say(f"{row.figures['device_s']} s; vs CPU: abs(dp) {abs(cam.prob - ref.prob):.1e}, heatmaps max "
                    f"rel diff {heat:.1e}, top-3 frames {'same' if row.figures['top3_frames_same'] else 'differ'}")
            problems = [] if abs(cam.prob - ref.prob) <= PROB_TOL else [
                f"chunk probability {cam.prob:.6f} vs CPU {ref.prob:.6f}"]
            row.judge(problems, f"{g['type']}, chunk 0 of {g['stacked'].kept} kept slices, fp32")

    def run(self, parts: set[int]) -> None:
        if not self.data():
            return   # nothing else has data
        no_cuda = "no CUDA: autocast is off on the CPU and torch.cuda.max_memory_allocated has nothing to measure"
        if 2 in parts:
            self.stage1()
            if not self.cuda:
                self.skip(2, "stage 1 AMP, peak GPU memory", no_cuda)
        if 3 in parts:
            self.stage2()
            if not self.cuda:
                self.skip(3, "stage 2 AMP, peak GPU memory", no_cuda)
        if 4 in parts:
            self.inference()
        if 6 in parts:
            self.gradcam()   # part 4's models, before they are freed
            if not self.cuda:
                self.skip(6, "Grad-CAM on CUDA (cuDNN off for the LSTM backward)", "no CUDA")
        self.for_gradcam = {}
        if self.cuda:
            torch.cuda.empty_cache()
        if 5 in parts:
            self.torchrun()


def workers(n: int) -> str:
    return f"{n} worker" + ("" if n == 1 else "s")


def central(items: np.ndarray, k: int) -> np.ndarray:
    lo = max((len(items) - k) // 2, 0)
    return items[lo:lo + k]


def chunk_difference(a: str, b: str) -> float:
    """Largest difference of two ``chunk_probs`` fields of ``<submission>_per_type.csv`` rows."""
    pa, pb = np.array(a.split(), float), np.array(b.split(), float)
    return float(np.abs(pa - pb).max()) if len(pa) == len(pb) else math.inf


# --------------------------------------------------------------------------- report


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    env: dict[str, Any] = {
        "date": datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()], "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        conv = getattr(torch.backends.cudnn, "conv", None)
        env.update({"gpu": torch.cuda.get_device_name(device), "gpus": torch.cuda.device_count(),
                    "gpu_memory_gib": round(props.total_memory / GIB, 1),
                    "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
                    # fp32 convolutions may run in TF32 (torch's default for cuDNN): the "fp32" segmenter too
                    "cudnn_conv_fp32_precision": getattr(conv, "fp32_precision", None),
                    "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                    "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32})
    return env


def table(rows: list[Row], env: dict[str, Any], mode: str) -> str:
    """The Markdown table (the README's "Measured on a GPU" takes it as it is)."""
    if mode == "cuda":
        head = (f"{env['gpu']} x{env['gpus']} ({env['gpu_memory_gib']} GiB, TF32 convolutions "
                f"{env['cudnn_conv_fp32_precision'] or env['cudnn_allow_tf32']})")
    else:
        head = "CPU mode (no CUDA): tiny sizes, one thread; the figures are no performance claim"
    lines = [f"gpu-check {env['date']}: {head}; torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, "
             f"{env['cpu_cores']} CPU cores, load {env['load_average'][0]}", "",
             "| part | what | figures | status | s |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r.part):   # run order: 6 before 5 (it uses part 4's models)
        text = _join("; ".join(r.summary), r.note).replace("|", "/")
        lines.append(f"| {r.part} | {r.name} | {text} | {r.status} | {r.seconds:.0f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def prepare_out(out: Path | None, overwrite: bool) -> Path:
    """The output folder: new, empty, or (``--overwrite``) one this script made; never anything else."""
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="mgmt2d-gpu-check-"))
    out = out.resolve()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass --overwrite to replace an earlier gpu-check there")
        if not (out / MARKER).is_file():
            raise FileExistsError(f"{out} was not made by gpu_check.py (no {MARKER}): refusing to replace it; "
                                  "choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by benchmarks/gpu_check.py; --overwrite may replace this folder\n")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda[:N] or cpu (tiny sizes)")
    parser.add_argument("--out", type=Path, help="output folder (default: a new temp folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier gpu-check's --out folder")
    parser.add_argument("--keep", action="store_true",
                        help="keep OUT/work (synthetic data, stores, checkpoints); removed at the end otherwise")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default: 480 on CUDA, 300 on CPU)")
    parser.add_argument("--parts", type=int, nargs="+", choices=PARTS, default=list(PARTS),
                        help="the parts to run besides 1 (the data); 6 needs 4 (default: all)")
    parser.add_argument("--workers", type=int,
                        help="data loader workers (default: the cores this process may use on CUDA, 1 on the CPU)")


def main(args: argparse.Namespace) -> int:
    import logging

    from mgmt2d.device import resolve_device
    from mgmt2d.engines import available_cores

    device = resolve_device(args.device)
    profile = CUDA_PROFILE if device.type == "cuda" else CPU_PROFILE
    workers = args.workers if args.workers is not None else (available_cores() if device.type == "cuda" else 1)
    if workers < 0 or (args.budget is not None and args.budget <= 0):
        raise ValueError("need --workers >= 0 and --budget > 0")
    parts = set(args.parts) | ({4} if 6 in args.parts else set())
    if device.type == "cuda" and device.index is not None:   # set_device refuses a bare "cuda"
        torch.cuda.set_device(device)
    if profile.threads is not None:
        torch.set_num_threads(profile.threads)
    paths = Paths(prepare_out(args.out, args.overwrite))
    logging.getLogger().setLevel(logging.WARNING)   # the library's INFO lines go to each step's log, not here
    budget = Budget(args.budget or profile.budget_s)
    env = environment(device)
    print(f"gpu-check: {profile.name} mode on {env.get('gpu', 'the CPU')}, parts 1 "
          f"{' '.join(map(str, sorted(parts)))}, budget {budget.seconds:.0f} s, {workers} loader workers -> "
          f"{paths.out}", flush=True)
    check = GpuCheck(profile, device, paths, workers, budget)

    def terminated(signum: int, frame: Any) -> None:   # e.g. `timeout 600 make gpu-check`: report what ran
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        check.run(parts)
    finally:
        signal.signal(signal.SIGTERM, previous)
        total = time.monotonic() - budget.start
        failed = [r for r in check.rows if r.status == "FAIL"]
        env["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        verdict = "all PASS" if not failed else f"{len(failed)} FAIL"
        text = (table(check.rows, env, profile.name)
                + f"\n\ntotal {total:.0f} s of the {budget.seconds:.0f} s budget; {verdict}\n")
        result = {"gpu_check": 1, "mode": profile.name, "passed": not failed, "total_s": round(total, 1),
                  "budget_s": budget.seconds, "parts": sorted(parts), "environment": env, "profile": asdict(profile),
                  "rows": [asdict(r) for r in check.rows]}
        (paths.out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
        (paths.out / "gpu_check.md").write_text(text)
        if not args.keep:
            shutil.rmtree(paths.work, ignore_errors=True)
        print(f"\n{text}\n{paths.out / 'gpu_check.json'}" + ("" if args.keep else " (work/ removed; --keep keeps it)"),
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))   # this checkout's package, as the subprocesses get it
    from mgmt2d.cli import run

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_arguments(parser)
    sys.exit(run(main, parser))
