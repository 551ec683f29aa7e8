"""inference_on_test.py: DICOM test patients -> submission CSV (the command line of
:mod:`mgmt2d.inference.pipeline`, which holds the models and the per-patient work).

Writes the submission, its ``_per_type.csv`` and ``_config.json``; ``--report-dir`` adds the
per-patient report, ``--shard I/N`` / ``--merge`` split the patients (:mod:`mgmt2d.inference.partial`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mgmt2d.data import cohort, shards, task2
from mgmt2d.data.io import check_writable, write_csv_atomic, write_run_config
from mgmt2d.data.settings import SettingsError, load_settings
from mgmt2d.device import autocast_name, resolve_device
from mgmt2d.engines import backend_from_args
from mgmt2d.inference import partial, report
from mgmt2d.inference.pipeline import (
    FALLBACK,
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
    parser.add_argument("--overwrite", action="store_true", help="replace an existing submission file (and reports)")
    shards.add_shard_arguments(parser, "test patients")   # sharded inference: mgmt2d.inference.partial


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.settings)
    input_dir = input_folder(args, settings)
    output = args.output or settings["TEST_PREDICTION_FILE"]
    sample = args.sample_submission or input_dir.parent / "sample_submission.csv"
    if args.sample_submission and not sample.is_file():
        raise SettingsError(f"--sample-submission {sample} not found")
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it or --output another file")
    columns = task2.columns_from_args(args)
    patients, spelled = submission_patients(input_dir, sample if sample.is_file() else None, args.input_format,
                                            columns)
    check_writable(output.parent, "submission")
    # --- sharded inference (mgmt2d.inference.partial): --merge assembles, --shard I/N predicts a part
    shard = shards.shard_of(args, overwrite_clears=False)
    if args.merge:
        print(partial.merge(output))
        return 0
    all_patients, all_spelled = patients, spelled
    if shard is not None:
        patients, spelled = partial.select(shard, patients, spelled)
    # --- end sharded inference
    keep_dir = (
        check_writable(settings["TEMP_DATA_DIR"] / "inference", "intermediate slices")
        if args.keep_intermediate
        else None
    )
    device = resolve_device(args.device)
    backend = backend_from_args(args, device)
    models, layout = Predictor.from_args(args, settings, device, backend)
    on_patient = None
    if args.report_dir is not None:   # the report of every patient, from the results computed here
        on_patient = report.writer(args.report_dir, models, args, patients)
    compared = {"mri_types": args.mri_types, "folds": args.folds, "weights_layout": layout.kind,
                "weights": models.files, "contract": models.contract.record(),
                "classifier_autocast": autocast_name(device, args.amp),
                "segmenter_autocast": autocast_name(device, False), "label_columns": [columns.id, columns.label]}
    if shard is not None:   # sharded inference: every shard must predict with the same models and contract
        shard_params = {"patients": all_patients, "spelled": all_spelled, "config": compared}
        partial.start_shard(output, shard, shard_params, {**vars(args), "input": input_dir, "output": output},
                            patients)
    timer = Timer()
    sub, detail = models.predict(patients, input_dir, options_from_args(args, keep_dir), on_patient, timer)
    sub["BraTS21ID"] = spelled
    sub = sub.rename(columns={"BraTS21ID": columns.id, "MGMT_value": columns.label})   # the sample's columns
    detail = detail.rename(columns={"BraTS21ID": columns.id})
    if shard is not None:
        print(partial.finish_shard(output, shard, shard_params, sub, detail, timer.seconds))
        return 0
    write_csv_atomic(output, sub)
    write_csv_atomic(output.with_name(output.stem + "_per_type.csv"), detail)
    write_run_config(output.parent, output.stem + "_config.json",
                     {**vars(args), "input": input_dir, "output": output, **compared, **backend.to_dict(),
                      "seconds": timer.seconds})
    print(f"{len(sub)} patients -> {output} (per-type detail: {output.with_name(output.stem + '_per_type.csv')})")
    return 0
