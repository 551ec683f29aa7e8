"""train_segmentation.py: UNet++ / DenseNet121 on WT/ET slices, validated on the held-out fold.

Writes SEGMENT_MODEL_DIR/fold<k>/ (best.pt, last.pt, history.csv, curves.png, train_config.json).
Under ``torchrun`` every process trains a share of each global batch (README: several GPUs).
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch

from mgmt2d import overlay
from mgmt2d.data.settings import add_settings_argument, load_settings
from mgmt2d.device import add_device_argument
from mgmt2d.pretrained import add_pretrained_argument, resolve_pretrained
from mgmt2d.segmentation import dataset as seg_dataset
from mgmt2d.segmentation import model as segmenter
from mgmt2d.training import augment, distributed
from mgmt2d.training.config import TrainConfig, add_train_arguments
from mgmt2d.training.metrics import SegmentationLoss, SegmentationMetrics
from mgmt2d.training.seeding import seed_everything
from mgmt2d.training.trainer import Trainer

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128,
                        help="GLOBAL batch per optimiser step, over all torchrun processes and --accumulate steps")
    parser.add_argument("--sync-bn", action="store_true",
                        help="SyncBatchNorm over the torchrun processes (BatchNorm statistics of the global batch)")
    parser.add_argument("--fold", type=int, default=0, help="validation fold (reference: 0)")
    parser.add_argument("--workers", type=int, default=2, help="data loader workers")
    add_pretrained_argument(parser, segmenter.ENCODER)
    add_train_arguments(
        parser,
        epochs=500,
        warmup_epochs=10,
        lr=1e-4,
        patience=10,
        plateau_factor=(0.1, 0.1),
        plateau_patience=(10, 10),
        monitor="val_loss",
    )


def validation_preview(val_ds: seg_dataset.SegmentationSliceDataset, n: int = 4):
    """TensorBoard preview: ``n`` fixed validation slices (the ones with the most tumour among
    evenly spaced candidates), each as [true | predicted] WT/ET contours on the slice."""
    candidates = np.unique(np.linspace(0, len(val_ds) - 1, min(len(val_ds), 8 * n)).astype(int))
    tumour = [int(val_ds.raw(int(i))[1][0].sum()) for i in candidates]
    chosen = sorted(int(candidates[j]) for j in np.argsort(tumour)[::-1][:n])

    def preview(model: torch.nn.Module, device: torch.device) -> dict[str, np.ndarray]:
        x = torch.stack([val_ds[i][0] for i in chosen]).to(device)
        pred = (model(x) > 0.5).cpu().numpy()
        tiles = []
        for i, p in zip(chosen, pred):
            image, mask = val_ds.raw(i)
            tiles.append(overlay.caption(overlay.contour_overlay(image, mask[0], mask[1]), f"true #{i}"))
            tiles.append(overlay.caption(overlay.contour_overlay(image, p[0], p[1]), "predicted"))
        return {"val/contours": overlay.grid(tiles, columns=2)}

    return preview


def main(args: argparse.Namespace) -> int:
    """Train one fold; under torchrun, this process's part of it."""
    ctx, device = distributed.init_distributed(args.device)
    try:
        return train(args, ctx, device)
    finally:
        distributed.shutdown()


def train(args: argparse.Namespace, ctx: distributed.DistContext, device: torch.device) -> int:
    settings = load_settings(args.settings)
    # missing weights: say so first
    pretrained = resolve_pretrained(args.pretrained, settings["PRETRAINED_DIR"], segmenter.ENCODER)
    data_dir = settings.existing("SEGMENT_DATA_DIR")
    index = seg_dataset.load_index(data_dir)
    train_rows, val_rows = seg_dataset.split_by_fold(index, args.fold)
    out_dir = settings["SEGMENT_MODEL_DIR"] / f"fold{args.fold}"
    config = TrainConfig.from_args(args, out_dir=str(out_dir), device=str(device))
    seed_everything(config.seed)
    model = segmenter.build_segmenter()
    initialised = "random"
    if pretrained is not None:
        initialised = segmenter.load_pretrained(model, pretrained)
        log.info("initialised the %s from %s", initialised, pretrained)
    train_ds = seg_dataset.SegmentationSliceDataset(
        data_dir, train_rows, args.image_size, augment.train_transform(), seed=config.seed
    )
    val_ds = seg_dataset.SegmentationSliceDataset(data_dir, val_rows, args.image_size, None)
    train_loader = distributed.make_train_loader(
        train_ds, args.batch_size, config.seed, device, args.workers, config.accumulate, ctx)
    val_loader = distributed.make_eval_loader(val_ds, args.batch_size // config.accumulate, device, args.workers, ctx)
    log.info("fold %d: %d training slices (%d cases), %d validation slices (%d cases)",
             args.fold, len(train_ds), train_rows.case.nunique(), len(val_ds), val_rows.case.nunique())
    trainer = Trainer(
        model, train_loader, val_loader, SegmentationLoss(), SegmentationMetrics(), config,
        freeze_module=model.encoder,
        preview=validation_preview(val_ds),
        extra_config={
            "fold": args.fold, "image_size": args.image_size, "batch_size": args.batch_size,
            "device_arg": args.device,
            "pretrained": str(pretrained) if pretrained else "none", "initialised": initialised,
            "data_dir": str(data_dir),
            "train_cases": sorted(train_rows.case.unique()), "val_cases": sorted(val_rows.case.unique()),
        },
    )
    result = trainer.fit()
    best = result.history[result.best_epoch - 1] if result.best_epoch else {}
    if ctx.is_main:
        print(
            f"segmentation fold {args.fold}: best epoch {result.best_epoch} "
            f"val_loss {best.get('val_loss', float('nan')):.4f} "
            f"val_iou {best.get('val_iou', float('nan')):.4f} -> {out_dir}"
        )
    return 0
