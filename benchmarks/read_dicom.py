"""Benchmark the DICOM series reader against a bare pydicom loop, and read_series_many.

    python benchmarks/read_dicom.py [--series DIR ...] [--repeat N] [--copies K] [--work S]

Single-series timing alternates our reader and the bare
``[pydicom.dcmread(f).pixel_array for f in files]`` loop over the same files and keeps the
best of ``--repeat`` rounds of each, so page-cache state and machine noise hit both alike.
The bare loop does less than the reader (no ordering, no float32 volume, no rescale), so a
ratio bare/ours near 1 means the extra work costs almost nothing. The throughput part reads
the given series plus ``--copies`` copies of the first one (in a temp dir) with
read_series_many, sequentially and with 2 workers (threads and processes), and shows the
overlap of reading with simulated model work (``--work`` seconds of sleep per series).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pydicom

from mgmt2d.data.dicom import read_series, read_series_many

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SERIES = REPO.parent / "shared" / "data" / "dicom-t1-mprage"


def bare_read(files: Sequence[Path]) -> list:
    return [pydicom.dcmread(f).pixel_array for f in files]


def best_alternating(
    fns: dict[str, Callable[[], object]], repeat: int
) -> dict[str, tuple[float, float]]:
    """Best (wall, cpu) seconds of each function, run in alternation ``repeat`` times.

    CPU time is this process's only, so it is meaningful for single-process runs: it is
    less sensitive than wall time to other jobs sharing the machine.
    """
    best = {name: (float("inf"), float("inf")) for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def bench_single(series: Path, repeat: int) -> None:
    _, meta = read_series(series)  # warm the page cache and imports
    files = list(meta.files)
    bare_read(files)
    best = best_alternating(
        {"ours": lambda: read_series(series), "bare": lambda: bare_read(files)}, repeat
    )
    n = len(files)
    (ours, ours_cpu), (bare, bare_cpu) = best["ours"], best["bare"]
    print(f"series {series} ({n} slices, {meta.plane}, order_by={meta.order_by}), "
          f"best of {repeat} alternating rounds")
    rows = (("read_series", ours, ours_cpu), ("bare pydicom loop", bare, bare_cpu))
    for label, wall, cpu in rows:
        print(f"  {label:<19} wall {wall:.3f} s ({n / wall:4.0f} slices/s)  cpu {cpu:.3f} s")
    print(f"  ratio bare/ours      wall {bare / ours:.2f}   cpu {bare_cpu / ours_cpu:.2f}   "
          "(goal >= 0.9)")


def drain(
    folders: Sequence[Path], workers: int, executor: str | None, work_s: float = 0.0
) -> int:
    """Consume read_series_many; ``work_s`` of GIL-free waiting per series mimics GPU work."""
    slices = 0
    for folder, volume, _ in read_series_many(folders, workers=workers, executor=executor):
        if isinstance(volume, Exception):
            raise RuntimeError(f"{folder}: {volume}") from volume
        slices += volume.shape[0]
        time.sleep(work_s)
    return slices


def sequential(folders: Sequence[Path], work_s: float = 0.0) -> None:
    for folder in folders:
        read_series(folder)
        time.sleep(work_s)


def bench_many(folders: Sequence[Path], repeat: int, work_s: float) -> None:
    total = drain(folders, 1, None)
    configs = {
        "sequential read_series": lambda: sequential(folders),
        "many workers=1 (thread)": lambda: drain(folders, 1, None),
        "many workers=2 (thread, default)": lambda: drain(folders, 2, None),
        "many workers=2 (process)": lambda: drain(folders, 2, "process"),
    }
    if work_s > 0:
        configs[f"sequential + {work_s:.2f} s work/series"] = lambda: sequential(folders, work_s)
        configs[f"many workers=1 + {work_s:.2f} s work/series"] = lambda: drain(
            folders, 1, None, work_s
        )
    rounds = max(1, min(repeat, 3))
    best = best_alternating(configs, rounds)
    print(f"read_series_many over {len(folders)} series, {total} slices, "
          f"{os.cpu_count()} CPUs, best of {rounds} rounds (wall; pool start-up included):")
    for name, (seconds, _) in best.items():
        print(f"  {name:<38} {seconds:6.2f} s  {total / seconds:6.0f} slices/s")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--series", type=Path, nargs="+", default=[DEFAULT_SERIES])
    parser.add_argument("--repeat", type=int, default=5, help="rounds; best is kept")
    parser.add_argument("--copies", type=int, default=3,
                        help="temp copies of the first series for the throughput run")
    parser.add_argument("--work", type=float, default=0.2,
                        help="seconds of simulated (GIL-free) model work per series; 0 skips")
    args = parser.parse_args(argv)
    for series in args.series:
        if not series.is_dir():
            parser.error(f"series folder not found: {series}")
    for series in args.series:
        bench_single(series, args.repeat)
    with tempfile.TemporaryDirectory(prefix="mgmt2d-bench-") as tmp:
        folders = list(args.series)
        for k in range(args.copies):
            copy = Path(tmp) / f"copy{k}"
            shutil.copytree(args.series[0], copy)
            folders.append(copy)
        bench_many(folders, args.repeat, args.work)


if __name__ == "__main__":
    main()
