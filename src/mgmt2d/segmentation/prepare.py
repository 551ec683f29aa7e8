"""prepare_segmentation_data.py: BraTS Task 1 volumes -> the stage-1 slice store (its layout:
:mod:`mgmt2d.segmentation.store`; read by :mod:`mgmt2d.segmentation.dataset`).

Each modality is min-max scaled to uint8; slices of the three planes are kept by their tumour
ratio and sampled (every T-th); cases stream one per worker and resume case by case;
``--shard I/N`` splits the cases over processes (:mod:`mgmt2d.data.shards`).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mgmt2d.data import shards
from mgmt2d.data.brats import (
    MODALITIES,
    BratsCaseError,
    UnknownLabelsError,
    case_id,
    find_task1,
    parse_label_map,
    parse_modalities,
    read_case,
)
from mgmt2d.data.intensity import minmax_uint8
from mgmt2d.data.io import (
    check_writable,
    disk_full_hint,
    library_versions,
    save_npy_atomic,
    write_csv_atomic,
    write_json_atomic,
)
from mgmt2d.data.settings import add_settings_argument, load_settings
from mgmt2d.data.task2 import format_id, task2_patient_ids
from mgmt2d.faults import fault_point
from mgmt2d.segmentation.store import (
    CASE_COLUMNS,
    CASE_INDEX,
    CASE_MARKER,
    INDEX_COLUMNS,
    PLANES,
    STORE_FORMAT,
    STORE_LAYOUT,
    SegDataError,
    case_dir_of,
    case_store_paths,
    encode_masks,
    is_case_done,
    read_case_marker,
)

log = logging.getLogger(__name__)

DEFAULT_KEEP_RATE = 0.1
DEFAULT_MIN_TUMOUR_RATIO = 0.01
RATIO_OF = ("slice", "brain")   # denominator of the tumour ratio: whole slice (published) or brain area
DEFAULT_RATIO_OF = "slice"
DEFAULT_N_FOLDS = 5
DEFAULT_SEED = 42
OWNED = ("cases", "index.csv", "folds.csv", "dataset.json", shards.SHARDS_DIR)  # what --overwrite may remove
# --------------------------------------------------------------------------- pure parts


def scale_to_uint8(volume: np.ndarray) -> tuple[np.ndarray, bool]:
    """:func:`mgmt2d.data.intensity.minmax_uint8` as (volume, ok); (zeros, False) when constant."""
    scaled = minmax_uint8(volume)
    if scaled is None:
        return np.zeros(np.shape(volume), np.uint8), False
    return scaled, True


def plane_slices(volume: np.ndarray, plane: str) -> np.ndarray:
    """A view (n, H, W) of the slices along a plane's axis; the other axes keep their order."""
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}; choose from {', '.join(PLANES)}")
    return np.moveaxis(volume, PLANES[plane], 0)


