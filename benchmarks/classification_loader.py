"""Stage-2 chunk loader vs the classifier's training step, and peak memory of stage-2 preparation.

    python benchmarks/classification_loader.py [--part loader|memory|both]
        loader: [--series 8] [--workers 2] [--batch-size 2] [--image-size 224] [--loader-batches 20]
                [--model-batch 1] [--model-steps 1] [--rounds 2] [--no-frozen]
        memory: [--synth DIR | --synth-patients 8] [--counts 2 6] [--pick largest] [--prep-image-size 32]
                [--prep-workers 2]

(a) ``--part loader``. Prepared stage-2 data is written directly in the layout of
prepare_classification.py (``series/<patient>_<type>.npy``, (K, H, W, 3) uint8, K drawn in
20..120, H = W drawn from 256..512, plus ``index.csv``): a smooth head-like phantom with
noise in channel 0 and tumour masks in channels 1-2 (content does not change resize/affine
cost). Then, alternating ``--rounds`` times:

* loader: ``chunk_dataset.ChunkDataset(augment=True)`` (seq_len 35, stride 5) through
  ``make_train_loader`` (the training loader, ``--workers`` workers), ``--loader-batches`` batches of
  ``--batch-size`` chunks; steady chunks/s excludes the first batch of each epoch iterator;
* model: ``classifier.build_classifier()`` (eca_nfnet_l0 + BiLSTM, random init), train mode,
  AdamW, BCE-with-logits, forward + backward + step on random (B, 35, 3, S, S) chunks;
  chunks/s over ``--model-steps`` steps after one untimed warm-up step. The frozen-backbone
  phase (first 5 epochs) is timed too unless ``--no-frozen``.

Printed: RATIO loader/model (goal >= 3) per round and for the medians, and the in-process
(0 workers) loader cost per chunk.

(b) ``--part memory``. Synthetic ``--size full`` data (``python -m mgmt2d synth``); for each
patient count N in ``--counts`` a DICOM_DATA_DIR is assembled from symlinks to N train
patients (``--pick largest``: the N largest, so the smaller run already holds the largest
patient and a bigger peak in the larger run could only come from the number of patients;
``first``: the first N by ID), with a pre-written KFOLD_PATH (so fewer than 5 patients work), and the real
``prepare_classification.py`` runs in a subprocess (random-init segmenter checkpoint,
``--device cpu``, ``--image-size --prep-image-size``). The resident memory of the process
and its children is summed every 0.1 s (psutil); the peak is compared between counts (goal:
it does not grow with the number of patients), and so is the peak while each patient is
prepared (a sample belongs to the patient whose ``done/`` marker comes next). A baseline
(interpreter + libraries + the segmenter, nothing read) and each patient's float32 volume
size are printed for scale.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch

from mgmt2d.classification import dataset as chunk_dataset
from mgmt2d.classification.chunks import n_chunks
from mgmt2d.classification.model import build_classifier
from mgmt2d.data.settings import KEYS
from mgmt2d.device import resolve_device
from mgmt2d.training.distributed import make_train_loader
from mgmt2d.training.seeding import epoch_seed

REPO = Path(__file__).resolve().parents[1]
MRI_TYPES = ("FLAIR", "T1w", "T1wCE", "T2w")
MB = 1024 * 1024


def loadavg() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def header(title: str) -> None:
    print(f"== {title}")
    print(f"   {datetime.now().isoformat(timespec='seconds')}  {platform.node()}  {platform.machine()}  "
          f"{os.cpu_count()} CPUs  {psutil.virtual_memory().total / 2**30:.0f} GiB RAM  torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)  {loadavg()}", flush=True)


# =========================================================================== (a) loader vs model


def phantom_series(rng: np.random.Generator, k: int, size: int) -> np.ndarray:
    """(k, size, size, 3) uint8: a noisy ellipse 'head' whose radius changes along the series,
    an off-centre tumour disk in the WT channel and its rim in the ET channel."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    out = np.empty((k, size, size, 3), np.uint8)
    cx, cy = rng.uniform(-0.12, 0.12, 2)
    for i in range(k):
        t = (i + 0.5) / k
        r = 0.42 * np.sqrt(max(1 - (2 * t - 1) ** 2, 0.05))
        head = (xx / 0.9) ** 2 + yy**2 < r**2
        d2 = (xx - cx) ** 2 + (yy - cy) ** 2
        tr = 0.12 * np.sqrt(max(1 - ((t - 0.5) / 0.35) ** 2, 0.0))
        wt = d2 < tr**2
        et = wt & (d2 > (0.6 * tr) ** 2)
        img = head * (110 + 60 * np.cos(9 * xx + 4 * yy)) + wt * 60
        img = img + rng.normal(0, 8, (size, size)) * head
        out[i, ..., 0] = np.clip(img, 0, 255).astype(np.uint8)
        out[i, ..., 1] = wt * np.uint8(255)
        out[i, ..., 2] = et * np.uint8(255)
    return out


