"""Preparation throughput with 1 and 2 shards on this machine, and what it implies for a cluster.

    python benchmarks/shards.py [--stage segmentation|classification] [--cases 8] [--rounds 2]

Runs the real scripts as a user would, each as its own process:

* one shard: ``prepare_segmentation_data.py --workers 1`` (or ``prepare_classification.py``)
  over every case, into an empty folder;
* two shards: ``--shard 1/2`` and ``--shard 2/2`` started together into one empty folder;
  the last to finish assembles the index (timed to the end of both).

The two are measured in alternation, ``--rounds`` times, so load from other jobs hits both;
the printed ratio is throughput(2 shards) / throughput(1 shard) per round and for the
medians, and the two stores are checked equal (index.csv bytes). Then ``--merge`` is timed
alone, and the per-case time of one shard gives the wall time of ``--cases-at-scale``
patients (default 585, the Task 2 training set) on N machines: cases x per-case / N + merge.

``--stage segmentation`` (default): the real BraTS sample (``../shared/data/brats2015-sample``,
4 cases, FLAIR + T1ce) linked under new IDs up to ``--cases`` cases. ``--stage classification``:
synthetic Task 2 DICOM (``mgmt2d.dev.synth``, small size) through a randomly initialised
UNet++ at ``--image-size`` (random weights keep a similar number of slices, the cost is the
same network), on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "brats2015-sample"


def loadavg() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def env() -> dict[str, str]:
    out = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out.pop("MGMT2D_FAULT", None)
    return out


def replicate_sample(dst: Path, cases: int) -> Path:
    """``cases`` Task 1 case folders made of links to the 4 real sample cases, under new IDs."""
    originals = sorted(p for p in SAMPLE.iterdir() if p.is_dir())
    if not originals:
        raise SystemExit(f"the BraTS sample is missing at {SAMPLE}")
    for k in range(cases):
        src = originals[k % len(originals)]
        cid = f"{91000 + k:05d}"
        folder = dst / f"BraTS2021_{cid}"
        folder.mkdir(parents=True)
        for f in src.glob("*.nii.gz"):
            suffix = f.name.split("_")[-1]
            (folder / f"BraTS2021_{cid}_{suffix}").symlink_to(f)
    return dst


def settings_for(root: Path, stage: str, cases: int, image_size: int) -> tuple[Path, list[str], str]:
    """(settings file, script argv after the script, output key) for the chosen stage."""
    data = root / "data"
    if stage == "segmentation":
        replicate_sample(data / "task1", cases)
        (data / "task2").mkdir(parents=True)
        from mgmt2d.dev.synth import settings_json

        settings = {k: str(data / v) for k, v in settings_json().items()}
        args = ["--modalities", "flair", "t1ce", "--workers", "1", "--no-progress"]
        return _write_settings(root, settings), args, "SEGMENT_DATA_DIR"
    import torch

    from mgmt2d.dev import synth
    from mgmt2d.segmentation.model import build_segmenter
    from mgmt2d.training.checkpoint import save_checkpoint

    synth.generate(data, patients=cases, seed=0, size="small")
    settings = {k: str(data / v) for k, v in synth.settings_json().items()}
    torch.manual_seed(0)
    seg = Path(settings["SEGMENT_MODEL_DIR"]) / "fold0" / "best.pt"
    seg.parent.mkdir(parents=True)
    save_checkpoint(seg, {"model": build_segmenter().state_dict()})
    args = ["--split", "train", "--device", "cpu", "--image-size", str(image_size), "--workers", "1"]
    return _write_settings(root, settings), args, "CLASSIFICATION_DATA_DIR"


def _write_settings(root: Path, settings: dict[str, str]) -> Path:
    path = root / "SETTINGS.json"
    path.write_text(json.dumps(settings))
    return path


def with_output(settings: Path, key: str, out: Path) -> Path:
    values = json.loads(settings.read_text())
    values[key] = str(out)
    if key == "CLASSIFICATION_DATA_DIR":
        values["KFOLD_PATH"] = str(out / "folds.csv")
    path = out.parent / f"{out.name}.settings.json"
    path.write_text(json.dumps(values))
    return path


def run_shards(script: Path, settings: Path, args: list[str], n: int) -> float:
    """Wall seconds until all ``n`` shard processes (started together) have exited."""
    t0 = time.perf_counter()
    extra = [[]] if n == 1 else [["--shard", f"{i}/{n}"] for i in range(1, n + 1)]
    procs = [subprocess.Popen([sys.executable, str(script), "--settings", str(settings), *args, *e], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for e in extra]
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"{script.name} failed ({p.returncode}):\n{out[-2000:]}\n{err[-2000:]}")
    return time.perf_counter() - t0


def index_of(out: Path, stage: str) -> Path:
    return out / "index.csv" if stage == "segmentation" else out / "train" / "index.csv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=["segmentation", "classification"], default="segmentation")
    parser.add_argument("--cases", type=int, default=8, help="cases (patients) prepared per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224, help="classification stage: segmenter input size")
    parser.add_argument("--cases-at-scale", type=int, default=585, help="patients for the cluster estimate")
    args = parser.parse_args()
    import torch

    print(f"== shards benchmark, {datetime.now().isoformat(timespec='seconds')}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, {loadavg()}")
    script = REPO / ("prepare_segmentation_data.py" if args.stage == "segmentation" else "prepare_classification.py")
    with tempfile.TemporaryDirectory(prefix="mgmt2d-shards-") as tmp:
        root = Path(tmp)
        settings, script_args, key = settings_for(root, args.stage, args.cases, args.image_size)
        ones, twos = [], []
        last: dict[int, Path] = {}
        for r in range(args.rounds):
            for n in (1, 2):
                out = root / f"out-{r}-{n}"
                seconds = run_shards(script, with_output(settings, key, out), script_args, n)
                if not index_of(out, args.stage).is_file():   # both shards ended before either saw the other
                    seconds += run_shards(script, with_output(settings, key, out), [*script_args, "--merge"], 1)
                (ones if n == 1 else twos).append(seconds)
                last[n] = out
                print(f"round {r + 1}: {n} shard(s) {seconds:7.2f} s  {args.cases / seconds:6.3f} cases/s  "
                      f"({loadavg()})", flush=True)
            print(f"round {r + 1}: throughput ratio 2 shards / 1 shard = {ones[-1] / twos[-1]:.2f}")
        same = index_of(last[1], args.stage).read_bytes() == index_of(last[2], args.stage).read_bytes()
        merge_s = run_shards(script, with_output(settings, key, last[2]), [*script_args, "--merge"], 1)
    one, two = statistics.median(ones), statistics.median(twos)
    per_case = one / args.cases
    print(f"== medians: 1 shard {one:.2f} s, 2 shards {two:.2f} s; throughput ratio 2/1 = {one / two:.2f} "
          f"(index.csv equal: {same})")
    print(f"== per case (1 shard, process start included): {per_case:.2f} s; --merge alone {merge_s:.2f} s "
          f"(process start included)")
    print(f"== estimate for {args.cases_at_scale} patients, one shard per machine like this one:")
    for n in (1, 2, 4, 8, 16, 32):
        est = args.cases_at_scale * per_case / n + merge_s
        print(f"   N={n:<3d} {est / 60:8.1f} min")
    print(f"== end, {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