def tumour_ratios(
    images: np.ndarray, wt: np.ndarray, of: str = DEFAULT_RATIO_OF
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slice (n, H, W): tumour ratio, tumour pixels, brain pixels.

    Tumour = WT pixels, brain = non-zero image pixels. ``of="slice"`` (the published rule):
    ratio = WT mask mean over the whole slice. ``of="brain"`` (our earlier rule):
    tumour area / brain area, 0 for a slice without brain.
    """
    if of not in RATIO_OF:
        raise SegDataError(f"tumour ratio of {of!r}: choose from {', '.join(RATIO_OF)}")
    brain = np.count_nonzero(images.reshape(len(images), -1), axis=1)
    tumour = np.count_nonzero(wt.reshape(len(wt), -1), axis=1)
    if of == "slice":
        ratio = tumour / float(np.prod(wt.shape[1:])) if len(wt) else np.zeros(0, np.float64)
    else:
        ratio = np.divide(tumour, brain, out=np.zeros(len(brain), np.float64), where=brain > 0)
    return np.asarray(ratio, np.float64), tumour, brain


def kept_slices(ratio: np.ndarray, brain: np.ndarray, min_ratio: float = DEFAULT_MIN_TUMOUR_RATIO) -> np.ndarray:
    """Indices of slices whose tumour ratio exceeds ``min_ratio`` (strictly) and that have brain."""
    ratio = np.asarray(ratio)
    return np.flatnonzero((np.asarray(brain) > 0) & (ratio > min_ratio))


def sampling_step(n_kept: int, keep_rate: float = DEFAULT_KEEP_RATE) -> int:
    """T = max(round(n_kept * keep_rate), 1), Python rounding (half to even) as the reference."""
    return max(round(n_kept * keep_rate), 1)


def sample_slices(kept: np.ndarray, keep_rate: float = DEFAULT_KEEP_RATE) -> np.ndarray:
    """Every T-th kept slice, starting with the first: neighbours are near-duplicates."""
    kept = np.asarray(kept)
    return kept[:: sampling_step(len(kept), keep_rate)]


def assign_folds(case_ids: Iterable[str], n_folds: int = DEFAULT_N_FOLDS, seed: int = DEFAULT_SEED) -> dict[str, int]:
    """Patient-grouped folds: shuffle the sorted IDs with ``seed``, deal round-robin.

    Depends only on the set of IDs and the seed (not on order or worker count);
    fold 0 gets ceil(n / n_folds) patients.
    """
    if n_folds < 2:
        raise SegDataError(f"--n-folds must be at least 2 (got {n_folds})")
    ids = sorted(set(case_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    return {ids[j]: pos % n_folds for pos, j in enumerate(order)}


def filter_task2_overlap(case_ids: Sequence[str], task2_ids: set[str]) -> tuple[list[str], list[str]]:
    """(kept, dropped): Task 1 cases whose ID is a Task 2 patient are dropped (leakage)."""
    task2 = {format_id(t) for t in task2_ids}
    kept = [c for c in case_ids if format_id(c) not in task2]
    dropped = [c for c in case_ids if format_id(c) in task2]
    return kept, dropped


@dataclass(frozen=True)
class PrepareParams:
    """Everything that changes the content of the store (compared on resume)."""

    modalities: tuple[str, ...] = MODALITIES
    n_folds: int = DEFAULT_N_FOLDS
    seed: int = DEFAULT_SEED
    keep_rate: float = DEFAULT_KEEP_RATE
    min_tumour_ratio: float = DEFAULT_MIN_TUMOUR_RATIO
    tumour_ratio_of: str = DEFAULT_RATIO_OF
    keep_task2_overlap: bool = False
    label_map: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", parse_modalities(self.modalities))
        object.__setattr__(self, "label_map", tuple(tuple(int(v) for v in pair) for pair in self.label_map))
        if not 0 < self.keep_rate <= 1:
            raise SegDataError(f"--keep-rate must be in (0, 1] (got {self.keep_rate})")
        if not 0 <= self.min_tumour_ratio < 1:
            raise SegDataError(f"--min-tumour-ratio must be in [0, 1) (got {self.min_tumour_ratio})")
        if self.n_folds < 2:
            raise SegDataError(f"--n-folds must be at least 2 (got {self.n_folds})")
        if self.tumour_ratio_of not in RATIO_OF:
            raise SegDataError(f"--tumour-ratio-of must be one of {', '.join(RATIO_OF)} (got {self.tumour_ratio_of!r})")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["modalities"] = list(self.modalities)
        out["label_map"] = [list(pair) for pair in self.label_map]
        out["planes"] = list(PLANES)
        out["store_format"] = STORE_FORMAT
        return out


@dataclass
class CaseSlices:
    """One case's store content: arrays per plane and the index rows pointing into them."""

    images: dict[str, np.ndarray]   # plane -> uint8 (N, H, W)
    masks: dict[str, np.ndarray]    # plane -> uint8 (M, H, W) encoded WT/ET
    rows: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)


