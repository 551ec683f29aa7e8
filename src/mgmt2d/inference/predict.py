"""inference_on_test.py: DICOM test patients -> submission CSV, streaming one patient at a time.

For each patient: read the series (the next patient's reading overlaps this one's model
work) -> segment-and-stack (the stage-2 preparation itself) -> zoom TTA -> per-frame
embeddings reused across chunks -> chunk probabilities -> mean per MRI type (and fold
models) -> mean over the types present. A patient with nothing usable gets 0.5.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mgmt2d.classification import frames
from mgmt2d.classification.chunks import chunk_index
from mgmt2d.classification.model import MGMTClassifier, load_trained_classifier, predict_series
from mgmt2d.classification.stack import StackedSeries, StackOptions, segment_and_stack_many
from mgmt2d.data import dicom, shards, task2
from mgmt2d.data.contract import NONEMPTY_TESTS, PIXEL_VALUES, SLICE_ORDERS, InputContract, contract_of
from mgmt2d.data.io import check_writable, save_npy_atomic, write_csv_atomic, write_run_config
from mgmt2d.data.settings import SettingsError, add_settings_argument, load_settings
from mgmt2d.device import add_device_argument, autocast_dtype, autocast_name, resolve_device
from mgmt2d.inference import partial
from mgmt2d.inference.backends import (
    BackendOptions,
    add_backend_arguments,
    backend_from_args,
    classifier_backend,
    segmenter_backend,
)
from mgmt2d.inference.published import WeightsLayout, detect_layout, model_dirs_layout
from mgmt2d.segmentation import model as segmenter

log = logging.getLogger(__name__)
FALLBACK = 0.5
POOLED = "pooled"   # train_classification.py --mri-type pooled: one model over every type


@dataclass
class Models:
    segmenter: torch.nn.Module
    classifiers: dict[str, list[MGMTClassifier]]   # MRI type -> fold models
    contract: InputContract                       # how their inputs must be made (resolved)
    files: dict[str, list[str]] = field(default_factory=dict)   # "segmenter" / MRI type -> checkpoint files


@dataclass
class Timer:
    """Seconds per step, summed over patients (the benchmark reads it)."""

    seconds: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "segment": 0.0, "classify": 0.0})

    def add(self, step: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[step] = self.seconds.get(step, 0.0) + now - t0
        return now


@dataclass
class SeriesResult:
    """One series of a patient as inference saw it (what the report shows)."""

    mri_type: str
    volume: np.ndarray | None = None            # as read (None: unreadable or missing)
    meta: dicom.SeriesMeta | None = None
    stacked: StackedSeries | None = None        # kept slices, dropped reasons, masks
    chunk_probs: np.ndarray | None = None       # (n_chunks,) averaged over the fold models
    prob: float = float("nan")                  # mean chunk probability
    note: str = ""                              # why nothing was scored


@dataclass
class PatientResult:
    """Everything inference computed for one patient, handed to ``predict(on_patient=...)``."""

    patient: str
    prob: float                                 # the submission's MGMT_value
    fallback: bool                              # no usable slice in any type: prob is FALLBACK
    series: list[SeriesResult]


def classifier_checkpoint(layout: WeightsLayout, mri_type: str, fold: int) -> Path | None:
    """The type's own model, else (our layout) a pooled model trained on every type; None when neither exists."""
    candidates = [layout.classifier(mri_type, fold)]
    if layout.kind == "mgmt2d":
        candidates.append(layout.classifier(POOLED, fold))
    return next((p for p in candidates if p.is_file()), None)