def write_prepared(root: Path, n_series: int, seed: int) -> Path:
    """CLASSIFICATION_DATA_DIR/train with ``n_series`` series (4 types per patient) + index.csv."""
    split = root / "train"
    (split / "series").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_series):
        patient, mri_type = f"{s // 4:05d}", MRI_TYPES[s % 4]
        k, size = int(rng.integers(20, 121)), int(rng.choice([256, 320, 384, 448, 512]))
        rel = f"series/{patient}_{mri_type}.npy"
        np.save(split / rel, phantom_series(rng, k, size))
        rows.append({"patient": patient, "type": mri_type, "kept": k, "total": k + int(rng.integers(10, 80)),
                     "file": rel, "label": int(rng.integers(0, 2)), "fold": (s // 4) % 5, "note": ""})
    pd.DataFrame(rows, columns=["patient", "type", "kept", "total", "file", "label", "fold", "note"]).to_csv(
        split / "index.csv", index=False)
    return split


def time_loader(ds: chunk_dataset.ChunkDataset, batch_size: int, workers: int, n_batches: int, seed: int) -> dict:
    loader = make_train_loader(ds, batch_size, seed, num_workers=workers)
    done = chunks = steady_chunks = 0
    steady_s = 0.0
    epoch = 0
    start = time.perf_counter()
    while done < n_batches:
        loader.generator.manual_seed(epoch_seed(seed, epoch))
        loader.sampler.set_epoch(epoch)
        epoch += 1
        t_prev = None
        for batch in loader:
            now = time.perf_counter()
            b = batch["image"].shape[0]
            if t_prev is not None:
                steady_s += now - t_prev
                steady_chunks += b
            t_prev = now
            chunks += b
            done += 1
            if done >= n_batches:
                break
    total = time.perf_counter() - start
    return {"steady": steady_chunks / steady_s if steady_s else float("nan"), "with_startup": chunks / total,
            "epochs": epoch}


class ModelStep:
    """forward + backward + AdamW step of the classifier on random chunks; chunks/s."""

    def __init__(self, batch: int, size: int, seq_len: int, device: torch.device, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = build_classifier(seq_len=seq_len).to(device).train()
        self.device = device
        self.x = torch.randn(batch, seq_len, 3, size, size, device=device)
        self.y = torch.randint(0, 2, (batch,), device=device).float()
        self.opt: dict[bool, torch.optim.Optimizer] = {}

    def rate(self, steps: int, frozen: bool) -> float:
        self.model.freeze_backbone(frozen)
        if frozen not in self.opt:  # the engine builds a fresh AdamW over the trainable params per phase
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.opt[frozen] = torch.optim.AdamW(params, lr=1e-6)
        opt = self.opt[frozen]
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(self.model(self.x), self.y)
            loss.backward()
            opt.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        return steps * len(self.x) / (time.perf_counter() - t0)


def run_loader_part(args: argparse.Namespace) -> None:
    header("(a) stage-2 chunk loader vs classifier training step")
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="mgmt2d-bench-cls-") as tmp:
        t0 = time.perf_counter()
        split = write_prepared(Path(tmp), args.series, args.seed)
        index = chunk_dataset.load_index(split)
        sizes = sorted({np.load(split / f, mmap_mode="r").shape[1] for f in index.file})
        mb = sum((split / f).stat().st_size for f in index.file) / MB
        ds = chunk_dataset.ChunkDataset(index, split, args.image_size, args.seq_len, args.stride, augment=True)
        print(f"data: {len(index)} series, kept {index.kept.min()}..{index.kept.max()} (sum {index.kept.sum()}), "
              f"sizes {sizes}, {mb:.0f} MB, {len(ds)} chunks of {args.seq_len} (stride {args.stride}), "
              f"written in {time.perf_counter() - t0:.1f} s")
        assert len(ds) == sum(n_chunks(int(k), args.seq_len, args.stride) for k in index.kept)

        rss0 = psutil.Process().memory_info().rss
        step = ModelStep(args.model_batch, args.image_size, args.seq_len, device, args.seed)
        t0 = time.perf_counter()
        step.rate(1, frozen=False)  # warm-up
        warm = time.perf_counter() - t0
        rss1 = psutil.Process().memory_info().rss
        print(f"model: eca_nfnet_l0 + BiLSTM, {sum(p.numel() for p in step.model.parameters()) / 1e6:.1f} M params, "
              f"batch {args.model_batch} x {args.seq_len} x 3 x {args.image_size}^2, device {device}; warm-up step "
              f"{warm:.1f} s, process RSS +{(rss1 - rss0) / MB:.0f} MB after it, peak RSS so far "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", flush=True)
        if not args.no_frozen:
            step.rate(1, frozen=True)  # warm-up of the frozen phase (its own optimiser)

        solo = time_loader(ds, args.batch_size, 0, max(args.loader_batches // 4, 2), args.seed)
        print(
            f"loader in-process (0 workers): {solo['steady']:.2f} chunks/s = {1000 / solo['steady']:.0f} ms per chunk "
            "of one core",
            flush=True,
        )

        lo_r, st_r, mo_r, fr_r = [], [], [], []
        for r in range(args.rounds):
            lo = time_loader(ds, args.batch_size, args.workers, args.loader_batches, args.seed + r)
            mo = step.rate(args.model_steps, frozen=False)
            fr = step.rate(args.model_steps, frozen=True) if not args.no_frozen else float("nan")
            lo_r.append(lo["steady"])
            st_r.append(lo["with_startup"])
            mo_r.append(mo)
            fr_r.append(fr)
            print(f"round {r + 1}: loader {lo['steady']:7.2f} chunks/s ({lo['with_startup']:.2f} with start-up, "
                  f"{lo['epochs']} epoch iterator(s))  model {mo:.4f} chunks/s ({args.model_batch / mo:.1f} s/step)  "
                  f"frozen-backbone {fr:.4f} chunks/s  ratio {lo['steady'] / mo:.1f}  {loadavg()}", flush=True)
    lo_m, st_m, mo_m = statistics.median(lo_r), statistics.median(st_r), statistics.median(mo_r)
    print("RESULT (a) stage-2 loader (medians over rounds)")
    print(f"  loader  {lo_m:8.2f} chunks/s ({args.workers} workers, batch {args.batch_size}; {st_m:.2f} incl. start-up)"
          f" = {lo_m * args.seq_len:.0f} frames/s")
    print(
        f"  model   {mo_m:8.4f} chunks/s (forward+backward+AdamW, backbone trainable, {args.image_size} px, {device})"
    )
    print(f"  RATIO loader/model = {lo_m / mo_m:.1f}  (goal >= 3: {'met' if lo_m / mo_m >= 3 else 'NOT met'})")
    if not args.no_frozen:
        fr_m = statistics.median(fr_r)
        print(f"  frozen-backbone phase: model {fr_m:.4f} chunks/s, ratio {lo_m / fr_m:.1f} "
              f"({'met' if lo_m / fr_m >= 3 else 'NOT met'})")
    print(f"  one loader core sustains {solo['steady']:.2f} chunks/s; a model at {lo_m / 3:.2f} chunks/s would bring "
          "the ratio down to 3 with this loader")
    print(f"   end  {loadavg()}", flush=True)


# =========================================================================== (b) prepare memory


class TreeRSS:
    """Poll the summed RSS of a process and its descendants every ``interval`` seconds.

    ``phase()`` (optional) labels each sample, e.g. the number of patients finished so far;
    ``phase_peak`` holds the peak per label.
    """

    def __init__(self, pid: int, interval: float = 0.1, phase: Callable[[], int] | None = None) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.phase = phase
        self.phase_peak: dict[int, int] = {}
        self.peak = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.perf_counter()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:
                break
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            if total:
                self.peak = max(self.peak, total)
                if self.phase is not None:
                    label = self.phase()
                    self.phase_peak[label] = max(self.phase_peak.get(label, 0), total)
                self.samples.append((time.perf_counter() - self._t0, total))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(cmd: list[str], log_path: Path, phase: Callable[[], int] | None = None) -> tuple[int, float, TreeRSS]:
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        mon = TreeRSS(proc.pid, phase=phase)
        rc = proc.wait()
    mon.stop()
    return rc, time.perf_counter() - t0, mon


def series_bytes(folder: Path) -> int:
    """float32 bytes of one series volume (files x rows x cols, from the first header)."""
    import pydicom

    files = sorted(folder.iterdir())
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return len(files) * int(ds.Rows) * int(ds.Columns) * 4


def make_dicom_subset(synth_task2: Path, patients: list[str], dest: Path) -> None:
    (dest / "train").mkdir(parents=True)
    (dest / "test").mkdir()
    for p in patients:
        (dest / "train" / p).symlink_to(synth_task2 / "train" / p, target_is_directory=True)
    labels = pd.read_csv(synth_task2 / "train_labels.csv", dtype={"BraTS21ID": str})
    labels[labels.BraTS21ID.isin(patients)].to_csv(dest / "train_labels.csv", index=False)
    pd.DataFrame({"BraTS21ID": [], "MGMT_value": []}).to_csv(dest / "sample_submission.csv", index=False)


def write_settings(run_dir: Path) -> Path:
    rel = {k: f"work/{k.lower()}" for k in KEYS}
    rel.update({"DICOM_DATA_DIR": "dicom", "KFOLD_PATH": "work/folds.csv",
                "TEST_PREDICTION_FILE": "work/submission.csv"})
    path = run_dir / "SETTINGS.json"
    path.write_text(json.dumps(rel, indent=2))
    return path


def run_memory_part(args: argparse.Namespace) -> None:
    header("(b) peak memory of prepare_classification.py vs number of patients")
    with tempfile.TemporaryDirectory(prefix="mgmt2d-bench-mem-") as tmp_name:
        tmp = Path(tmp_name)
        if args.synth is not None:
            synth = args.synth
            print(f"synthetic data: reusing {synth}")
        else:
            synth = tmp / "synth"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mgmt2d", "synth", "--out", str(synth), "--patients",
                            str(args.synth_patients), "--size", "full", "--seed", str(args.seed)],
                           check=True, stdout=subprocess.DEVNULL)
            print(f"synthetic data: --patients {args.synth_patients} --size full in {time.perf_counter() - t0:.1f} s")
        task2 = synth / "task2"
        train = sorted(p.name for p in (task2 / "train").iterdir() if p.is_dir())
        if max(args.counts) > len(train):
            raise SystemExit(f"error: {len(train)} train patients in {synth}, --counts asks for {max(args.counts)}")
        per_patient = {p: sum(series_bytes(s) for s in (task2 / "train" / p).iterdir() if s.is_dir()) for p in train}
        slices = {p: sum(len(list(s.iterdir())) for s in (task2 / "train" / p).iterdir() if s.is_dir()) for p in train}

        ckpt = tmp / "seg_random.pt"
        from mgmt2d.segmentation.model import build_segmenter

        torch.manual_seed(args.seed)
        torch.save({"model": build_segmenter().state_dict()}, ckpt)

        # Baseline: the same imports and the segmenter loaded, no data.
        code = ("import sys; import mgmt2d.classification.prepare; from mgmt2d.segmentation import model as segmenter; "
                "segmenter.load_segmenter(sys.argv[1], 'cpu')")
        rc, secs, base = run_measured([sys.executable, "-c", code, str(ckpt)], tmp / "baseline.log")
        if rc:
            raise SystemExit(f"error: baseline run failed; see {tmp / 'baseline.log'}")
        print(f"baseline (imports + segmenter loaded): peak RSS {base.peak / MB:.0f} MB", flush=True)

        results = []
        patient_peaks: dict[int, dict[str, int]] = {}
        for count in args.counts:
            if args.pick == "largest":  # the small run holds the largest patients: growth can only come from the count
                chosen = sorted(sorted(train, key=lambda p: -per_patient[p])[:count])
            else:
                chosen = train[:count]
            run_dir = tmp / f"run{count}"
            run_dir.mkdir()
            make_dicom_subset(task2, chosen, run_dir / "dicom")
            settings = write_settings(run_dir)
            (run_dir / "work").mkdir()
            pd.DataFrame(
                {"BraTS21ID": chosen, "MGMT_value": [0] * len(chosen), "fold": [i % 5 for i in range(len(chosen))]}
            ).to_csv(run_dir / "work" / "folds.csv", index=False)
            cmd = [sys.executable, str(REPO / "prepare_classification.py"), "--settings", str(settings),
                   "--split", "train", "--seg-model", str(ckpt), "--device", "cpu",
                   "--image-size", str(args.prep_image_size), "--workers", str(args.prep_workers), "--exclude"]
            out = run_dir / "work" / "classification_data_dir" / "train"
            done = out / "done"
            rc, secs, mon = run_measured(cmd, run_dir / "prepare.log",
                                         phase=lambda d=done: len(os.listdir(d)) if d.is_dir() else -1)
            if rc:
                print((run_dir / "prepare.log").read_text()[-3000:])
                raise SystemExit(f"error: prepare_classification.py exited {rc}")
            index = pd.read_csv(out / "index.csv", dtype={"patient": str}, keep_default_na=False)
            order = [f.stem for f in sorted(done.iterdir(), key=lambda f: f.stat().st_mtime)]
            biggest = max(per_patient[p] for p in chosen)
            results.append((count, mon.peak, secs, int(index.kept.sum()), int(index.total.sum()), biggest))
            patient_peaks[count] = {p: mon.phase_peak.get(i, 0) for i, p in enumerate(order)}
            kept = ", ".join(f"{r.patient}/{r.type} {r.kept}/{r.total}" for r in index.itertuples())
            print(f"{count} patient(s): peak RSS {mon.peak / MB:7.0f} MB  ({(mon.peak - base.peak) / MB:+.0f} MB over "
                  f"baseline), {secs:.0f} s, {len(mon.samples)} samples, {slices_sum(slices, chosen)} slices read, "
                  f"kept {index.kept.sum()}/{index.total.sum()}  {loadavg()}", flush=True)
            print(f"   kept per series: {kept}")
            steps = [f"{p} {mon.phase_peak.get(i, 0) / MB:.0f} MB (volumes {per_patient[p] / MB:.0f} MB)"
                     for i, p in enumerate(order)]
            print(f"   peak RSS while preparing each patient, in order: {', '.join(steps)}; before the first: "
                  f"{mon.phase_peak.get(-1, 0) / MB:.0f} MB, after the last (index, dataset.json): "
                  f"{mon.phase_peak.get(len(order), 0) / MB:.0f} MB", flush=True)
    print("RESULT (b) prepare_classification.py peak RSS (process tree, polled every 0.1 s; "
          f"--image-size {args.prep_image_size}, --workers {args.prep_workers}, cpu)")
    for count, peak, secs, kept, total, biggest in results:
        print(f"  {count} patient(s): {peak / MB:7.0f} MB peak, {(peak - base.peak) / MB:+6.0f} MB over baseline; "
              f"largest patient's float32 volumes {biggest / MB:.0f} MB (over-baseline / that = "
              f"{(peak - base.peak) / biggest:.1f}); kept {kept}/{total} slices; {secs:.0f} s")
    (c0, p0, *_), (c1, p1, *_) = results[0], results[-1]
    growth = (p1 - p0) / MB
    print(f"  RATIO peak({c1})/peak({c0}) = {p1 / p0:.2f}; growth {growth:+.0f} MB for {c1 - c0} more patient(s) "
          f"= {growth / (c1 - c0):+.0f} MB/patient vs {statistics.mean(per_patient.values()) / MB:.0f} MB "
          "mean float32 volumes per patient (goal: no growth with the number of patients)")
    small, large = patient_peaks[c0], patient_peaks[c1]
    common = [p for p in small if p in large]
    if common:
        print(
            "  same patient, peak while preparing it: "
            + ", ".join(
                f"{p} {small[p] / MB:.0f} MB ({c0}-patient run) vs {large[p] / MB:.0f} MB ({c1}-patient run)"
                for p in common
            )
        )
    print(f"   end  {loadavg()}", flush=True)


def slices_sum(slices: dict[str, int], chosen: list[str]) -> int:
    return sum(slices[p] for p in chosen)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--part", choices=["loader", "memory", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="model device for (a)")
    g = parser.add_argument_group("(a) loader vs model")
    g.add_argument("--series", type=int, default=8, help="prepared series to write (4 per patient)")
    g.add_argument("--workers", type=int, default=2)
    g.add_argument("--batch-size", type=int, default=2, help="loader batch (chunks)")
    g.add_argument("--image-size", type=int, default=224)
    g.add_argument("--seq-len", type=int, default=chunk_dataset.SEQ_LEN)
    g.add_argument("--stride", type=int, default=chunk_dataset.STRIDE)
    g.add_argument("--loader-batches", type=int, default=20)
    g.add_argument("--model-batch", type=int, default=1,
                   help="chunks per training step (1 = 35 frames; 2 needs ~2x the memory, several GB at 224)")
    g.add_argument("--model-steps", type=int, default=1, help="timed steps per round and phase")
    g.add_argument("--rounds", type=int, default=2)
    g.add_argument("--no-frozen", action="store_true", help="skip the frozen-backbone step rate")
    g = parser.add_argument_group("(b) prepare_classification.py memory")
    g.add_argument("--synth", type=Path, help="reuse a synthetic dataset made with --size full")
    g.add_argument("--synth-patients", type=int, default=8, help="synth --patients (about 3/4 go to train)")
    g.add_argument("--counts", type=int, nargs="+", default=[2, 6], help="train patients per run")
    g.add_argument("--prep-image-size", type=int, default=32,
                   help="segmenter input size for prepare (224 costs seconds per slice on CPU)")
    g.add_argument("--prep-workers", type=int, default=2)
    g.add_argument("--pick", choices=["largest", "first"], default="largest",
                   help="which train patients a run of N takes: the N largest (default; then a smaller run already "
                        "holds the largest patient) or the first N by ID")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.part in ("loader", "both"):
        run_loader_part(args)
    if args.part in ("memory", "both"):
        run_memory_part(args)


if __name__ == "__main__":
    main()