def build_case_slices(
    case: str,
    volumes: dict[str, np.ndarray],
    masks: np.ndarray,
    params: PrepareParams,
) -> CaseSlices:
    """Scale, select and pack one case's slices (pure: arrays in, arrays and rows out).

    ``masks`` is uint8 (2, X, Y, Z) [WT, ET]. A constant modality volume is reported in
    ``warnings`` and contributes no slice.
    """
    paths = case_store_paths(case)
    scaled: dict[str, np.ndarray] = {}
    warnings: list[str] = []
    for mod in params.modalities:
        vol, ok = scale_to_uint8(volumes[mod])
        if ok:
            scaled[mod] = vol
        else:
            warnings.append(f"{mod}: constant volume, skipped")
    code = encode_masks(masks[0], masks[1])
    images_out: dict[str, np.ndarray] = {}
    masks_out: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    for plane in PLANES:
        wt = plane_slices(masks[0], plane)
        code_slices = plane_slices(code, plane)
        height, width = code_slices.shape[1:]
        chosen: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        for mod, vol in scaled.items():
            slices = plane_slices(vol, plane)
            ratio, tumour, brain = tumour_ratios(slices, wt, params.tumour_ratio_of)
            picked = sample_slices(kept_slices(ratio, brain, params.min_tumour_ratio), params.keep_rate)
            chosen[mod] = (picked, ratio, tumour, brain)
        union = np.unique(np.concatenate([c[0] for c in chosen.values()] or [np.zeros(0, np.int64)]))
        mask_row = {int(s): r for r, s in enumerate(union)}
        masks_out[plane] = np.ascontiguousarray(code_slices[union])
        stacks = []
        image_row = 0
        for mod, (picked, ratio, tumour, brain) in chosen.items():
            stacks.append(plane_slices(scaled[mod], plane)[picked])
            for s in picked:
                rows.append({
                    "case": case, "modality": mod, "plane": plane, "slice": int(s),
                    "tumour_ratio": float(ratio[s]), "tumour_pixels": int(tumour[s]),
                    "brain_pixels": int(brain[s]), "height": int(height), "width": int(width),
                    "image_file": paths[f"{plane}_images"], "image_row": image_row,
                    "mask_file": paths[f"{plane}_masks"], "mask_row": mask_row[int(s)],
                })
                image_row += 1
        if stacks:
            images_out[plane] = np.ascontiguousarray(np.concatenate(stacks))
        else:
            images_out[plane] = np.zeros((0, height, width), np.uint8)
    return CaseSlices(images_out, masks_out, rows, warnings)


# --------------------------------------------------------------------------- case writer


@dataclass
class CaseResult:
    """What happened to one case (returned from a worker, so plain data only)."""

    case: str
    status: str                 # "done" or "broken"
    n_slices: int = 0
    warnings: list[str] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0


def write_case(out_dir: Path, case: str, content: CaseSlices, seconds: float = 0.0) -> None:
    """Write arrays, then the case index, then the done marker; each file atomically."""
    folder = case_dir_of(out_dir, case)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp"):  # left by a killed run
        stale.unlink()
    for plane in PLANES:
        save_npy_atomic(folder / f"{plane}_images.npy", content.images[plane])
        save_npy_atomic(folder / f"{plane}_masks.npy", content.masks[plane])
    frame = pd.DataFrame(content.rows, columns=CASE_COLUMNS)
    write_csv_atomic(folder / CASE_INDEX, frame)
    marker = {
        "case": case, "n_slices": len(content.rows), "warnings": content.warnings,
        "seconds": round(seconds, 3), "store_format": STORE_FORMAT,
        "shapes": {p: list(content.images[p].shape) for p in PLANES},
    }
    write_json_atomic(folder / CASE_MARKER, marker)
    fault_point("case-done")


def process_case(case_folder: str | Path, out_dir: str | Path, params: PrepareParams) -> CaseResult:
    """Read, select and write one case; a case that cannot be read is reported, not fatal."""
    start = time.perf_counter()
    case_folder, out_dir = Path(case_folder), Path(out_dir)
    cid = case_id(case_folder)
    try:
        case = read_case(case_folder, params.modalities, with_seg=True, label_map=params.label_map)
    except UnknownLabelsError:
        raise   # a data convention to decide on, not a broken case: the run stops, finished cases stay
    except BratsCaseError as err:
        return CaseResult(cid, "broken", error=str(err))
    except (OSError, EOFError, ValueError, MemoryError) as err:  # truncated gzip and the like
        return CaseResult(cid, "broken", error=f"{type(err).__name__}: {err}")
    content = build_case_slices(cid, case.volumes, case.masks, params)
    del case
    seconds = time.perf_counter() - start
    write_case(out_dir, cid, content, seconds)
    return CaseResult(cid, "done", len(content.rows), content.warnings, seconds=seconds)


def _process_task(task: tuple[str, str, PrepareParams]) -> CaseResult:
    return process_case(*task)