def load_models(
    layout: WeightsLayout, mri_types: list[str], folds: list[int], device: torch.device,
    backbone: str = "eca_nfnet_l0", channels_last: bool = False, overrides: dict | None = None,
    backend: BackendOptions | None = None,
) -> Models:
    """The segmenter and every (type, fold) classifier found, with the one input contract they share.

    Each classifier checkpoint states its contract (a raw published state dict: the
    reference's); checkpoints that disagree cannot share one preparation and are refused.
    ``overrides`` (e.g. slice_order from the command line) replace contract fields.
    ``backend`` (default torch as loaded) runs the segmenter and the classifier backbones.
    """
    seg_path = layout.segmenter(0)
    if not seg_path.is_file():
        raise SettingsError(f"segmentation model {seg_path} not found (train_segmentation.py or download_models.py)")
    seg = segmenter.load_segmenter(seg_path, device)
    if channels_last:
        seg = seg.to(memory_format=torch.channels_last)
    classifiers: dict[str, list[MGMTClassifier]] = {}
    files: dict[str, list[str]] = {"segmenter": [str(seg_path)]}
    cache: dict[Path, MGMTClassifier] = {}
    contracts: dict[Path, InputContract] = {}
    for mri_type in mri_types:
        for fold in folds:
            path = classifier_checkpoint(layout, mri_type, fold)
            if path is None:
                continue
            if path not in cache:
                cache[path], config = load_trained_classifier(path, device, channels_last, backbone)
                contracts[path] = contract_of(config)
            classifiers.setdefault(mri_type, []).append(cache[path])
            files.setdefault(mri_type, []).append(str(path))
    if not classifiers:
        raise SettingsError(
            f"no classifier checkpoint for types {mri_types} folds {folds} under {layout.classification_dir}"
        )
    missing = sorted(set(mri_types) - set(classifiers))
    if missing:
        log.warning("no classifier for %s: those types are left out", ", ".join(missing))
    distinct = {c for c in contracts.values()}
    if len(distinct) > 1:
        (a, ca), (b, cb) = [(p, c) for p, c in contracts.items() if c in distinct][:2]
        diff = sorted(k for k, v in ca.to_dict().items() if cb.to_dict()[k] != v)
        raise SettingsError(f"{a} and {b} were trained on inputs made differently ({', '.join(diff)}); "
                            "run them in separate inference runs")
    contract = next(iter(distinct)).with_overrides(**(overrides or {}))
    if contract.input_format != "dicom":
        raise SettingsError(
            f"{next(iter(contracts))} was trained on {contract.input_format.upper()} slices, but inference reads "
            "DICOM: predicting on other inputs than it was trained on is the published code's mistake we do not "
            "repeat; train on DICOM (prepare_classification.py --input-format dicom)"
        )
    if backend is not None:
        seg = segmenter_backend(seg, seg_path, contract.seg_image_size, backend)
        for path, model in cache.items():
            classifier_backend(model, path, contract.image_size, backend, device)
    return Models(seg, classifiers, contract, files)


def series_frames(images: np.ndarray, image_size: int, zoom: float) -> torch.Tensor:
    """Stacked (K, H, W, 3) -> normalised (K, 3, S, S): zoom about the centre, resize, normalise.

    uint8 images are zoomed and resized in uint8 (OpenCV rounds after each step), float
    images in float: the published code did the latter for a padded chunk only.
    """
    return torch.from_numpy(frames.normalise(frames.resize(frames.zoom(images, zoom), image_size)))


def classify_series(
    models: list[MGMTClassifier], stacked: StackedSeries, contract: InputContract,
    batch_size: int, autocast_dtype: torch.dtype | None,
) -> np.ndarray:
    """Chunk probabilities (n_chunks,) of one series, averaged over the fold models.

    A padded last chunk gets its frames made in float, as the published inference made
    them (its padded chunk became a float64 array before the zoom and resize).
    """
    c = contract
    x = series_frames(stacked.images, c.image_size, c.tta_zoom)
    index = chunk_index(stacked.kept, c.seq_len, c.stride)
    padded = None
    if (index[-1] < 0).any():
        start = int(index[-1, 0])
        padded = series_frames(stacked.images[start:].astype(np.float64), c.image_size, c.tta_zoom)
    probs = [predict_series(m, x, c.seq_len, c.stride, batch_size, autocast_dtype=autocast_dtype,
                            padded_chunk_frames=padded) for m in models]
    return np.mean(np.stack(probs), axis=0)


def patient_series(input_dir: Path, patient: str, mri_types: list[str]) -> list[tuple[str, Path]]:
    folder = input_dir / patient
    if not folder.is_dir():  # IDs may be spelled without zero padding on disk
        alt = [p for p in input_dir.iterdir() if p.is_dir() and p.name.isdigit() and task2.format_id(p.name) == patient]
        folder = alt[0] if alt else folder
    return [(t, folder / t) for t in mri_types if (folder / t).is_dir()]


