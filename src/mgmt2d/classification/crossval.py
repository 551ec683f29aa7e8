"""Cross-validated stage 2 (``train_classification.py --fold all``): which runs a command trains,
continues or skips, and the out-of-fold predictions of its fold models.

Runs
----
``--fold all`` trains every fold of KFOLD_PATH in turn, each in ``CLASSIFICATION_MODEL_DIR/<type>/fold<k>/``;
with ``--mri-type all`` every type's folds, type after type. A command with more than one run
(``--fold all``, or ``--mri-type all``) decides for all of them before the first epoch, from each
run folder's ``last.pt`` (:func:`run_state`; "finished": the epochs of this command done, or stopped early):

=============== ============== ======================== =========
flags           no ``last.pt``  ``last.pt``, unfinished  finished
=============== ============== ======================== =========
(none)          train          refused (all named)      refused
``--resume``    train          continue from last.pt    skipped
``--overwrite`` train afresh   train afresh             afresh
=============== ============== ======================== =========

so a killed command continues with the same command plus ``--resume``. ``--resume`` when none of the
command's runs has a ``last.pt`` is refused (as for one run: nothing to continue, a wrong folder?),
and so is a run to continue or keep that holds out other patients than its fold holds now
(:func:`check_held_out`). One run (one type, one fold) keeps the trainer's own rules.

Out-of-fold predictions
-----------------------
Every patient with a usable series of the type is scored by the best checkpoint (``best.pt``) of
the one fold that held it out: the patient score of the validation AUC (mean chunk probability
over the patient's series of that type, no test-time zoom), computed by the validation code
itself (the same dataset, loader, batch size, autocast and metric object as the training run's
validation pass). Written beside the fold folders as ``oof_predictions.csv``
(``BraTS21ID,MGMT_value,fold``: ``MGMT_value`` is the predicted probability, as in a submission)
with ``oof_predictions_config.json`` (the folds file and its SHA-256, each fold's checkpoint with
its SHA-256, best epoch and held-out patients, the patients of the folds file without a usable series).

Why ``best.pt`` is re-scored rather than ``val_patients.csv`` copied: that file is written by the
epoch-end hook *after* the epoch's checkpoints, so a run killed in between (or resumed past it)
keeps an older epoch's scores, and nothing in it says which epoch it holds; and under torchrun, a
backbone with BatchNorm validates each process's share with that process's own running statistics,
not the saved ones (rank 0's). Re-scoring costs one validation pass per fold and holds by
construction; on the training device it gives the ``val_patients.csv`` of an uninterrupted
single-process run (the tests compare them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mgmt2d.classification.dataset import ChunkDataset, load_index, split_by_fold
from mgmt2d.classification.model import build_classifier
from mgmt2d.classification.prepare import read_fold_table
from mgmt2d.data.io import file_sha256, write_csv_atomic, write_run_config
from mgmt2d.data.task2 import MRI_TYPES
from mgmt2d.device import autocast_dtype, autocast_name
from mgmt2d.training.checkpoint import checkpoint_config, load_checkpoint, load_strict, unwrap_state_dict
from mgmt2d.training.distributed import DistContext, make_eval_loader
from mgmt2d.training.loop import evaluate
from mgmt2d.training.metrics import ClassificationLoss, ClassificationMetrics
from mgmt2d.training.trainer import BEST, LAST

log = logging.getLogger(__name__)

OOF_CSV = "oof_predictions.csv"
OOF_CONFIG = "oof_predictions_config.json"
OOF_PER_TYPE = "oof_predictions_per_type.csv"
COLUMNS = ["BraTS21ID", "MGMT_value", "fold"]
PATIENT_SCORE = ("mean chunk probability of the patient's prepared series (the validation patient score; "
                 "no test-time zoom), from best.pt of the fold that held the patient out")

NOT_STARTED, UNFINISHED, FINISHED = "not started", "unfinished", "finished"
TRAIN, RESUME, SKIP = "train", "resume", "skip"


class CrossValError(ValueError):
    """A fold set that cannot give out-of-fold predictions, or a run plan the flags do not allow (one line)."""


# --------------------------------------------------------------------------- folds


def kfold_table(path: Path) -> dict[str, int]:
    """patient -> fold of a folds CSV (KFOLD_PATH); a patient in no fold or in two is refused naming the file."""
    frame = read_fold_table(Path(path))
    if frame.empty:
        raise CrossValError(f"{path} lists no patient; delete it and run prepare_classification.py --split train")
    return dict(zip(frame["BraTS21ID"], frame["fold"].astype(int)))


def check_index_folds(index: pd.DataFrame, kfold: Mapping[str, int], folds_path: Path, index_path: Path) -> None:
    """Every prepared patient in exactly the fold of KFOLD_PATH that its index.csv row trains with.

    Training splits by index.csv's ``fold`` column (copied from KFOLD_PATH by prepare_classification.py);
    a folds file edited afterwards would make "the fold that held a patient out" mean two things.
    """
    patients = index.drop_duplicates("patient")
    missing = sorted(set(patients.patient) - set(kfold))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CrossValError(f"{folds_path}: patient {missing[0]}{more} of {index_path} is in no fold; "
                            "give every prepared patient a fold (or delete the folds file and rerun prepare)")
    differ = patients[[int(f) != kfold[p] for p, f in zip(patients.patient, patients.fold)]]
    if len(differ):
        pid, fold = differ.patient.iloc[0], int(differ.fold.iloc[0])
        raise CrossValError(
            f"{index_path} trains patient {pid} in fold {fold} but {folds_path} puts it in fold {kfold[pid]}: the "
            "folds file changed after prepare_classification.py; rerun it (it takes the folds file again) or restore "
            "the file")


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunState:
    """Where a run folder stands: ``status`` (not started, unfinished, finished), epochs done of asked,
    and the patients the run holds out (its recorded ``val_patients``)."""

    status: str
    epoch: int = 0
    epochs: int = 0
    held_out: tuple[str, ...] = ()

    def describe(self) -> str:
        return self.status if self.status == NOT_STARTED else f"{self.status}, epoch {self.epoch} of {self.epochs}"


def run_state(run_dir: Path, epochs: int | None = None) -> RunState:
    """The state of the run in ``run_dir`` from its ``last.pt`` (tensors mapped, not read).

    Finished: no mid-epoch position, and early stopping fired or ``epochs`` (default: the epochs the
    run was started with) are done, i.e. what the trainer would do on ``--resume`` is nothing.
    """
    last = Path(run_dir) / LAST
    if not last.is_file():
        return RunState(NOT_STARTED)
    ckpt = load_checkpoint(last, mmap=True)
    config = checkpoint_config(ckpt)
    total = int(epochs if epochs is not None else config.get("epochs", 0))
    done = int(ckpt.get("epoch", 0))
    stopped = bool((ckpt.get("early_stopping") or {}).get("stopped"))
    finished = not ckpt.get("position") and (stopped or done >= total)
    return RunState(FINISHED if finished else UNFINISHED, done, total, tuple(config.get("val_patients") or ()))


@dataclass(frozen=True)
class Run:
    """One (type, fold) run of a command and what the command does with it."""

    mri_type: str
    fold: int
    out_dir: Path
    state: RunState
    action: str


def run_dir(model_dir: Path, mri_type: str, fold: int) -> Path:
    return Path(model_dir) / mri_type / f"fold{fold}"


def plan_runs(model_dir: Path, types: Sequence[str], folds: Sequence[int], epochs: int, resume: bool) -> list[Run]:
    """The command's runs in training order (type after type, fold after fold) with their action.

    Without ``resume`` every run is trained from the start (:func:`check_plan` refuses that over an
    existing run unless ``--overwrite``, which the caller passes on to the trainer).
    """
    runs = []
    for mri_type in types:
        for fold in folds:
            folder = run_dir(model_dir, mri_type, fold)
            state = run_state(folder, epochs)
            action = TRAIN
            if resume and state.status != NOT_STARTED:
                action = SKIP if state.status == FINISHED else RESUME
            runs.append(Run(mri_type, fold, folder, state, action))
    return runs


def check_plan(runs: Sequence[Run], resume: bool, overwrite: bool, outputs: Sequence[Path] = ()) -> None:
    """Refuse, before any training, a plan that would replace runs or outputs without a flag saying so.

    ``outputs`` are the files the command writes at its end (the out-of-fold files): like a run, an
    existing one needs ``--resume`` (it is written again) or ``--overwrite``.
    """
    started = [r for r in runs if r.state.status != NOT_STARTED]
    existing = [p for p in outputs if Path(p).exists()]
    if resume and not started:
        where = runs[0].out_dir.parent.parent if runs else "CLASSIFICATION_MODEL_DIR"
        raise CrossValError(f"--resume: none of this command's runs has started (no last.pt in "
                            f"{where}/<type>/fold<k>/); leave out --resume to start them")
    if not (resume or overwrite) and (started or existing):
        named = [f"{r.out_dir} ({r.state.describe()})" for r in started] + [str(p) for p in existing]
        more = f" and {len(named) - 1} more" if len(named) > 1 else ""
        raise CrossValError(f"{named[0]}{more} already exist{'s' if len(named) == 1 else ''} from an earlier run; "
                            "pass --resume to continue this command (finished runs are kept) or --overwrite to "
                            "start it afresh")


def check_held_out(runs: Sequence[Run], data_dir: Path) -> None:
    """Refuse to continue or keep a run that held out other patients than its fold holds now in
    ``data_dir``'s index.csv: resumed, it would train on patients it validated on before (and the
    out-of-fold file would score patients its model saw)."""
    for r in runs:
        if r.action == TRAIN:
            continue
        _, held_out = split_by_fold(load_index(data_dir, r.mri_type), r.fold)
        if tuple(sorted(held_out.patient.unique())) != r.state.held_out:
            raise CrossValError(
                f"{r.out_dir / LAST} holds out other patients than fold {r.fold} of {Path(data_dir) / 'index.csv'} "
                "now: the folds changed after it was trained; train this command afresh with --overwrite")


def log_plan(runs: Sequence[Run]) -> None:
    for r in runs:
        what = {TRAIN: "train", RESUME: "continue from last.pt", SKIP: "finished, skipped"}[r.action]
        log.info("%s fold %d (%s): %s", r.mri_type, r.fold, r.state.describe(), what)


# --------------------------------------------------------------------------- out-of-fold scores


@dataclass
class ScoreOptions:
    """How fold models are scored: the device and autocast flag of the training command; under
    torchrun every process scores its share (``ctx``), as in training's validation pass."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: bool = True
    workers: int = 0
    progress: bool | None = False
    ctx: DistContext = field(default_factory=DistContext)


