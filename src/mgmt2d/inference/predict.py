"""inference_on_test.py: DICOM test patients -> submission CSV (the command line of
:mod:`mgmt2d.inference.pipeline`, which holds the models and the per-patient work).

Writes the submission, its ``_per_type.csv`` and ``_config.json`` as one commit, holding
``<output>.lock`` for the run; each finished patient is kept in ``<output stem>.partial/`` until
then, so ``--resume`` continues a killed run. ``--report-dir`` adds the per-patient report,
``--shard I/N`` / ``--merge`` split the patients (all in :mod:`mgmt2d.inference.partial`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from mgmt2d.data import cohort, shards, task2
from mgmt2d.data.io import as_disk_full, check_writable, is_disk_full
from mgmt2d.data.settings import SettingsError, load_settings
from mgmt2d.device import autocast_name, resolve_device
from mgmt2d.engines import BackendOptions, backend_from_args
from mgmt2d.faults import fault_point
from mgmt2d.inference import partial, report
from mgmt2d.inference.pipeline import (
    DETAIL_COLUMNS,
    FALLBACK,
    PatientResult,
    Predictor,
    Timer,
    add_predictor_arguments,
    input_folder,
    options_from_args,
)

log = logging.getLogger(__name__)


def submission_patients(input_dir: Path, sample: Path | None,
                        input_format: str = "dicom",
                        columns: task2.LabelColumns = task2.LabelColumns()) -> tuple[list[str], list[str]]:
    """(IDs, spelling to write) from sample_submission.csv (its ``columns``), else every patient folder
    (DICOM) or case (NIfTI).

    The sample is read by the one patient-CSV reader (:func:`mgmt2d.data.task2.read_id_table`): an empty
    sample, a missing column, a blank row or a patient listed twice is refused, naming the file and line.
    Patient folders the sample does not list are not scored, with a warning naming them; listed
    patients without a folder are named too (they get the fallback, see the pipeline).
    """
    if input_format == "nifti":
        folders = {case.case_id: case.folder for case in cohort.discover_cohort(input_dir).cases}
    else:
        folders = task2.patient_folders(input_dir)
    if sample is None:
        ids, spelled = list(folders), list(folders)
    else:
        ids, spelled = task2.read_patient_list(sample, columns)
        listed = set(ids)
        unlisted = [p for p in folders if p not in listed]
        if unlisted:
            log.warning("%d patient folder(s) in %s are not listed in %s and are not scored: %s",
                        len(unlisted), input_dir, sample, ", ".join(unlisted))
        absent = [p for p in ids if p not in folders]
        if absent:
            log.warning("%d patient(s) listed in %s have no folder in %s (MGMT_value %.1f): %s",
                        len(absent), sample, input_dir, FALLBACK, ", ".join(absent))
    if input_format != "nifti":
        for pid in ids:   # two folders of one type (FLAIR and flair): refused now, before any model runs
            if pid in folders:
                task2.series_folders(folders[pid])
    return ids, spelled


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_predictor_arguments(parser)
    parser.add_argument("--output", type=Path, help="submission CSV (default TEST_PREDICTION_FILE)")
    parser.add_argument("--sample-submission", type=Path, help="default: sample_submission.csv beside the input folder")
    task2.add_column_arguments(parser, "the sample submission (the submission is written with the same columns)")
    parser.add_argument("--keep-intermediate", action="store_true", help="save stacked slices in TEMP_DATA_DIR")
    parser.add_argument("--report-dir", type=Path,
                        help="also write the per-patient report (python -m mgmt2d report) of every patient here")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing submission file (and reports); discard an unfinished run's "
                             "patients (with --resume: keep them and replace the submission)")
    parser.add_argument("--resume", action="store_true",
                        help="continue a run on this --output that was killed or stopped (its finished patients "
                             "are kept in <output stem>.partial/); refused when the models or options differ")
    shards.add_shard_arguments(parser, "test patients")   # sharded inference: mgmt2d.inference.partial


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.settings)
    input_dir = input_folder(args, settings)
    output = args.output or settings["TEST_PREDICTION_FILE"]
    sample = args.sample_submission or input_dir.parent / "sample_submission.csv"
    if args.sample_submission and not sample.is_file():
        raise SettingsError(f"--sample-submission {sample} not found")
    shard = shards.shard_of(args, overwrite_clears=False)
    if args.resume and (shard is not None or args.merge):
        raise SettingsError("--resume continues an unsharded run; a killed shard is run again with the same "
                            "--shard I/N (its part is written when it finishes)")
    _refuse_existing(output, args.overwrite)
    columns = task2.columns_from_args(args)
    patients, spelled = submission_patients(input_dir, sample if sample.is_file() else None, args.input_format,
                                            columns)
    check_writable(output.parent, "submission")
    if args.merge:   # sharded inference (mgmt2d.inference.partial): assemble the finished shards
        print(partial.merge(output, args.overwrite))
        return 0
    if shard is not None:
        return _run_shard(args, settings, input_dir, output, shard, columns, patients, spelled)
    with contextlib.ExitStack() as held:   # this run alone writes the output (and the report folder)
        held.enter_context(partial.output_lock(output))
        _refuse_existing(output, args.overwrite)
        partial.check_leftover(output, args.resume, args.overwrite)
        if args.report_dir is not None:
            check_writable(args.report_dir, "report")
            held.enter_context(report.report_lock(args.report_dir))
        return _run(args, settings, input_dir, output, columns, patients, spelled)


def _refuse_existing(output: Path, overwrite: bool) -> None:
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it or --output another file")


def _load(args: argparse.Namespace, settings,
          columns: task2.LabelColumns) -> tuple[Predictor, dict, BackendOptions, torch.device]:
    """The models, what they and the options make (compared between shards and on --resume), the backend."""
    device = resolve_device(args.device)
    backend = backend_from_args(args, device)
    models, layout = Predictor.from_args(args, settings, device, backend)
    compared = {"mri_types": args.mri_types, "folds": args.folds, "weights_layout": layout.kind,
                "weights": models.files, "contract": models.contract.record(),
                "classifier_autocast": autocast_name(device, args.amp),
                "segmenter_autocast": autocast_name(device, False), "label_columns": [columns.id, columns.label]}
    return models, compared, backend, device


def _keep_dir(args: argparse.Namespace, settings) -> Path | None:
    if not args.keep_intermediate:
        return None
    return check_writable(settings["TEMP_DATA_DIR"] / "inference", "intermediate slices")


def _run_shard(args: argparse.Namespace, settings, input_dir: Path, output: Path, shard: shards.Shard,
               columns: task2.LabelColumns, all_patients: list[str], all_spelled: list[str]) -> int:
    """Sharded inference (:mod:`mgmt2d.inference.partial`): predict this shard's part, assemble when last."""
    patients, spelled = partial.select(shard, all_patients, all_spelled)
    keep_dir = _keep_dir(args, settings)
    models, compared, backend, _device = _load(args, settings, columns)
    on_patient = None
    if args.report_dir is not None:   # the report of every patient, from the results computed here
        on_patient = report.writer(args.report_dir, models, args, patients)
    shard_params = {"patients": all_patients, "spelled": all_spelled, "config": compared}
    partial.start_shard(output, shard, shard_params, {**vars(args), "input": input_dir, "output": output}, patients)
    timer = Timer()
    options = replace(options_from_args(args, keep_dir), keep_masks=on_patient is not None)
    sub, detail = models.predict(patients, input_dir, options, on_patient, timer)
    sub["BraTS21ID"] = spelled
    sub, detail = _sample_columns(sub, detail, columns)
    print(partial.finish_shard(output, shard, shard_params, sub, detail, timer.seconds, args.overwrite))
    return 0


