"""Benchmark the DICOM series reader against a bare pydicom loop, and read_series_many.

    python benchmarks/read_dicom.py [--series DIR ...] [--repeat N] [--copies K]

Single-series timing alternates our reader and the bare
``[pydicom.dcmread(f).pixel_array for f in files]`` loop over the same files and keeps the
best of ``--repeat`` rounds of each, so page-cache state and machine noise hit both alike.
The bare loop does less than the reader (no ordering, no float32 volume, no rescale), so a
ratio bare/ours near 1 means the extra work costs almost nothing. The throughput part reads
the given series plus ``--copies`` copies of the first one (in a temp dir) with
read_series_many, sequentially and with 2 workers (threads and processes).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pydicom

from mgmt2d.dicom import read_series, read_series_many

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SERIES = REPO.parent / "shared" / "data" / "dicom-t1-mprage"


def bare_read(files: Sequence[Path]) -> list:
    return [pydicom.dcmread(f).pixel_array for f in files]


def best_alternating(
    fns: dict[str, Callable[[], object]], repeat: int
) -> dict[str, float]:
    """Best wall time of each function, run in alternation ``repeat`` times."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bench_single(series: Path, repeat: int) -> None:
    _, meta = read_series(series)  # warm the page cache and imports
    files = list(meta.files)
    bare_read(files)
    best = best_alternating(
        {"ours": lambda: read_series(series), "bare": lambda: bare_read(files)}, repeat
    )
    n = len(files)
    print(f"series {series} ({n} slices, {meta.plane}, order_by={meta.order_by})")
    print(f"  read_series           best {best['ours']:.3f} s  ({n / best['ours']:.0f} slices/s)")
    print(f"  bare pydicom loop     best {best['bare']:.3f} s  ({n / best['bare']:.0f} slices/s)")
    print(f"  ratio bare/ours       {best['bare'] / best['ours']:.2f}  (goal >= 0.9)")


def drain(folders: Sequence[Path], workers: int, executor: str | None) -> int:
    slices = 0
    for folder, volume, _ in read_series_many(folders, workers=workers, executor=executor):
        if isinstance(volume, Exception):
            raise RuntimeError(f"{folder}: {volume}") from volume
        slices += volume.shape[0]
    return slices


def bench_many(folders: Sequence[Path], repeat: int) -> None:
    total = drain(folders, 1, "thread")
    configs = {
        "sequential read_series": lambda: [read_series(f) for f in folders],
        "many workers=1 (thread)": lambda: drain(folders, 1, "thread"),
        "many workers=2 (thread)": lambda: drain(folders, 2, "thread"),
        "many workers=2 (process, default)": lambda: drain(folders, 2, None),
    }
    best = best_alternating(configs, max(1, min(repeat, 3)))
    print(f"read_series_many over {len(folders)} series, {total} slices (best of rounds):")
    for name, seconds in best.items():
        print(f"  {name:<34} {seconds:6.2f} s  {total / seconds:6.0f} slices/s")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--series", type=Path, nargs="+", default=[DEFAULT_SERIES])
    parser.add_argument("--repeat", type=int, default=5, help="rounds; best is kept")
    parser.add_argument("--copies", type=int, default=3,
                        help="temp copies of the first series for the throughput run")
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
        bench_many(folders, args.repeat)


if __name__ == "__main__":
    main()