@dataclass
class OutOfFold:
    """One file's out-of-fold predictions (``COLUMNS``, one row per patient) and its sidecar record."""

    table: pd.DataFrame
    record: dict[str, Any]


def score_fold(folder: Path, held_out: pd.DataFrame, data_dir: Path,
               options: ScoreOptions) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The patient table (patient_id, label, prob, n_chunks) of ``folder``'s best.pt on ``held_out``
    (index rows), through training's validation code, and the checkpoint's record for the sidecar.

    The checkpoint must have held out exactly these patients (its recorded ``val_patients``).
    """
    best = Path(folder) / BEST
    ckpt = load_checkpoint(best)
    config = checkpoint_config(ckpt)
    patients = sorted(held_out.patient.unique())
    if config.get("val_patients") != patients:
        raise CrossValError(f"{best} was trained holding out other patients than its fold holds now in "
                            f"{Path(data_dir) / 'index.csv'}: the folds changed after training; retrain it with "
                            "--overwrite")
    model = build_classifier(config["backbone"], int(config["lstm_hidden"]), int(config["seq_len"]))
    load_strict(model, unwrap_state_dict(ckpt, best), best, "the stage-2 classifier (CNN + BiLSTM)")
    dataset = ChunkDataset(held_out, data_dir, int(config["image_size"]), int(config["seq_len"]), int(config["stride"]),
                           augment=False, seed=int(config["seed"]))
    batch = int(config["batch_size"]) // int(config.get("accumulate", 1))
    loader = make_eval_loader(dataset, batch, options.device, options.workers, options.ctx)
    metrics = ClassificationMetrics()
    evaluate(model, loader, ClassificationLoss(), metrics, options.device,
             amp=autocast_dtype(options.device, options.amp) is not None, progress=options.progress,
             gather=options.ctx.active)
    early = ckpt.get("early_stopping") or {}
    record = {"checkpoint": str(best), "sha256": file_sha256(best), "mri_type": config.get("mri_type"),
              "fold": config.get("fold"), "best_epoch": early.get("best_epoch"),
              "monitor": early.get("monitor"), "best_value": early.get("best_value"),
              "epochs_run": int(ckpt.get("epoch", 0)), "held_out": patients}
    return metrics.patient_table(), record


def out_of_fold(type_dir: Path, index: pd.DataFrame, data_dir: Path, folds_path: Path,
                options: ScoreOptions) -> OutOfFold:
    """The out-of-fold predictions of the fold runs in ``type_dir`` (``fold<k>/`` for every fold of
    ``folds_path``) on ``index`` (that type's prepared series, :func:`~mgmt2d.classification.dataset.load_index`).

    Refused, before any scoring, unless every fold's run finished with a best.pt; the message names
    the first fold missing.
    """
    type_dir, data_dir, folds_path = Path(type_dir), Path(data_dir), Path(folds_path)
    kfold = kfold_table(folds_path)
    check_index_folds(index, kfold, folds_path, data_dir / "index.csv")
    folds = sorted(set(kfold.values()))
    target = type_dir / OOF_CSV
    for fold in folds:
        folder = run_dir(type_dir.parent, type_dir.name, fold)
        state = run_state(folder)
        if state.status != FINISHED:
            raise CrossValError(f"cannot write {target}: fold {fold} of {folds_path} is missing ({folder}: "
                                f"{state.describe()}); train it (the same command with --resume), then write again")
        if not (folder / BEST).is_file():
            raise CrossValError(f"cannot write {target}: fold {fold} has no {folder / BEST} (no epoch improved its "
                                "--monitor); retrain that fold with --overwrite")
    tables, checkpoints = [], {}
    for fold in folds:
        _, held_out = split_by_fold(index, fold)
        log.info("%s: scoring fold %d's held-out patients with its best.pt", type_dir.name, fold)
        folder = run_dir(type_dir.parent, type_dir.name, fold)
        table, checkpoints[str(fold)] = score_fold(folder, held_out, data_dir, options)
        if (checkpoints[str(fold)]["mri_type"], checkpoints[str(fold)]["fold"]) != (type_dir.name, fold):
            raise CrossValError(f"{folder / BEST} is a checkpoint of {checkpoints[str(fold)]['mri_type']} fold "
                                f"{checkpoints[str(fold)]['fold']}, not of {type_dir.name} fold {fold}; move it away")
        tables.append(pd.DataFrame({"BraTS21ID": table.patient_id, "MGMT_value": table.prob, "fold": fold}))
    oof = pd.concat(tables, ignore_index=True).sort_values("BraTS21ID", kind="stable").reset_index(drop=True)
    twice = oof.BraTS21ID[oof.BraTS21ID.duplicated()].tolist()
    if twice:   # cannot happen after check_index_folds; a guard, never a silent pick
        raise CrossValError(f"{folds_path}: patient {twice[0]} was held out by two folds")
    not_scored = sorted(set(kfold) - set(oof.BraTS21ID))
    record = {
        "mri_type": type_dir.name, "patient_score": PATIENT_SCORE, "columns": COLUMNS,
        "folds_file": str(folds_path), "folds_file_sha256": file_sha256(folds_path), "folds": folds,
        "data_dir": str(data_dir), "index_sha256": file_sha256(data_dir / "index.csv"),
        "checkpoints": checkpoints, "patients": len(oof),
        "not_scored": {"reason": "in the folds file, without a usable prepared series of this type (none kept, or "
                              "not prepared, e.g. excluded)", "patients": not_scored},
        "scored_on": {"device": str(options.device), "autocast": autocast_name(options.device, options.amp)},
    }
    if not_scored and options.ctx.is_main:
        log.warning("%s: %d patient(s) of %s have no usable series of this type and are not in %s: %s",
                    type_dir.name, len(not_scored), folds_path, target, ", ".join(not_scored[:5]))
    return OutOfFold(oof, record)


def combine_types(per_type: Mapping[str, OutOfFold], files: Mapping[str, Path],
                  folds_path: Path) -> tuple[OutOfFold, pd.DataFrame]:
    """Per patient the mean over the types it has a score for, as inference averages over the types present;
    returns that and the per-type rows (``BraTS21ID,type,prob,fold``, what ``evaluate --per-type`` reads).

    ``files`` are the per-type CSVs already written (recorded with their SHA-256).
    """
    order = [t for t in MRI_TYPES if t in per_type] + sorted(t for t in per_type if t not in MRI_TYPES)
    rows = pd.concat([per_type[t].table.assign(type=t) for t in order], ignore_index=True)
    rows = rows.rename(columns={"MGMT_value": "prob"})[["BraTS21ID", "type", "prob", "fold"]]
    folds = rows.groupby("BraTS21ID").fold.nunique()
    if (folds > 1).any():
        raise CrossValError(f"patient {folds[folds > 1].index[0]} was held out by different folds in different types: "
                            f"the per-type runs used different folds files; retrain with {folds_path} (--overwrite)")
    combined = []
    for pid, group in rows.groupby("BraTS21ID", sort=True):
        combined.append({"BraTS21ID": pid, "MGMT_value": float(np.mean(group.prob.to_numpy())),  # type order
                         "fold": int(group.fold.iloc[0])})
    table = pd.DataFrame(combined, columns=COLUMNS)
    kfold = kfold_table(folds_path)
    record = {
        "patient_score": "mean over the MRI types with a score of each type's out-of-fold probability "
                         "(as inference_on_test.py averages the types present)",
        "columns": COLUMNS, "types": {t: {"file": str(files[t]), "sha256": file_sha256(files[t]),
                                          "patients": len(per_type[t].table)} for t in order},
        "folds_file": str(folds_path), "folds_file_sha256": file_sha256(folds_path),
        "folds": sorted(set(kfold.values())),
        "patients": len(table),
        "not_scored": {"reason": "in the folds file, without a usable prepared series of any type",
                       "patients": sorted(set(kfold) - set(table.BraTS21ID))},
    }
    return OutOfFold(table, record), rows


def write_out_of_fold(path: Path, result: OutOfFold, per_type: pd.DataFrame | None = None) -> None:
    """The CSV (and the per-type rows beside it), then the sidecar that records the CSV's SHA-256: written last."""
    path = Path(path)
    write_csv_atomic(path, result.table)
    record = dict(result.record, file=str(path), sha256=file_sha256(path))
    if per_type is not None:
        write_csv_atomic(path.with_name(OOF_PER_TYPE), per_type)
        record["per_type_file"] = str(path.with_name(OOF_PER_TYPE))
    write_run_config(path.parent, OOF_CONFIG, record)
    log.info("wrote %s (%d patients)", path, len(result.table))


def outputs(model_dir: Path, types: Sequence[str]) -> list[Path]:
    """The out-of-fold files a ``--fold all`` command over ``types`` writes (combined ones with several types)."""
    model_dir = Path(model_dir)
    files = [model_dir / t / name for t in types for name in (OOF_CSV, OOF_CONFIG)]
    if len(types) > 1:
        files += [model_dir / name for name in (OOF_CSV, OOF_CONFIG, OOF_PER_TYPE)]
    return files
