"""train_classification.py: one CNN + BiLSTM model per MRI type on 35-slice chunks, patient AUC.

Writes CLASSIFICATION_MODEL_DIR/<type>/fold<k>/ (best.pt, last.pt, history.csv, curves.png,
train_config.json, val_patients.csv with the best epoch's patient scores). ``--mri-type all``
trains the four per-type models one after the other (the published meaning); ``pooled`` trains
one model on the series of every type (ours) into CLASSIFICATION_MODEL_DIR/pooled/.
``--fold all`` trains every fold of KFOLD_PATH in turn and writes the out-of-fold predictions
beside the fold folders (:mod:`mgmt2d.classification.crossval`, which also says what ``--resume``
and ``--overwrite`` do to a command of several runs).
Under ``torchrun`` every process trains a share of each global batch (README: several GPUs).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mgmt2d import overlay
from mgmt2d.classification import crossval
from mgmt2d.classification.dataset import ChunkDataset, load_index, split_by_fold
from mgmt2d.classification.model import DEFAULT_BACKBONE, build_classifier
from mgmt2d.data.contract import InputContract
from mgmt2d.data.io import write_csv_atomic
from mgmt2d.data.settings import Settings, add_settings_argument, load_settings
from mgmt2d.data.task2 import MRI_TYPES, POOLED
from mgmt2d.device import add_device_argument
from mgmt2d.pretrained import add_pretrained_argument, resolve_pretrained
from mgmt2d.training import distributed
from mgmt2d.training.config import TrainConfig, add_train_arguments
from mgmt2d.training.metrics import ClassificationLoss, ClassificationMetrics
from mgmt2d.training.seeding import seed_everything
from mgmt2d.training.trainer import Trainer

log = logging.getLogger(__name__)
ALL = "all"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_argument(parser)
    parser.add_argument("--mri-type", default="FLAIR", choices=[*MRI_TYPES, ALL, POOLED],
                        help=f"one MRI type; '{ALL}': the four per-type models in sequence (as published); "
                             f"'{POOLED}': one model on every type's series (ours)")
    add_device_argument(parser)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seq-len", type=int, default=35, help="slices per chunk (reference 35)")
    parser.add_argument("--stride", type=int, default=5, help="chunk stride (reference 5)")
    parser.add_argument("--lstm-hidden", type=int, default=128, help="reference weights use 128")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE,
                        help=f"timm model name (reference {DEFAULT_BACKBONE}); with --pretrained imagenet its weights "
                             "must be in PRETRAINED_DIR (download_models.py --backbone NAME)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="GLOBAL batch per optimiser step, over all torchrun processes and --accumulate steps")
    parser.add_argument("--fold", type=fold_argument, default=0,
                        help=f"validation fold (KFOLD_PATH); '{ALL}': every fold of KFOLD_PATH in turn, then the "
                             f"out-of-fold predictions ({crossval.OOF_CSV}) beside the fold folders")
    parser.add_argument("--workers", type=int, default=2, help="data loader workers")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="disable train augmentation")
    add_pretrained_argument(parser, "--backbone's")
    add_train_arguments(
        parser, epochs=80, warmup_epochs=5, lr=1e-6, patience=10, plateau_factor=(0.67, 0.1), plateau_patience=(3, 10),
        monitor="val_loss",
    )


def training_contract(data_dir: Path, image_size: int, seq_len: int, stride: int) -> InputContract:
    """The input contract this model is trained on: the prepared data's, with this run's classifier sizes.

    Saved in every checkpoint, so inference makes its test inputs the same way.
    """
    meta = Path(data_dir) / "dataset.json"
    params = json.loads(meta.read_text()).get("params", {}) if meta.is_file() else {}
    base = InputContract.from_dict(params["contract"]) if "contract" in params else InputContract()
    return replace(base, image_size=image_size, seq_len=seq_len, stride=stride)


def validation_preview(val_ds: ChunkDataset, max_frames: int = 12):
    """TensorBoard preview: the first validation chunk's frames (up to ``max_frames``, evenly
    spaced) with their WT/ET contours, captioned with the chunk's label and probability."""

    def preview(model: torch.nn.Module, device: torch.device) -> dict[str, np.ndarray]:
        item = val_ds[0]
        prob = float(torch.sigmoid(model(item["image"][None].to(device)).float())[0])
        chunk = val_ds.chunk_frames(0)
        shown = np.unique(np.linspace(0, len(chunk) - 1, min(len(chunk), max_frames)).astype(int))
        strip = overlay.grid([overlay.stacked_overlay(chunk[t]) for t in shown], columns=len(shown))
        text = f"patient {item['patient_id']} label {int(item['label'])} prob {prob:.3f}"
        return {"val/chunk": overlay.caption(strip, text)}

    return preview