# --------------------------------------------------------------------------- the store


@dataclass
class PrepareSummary:
    """What one prepare run did; also the source of the counts in dataset.json."""

    out_dir: Path
    processed: list[str]
    resumed: list[str]
    broken: dict[str, str]
    dropped_task2: list[str]
    warnings: dict[str, list[str]]
    n_slices: int
    seconds: float
    shard: str = ""     # "I/N" for a sharded run
    note: str = ""      # what happened to the shared outputs (sharded runs)

    def report(self) -> str:
        where = f"{self.out_dir} (shard {self.shard})" if self.shard else str(self.out_dir)
        slices = f"{self.n_slices} slices; " if not self.shard or self.note.startswith("assembled") else ""
        lines = [
            f"{where}: {slices}{len(self.processed)} case(s) written, "
            f"{len(self.resumed)} already finished (skipped), {len(self.broken)} broken, "
            f"{len(self.dropped_task2)} dropped as Task 2 patients; {self.seconds:.1f} s"
        ]
        if self.note:
            lines.append(f"  {self.note}")
        for cid, reason in sorted(self.broken.items()):
            lines.append(f"  broken {cid}: {reason}")
        for cid, msgs in sorted(self.warnings.items()):
            for msg in msgs:
                lines.append(f"  skipped {cid} {msg}")
        return "\n".join(lines)


def _json_roundtrip(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def open_store(out_dir: Path, params: PrepareParams, overwrite: bool, shard: shards.Shard | None = None) -> None:
    """Make ``out_dir`` ready: resume a matching store, refuse a different one, or clear ours.

    Shards of one store check each other's recorded parameters (:mod:`mgmt2d.data.shards`);
    ``--overwrite`` is refused for a shard, which would delete the other shards' work.
    """
    out_dir = Path(out_dir)
    meta_path = out_dir / "dataset.json"
    shards.claim(out_dir, params.as_dict(), shard, overwrite)
    if overwrite:
        for name in OWNED:
            target = out_dir / name
            if target.is_dir():
                log.info("--overwrite: removing %s", target)
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    elif meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text()).get("params", {})
        except json.JSONDecodeError:
            raise SegDataError(
                f"{meta_path} is not valid JSON; pass --overwrite or choose another SEGMENT_DATA_DIR"
            ) from None
        new = _json_roundtrip(params.as_dict())
        if old != new:
            diff = ", ".join(
                f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
                for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)
            )
            raise SegDataError(
                f"{out_dir} holds a segmentation store made with other parameters ({diff}); "
                "pass --overwrite to replace it, or point SEGMENT_DATA_DIR at another folder"
            )
    elif shards.shards_dir(out_dir).is_dir():
        pass  # a sharded store before its merge: the shard records hold the parameters
    elif (out_dir / "cases").exists() or (out_dir / "index.csv").exists():
        raise SegDataError(
            f"{out_dir} holds segmentation data without dataset.json; "
            "pass --overwrite to replace it, or point SEGMENT_DATA_DIR at another folder"
        )
    check_writable(out_dir, "segmentation store")


def _collect_index(out_dir: Path, cases: Sequence[str], folds: dict[str, int]) -> pd.DataFrame:
    frames = []
    for cid in cases:
        frame = pd.read_csv(case_dir_of(out_dir, cid) / CASE_INDEX, dtype={"case": str})
        if len(frame):
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=INDEX_COLUMNS)
    index = pd.concat(frames, ignore_index=True)
    index["case"] = index["case"].map(format_id)
    index["fold"] = index["case"].map(folds).astype(int)
    return index[INDEX_COLUMNS]


def _counts(index: pd.DataFrame, folds: dict[str, int], n_folds: int) -> dict[str, Any]:
    written = set(index["case"]) if len(index) else set()
    by_fold_cases = {str(f): sum(1 for c, g in folds.items() if g == f) for f in range(n_folds)}
    return {
        "slices": int(len(index)),
        "cases_with_slices": len(written),
        "slices_by_plane": {p: int((index["plane"] == p).sum()) for p in PLANES},
        "slices_by_modality": {m: int(n) for m, n in index["modality"].value_counts().sort_index().items()},
        "cases_by_fold": by_fold_cases,
        "slices_by_fold": {str(f): int((index["fold"] == f).sum()) for f in range(n_folds)},
    }