def _resume_params(args: argparse.Namespace, compared: dict, backend: BackendOptions, device: torch.device,
                   input_dir: Path, patients: list[str], spelled: list[str]) -> dict:
    """Everything that changes the submission's bytes: a --resume must match the killed run in all of it."""
    def stat(path: str) -> list[int]:
        info = Path(path).stat()
        return [info.st_size, info.st_mtime_ns]

    return {**compared, "weights_files": {f: stat(f) for files in compared["weights"].values() for f in files},
            "patients": patients, "spelled": spelled, "input": str(input_dir.resolve()), "device": str(device),
            "backend": backend.name, "threads": backend.threads, "engine_precision": backend.precision,
            "batch_size": args.batch_size, "seg_batch_size": args.seg_batch_size,
            "report_dir": str(args.report_dir.resolve()) if args.report_dir is not None else None}


def _run(args: argparse.Namespace, settings, input_dir: Path, output: Path, columns: task2.LabelColumns,
         patients: list[str], spelled: list[str]) -> int:
    """One unsharded run, holding the output: predict the patients not yet finished (each kept in
    ``<stem>.partial/`` as it finishes), then commit the submission with its sidecars."""
    keep_dir = _keep_dir(args, settings)
    models, compared, backend, device = _load(args, settings, columns)
    store = partial.open_store(output, _resume_params(args, compared, backend, device, input_dir, patients, spelled),
                               args.resume, args.overwrite)
    finished = set(store.finished(patients))
    if args.report_dir is not None:   # a finished patient whose report is gone is computed again
        finished = {p for p in finished if report.is_complete(args.report_dir, p)}
    todo = [p for p in patients if p not in finished]
    if finished:
        print(f"--resume: {len(finished)} of {len(patients)} patients already finished in {store.folder}; "
              f"predicting {len(todo)}")
    spelling = dict(zip(patients, spelled))
    write_report = None
    if args.report_dir is not None:   # the report of every patient, from the results computed here
        write_report = report.writer(args.report_dir, models, args, todo, overwrite=args.overwrite or args.resume)

    def keep(result: PatientResult) -> None:
        """The report first, then the patient's result (the mark a --resume trusts), then the fault point."""
        if write_report is not None:
            try:
                write_report(result)
            except OSError as err:
                if is_disk_full(err):
                    raise as_disk_full(err, args.report_dir) from None
                raise
        store.save(result.patient, spelling[result.patient], result.prob, result.detail)
        fault_point("patient-done")

    timer = Timer()
    options = replace(options_from_args(args, keep_dir), keep_masks=write_report is not None)
    try:
        models.predict(todo, input_dir, options, keep, timer)
        sub, detail = _sample_columns(*store.load(patients, DETAIL_COLUMNS), columns)
        config = {**vars(args), "input": input_dir, "output": output, **compared, **backend.to_dict(),
                  "seconds": timer.seconds, "resumed_patients": len(finished)}
        partial.commit(output, sub, detail, config, args.overwrite,
                       kept=f"this run's patients are kept in {store.folder}: run again with --resume --overwrite "
                            "to replace it")
    except OSError as err:
        if not is_disk_full(err):
            raise
        done = len(store.finished(patients))
        raise as_disk_full(err, hint=f"then run the same command with --resume: the {done} of {len(patients)} "
                                     f"finished patients kept in {store.folder} are not computed again") from None
    store.remove()
    print(f"{len(sub)} patients -> {output} (per-type detail: {partial.detail_path(output)})")
    return 0


def _sample_columns(sub: pd.DataFrame, detail: pd.DataFrame,
                    columns: task2.LabelColumns) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The submission in the sample's columns (BraTS21ID,MGMT_value, or its --id-column/--label-column)."""
    return (sub.rename(columns={"BraTS21ID": columns.id, "MGMT_value": columns.label}),
            detail.rename(columns={"BraTS21ID": columns.id}))