def fold_argument(text: str) -> int | str:
    """``--fold``: a fold number, or ``all``."""
    if text == ALL:
        return ALL
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a fold number (0, 1, ...) or '{ALL}', got {text!r}")
    return int(text)


def main(args: argparse.Namespace) -> int:
    """Train the runs of ``--mri-type`` x ``--fold`` (type after type, fold after fold) with
    :func:`train_one`; with ``--fold all``, then each type's out-of-fold predictions (and, for
    several types, their combination)."""
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the runs and --overwrite starts them afresh: pass one of them")
    types = list(MRI_TYPES) if args.mri_type == ALL else [args.mri_type]
    settings = load_settings(args.settings)
    model_dir = settings["CLASSIFICATION_MODEL_DIR"]
    cross = args.fold == ALL
    outputs = crossval.outputs(model_dir, types) if cross else []
    todo = [(args.mri_type, args.fold, args.resume)]   # (type, fold, resume): one run keeps the trainer's rules
    if cross or len(types) > 1:   # several runs: one plan for all of them, checked before the first epoch
        folds = [args.fold]
        if cross:
            folds_path = settings.existing("KFOLD_PATH")
            kfold = crossval.kfold_table(folds_path)
            data_dir = settings.existing("CLASSIFICATION_DATA_DIR") / "train"
            crossval.check_index_folds(load_index(data_dir, POOLED), kfold, folds_path, data_dir / "index.csv")
            folds = sorted(set(kfold.values()))
        runs = crossval.plan_runs(model_dir, types, folds, args.epochs, args.resume)
        crossval.check_plan(runs, args.resume, args.overwrite, outputs)
        crossval.check_held_out(runs, settings.existing("CLASSIFICATION_DATA_DIR") / "train")
        crossval.log_plan(runs)
        todo = [(r.mri_type, r.fold, r.action == crossval.RESUME) for r in runs if r.action != crossval.SKIP]
    ctx, device = distributed.init_distributed(args.device)
    try:
        if args.overwrite and ctx.is_main:   # earlier out-of-fold files would describe other checkpoints
            for path in outputs:
                path.unlink(missing_ok=True)
        for i, (mri_type, fold, resume) in enumerate(todo, 1):
            if len(todo) > 1:
                log.info("training %s fold %d (run %d of %d)", mri_type, fold, i, len(todo))
            train_one(argparse.Namespace(**{**vars(args), "mri_type": mri_type, "fold": fold, "resume": resume}),
                      ctx, device)
        if cross:
            write_oof(args, settings, types, ctx, device)
    finally:
        distributed.shutdown()
    return 0


def write_oof(args: argparse.Namespace, settings: Settings, types: list[str], ctx: distributed.DistContext,
              device: torch.device) -> None:
    """Each type's oof_predictions.csv from its folds' best.pt; with several types also their per-patient mean."""
    model_dir = settings["CLASSIFICATION_MODEL_DIR"]
    data_dir = settings.existing("CLASSIFICATION_DATA_DIR") / "train"
    folds_path = settings.existing("KFOLD_PATH")
    options = crossval.ScoreOptions(device, args.amp, args.workers, args.progress, ctx)
    results, files = {}, {}
    for mri_type in types:
        results[mri_type] = crossval.out_of_fold(model_dir / mri_type, load_index(data_dir, mri_type), data_dir,
                                                 folds_path, options)
        files[mri_type] = model_dir / mri_type / crossval.OOF_CSV
        if ctx.is_main:
            crossval.write_out_of_fold(files[mri_type], results[mri_type])
            print(f"{mri_type}: out-of-fold predictions of {len(results[mri_type].table)} patients "
                  f"-> {files[mri_type]}")
    if len(types) > 1 and ctx.is_main:
        combined, per_type = crossval.combine_types(results, files, folds_path)
        crossval.write_out_of_fold(model_dir / crossval.OOF_CSV, combined, per_type)
        print(f"types combined: out-of-fold predictions of {len(combined.table)} patients -> "
              f"{model_dir / crossval.OOF_CSV}")