def _candidates(task1_dir: Path, params: PrepareParams, dicom_dir: str | Path | None) -> dict[str, Any]:
    """The Task 1 cases to prepare (sorted IDs), their folders, layout, and the leakage filter's verdict."""
    task1 = find_task1(task1_dir, params.label_map)
    log.info("%s", task1.describe())
    folders = task1.cases
    all_ids = sorted(folders)
    if params.keep_task2_overlap:
        candidates, dropped, leakage = all_ids, [], "disabled (--keep-task2-overlap)"
    elif dicom_dir is not None and Path(dicom_dir).is_dir():
        candidates, dropped = filter_task2_overlap(all_ids, task2_patient_ids(dicom_dir))
        leakage = "applied"
    else:
        candidates, dropped, leakage = all_ids, [], "not applied: DICOM_DATA_DIR absent"
        log.warning("DICOM_DATA_DIR %s not found: Task 2 patients cannot be dropped from Task 1", dicom_dir)
    if not candidates:
        raise SegDataError(
            f"no Task 1 case left to prepare in {task1_dir} ({len(all_ids)} found, {len(dropped)} dropped)"
        )
    return {"folders": folders, "all_ids": all_ids, "candidates": candidates, "dropped": dropped, "leakage": leakage,
            "layout": task1.layout.record()}


def _process(tasks: list[tuple[str, str, PrepareParams]], workers: int, progress: bool) -> list[CaseResult]:
    """Run the case tasks (one per worker, order kept) under a progress bar."""
    from tqdm import tqdm

    results: list[CaseResult] = []
    bar = tqdm(total=len(tasks), desc="segmentation data", unit="case", disable=not progress or not tasks)
    try:
        if workers == 1:
            for task in tasks:
                results.append(_process_task(task))
                bar.update()
        else:
            with multiprocessing.get_context().Pool(workers) as pool:
                for result in pool.imap(_process_task, tasks, chunksize=1):
                    results.append(result)
                    bar.update()
    finally:
        bar.close()
    return results


def _assemble(out_dir: Path, meta: dict[str, Any], found: dict[str, Any], params: PrepareParams,
              broken: dict[str, str], run: dict[str, Any]) -> tuple[dict[str, list[str]], int]:
    """Write index.csv, folds.csv, then dataset.json (complete) from every finished case.

    The folds are computed here over all candidates, so a sharded store gets exactly the
    unsharded folds. Returns (per-case warnings, number of slices).
    """
    candidates = found["candidates"]
    folds = assign_folds(candidates, params.n_folds, params.seed)
    if len(candidates) < params.n_folds:
        log.warning("%d case(s) for %d folds: some folds are empty", len(candidates), params.n_folds)
    shards.clean_stale_temps(out_dir, ("index.csv", "folds.csv", "dataset.json"))
    finished = [c for c in candidates if is_case_done(out_dir, c)]
    warnings = {c: read_case_marker(out_dir, c).get("warnings", []) for c in finished}
    warnings = {c: w for c, w in warnings.items() if w}
    index = _collect_index(out_dir, finished, folds)
    _refuse_empty_store(meta["source"]["task1_dir"], candidates, finished, {c: broken[c] for c in broken})
    write_csv_atomic(out_dir / "index.csv", index)
    write_csv_atomic(out_dir / "folds.csv", pd.DataFrame({"case": list(folds), "fold": list(folds.values())}))
    fault_point("merge")
    broken = {c: broken[c] for c in candidates if c in broken}
    meta.update({
        "status": "complete",
        "counts": {
            "cases_found": len(found["all_ids"]),
            "cases_dropped_task2": len(found["dropped"]),
            "cases_candidates": len(candidates),
            "cases_finished": len(finished),
            "cases_broken": len(broken),
            **_counts(index, folds, params.n_folds),
        },
        "dropped_task2": found["dropped"],
        "broken": broken,
        "skipped_modalities": warnings,
        "run": run,
    })
    write_json_atomic(out_dir / "dataset.json", meta)
    return warnings, len(index)


