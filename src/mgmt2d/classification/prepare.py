"""prepare_classification.py: Task 2 series -> tumour slices stacked [slice, WT, ET], one array per series.

Layout of CLASSIFICATION_DATA_DIR/<split>/:
    series/<patient>_<type>.npy   (K, H, W, 3) uint8, kept slices in series order
    done/<patient>.csv            a patient's index rows without fold, written last (resume marker)
    shards/                       --shard records (mgmt2d.data.shards); the index is assembled after the last shard
    index.csv                     patient,type,kept,total,file,label,fold,note
    dataset.json                  parameters, counts, problems, library versions
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mgmt2d.classification.stack import StackedSeries, StackOptions, segment_and_stack_many
from mgmt2d.data import cohort, shards, task2
from mgmt2d.data import series as series_io
from mgmt2d.data.contract import OURS, InputContract, add_contract_arguments, contract_overrides
from mgmt2d.data.io import (
    check_writable,
    disk_full_hint,
    library_versions,
    save_npy_atomic,
    write_csv_atomic,
    write_json_atomic,
    write_run_config,
)
from mgmt2d.data.settings import Settings, SettingsError, add_settings_argument, load_settings
from mgmt2d.data.skullstrip import SkullStripError, patient_input
from mgmt2d.device import add_device_argument, autocast_name, resolve_device
from mgmt2d.engines import add_backend_arguments, backend_from_args
from mgmt2d.faults import fault_point
from mgmt2d.segmentation import model as segmenter

log = logging.getLogger(__name__)
INDEX_COLUMNS = ["patient", "type", "kept", "total", "file", "label", "fold", "note"]
DONE_COLUMNS = [c for c in INDEX_COLUMNS if c != "fold"]   # the fold is assigned when the index is assembled
N_FOLDS = 5
PUBLISHED_FOLDS = "t4e_folds.csv"
FOLDS_PUBLISHED = f"published ({PUBLISHED_FOLDS}, shipped in mgmt2d/data)"
FOLDS_GENERATED = "generated (stratified by label, seeded; the patients differ from the published folds)"


# ------------------------------------------------------------------------- folds


def make_folds(labels: dict[str, int], n_folds: int = N_FOLDS, seed: int = 42) -> pd.DataFrame:
    """Patient folds stratified by label: each class shuffled (seeded) and dealt round-robin.

    One row per patient, so folds are grouped by patient. Unlike sklearn's StratifiedKFold
    this also works when a class has fewer patients than folds (small or synthetic sets).
    """
    ids = sorted(labels)
    if len(ids) < n_folds:
        raise ValueError(f"{len(ids)} labelled patients cannot fill {n_folds} folds")
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    start = 0
    for label in sorted(set(labels.values())):
        members = [i for i in ids if labels[i] == label]
        for k, pid in enumerate(rng.permutation(members)):
            fold_of[str(pid)] = (start + k) % n_folds
        start += len(members)  # the next class continues where this one stopped: folds stay even
    return pd.DataFrame({"BraTS21ID": ids, "MGMT_value": [labels[i] for i in ids], "fold": [fold_of[i] for i in ids]})


def read_fold_table(path: Path) -> pd.DataFrame:
    """A folds CSV (BraTS21ID,MGMT_value,fold), IDs by :func:`mgmt2d.data.task2.format_id` (the published
    file spells 0, 2, 3...); read by the one patient-CSV reader, so a blank or broken row is named.

    Each patient in exactly one fold: a patient listed twice (in two folds, or twice in one) or
    without a fold (empty, negative or not a whole number) is refused, naming the file.
    """
    rows = task2.read_id_table(path, "BraTS21ID", ("MGMT_value", "fold"), {}, key_columns=("fold",))
    folds: dict[str, list[str]] = {}
    for row in rows:
        fold, label = row.values["fold"], row.values["MGMT_value"]
        if not fold.isdigit():
            raise SettingsError(f"{path} line {row.line}: fold is {fold!r}, not a whole number: patient {row.id} is "
                                "in no fold; give every patient one fold 0, 1, ...")
        if not label.isdigit():
            raise SettingsError(f"{path} line {row.line}: MGMT_value is {label!r}, not a whole number; fix the row, "
                                "or delete the file to regenerate it")
        folds.setdefault(row.id, []).append(fold)
    for pid, where in folds.items():
        if len(where) > 1:
            raise SettingsError(f"{path}: patient {pid} is listed {len(where)} times (folds {', '.join(where)}); "
                                "give every patient one row, in one fold")
    return pd.DataFrame({"BraTS21ID": [r.id for r in rows], "MGMT_value": [int(r.values["MGMT_value"]) for r in rows],
                         "fold": [int(r.values["fold"]) for r in rows]})


def read_folds(path: Path) -> dict[str, int]:
    frame = read_fold_table(path)
    return dict(zip(frame["BraTS21ID"], frame["fold"]))


def published_folds() -> pd.DataFrame:
    """The published solution's stage-2 folds of the 582 training patients (MIT licence,
    ``data/LICENSE-t4e_folds.txt`` beside it), shipped with the package."""
    with resources.as_file(resources.files("mgmt2d") / "data" / PUBLISHED_FOLDS) as path:
        return read_fold_table(path)


def folds_for(labels: dict[str, int], exclude: tuple[str, ...], seed: int) -> tuple[pd.DataFrame, str]:
    """(fold table, source): the published folds when the training patients (labelled minus
    ``exclude``) and their labels are exactly the published ones, else our stratified folds."""
    published = published_folds()
    excluded = {task2.format_id(e, "--exclude") for e in exclude}
    training = {p: int(v) for p, v in labels.items() if p not in excluded}
    if training == dict(zip(published["BraTS21ID"], published["MGMT_value"].astype(int))):
        return published[["BraTS21ID", "MGMT_value", "fold"]], FOLDS_PUBLISHED
    return make_folds(training, seed=seed), FOLDS_GENERATED   # the excluded patients get no fold


def ensure_folds(
    path: Path, labels: dict[str, int], seed: int, exclude: tuple[str, ...] = task2.DEFAULT_EXCLUDE
) -> tuple[dict[str, int], dict[str, Any]]:
    """(patient -> fold, description for dataset.json). KFOLD_PATH is used when it exists (never
    overwritten); else it is written from :func:`folds_for`."""
    if path.exists():
        folds = read_folds(path)
        published = published_folds()
        same = folds == dict(zip(published["BraTS21ID"], published["fold"]))
        source = f"existing KFOLD_PATH ({'equal to' if same else 'not'} the published {PUBLISHED_FOLDS})"
    else:
        table, source = folds_for(labels, exclude, seed)
        write_csv_atomic(path, table)
        log.info("wrote %d-fold patient split to %s (%s)", N_FOLDS, path, source)
        folds = read_folds(path)
    return folds, {"source": source, "path": str(path), "patients": len(folds)}


# ------------------------------------------------------------------------- reading


def read_jpg_series(folder: Path) -> np.ndarray:
    """The optional JPG copy (<type>/*-<n>.jpg, one file per slice) as a float32 (S, H, W) volume."""
    files = sorted(
        folder.glob("*.jpg"), key=lambda p: int(p.stem.rsplit("-", 1)[-1]) if p.stem.rsplit("-", 1)[-1].isdigit() else 0
    )
    images = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]
    images = [im for im in images if im is not None]
    if not images:
        raise ValueError(f"{folder} holds no readable .jpg slice")
    shape = max({im.shape for im in images}, key=[im.shape for im in images].count)
    return np.stack([im if im.shape == shape else cv2.resize(im, shape[::-1]) for im in images]).astype(np.float32)


def with_own_pixels(result: StackedSeries, volume: np.ndarray) -> StackedSeries:
    """Image channel = the series' own 8-bit pixel values (the JPG copy), as the published
    preparation did for JPG input; WT/ET and the kept slices still come from the segmenter
    run on the series min-max (as for DICOM)."""
    if result.kept:
        own = np.clip(np.asarray(volume)[result.slice_index], 0, 255).astype(np.uint8)
        result.images[..., 0] = own
    return result


def _read_jpg_many(folders: list[Path]):
    for folder in folders:
        try:
            yield folder, read_jpg_series(folder), None
        except (ValueError, OSError) as err:
            yield folder, err, None


# ------------------------------------------------------------------------- preparation


def _patient_rows(
    patient: str,
    series: list[tuple[str, Path, np.ndarray | Exception]],
    results: dict[str, StackedSeries],
    out_dir: Path,
    label: int,
) -> list[dict[str, Any]]:
    rows = []
    for mri_type, _path, volume in series:
        row = {"patient": patient, "type": mri_type, "kept": 0, "total": 0, "file": "", "label": label, "note": ""}
        if isinstance(volume, Exception):
            row["note"] = (f"skull stripping failed: {volume}" if isinstance(volume, SkullStripError)
                           else f"unreadable: {volume}")
        else:
            res = results[mri_type]
            row["total"] = res.total
            row["kept"] = res.kept
            if res.kept:
                rel = f"series/{patient}_{mri_type}.npy"
                save_npy_atomic(out_dir / rel, res.images)
                row["file"] = rel
            else:
                row["note"] = res.reason
        rows.append(row)
    return rows


@dataclass
class PrepareOptions:
    """How one split is prepared, besides the segmenter and the contract (see :func:`prepare`)."""

    input_dir: Path | None = None     # the split's patients (default DICOM_DATA_DIR/<split>); NIfTI: case folders
    labels: Path | None = None        # train labels (default DICOM_DATA_DIR/train_labels.csv)
    workers: int = 1
    overwrite: bool = False
    seed: int = 42                                   # fold assignment
    exclude: tuple[str, ...] = task2.DEFAULT_EXCLUDE
    columns: task2.LabelColumns = task2.LabelColumns()   # of train_labels.csv (--id-column, --label-column)
    params: dict[str, Any] = field(default_factory=dict)   # recorded; a resume or a shard must match them
    shard: shards.Shard | None = None
    merge_only: bool = False                         # only assemble finished shards (no model needed)
    brain_extractor: Callable | None = None          # skull stripping (contract.skull_strip): a BrainExtractor


def split_index(settings: Settings, split: str, input_format: str, options: PrepareOptions) -> task2.Task2Index:
    """The split's patients and series: the Kaggle DICOM layout or a NIfTI cohort (``input_format``)."""
    if input_format != "nifti":
        if options.input_dir is not None:
            raise SettingsError("--input is for NIfTI cohorts; DICOM and JPG splits are read from DICOM_DATA_DIR")
        return task2.index_split(settings.existing("DICOM_DATA_DIR"), split, exclude=options.exclude,
                                 columns=options.columns)
    root = options.input_dir or settings["DICOM_DATA_DIR"] / split
    if not root.is_dir():
        raise SettingsError(f"NIfTI cohort folder {root} does not exist (--input, or DICOM_DATA_DIR/{split})")
    labels = task2.read_labels(labels_path(settings, options), options.columns) if split == "train" else None
    return cohort.index_cohort(root, split, labels, options.exclude)


def labels_path(settings: Settings, options: PrepareOptions) -> Path:
    return options.labels or settings.existing("DICOM_DATA_DIR") / "train_labels.csv"


def prepare(settings: Settings, split: str, model: torch.nn.Module | None, device: torch.device,
            stack: StackOptions, options: PrepareOptions | None = None) -> pd.DataFrame | None:
    """Prepare one split; resumable; returns the index (None for a shard that could not assemble yet).

    ``options.shard`` prepares only that shard's patients (:mod:`mgmt2d.data.shards`); the last
    shard to finish, or ``merge_only``, writes the folds (KFOLD_PATH), index.csv and
    dataset.json over every patient, as an unsharded run does at its end.
    """
    o = options or PrepareOptions()
    input_format = stack.contract.input_format
    out_dir = settings["CLASSIFICATION_DATA_DIR"] / split
    params = dict(o.params)
    index = split_index(settings, split, input_format, o)
    started = time.time()

    def assemble(recorded: dict[str, Any], done: dict) -> pd.DataFrame:
        if o.shard is None and not o.merge_only:
            return _assemble(settings, split, out_dir, index, params, o, started)
        shards.clean_stale_temps(out_dir, ("prepare_config.json",))
        write_run_config(out_dir, "prepare_config.json", recorded)
        frame = _assemble(settings, split, out_dir, index, recorded, o, started)
        log.info("assembled %d shard(s) into %s", len(done), out_dir)
        return frame

    if o.merge_only:
        frame = shards.merge(out_dir, params, assemble, force=True)
        if frame is None:
            log.info("another process is assembling %s (run --merge if it was killed)", out_dir)
        return frame
    _claim_output(out_dir, params, o.overwrite, o.shard)
    mine = index.patients if o.shard is None else o.shard.select(index.patients)
    labels = dict(zip(index.series.patient, index.series.label))
    (out_dir / "done").mkdir(parents=True, exist_ok=True)
    if o.shard is None:
        write_run_config(out_dir, "prepare_config.json", params)
    else:
        shards.start(out_dir, o.shard, params, {"workers": o.workers, "device": str(device)}, mine)

    todo = [p for p in mine if not (out_dir / "done" / f"{p}.csv").exists()]
    if len(todo) < len(mine):
        log.info("%d of %d patients already prepared: skipped", len(mine) - len(todo), len(mine))
    series = index.series[index.series.patient.isin(set(todo))]
    if todo and model is None:
        raise ValueError("a segmentation model is needed to prepare patients")
    if input_format == "jpg":
        jpg_root = settings.existing("CLASSIFICATION_RAW_JPG")
        folders = [jpg_root / p / t for p, t in zip(series.patient, series.mri_type)]
        reader = _read_jpg_many(folders)
    else:
        reader = series_io.read_many([Path(p) for p in series.path], stack.contract, o.workers)

    types_by_patient = series.groupby("patient", sort=False)["mri_type"].apply(list).to_dict()
    with tqdm(total=len(todo), desc=f"prepare {split}", unit="patient") as bar:
        for patient in todo:
            read = [(t, next(reader)) for t in types_by_patient.get(patient, [])]
            items = [(t, folder, volume) for t, (folder, volume, _) in read]
            good = {t: (volume, meta) for t, (_, volume, meta) in read if not isinstance(volume, Exception)}
            if input_format != "jpg" and good:   # skull stripping (contract) or the check that none is needed
                try:
                    good = patient_input(good, o.brain_extractor, patient).series
                except SkullStripError as err:
                    items = [(t, folder, err if t in good else v) for t, folder, v in items]
                    good = {}
            results_list = segment_and_stack_many(
                model, [v for v, _ in good.values()], device, stack,
                [None if m is None else m.positive_fraction for _, m in good.values()],
            ) if good else []
            results = dict(zip(good, results_list))
            if input_format == "jpg":
                own = {t: v for t, _, v in items if not isinstance(v, Exception)}
                results = {t: with_own_pixels(r, own[t]) for t, r in results.items()}
            _clean_patient_temps(out_dir, patient)
            rows = _patient_rows(patient, items, results, out_dir, int(labels.get(patient, -1)))
            for row in rows:
                if row["note"]:
                    tqdm.write(f"{patient} {row['type']}: {row['note']}")
            write_csv_atomic(out_dir / "done" / f"{patient}.csv", pd.DataFrame(rows, columns=DONE_COLUMNS))
            fault_point("patient-done")
            bar.update(1)
            bar.set_postfix(kept=sum(r["kept"] for r in rows))
    if o.shard is None:
        return assemble(params, {})
    frame, note = shards.finish_and_merge(out_dir, o.shard, params, mine,
                                          {"seconds": round(time.time() - started, 1)}, assemble)
    if note:
        log.info("shard %s of %s finished; %s", o.shard.label, out_dir, note)
    return frame


def _clean_patient_temps(out_dir: Path, patient: str) -> None:
    """Temp files a killed run left for this patient (only its own shard ever writes them).

    Exact names, not ``.<patient>_*``: patient ``A`` must not match patient ``A_11``'s files.
    """
    patterns = [(out_dir / "series", f".{patient}_{t}.npy.tmp*") for t in task2.MRI_TYPES]
    for folder, pattern in [*patterns, (out_dir / "done", f".{patient}.csv.tmp*")]:
        if folder.is_dir():
            for stale in folder.glob(pattern):
                stale.unlink(missing_ok=True)


def _assemble(settings: Settings, split: str, out_dir: Path, index: task2.Task2Index, params: dict[str, Any],
              options: PrepareOptions, started: float) -> pd.DataFrame:
    """Folds (train split: KFOLD_PATH, computed over all patients), then index.csv, then dataset.json."""
    folds: dict[str, int] = {}
    folds_info: dict[str, Any] | None = None
    if split == "train":
        shards.clean_stale_temps(settings["KFOLD_PATH"].parent, (settings["KFOLD_PATH"].name,))
        folds, folds_info = ensure_folds(
            settings["KFOLD_PATH"], task2.read_labels(labels_path(settings, options), options.columns), options.seed,
            options.exclude
        )
    shards.clean_stale_temps(out_dir, ("index.csv", "dataset.json"))
    frame = _collect(out_dir, index.patients, folds)
    empty = sorted(set(frame.patient) - set(frame[frame.kept > 0].patient))
    write_csv_atomic(out_dir / "index.csv", frame)
    fault_point("merge")
    write_json_atomic(out_dir / "dataset.json", {
        "split": split,
        "params": params,
        "folds": folds_info,
        "counts": {
            "patients": int(frame.patient.nunique()),
            "series": int(len(frame)),
            "series_with_slices": int((frame.kept > 0).sum()),
            "kept_slices": int(frame.kept.sum()),
            "total_slices": int(frame.total.sum()),
        },
        "patients_without_slices": empty,
        "problems": frame[frame.note != ""][["patient", "type", "note"]].to_dict("records"),
        "missing_types": index.missing_types,
        "excluded": index.excluded,
        "seconds": round(time.time() - started, 1),
        "versions": library_versions(),
    })
    if empty:
        log.warning("%d patient(s) yield no slice in any type: %s", len(empty), ", ".join(empty))
    return frame


def _collect(out_dir: Path, patients: list[str], folds: dict[str, int]) -> pd.DataFrame:
    """Every patient's done rows, with the fold assigned now (-1 outside the folds: test split)."""
    missing = [p for p in patients if not (out_dir / "done" / f"{p}.csv").is_file()]
    if missing:
        raise ValueError(f"{out_dir}: patient(s) {', '.join(missing[:5])} not prepared; re-run to finish them")
    parts = [
        pd.read_csv(out_dir / "done" / f"{p}.csv", dtype={"patient": str}, keep_default_na=False) for p in patients
    ]
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=INDEX_COLUMNS)
    frame["patient"] = frame["patient"].map(task2.format_id)
    frame["fold"] = [folds.get(p, -1) for p in frame["patient"]]   # replaces the fold of a store made before
    return frame[INDEX_COLUMNS]


# How a run computes, not what it computes: a resume may change them (the outputs agree within float tolerance).
RUN_ONLY = frozenset({"backend", "threads", "engine_cache", "engine_precision"})


def _claim_output(out_dir: Path, params: dict[str, Any], overwrite: bool, shard: shards.Shard | None = None) -> None:
    """Resume only a run with the same parameters; clear ours only when told to (never from a shard)."""
    meta = out_dir / "prepare_config.json"
    shards.claim(out_dir, params, shard, overwrite)
    if overwrite and out_dir.exists():
        if not meta.exists() and not shards.shards_dir(out_dir).is_dir() and any(out_dir.iterdir()):
            raise SettingsError(
                f"{out_dir} holds files not written by prepare_classification.py; refusing to delete it"
            )
        shutil.rmtree(out_dir)
        return
    if meta.exists():
        previous = json.loads(meta.read_text()).get("config", {})
        if isinstance(previous.get("contract"), dict):   # made before a contract field existed: it had its default
            previous["contract"] = InputContract.from_dict(previous["contract"]).to_dict()
        changed = sorted(k for k in params if k in previous and previous[k] != params[k] and k not in RUN_ONLY)
        if changed:
            raise SettingsError(
                f"{out_dir} was prepared with other values of {', '.join(changed)}; "
                "pass --overwrite to redo it or point CLASSIFICATION_DATA_DIR elsewhere"
            )


# ------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_argument(parser)
    parser.add_argument("--split", choices=["train", "test"], default="train")
    parser.add_argument("--input", type=Path,
                        help="--input-format nifti: the cohort's case folders (default DICOM_DATA_DIR/<split>)")
    parser.add_argument("--labels", type=Path, help="train labels CSV (default DICOM_DATA_DIR/train_labels.csv)")
    parser.add_argument("--seg-model", type=Path, help="stage-1 checkpoint (default SEGMENT_MODEL_DIR/fold0/best.pt)")
    add_device_argument(parser)
    add_backend_arguments(parser)   # the segmenter's (issue 16)
    add_contract_arguments(parser, OURS)
    parser.add_argument("--image-size", type=int, default=OURS.seg_image_size, dest="seg_image_size",
                        help=f"segmenter input size (reference {OURS.seg_image_size})")
    parser.add_argument("--seg-batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="series reading workers (overlap model work)")
    parser.add_argument("--overwrite", action="store_true", help="redo this split from scratch")
    parser.add_argument("--seed", type=int, default=42, help="fold assignment seed")
    parser.add_argument("--min-area-ratio", type=float, default=OURS.min_area_ratio,
                        help=f"WT/brain contour area ratio (reference {OURS.min_area_ratio})")
    parser.add_argument("--max-wt-contours", type=int, default=OURS.max_wt_contours,
                        help=f"max WT contours per slice (reference {OURS.max_wt_contours})")
    parser.add_argument(
        "--exclude", nargs="*", default=list(task2.DEFAULT_EXCLUDE), help="patients to drop (organisers' advice)"
    )
    task2.add_column_arguments(parser, "the train labels (train_labels.csv or --labels)")
    parser.add_argument("--seg-amp", action="store_true",
                        help="fp16 autocast for the segmenter on CUDA (faster; the reference segmented in fp32)")
    shards.add_shard_arguments(parser, "patients of the split")


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.settings)
    seg_model = args.seg_model or settings["SEGMENT_MODEL_DIR"] / "fold0" / "best.pt"
    if not Path(seg_model).is_file():
        raise SettingsError(f"segmentation model {seg_model} not found; run train_segmentation.py or pass --seg-model")
    device = resolve_device(args.device)
    backend = backend_from_args(args, device)
    contract = OURS.with_overrides(**contract_overrides(args))
    opts = StackOptions(contract=contract, seg_batch_size=args.seg_batch_size, amp=args.seg_amp)
    params = {
        "split": args.split, "input_format": args.input_format, "seg_model": str(seg_model),
        "contract": contract.to_dict(), "seg_amp": args.seg_amp,
        "segmenter_autocast": autocast_name(device, args.seg_amp),
        "exclude": sorted(task2.format_id(e, "--exclude") for e in args.exclude), "seed": args.seed,
        **backend.to_dict(),
    }
    shard = shards.shard_of(args)
    check_writable(settings["CLASSIFICATION_DATA_DIR"] / args.split, "prepared data")
    model = None if args.merge else segmenter.with_backend(
        segmenter.load_segmenter(seg_model, device), seg_model, contract.seg_image_size, backend)
    columns = task2.columns_from_args(args)
    if args.split == "train":
        params["label_columns"] = [columns.id, columns.label]
    extractor = None
    if contract.skull_strip and not args.merge:
        from mgmt2d.data.skullstrip import BrainExtractor

        extractor = BrainExtractor(device)
    with disk_full_hint("then run the same command again: the finished patients are kept and it continues with "
                        "the rest"):
        frame = prepare(settings, args.split, model, device, opts, PrepareOptions(
            input_dir=args.input, labels=args.labels, workers=args.workers, overwrite=args.overwrite, seed=args.seed,
            exclude=tuple(args.exclude), columns=columns, params=params, shard=shard, merge_only=args.merge,
            brain_extractor=extractor))
    out = settings["CLASSIFICATION_DATA_DIR"] / args.split
    if frame is None:
        print(f"shard {shard.label if shard else ''} of {out} finished; the index is assembled by the last shard "
              "to finish (or --merge)")
        return 0
    print(f"{frame.patient.nunique()} patients, {int((frame.kept > 0).sum())}/{len(frame)} series with slices, "
          f"{int(frame.kept.sum())} slices kept -> {out}")
    return 0