def train_one(args: argparse.Namespace, ctx: distributed.DistContext, device: torch.device) -> None:
    """One model: one MRI type (or the pooled types) and one validation fold (this process's part)."""
    settings = load_settings(args.settings)
    # missing weights: say so first
    pretrained = resolve_pretrained(args.pretrained, settings["PRETRAINED_DIR"], args.backbone)
    data_dir = settings.existing("CLASSIFICATION_DATA_DIR") / "train"
    index = load_index(data_dir, args.mri_type)
    if index.empty:
        raise ValueError(f"no prepared series of type {args.mri_type} in {data_dir}")
    train_rows, val_rows = split_by_fold(index, args.fold)
    overlap = set(train_rows.patient) & set(val_rows.patient)
    assert not overlap, f"patients in both splits: {sorted(overlap)[:5]}"
    out_dir = settings["CLASSIFICATION_MODEL_DIR"] / args.mri_type / f"fold{args.fold}"
    config = TrainConfig.from_args(args, out_dir=str(out_dir), device=str(device))
    seed_everything(config.seed)
    model = build_classifier(args.backbone, args.lstm_hidden, args.seq_len, pretrained)

    contract = training_contract(data_dir, args.image_size, args.seq_len, args.stride)

    def dataset(rows, augment):
        return ChunkDataset(
            rows, data_dir, args.image_size, args.seq_len, args.stride, augment=augment, seed=config.seed
        )

    train_ds, val_ds = dataset(train_rows, args.augment), dataset(val_rows, False)
    train_loader = distributed.make_train_loader(
        train_ds, args.batch_size, config.seed, device, args.workers, config.accumulate, ctx)
    val_loader = distributed.make_eval_loader(val_ds, args.batch_size // config.accumulate, device, args.workers, ctx)
    metrics = ClassificationMetrics()
    log.info(
        "%s fold %d: %d train chunks (%d patients), %d validation chunks (%d patients)",
        args.mri_type,
        args.fold,
        len(train_ds),
        train_rows.patient.nunique(),
        len(val_ds),
        val_rows.patient.nunique(),
    )

    def save_patient_scores(trainer: Trainer, record: dict) -> None:
        # The metrics object still holds this epoch's validation pass (it runs after training).
        if trainer.best_epoch == record.get("epoch"):
            write_csv_atomic(out_dir / "val_patients.csv", trainer.metrics.patient_table())

    trainer = Trainer(
        model, train_loader, val_loader, ClassificationLoss(), metrics, config,
        freeze_module=model.backbone,
        extra_config={
            "mri_type": args.mri_type, "fold": args.fold, "image_size": args.image_size, "seq_len": args.seq_len,
            "stride": args.stride, "lstm_hidden": args.lstm_hidden, "backbone": args.backbone,
            "batch_size": args.batch_size, "device_arg": args.device, "augment": args.augment,
            "contract": contract.to_dict(),
            "pretrained": str(pretrained) if pretrained else "none",
            "data_dir": str(data_dir), "train_patients": sorted(train_rows.patient.unique()),
            "val_patients": sorted(val_rows.patient.unique()),
        },
        on_epoch_end=save_patient_scores,
        preview=validation_preview(val_ds),
    )
    result = trainer.fit()
    best = result.history[result.best_epoch - 1] if result.best_epoch else {}
    if ctx.is_main:
        print(f"{args.mri_type} fold {args.fold}: best epoch {result.best_epoch} "
              f"val_loss {best.get('val_loss', float('nan')):.4f} "
              f"chunk AUC {best.get('val_chunk_auc', float('nan')):.3f} "
              f"patient AUC {best.get('val_patient_auc', float('nan')):.3f} -> {out_dir}")