def _refuse_empty_store(task1_dir: str, candidates: list[str], finished: list[str], broken: dict[str, str]) -> None:
    """A store without a single finished case is no store: one line instead of an empty "complete" one.

    Nothing is marked complete (dataset.json keeps status "incomplete"); cases that did finish stay.
    """
    if finished:
        return
    if broken:
        cid, reason = next(iter(sorted(broken.items())))
        raise SegDataError(f"every one of the {len(candidates)} Task 1 case(s) in {task1_dir} is broken "
                           f"({len(broken)} broken, e.g. {cid}: {reason}); fix or remove them and re-run")
    raise SegDataError(f"no Task 1 case in {task1_dir} was prepared ({len(candidates)} to do); re-run to finish them")


def _store_meta(task1_dir: Path, dicom_dir: str | Path | None, params: PrepareParams, leakage: str,
                layout: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "mgmt2d segmentation slices",
        "status": "incomplete",
        "params": params.as_dict(),
        "source": {
            "task1_dir": str(task1_dir),
            "dicom_dir": str(dicom_dir) if dicom_dir else None,
            "task2_filter": leakage,
            "task1_layout": layout,
        },
        "layout": STORE_LAYOUT,
        "versions": library_versions(),
    }


@dataclass
class RunOptions:
    """How :func:`prepare` runs (what it makes is :class:`PrepareParams`)."""

    dicom_dir: str | Path | None = None   # DICOM_DATA_DIR: its patients are dropped from Task 1 (leakage)
    workers: int = 1
    overwrite: bool = False
    progress: bool = True
    shard: shards.Shard | None = None
    merge_only: bool = False              # only assemble finished shards


