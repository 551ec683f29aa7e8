"""The inference pipeline: a :class:`Predictor` (the models and the one input contract they share)
and :func:`predict`, DICOM patients -> probabilities, streaming one patient at a time.

For each patient: read the series (the next patient's reading overlaps this one's model
work) -> segment-and-stack (the stage-2 preparation itself) -> zoom TTA -> per-frame
embeddings reused across chunks -> chunk probabilities -> mean per MRI type (and fold
models) -> mean over the types present. A patient with nothing usable gets 0.5.

Used by ``inference_on_test.py`` (:mod:`mgmt2d.inference.predict`), the report and the
benchmarks; from Python::

    from mgmt2d import Predictor, PredictOptions
    predictor = Predictor.from_weights("models/t4e", device="cuda")
    submission, per_type = predictor.predict(["00001"], Path("test"), PredictOptions())
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from mgmt2d.classification import frames
from mgmt2d.classification.chunks import chunk_index
from mgmt2d.classification.model import (
    MGMTClassifier,
    backbone_with_backend,
    load_trained_classifier,
    predict_series,
)
from mgmt2d.classification.stack import StackedSeries, StackOptions, segment_and_stack_many
from mgmt2d.data import series as series_io
from mgmt2d.data import task2
from mgmt2d.data.contract import InputContract, add_contract_arguments, contract_of, contract_overrides, shared_contract
from mgmt2d.data.dicom import SeriesMeta
from mgmt2d.data.io import save_npy_atomic
from mgmt2d.data.settings import Settings, SettingsError, add_settings_argument
from mgmt2d.data.skullstrip import PatientInput, SkullStripError, patient_input
from mgmt2d.data.weights import WeightsLayout, detect_layout, model_dirs_layout
from mgmt2d.device import add_device_argument, autocast_dtype, resolve_device
from mgmt2d.engines import BackendOptions, add_backend_arguments, backend_from_args
from mgmt2d.segmentation import model as segmenter

log = logging.getLogger(__name__)
FALLBACK = 0.5


# --------------------------------------------------------------------------- results


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
    meta: SeriesMeta | None = None
    stacked: StackedSeries | None = None        # kept slices, dropped reasons, masks
    chunk_probs: np.ndarray | None = None       # (n_chunks,) averaged over the fold models
    prob: float = float("nan")                  # mean chunk probability
    note: str = ""                              # why nothing was scored
    brain_mask: np.ndarray | None = None        # (S, H, W) when skull-stripped


@dataclass
class PatientResult:
    """Everything inference computed for one patient, handed to ``predict(on_patient=...)``."""

    patient: str
    prob: float                                 # the submission's MGMT_value
    fallback: bool                              # no usable slice in any type: prob is FALLBACK
    series: list[SeriesResult]
    detail: list[dict] = field(default_factory=list)   # the patient's rows of the per-type table (DETAIL_COLUMNS)
    note: str = ""                              # skull stripping done, or a warning that the series look unstripped


DETAIL_COLUMNS = ["BraTS21ID", "type", "kept", "total", "chunks", "prob", "note", "kept_files", "chunk_probs"]


@dataclass
class PredictOptions:
    """How :func:`predict` runs (the models and their contract are the :class:`Predictor`'s)."""

    mri_types: Sequence[str] = task2.MRI_TYPES
    seg_batch_size: int = 32
    batch_size: int = 32                         # frames per backbone call
    workers: int = 1                             # DICOM reading threads (overlap model work)
    amp: bool = True                             # fp16 classifier on CUDA, as the published inference
    keep_dir: Path | None = None                 # save each series' stacked slices here
    keep_masks: bool = True                      # with on_patient: keep every series' masks for it (the report)


# --------------------------------------------------------------------------- the models


@dataclass
class Predictor:
    """The segmenter, every (type, fold) classifier and the one input contract they share."""

    segmenter: nn.Module
    classifiers: dict[str, list[MGMTClassifier]]   # MRI type -> fold models
    contract: InputContract                       # how their inputs must be made (resolved)
    files: dict[str, list[str]] = field(default_factory=dict)   # "segmenter" / MRI type -> checkpoint files
    device: torch.device = torch.device("cpu")
    brain_extractor: Callable | None = None       # skull stripping (contract.skull_strip): a BrainExtractor

    @classmethod
    def from_weights(
        cls, weights: str | Path | WeightsLayout, device: str | torch.device = "auto",
        mri_types: Sequence[str] = task2.MRI_TYPES, folds: Sequence[int] = (0,),
        overrides: dict | None = None, backend: BackendOptions | None = None,
    ) -> Predictor:
        """Load a folder of weights (ours or the published layout, detected) in one straight pass:
        find the checkpoints, read them, agree on their input contract, then put them on ``backend``.

        Each classifier checkpoint states its contract (a raw published state dict: the
        reference's); checkpoints that disagree cannot share one preparation and are refused.
        ``overrides`` (e.g. slice_order from the command line) replace contract fields.
        ``backend`` (default torch as loaded) runs the segmenter and the classifier backbones.
        """
        device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        layout = weights if isinstance(weights, WeightsLayout) else detect_layout(Path(weights))
        seg_path = layout.segmenter(0)
        if not seg_path.is_file():
            raise SettingsError(
                f"segmentation model {seg_path} not found (train_segmentation.py or download_models.py)")
        paths = {t: layout.fold_checkpoints(t, folds) for t in mri_types}   # a fold missing: refused
        if not any(paths.values()):
            raise SettingsError(
                f"no classifier checkpoint for types {list(mri_types)} folds {list(folds)} under "
                f"{layout.classification_dir}")
        seg = segmenter.load_segmenter(seg_path, device)
        if device.type == "cuda":
            seg = seg.to(memory_format=torch.channels_last)
        loaded: dict[Path, MGMTClassifier] = {}
        contracts: dict[Path, InputContract] = {}
        classifiers: dict[str, list[MGMTClassifier]] = {}
        files: dict[str, list[str]] = {"segmenter": [str(seg_path)]}
        for mri_type, path in ((t, p) for t, type_paths in paths.items() for p in type_paths):
            if path not in loaded:
                loaded[path], config = load_trained_classifier(path, device, channels_last=device.type == "cuda")
                contracts[path] = contract_of(config)
            classifiers.setdefault(mri_type, []).append(loaded[path])
            files.setdefault(mri_type, []).append(str(path))
        missing = [t for t in mri_types if t not in classifiers]
        if missing:
            log.warning("no classifier for %s: those types are left out", ", ".join(missing))
        trained = shared_contract(contracts)
        if trained.input_format == "jpg":
            raise SettingsError(
                f"{next(iter(contracts))} was trained on JPG slices, but inference reads DICOM or NIfTI: predicting "
                "on other inputs than it was trained on is the published code's mistake we do not repeat; train on "
                "DICOM (prepare_classification.py --input-format dicom)"
            )
        contract = trained.with_overrides(**(overrides or {}))
        if contract.input_format != trained.input_format:
            log.warning("the classifiers were trained on %s inputs; this run reads %s (--input-format)",
                        trained.input_format, contract.input_format)
        if backend is not None:
            seg = segmenter.with_backend(seg, seg_path, contract.seg_image_size, backend)
            for path, model in loaded.items():
                backbone_with_backend(model, path, contract.image_size, backend, device)
        extractor = None
        if contract.skull_strip:
            from mgmt2d.data.skullstrip import BrainExtractor

            extractor = BrainExtractor(device)
        log.info("input contract: %s", contract.record())
        return cls(seg, classifiers, contract, files, device, extractor)

    @classmethod
    def from_args(cls, args: argparse.Namespace, settings: Settings, device: torch.device,
                  backend: BackendOptions | None = None) -> tuple[Predictor, WeightsLayout]:
        """The predictor of :func:`add_predictor_arguments`' flags (weights, types, folds, contract
        overrides), run by ``backend`` (default: resolved from the flags)."""
        layout = detect_layout(args.weights_dir) if args.weights_dir else model_dirs_layout(
            settings["SEGMENT_MODEL_DIR"], settings["CLASSIFICATION_MODEL_DIR"])
        backend = backend or backend_from_args(args, device)
        return cls.from_weights(layout, device, args.mri_types, args.folds, contract_overrides(args), backend), layout

    def predict(self, patients: list[str], input_dir: Path, options: PredictOptions | None = None,
                on_patient: Callable[[PatientResult], None] | None = None,
                timer: Timer | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """:func:`predict` with these models."""
        return predict(patients, input_dir, self, options, on_patient, timer)


def add_predictor_arguments(parser: argparse.ArgumentParser) -> None:
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
    add_contract_arguments(parser, defaults=None)
    parser.add_argument("--seg-batch-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32, help="frames per backbone call")
    parser.add_argument("--workers", type=int, default=2, help="DICOM reading workers (overlap model work)")
    parser.add_argument(
        "--no-amp", dest="amp", action="store_false", help="fp32 classifier on CUDA (default fp16 autocast)"
    )


def options_from_args(args: argparse.Namespace, keep_dir: Path | None = None) -> PredictOptions:
    """The :class:`PredictOptions` of :func:`add_predictor_arguments`' flags."""
    return PredictOptions(args.mri_types, args.seg_batch_size, args.batch_size, args.workers, args.amp, keep_dir)


def input_folder(args: argparse.Namespace, settings: Settings) -> Path:
    """--input (DICOM patient folders or NIfTI case folders), default DICOM_DATA_DIR/test."""
    input_dir = args.input or settings["DICOM_DATA_DIR"] / "test"
    if not input_dir.is_dir():
        raise SettingsError(f"test folder {input_dir} does not exist (--input or DICOM_DATA_DIR/test)")
    return input_dir


# --------------------------------------------------------------------------- one series, one patient


def classify_series(
    models: list[MGMTClassifier], stacked: StackedSeries, contract: InputContract,
    batch_size: int, autocast_dtype: torch.dtype | None,
) -> np.ndarray:
    """Chunk probabilities (n_chunks,) of one series, averaged over the fold models.

    Frames are made by :func:`mgmt2d.classification.frames.test_time_view` (zoom TTA, resize),
    then normalised; a padded last chunk gets its frames made in float, as the published
    inference made them (:func:`mgmt2d.classification.frames.chunk_frames`).
    """
    c = contract
    x = torch.from_numpy(frames.normalise(frames.test_time_view(stacked.images, c.image_size, c.tta_zoom)))
    index = chunk_index(stacked.kept, c.seq_len, c.stride)
    padded = None
    if (index[-1] < 0).any():
        padded = torch.from_numpy(frames.normalise(frames.chunk_frames(stacked.images, index[-1], c.image_size,
                                                                       c.tta_zoom)))
    probs = [predict_series(m, x, c.seq_len, c.stride, batch_size, autocast_dtype=autocast_dtype,
                            padded_chunk_frames=padded) for m in models]
    return np.mean(np.stack(probs), axis=0)


def predict(
    patients: list[str],
    input_dir: Path,
    predictor: Predictor,
    options: PredictOptions | None = None,
    on_patient: Callable[[PatientResult], None] | None = None,
    timer: Timer | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(submission rows, per-patient per-type rows) for ``patients`` in their order.

    Inputs are made as ``predictor.contract`` says. On CUDA the classifier runs under fp16
    autocast (``options.amp``), as the published inference did; the segmenter always runs in
    fp32. ``on_patient`` (the report) receives each patient's :class:`PatientResult`, masks
    included; without it nothing extra is kept.
    """
    o = options or PredictOptions()
    timer = timer or Timer()
    c, device = predictor.contract, predictor.device
    opts = StackOptions(contract=c, seg_batch_size=o.seg_batch_size,
                        keep_masks=on_patient is not None and o.keep_masks)
    types = [t for t in o.mri_types if t in predictor.classifiers]
    plan = {p: series_io.patient_series(input_dir, p, types, c.input_format) for p in patients}
    no_folder = {p for p in patients if not plan[p] and task2.find_patient_folder(input_dir, p) is None}
    reader = series_io.read_many([path for p in patients for _, path in plan[p]], c, o.workers)
    classifier_dtype = autocast_dtype(device, o.amp)
    rows, detail = [], []
    for patient in tqdm(patients, desc="inference", unit="patient"):
        t0 = time.perf_counter()
        first_detail = len(detail)
        read: dict[str, tuple[np.ndarray, SeriesMeta]] = {}
        seen: list[SeriesResult] = []   # for on_patient
        for mri_type, _path in plan[patient]:
            _folder, volume, meta = next(reader)
            if isinstance(volume, Exception):
                detail.append(_detail(patient, mri_type, note=f"unreadable: {volume}"))
                seen.append(SeriesResult(mri_type, note=f"unreadable: {volume}"))
                continue
            read[mri_type] = (volume, meta)
        t0 = timer.add("read", t0)
        prepared, failed = _patient_input(read, predictor.brain_extractor, patient)
        for mri_type, note in failed.items():
            detail.append(_detail(patient, mri_type, note=note))
            seen.append(SeriesResult(mri_type, *read[mri_type], note=note))
        series = [(t, v, m) for t, (v, m) in prepared.series.items()]
        t0 = timer.add("strip", t0) if predictor.brain_extractor is not None else t0
        stacked = segment_and_stack_many(predictor.segmenter, [v for _, v, _ in series], device, opts,
                                         [m.positive_fraction for _, _, m in series]) if series else []
        t0 = timer.add("segment", t0)
        type_probs = []
        for (mri_type, volume, meta), res in zip(series, stacked):
            mask = prepared.masks.get(mri_type)
            if res.kept == 0:
                note = "; ".join([res.reason, *meta.warnings])
                detail.append(_detail(patient, mri_type, note=note, total=res.total))
                seen.append(SeriesResult(mri_type, volume, meta, res, note=res.reason, brain_mask=mask))
                continue
            if o.keep_dir is not None:
                save_npy_atomic(o.keep_dir / f"{patient}_{mri_type}.npy", res.images)
            chunk_probs = classify_series(predictor.classifiers[mri_type], res, c, o.batch_size, classifier_dtype)
            prob = float(np.mean(chunk_probs))
            type_probs.append(prob)
            seen.append(SeriesResult(mri_type, volume, meta, res, chunk_probs, prob, brain_mask=mask))
            names = series_io.slice_names(meta)
            detail.append(_detail(
                patient, mri_type, kept=res.kept, total=res.total, chunks=len(chunk_probs), prob=prob,
                note="; ".join(meta.warnings),   # e.g. slices of several pixel spacings
                kept_files=" ".join(names[i] for i in res.slice_index),
                chunk_probs=" ".join(f"{p:.6f}" for p in chunk_probs),
            ))
        missing = f"patient folder {input_dir / patient} missing" if patient in no_folder else "series missing"
        for mri_type in sorted(set(o.mri_types) - {t for t, _ in plan[patient]}):
            detail.append(_detail(patient, mri_type, note=missing))
            seen.append(SeriesResult(mri_type, note=missing))
        timer.add("classify", t0)
        if type_probs:
            rows.append({"BraTS21ID": patient, "MGMT_value": float(np.mean(type_probs))})
        else:
            why = missing if patient in no_folder else "no usable slice in any MRI type"
            tqdm.write(f"warning: patient {patient}: {why}: MGMT_value {FALLBACK}")
            log.warning("patient %s: %s: MGMT_value %.1f", patient, why, FALLBACK)
            rows.append({"BraTS21ID": patient, "MGMT_value": FALLBACK})
        if on_patient is not None:
            on_patient(PatientResult(patient, float(rows[-1]["MGMT_value"]), not type_probs, seen,
                                     detail[first_detail:], prepared.note))
    return pd.DataFrame(rows, columns=["BraTS21ID", "MGMT_value"]), pd.DataFrame(detail, columns=DETAIL_COLUMNS)


def _patient_input(read: dict[str, tuple[np.ndarray, SeriesMeta]], extractor: Callable | None,
                   patient: str) -> tuple[PatientInput, dict[str, str]]:
    """The series the segmenter sees (skull-stripped when the contract says so); a patient whose
    stripping fails keeps going unscored, each type noted (a broken patient never stops the run)."""
    try:
        return patient_input(read, extractor, patient), {}
    except SkullStripError as err:
        log.warning("patient %s: %s", patient, err)
        tqdm.write(f"warning: patient {patient}: skull stripping failed: {err}")
        return PatientInput({}, {}, f"skull stripping failed: {err}"), {
            t: f"skull stripping failed: {err}" for t in read}


def _detail(patient: str, mri_type: str, kept: int = 0, total: int = 0, chunks: int = 0, prob: float = np.nan,
            note: str = "", kept_files: str = "", chunk_probs: str = "") -> dict:
    """One row of <submission>_per_type.csv: what was kept from a series and what it scored."""
    return {"BraTS21ID": patient, "type": mri_type, "kept": kept, "total": total, "chunks": chunks, "prob": prob,
            "note": note, "kept_files": kept_files, "chunk_probs": chunk_probs}
