"""Stage-1 training loader throughput against the segmenter's training step rate.

    python benchmarks/segmentation_data.py [--data sample|synth] [--patients N] [--workers 2]
        [--batch-size 16] [--image-size 224] [--loader-batches 30] [--model-batch 4]
        [--model-steps 1] [--rounds 2] [--device cpu] [--store DIR]

Builds a stage-1 slice store in a temp dir with ``mgmt2d.segdata.prepare`` (the code behind
prepare_segmentation_data.py) from the real BraTS sample (``../shared/data/brats2015-sample``,
FLAIR + T1ce) or from synthetic BraTS-geometry data (``python -m mgmt2d synth --size full``),
then alternates, ``--rounds`` times:

* loader: ``make_train_loader`` over ``seg_dataset.SegmentationSliceDataset`` with
  ``augment.train_transform()`` (the training loader: shuffle, ``--workers`` workers, new
  workers every epoch), ``--loader-batches`` batches of ``--batch-size``; the main process
  only consumes batches. Steady rate = slices after the first batch of each epoch iterator /
  their time (worker start-up excluded); the rate with start-up is printed too.
* model: ``segmenter.build_segmenter()`` in train mode, AdamW (lr 1e-4), Dice loss
  (``dice_loss``) on random tensors of ``--model-batch`` x 3 x S x S; forward +
  backward + step, ``--model-steps`` timed steps (one untimed warm-up step first).

The ratio loader_rate / model_rate (goal >= 3: the model, not the loader, is the bottleneck)
is printed per round and for the medians. Measurements alternate so that load from other
jobs on a shared machine hits both. Also printed: the loader's cost per slice in-process
(0 workers), i.e. what one core sustains, which is what matters when the model runs on a GPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

from mgmt2d.device import resolve_device
from mgmt2d.segmentation import dataset as seg_dataset
from mgmt2d.segmentation import model as segmenter
from mgmt2d.segmentation import prepare as segdata
from mgmt2d.training import augment
from mgmt2d.training.distributed import make_train_loader
from mgmt2d.training.metrics import dice_loss
from mgmt2d.training.seeding import epoch_seed

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "brats2015-sample"


def loadavg() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def header(title: str) -> None:
    print(f"== {title}")
    print(
        f"   {datetime.now().isoformat(timespec='seconds')}  {platform.node()}  "
        f"{platform.processor() or platform.machine()}  "
        f"{os.cpu_count()} CPUs  torch {torch.__version__} ({torch.get_num_threads()} threads)  {loadavg()}"
    )


def build_store(args: argparse.Namespace, tmp: Path) -> Path:
    """A complete stage-1 store: reuse ``--store`` when given, else prepare one in ``tmp``."""
    if args.store is not None:
        seg_dataset.load_index(args.store)  # refuses an unfinished store
        print(f"store: reusing {args.store}")
        return args.store
    if args.data == "sample":
        if not SAMPLE.is_dir():
            raise SystemExit(f"error: {SAMPLE} not found; use --data synth")
        task1 = SAMPLE
        modalities = tuple(args.modalities or ("flair", "t1ce"))
    else:
        synth = tmp / "synth"
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "mgmt2d", "synth", "--out", str(synth), "--patients", str(args.patients),
             "--size", "full", "--seed", str(args.seed)],
            check=True, stdout=subprocess.DEVNULL,
        )
        print(f"synthetic data: {args.patients} patient(s), --size full, {time.perf_counter() - t0:.1f} s")
        task1 = synth / "task1"
        modalities = tuple(args.modalities or segdata.MODALITIES)
    store = tmp / "segmentation_data"
    params = segdata.PrepareParams(modalities=modalities, keep_task2_overlap=True)
    summary = segdata.prepare(task1, store, params, segdata.RunOptions(workers=args.workers, progress=False))
    print(f"store: {summary.n_slices} slices from {len(summary.processed)} case(s) ({', '.join(modalities)}) "
          f"prepared in {summary.seconds:.1f} s with {args.workers} worker(s) -> {store}")
    return store


def time_loader(dataset: seg_dataset.SegmentationSliceDataset, batch_size: int, workers: int, n_batches: int,
                seed: int) -> dict[str, float]:
    """Consume ``n_batches`` batches, re-creating the epoch iterator as training does.

    Returns slices/s with and without the first batch of each epoch (worker start-up).
    """
    loader = make_train_loader(dataset, batch_size, seed, num_workers=workers)
    if len(loader) == 0:
        raise SystemExit(f"error: {len(dataset)} slices is less than one batch of {batch_size}")
    done = slices = steady_slices = 0
    steady_s = 0.0
    start = time.perf_counter()
    epoch = 0
    while done < n_batches:
        loader.generator.manual_seed(epoch_seed(seed, epoch))
        loader.sampler.set_epoch(epoch)
        epoch += 1
        t_prev = None
        for image, mask in loader:
            now = time.perf_counter()
            assert image.shape[1:] == (3, dataset.image_size, dataset.image_size) and mask.shape[1] == 2
            if t_prev is not None:
                steady_s += now - t_prev
                steady_slices += len(image)
            t_prev = now
            slices += len(image)
            done += 1
            if done >= n_batches:
                break
    total = time.perf_counter() - start
    return {"steady": steady_slices / steady_s if steady_s else float("nan"), "with_startup": slices / total,
            "epochs": epoch, "slices": slices}


def time_model(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: int, size: int, steps: int,
               device: torch.device) -> float:
    """Training steps per second x batch (slices/s) on random inputs and random binary masks."""
    x = torch.randn(batch, 3, size, size, device=device)
    y = (torch.rand(batch, 2, size, size, device=device) > 0.8).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = dice_loss(model(x), y)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", choices=["sample", "synth"], default="sample" if SAMPLE.is_dir() else "synth",
                        help="real BraTS sample (default when present) or synthetic full-size data")
    parser.add_argument("--patients", type=int, default=3, help="synthetic Task 1 cases (--data synth)")
    parser.add_argument("--modalities", nargs="+", help="default: flair t1ce (sample), all four (synth)")
    parser.add_argument("--store", type=Path, help="reuse an existing complete store instead of preparing one")
    parser.add_argument("--workers", type=int, default=2, help="loader (and prepare) workers")
    parser.add_argument("--batch-size", type=int, default=16, help="loader batch size")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--loader-batches", type=int, default=30, help="batches per loader measurement")
    parser.add_argument("--model-batch", type=int, default=4, help="batch of the training step (per-slice rate is "
                        "nearly flat in the batch on CPU; 16 just takes 4x longer)")
    parser.add_argument("--model-steps", type=int, default=1, help="timed training steps per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating loader/model rounds")
    parser.add_argument("--device", default="cpu", help="model device (cpu; cuda when present)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = resolve_device(args.device)

    header("stage-1 loader vs segmenter training step")
    with tempfile.TemporaryDirectory(prefix="mgmt2d-bench-seg-") as tmp_name:
        store = build_store(args, Path(tmp_name))
        index = seg_dataset.load_index(store)
        dataset = seg_dataset.SegmentationSliceDataset(
            store, index, args.image_size, transform=augment.train_transform(), seed=args.seed
        )
        shapes = index.groupby(["height", "width"]).size().to_dict()
        print(f"dataset: {len(dataset)} slices, stored sizes {shapes}, image size {args.image_size}, "
              f"batch {args.batch_size}, {args.workers} workers")

        torch.manual_seed(args.seed)
        model = segmenter.build_segmenter().to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        t0 = time.perf_counter()
        time_model(model, opt, args.model_batch, args.image_size, 1, device)  # warm-up (allocations, oneDNN)
        print(f"model: UNet++/DenseNet121, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params, "
              f"batch {args.model_batch}, device {device}; warm-up step {time.perf_counter() - t0:.1f} s")

        # In-process cost per slice (what one core sustains), measured once.
        solo = time_loader(dataset, args.batch_size, 0, max(args.loader_batches // 3, 2), args.seed)
        print(
            f"loader in-process (0 workers): {solo['steady']:.1f} slices/s = {1000 / solo['steady']:.1f} ms per slice "
            "of one core"
        )

        loader_rates, startup_rates, model_rates = [], [], []
        for r in range(args.rounds):
            lo = time_loader(dataset, args.batch_size, args.workers, args.loader_batches, args.seed + r)
            mo = time_model(model, opt, args.model_batch, args.image_size, args.model_steps, device)
            loader_rates.append(lo["steady"])
            startup_rates.append(lo["with_startup"])
            model_rates.append(mo)
            print(f"round {r + 1}: loader {lo['steady']:8.1f} slices/s ({lo['with_startup']:.1f} with worker start-up, "
                  f"{lo['epochs']} epoch iterator(s))  model {mo:7.3f} slices/s ({args.model_batch / mo:.1f} s/step)  "
                  f"ratio {lo['steady'] / mo:8.1f}  {loadavg()}")

    lo_m, lo_s, mo_m = statistics.median(loader_rates), statistics.median(startup_rates), statistics.median(model_rates)
    print("RESULT stage-1 (medians over rounds)")
    print(f"  loader  {lo_m:9.1f} slices/s ({args.workers} workers; {lo_s:.1f} incl. worker start-up per epoch)")
    print(f"  model   {mo_m:9.3f} slices/s (forward+backward+AdamW at {args.image_size}, {device})")
    print(f"  RATIO loader/model = {lo_m / mo_m:.1f}  (goal >= 3: {'met' if lo_m / mo_m >= 3 else 'NOT met'})")
    print(f"  a model step rate of {lo_m / 3:.0f} slices/s would make the ratio 3 with this loader "
          f"({solo['steady']:.0f} slices/s per loader core)")
    print(f"   end  {loadavg()}")


if __name__ == "__main__":
    main()