def prepare(task1_dir: str | Path, out_dir: str | Path, params: PrepareParams,
            options: RunOptions | None = None) -> PrepareSummary:
    """Build (or resume) the segmentation store (layout: :mod:`mgmt2d.segmentation.store`).

    ``options.dicom_dir`` is DICOM_DATA_DIR when it exists: its patients are dropped from Task 1
    unless ``params.keep_task2_overlap``. Cases are streamed (one per worker, order kept);
    finished cases are skipped, so re-running resumes. ``options.shard`` prepares only that
    shard's cases (:mod:`mgmt2d.data.shards`); the last shard to finish, or ``merge_only``,
    writes the index, folds and dataset.json over every case.
    """
    o = options or RunOptions()
    start = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    task1_dir, out_dir = Path(task1_dir), Path(out_dir)
    found = _candidates(task1_dir, params, o.dicom_dir)
    candidates, folders = found["candidates"], found["folders"]
    meta = _store_meta(task1_dir, o.dicom_dir, params, found["leakage"], found["layout"])

    def assemble_shards(_recorded: dict[str, Any], done: dict) -> PrepareSummary:
        broken: dict[str, str] = {}
        for record in done.values():
            broken.update(record.get("broken", {}))
        run = {"merged_shards": len(done), "shards": {s.label: r.get("run", {}) for s, r in sorted(
            done.items(), key=lambda item: item[0].index)}, "merge_seconds": round(time.perf_counter() - start, 2)}
        warnings, n_slices = _assemble(out_dir, meta, found, params, broken, run)
        return PrepareSummary(out_dir, [], [], broken, found["dropped"], warnings, n_slices,
                              time.perf_counter() - start,
                              note=f"assembled {len(done)} shard(s): index.csv, folds.csv, dataset.json")

    if o.merge_only:
        merged = shards.merge(out_dir, params.as_dict(), assemble_shards, force=True)
        return merged or PrepareSummary(out_dir, [], [], {}, found["dropped"], {}, 0, time.perf_counter() - start,
                                        note=f"another process is assembling {out_dir}")

    open_store(out_dir, params, o.overwrite, o.shard)
    mine = candidates if o.shard is None else o.shard.select(candidates)
    if o.shard is None:
        write_json_atomic(out_dir / "dataset.json", meta)
    else:
        shards.start(out_dir, o.shard, params.as_dict(), {**meta["source"], "workers": o.workers}, mine)

    resumed = [c for c in mine if is_case_done(out_dir, c)]
    done = set(resumed)
    todo = [c for c in mine if c not in done]
    if resumed:
        log.info("resuming: %d of %d case(s) already finished, skipped", len(resumed), len(mine))
    tasks = [(str(folders[c]), str(out_dir), params) for c in todo]
    workers = max(1, min(int(o.workers), len(tasks)))
    results = _process(tasks, workers, o.progress)

    broken = {r.case: r.error for r in results if r.status == "broken"}
    for cid, reason in broken.items():
        log.warning("broken case %s: %s", cid, reason)
    processed = [r.case for r in results if r.status == "done"]
    run = {"started": started_at, "workers": workers, "processed": len(processed), "resumed": len(resumed),
           "seconds": round(time.perf_counter() - start, 2)}
    if o.shard is None:
        warnings, n_slices = _assemble(out_dir, meta, found, params, broken, run)
        return PrepareSummary(out_dir, processed, resumed, broken, found["dropped"], warnings, n_slices,
                              time.perf_counter() - start)
    merged, note = shards.finish_and_merge(out_dir, o.shard, params.as_dict(), mine, {"broken": broken, "run": run},
                                           assemble_shards)
    summary = PrepareSummary(out_dir, processed, resumed, broken, found["dropped"], {}, 0,
                             time.perf_counter() - start, shard=o.shard.label, note=note)
    if merged is not None:
        summary.note, summary.n_slices, summary.warnings = merged.note, merged.n_slices, merged.warnings
    return summary


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The prepare_segmentation_data.py options (also usable by a subcommand)."""
    add_settings_argument(parser)
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES),
                        help="Task 1 modalities to slice (default: t1 t1ce t2 flair; the BraTS 2023+ names "
                             "t1n t1c t2w t2f mean the same)")
    parser.add_argument(
        "--n-folds", type=int, default=DEFAULT_N_FOLDS, help="patient-grouped folds (default 5; fold 0 validates)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"fold shuffle seed (default {DEFAULT_SEED})")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="parallel case readers (default: min(8, CPUs)); 1 runs in-process")
    parser.add_argument("--overwrite", action="store_true",
                        help="remove an existing store in SEGMENT_DATA_DIR first (otherwise a re-run resumes)")
    parser.add_argument(
        "--keep-task2-overlap",
        action="store_true",
        help="keep Task 1 cases that are Task 2 patients (leaks labels into stage 2; for experiments only)",
    )
    parser.add_argument("--keep-rate", type=float, default=DEFAULT_KEEP_RATE,
                        help="take every T-th kept slice of a plane, T = max(round(n_kept * rate), 1) (reference: 0.1)")
    parser.add_argument("--min-tumour-ratio", type=float, default=DEFAULT_MIN_TUMOUR_RATIO,
                        help="keep a slice when its tumour ratio exceeds this (reference: 0.01)")
    parser.add_argument("--tumour-ratio-of", choices=RATIO_OF, default=DEFAULT_RATIO_OF,
                        help="tumour ratio = WT area / whole slice (default, the published rule) "
                             "or / brain (non-zero) area (our earlier rule; keeps more slices)")
    parser.add_argument("--label-map", nargs="+", metavar="FROM:TO", default=[],
                        help="convert segmentation labels first, e.g. 3:4 (enhancing tumour before BraTS 2021); "
                             "a label the layout does not define (BraTS 2021: 0 1 2 4, 2023+: 0 1 2 3) is "
                             "otherwise an error")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    shards.add_shard_arguments(parser, "Task 1 cases")


def main(args: argparse.Namespace) -> int:
    """Run prepare from parsed arguments (user errors raise: one line and exit 2 through ``mgmt2d.cli.run``)."""
    settings = load_settings(args.settings)
    params = PrepareParams(
        modalities=tuple(args.modalities), n_folds=args.n_folds, seed=args.seed,
        keep_rate=args.keep_rate, min_tumour_ratio=args.min_tumour_ratio, tumour_ratio_of=args.tumour_ratio_of,
        keep_task2_overlap=args.keep_task2_overlap, label_map=parse_label_map(args.label_map),
    )
    task1 = settings.existing("TASK1_DIR")
    if args.workers < 1:
        raise SegDataError(f"--workers must be at least 1 (got {args.workers})")
    with disk_full_hint("then run the same command again: the finished cases are kept and it continues with the rest"):
        summary = prepare(task1, settings["SEGMENT_DATA_DIR"], params, RunOptions(
            settings["DICOM_DATA_DIR"], args.workers, args.overwrite, not args.no_progress, shards.shard_of(args),
            args.merge))
    print(summary.report())
    return 0