def predict(
    patients: list[str],
    input_dir: Path,
    models: Models,
    device: torch.device,
    mri_types: list[str],
    seg_batch_size: int = 32,
    batch_size: int = 32,
    workers: int = 1,
    keep_dir: Path | None = None,
    amp: bool = True,
    timer: Timer | None = None,
    on_patient: Callable[[PatientResult], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(submission rows, per-patient per-type rows) for ``patients`` in their order.

    Inputs are made as ``models.contract`` says. On CUDA the classifier runs under fp16
    autocast (``amp``), as the published inference did; the segmenter always runs in fp32.
    ``on_patient`` (the report) receives each patient's :class:`PatientResult`, masks
    included; without it nothing extra is kept.
    """
    timer = timer or Timer()
    c = models.contract
    opts = StackOptions(contract=c, seg_batch_size=seg_batch_size, keep_masks=on_patient is not None)
    types = [t for t in mri_types if t in models.classifiers]
    plan = {p: patient_series(input_dir, p, types) for p in patients}
    reader = dicom.read_series_many([path for p in patients for _, path in plan[p]], workers=max(workers, 1),
                                    order=c.slice_order, rescale=c.pixel_values == "modality")
    classifier_dtype = autocast_dtype(device, amp)
    rows, detail = [], []
    for patient in tqdm(patients, desc="inference", unit="patient"):
        t0 = time.perf_counter()
        series: list[tuple[str, np.ndarray, dicom.SeriesMeta]] = []
        seen: list[SeriesResult] = []   # for on_patient
        for mri_type, _path in plan[patient]:
            _folder, volume, meta = next(reader)
            if isinstance(volume, Exception):
                detail.append(_detail(patient, mri_type, note=f"unreadable: {volume}"))
                seen.append(SeriesResult(mri_type, note=f"unreadable: {volume}"))
                continue
            series.append((mri_type, volume, meta))
        t0 = timer.add("read", t0)
        stacked = segment_and_stack_many(models.segmenter, [v for _, v, _ in series], device, opts,
                                         [m.positive_fraction for _, _, m in series]) if series else []
        t0 = timer.add("segment", t0)
        type_probs = []
        for (mri_type, volume, meta), res in zip(series, stacked):
            if res.kept == 0:
                detail.append(_detail(patient, mri_type, note=res.reason, total=res.total))
                seen.append(SeriesResult(mri_type, volume, meta, res, note=res.reason))
                continue
            if keep_dir is not None:
                save_npy_atomic(keep_dir / f"{patient}_{mri_type}.npy", res.images)
            chunk_probs = classify_series(models.classifiers[mri_type], res, c, batch_size, classifier_dtype)
            prob = float(np.mean(chunk_probs))
            type_probs.append(prob)
            seen.append(SeriesResult(mri_type, volume, meta, res, chunk_probs, prob))
            detail.append(_detail(
                patient, mri_type, kept=res.kept, total=res.total, chunks=len(chunk_probs), prob=prob,
                kept_files=" ".join(meta.files[i].name for i in res.slice_index),
                chunk_probs=" ".join(f"{p:.6f}" for p in chunk_probs),
            ))
        for mri_type in sorted(set(mri_types) - {t for t, _ in plan[patient]}):
            detail.append(_detail(patient, mri_type, note="series missing"))
            seen.append(SeriesResult(mri_type, note="series missing"))
        timer.add("classify", t0)
        if type_probs:
            rows.append({"BraTS21ID": patient, "MGMT_value": float(np.mean(type_probs))})
        else:
            tqdm.write(f"warning: patient {patient} has no usable slice in any MRI type: MGMT_value {FALLBACK}")
            log.warning("patient %s has no usable slice in any MRI type: MGMT_value %.1f", patient, FALLBACK)
            rows.append({"BraTS21ID": patient, "MGMT_value": FALLBACK})
        if on_patient is not None:
            on_patient(PatientResult(patient, float(rows[-1]["MGMT_value"]), not type_probs, seen))
    return pd.DataFrame(rows, columns=["BraTS21ID", "MGMT_value"]), pd.DataFrame(detail, columns=DETAIL_COLUMNS)


DETAIL_COLUMNS = ["BraTS21ID", "type", "kept", "total", "chunks", "prob", "note", "kept_files", "chunk_probs"]


def _detail(patient: str, mri_type: str, kept: int = 0, total: int = 0, chunks: int = 0, prob: float = np.nan,
            note: str = "", kept_files: str = "", chunk_probs: str = "") -> dict:
    """One row of <submission>_per_type.csv: what was kept from a series and what it scored."""
    return {"BraTS21ID": patient, "type": mri_type, "kept": kept, "total": total, "chunks": chunks, "prob": prob,
            "note": note, "kept_files": kept_files, "chunk_probs": chunk_probs}


def submission_patients(input_dir: Path, sample: Path | None) -> tuple[list[str], list[str]]:
    """(5-digit IDs, spelling to write) from sample_submission.csv, else every patient folder.

    A sample that is empty, lacks the column or lists a patient twice is refused, naming the
    file: a submission must hold each patient once.
    """
    if sample is not None and sample.is_file():
        try:
            raw = pd.read_csv(sample, dtype={"BraTS21ID": str})
        except pd.errors.EmptyDataError:
            raise SettingsError(f"{sample} is empty; it should list BraTS21ID,MGMT_value rows") from None
        if "BraTS21ID" not in raw.columns:
            raise SettingsError(f"{sample} lacks a BraTS21ID column")
        if raw.empty:
            raise SettingsError(f"{sample} lists no patient")
        spelled = raw["BraTS21ID"].astype(str).str.strip().tolist()
        ids = [task2.format_id(s) for s in spelled]
        seen: dict[str, int] = {}
        for row, pid in enumerate(ids, start=2):   # line numbers, header is line 1
            if pid in seen:
                raise SettingsError(f"{sample} lists patient {pid} twice (lines {seen[pid]} and {row}); "
                                    "a submission holds each patient once: remove the duplicate")
            seen[pid] = row
        return ids, spelled
    ids = [task2.format_id(p.name) for p in task2.patient_folders(input_dir)]
    return ids, ids


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--output", type=Path, help="submission CSV (default TEST_PREDICTION_FILE)")
    parser.add_argument("--sample-submission", type=Path, help="default: sample_submission.csv beside the input folder")
    parser.add_argument("--keep-intermediate", action="store_true", help="save stacked slices in TEMP_DATA_DIR")
    parser.add_argument("--report-dir", type=Path,
                        help="also write the per-patient report (python -m mgmt2d report) of every patient here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing submission file (and reports)")
    shards.add_shard_arguments(parser, "test patients")   # sharded inference: mgmt2d.inference.partial


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """What inference runs and how (settings, input, device, models, input contract, batches):
    shared by inference_on_test.py and ``python -m mgmt2d report``."""
    add_settings_argument(parser)
    parser.add_argument("--input", type=Path, help="test patients folder (default DICOM_DATA_DIR/test)")
    add_device_argument(parser)
    add_backend_arguments(parser)
    parser.add_argument("--mri-types", nargs="+", default=list(task2.MRI_TYPES), choices=list(task2.MRI_TYPES))
    parser.add_argument("--folds", nargs="+", type=int, default=[0], help="fold models to average")
    parser.add_argument(
        "--weights-dir",
        type=Path,
        help="a folder of weights: ours (segmentation/fold0/best.pt, classification/<type>/fold<k>/best.pt) "
        "or the published layout (models/densenet121_2d_segment/..., detected); "
        "default: SEGMENT_MODEL_DIR and CLASSIFICATION_MODEL_DIR",
    )
    contract = parser.add_argument_group(
        "input contract", "default: what the classifier checkpoints record (published weights: the reference's)")
    contract.add_argument("--slice-order", choices=list(SLICE_ORDERS),
                          help="position: anatomical (ours); filename: trailing number of the file name (reference)")
    contract.add_argument(
        "--pixel-values",
        choices=list(PIXEL_VALUES),
        help="modality: rescale slope/intercept, MONOCHROME1 inverted (ours); stored: raw (reference)",
    )
    contract.add_argument(
        "--nonempty-test",
        choices=list(NONEMPTY_TESTS),
        help="above_series_min (ours) or stored_positive (reference)",
    )
    contract.add_argument("--tta-zoom", type=float, help="test-time zoom-in (reference 1.2; 1.0 disables)")
    parser.add_argument("--seg-batch-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32, help="frames per backbone call")
    parser.add_argument("--workers", type=int, default=2, help="DICOM reading workers (overlap model work)")
    parser.add_argument(
        "--no-amp", dest="amp", action="store_false", help="fp32 classifier on CUDA (default fp16 autocast)"
    )


def weights_layout(args: argparse.Namespace, settings) -> WeightsLayout:
    """--weights-dir (either layout, detected), else our layout spread over SETTINGS.json's two folders."""
    if args.weights_dir:
        return detect_layout(args.weights_dir)
    return model_dirs_layout(settings["SEGMENT_MODEL_DIR"], settings["CLASSIFICATION_MODEL_DIR"])


def input_folder(args: argparse.Namespace, settings) -> Path:
    input_dir = args.input or settings["DICOM_DATA_DIR"] / "test"
    if not input_dir.is_dir():
        raise SettingsError(f"test folder {input_dir} does not exist (--input or DICOM_DATA_DIR/test)")
    return input_dir


def models_from_args(
    args: argparse.Namespace, settings, device: torch.device, backend: BackendOptions | None = None
) -> tuple[Models, WeightsLayout]:
    """The models of ``add_model_arguments``' flags, with the contract overrides applied, run by
    ``backend`` (default: resolved from the flags)."""
    layout = weights_layout(args, settings)
    overrides = {
        "slice_order": args.slice_order,
        "pixel_values": args.pixel_values,
        "nonempty_test": args.nonempty_test,
        "tta_zoom": args.tta_zoom,
    }
    backend = backend or backend_from_args(args, device)
    models = load_models(layout, args.mri_types, args.folds, device, channels_last=device.type == "cuda",
                         overrides=overrides, backend=backend)
    log.info("input contract: %s", models.contract.to_dict())
    return models, layout


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.settings)
    input_dir = input_folder(args, settings)
    output = args.output or settings["TEST_PREDICTION_FILE"]
    sample = args.sample_submission or input_dir.parent / "sample_submission.csv"
    if args.sample_submission and not sample.is_file():
        raise SettingsError(f"--sample-submission {sample} not found")
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it or --output another file")
    patients, spelled = submission_patients(input_dir, sample if sample.is_file() else None)
    check_writable(output.parent, "submission")
    # --- sharded inference (mgmt2d.inference.partial): --merge assembles, --shard I/N predicts a part
    shard = shards.shard_of(args)
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
    models, layout = models_from_args(args, settings, device, backend)
    on_patient = None
    if args.report_dir is not None:   # the report of every patient, from the results computed here
        from mgmt2d.inference import report

        on_patient = report.writer(args.report_dir, models, args, patients)
    compared = {"mri_types": args.mri_types, "folds": args.folds, "weights_layout": layout.kind,
                "weights": models.files, "contract": models.contract.to_dict(),
                "classifier_autocast": autocast_name(device, args.amp),
                "segmenter_autocast": autocast_name(device, False)}
    if shard is not None:   # sharded inference: every shard must predict with the same models and contract
        shard_params = {"patients": all_patients, "spelled": all_spelled, "config": compared}
        partial.start_shard(output, shard, shard_params, {**vars(args), "input": input_dir, "output": output},
                            patients)
    timer = Timer()
    sub, detail = predict(patients, input_dir, models, device, args.mri_types, args.seg_batch_size, args.batch_size,
                          args.workers, keep_dir, args.amp, timer, on_patient)
    sub["BraTS21ID"] = spelled
    if shard is not None:
        print(partial.finish_shard(output, shard, shard_params, sub, detail, timer.seconds))
        return 0
    write_csv_atomic(output, sub)
    write_csv_atomic(output.with_name(output.stem + "_per_type.csv"), detail)
    write_run_config(output.parent, output.stem + "_config.json",
                     {**vars(args), "input": input_dir, "output": output, "weights_layout": layout.kind,
                      "weights": models.files, "contract": models.contract.to_dict(), **backend.to_dict(),
                      "classifier_autocast": autocast_name(device, args.amp),
                      "segmenter_autocast": autocast_name(device, False),
                      "seconds": timer.seconds})
    print(f"{len(sub)} patients -> {output} (per-type detail: {output.with_name(output.stem + '_per_type.csv')})")
    return 0
