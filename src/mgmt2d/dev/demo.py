"""``make demo``: the whole pipeline on synthetic data with small settings, on CPU, in minutes.

Runs the six stage scripts as a user would (subprocesses, argument lists, no shell), with
random initialisation and reduced image size and epochs, then prints both stages'
validation numbers and the submission path. Proves an install works; it is not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from mgmt2d.dev import synth

REPO = Path(__file__).resolve().parents[3]


def steps(settings: Path, args: argparse.Namespace) -> list[tuple[str, list[str], bool]]:
    """(title, argv, must succeed) of each stage, smallest settings that still exercise everything."""
    s = ["--settings", str(settings)]
    seg_size, cls_size = str(args.seg_image_size), str(args.cls_image_size)
    common_train = ["--device", "cpu", "--pretrained", "none", "--workers", "0", "--no-progress"]
    return [
        ("6. download_models.py (offline check: the demo uses random initialisation)",
         [sys.executable, str(REPO / "download_models.py"), *s, "--offline-check"], False),
        ("1. prepare_segmentation_data.py",
         [sys.executable, str(REPO / "prepare_segmentation_data.py"), *s, "--workers", "1", "--no-progress",
          "--modalities", "flair", "t1ce", "--keep-rate", str(args.keep_rate)], True),
        ("2. train_segmentation.py",
         [sys.executable, str(REPO / "train_segmentation.py"), *s, *common_train, "--image-size", seg_size,
          "--epochs", str(args.seg_epochs), "--warmup-epochs", "1", "--batch-size", "16", "--lr", "1e-3"], True),
        ("3. prepare_classification.py --split train",
         [sys.executable, str(REPO / "prepare_classification.py"), *s, "--split", "train", "--device", "cpu",
          "--image-size", seg_size, "--workers", "1"], True),
        ("3. prepare_classification.py --split test",
         [sys.executable, str(REPO / "prepare_classification.py"), *s, "--split", "test", "--device", "cpu",
          "--image-size", seg_size, "--workers", "1"], True),
        ("4. train_classification.py --mri-type pooled",
         [sys.executable, str(REPO / "train_classification.py"), *s, *common_train, "--mri-type", "pooled",
          "--image-size", cls_size, "--seq-len", str(args.seq_len),
          "--stride", str(args.stride or max(args.seq_len // 2, 1)),
          "--epochs", str(args.cls_epochs), "--warmup-epochs", "1", "--batch-size", "4", "--lr", "1e-4"], True),
        ("5. inference_on_test.py",
         [sys.executable, str(REPO / "inference_on_test.py"), *s, "--device", "cpu", "--workers", "1"], True),
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=REPO / "demo", help="demo folder (data, models, submission)")
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seg-image-size", type=int, default=32, help="segmenter input (reference 224)")
    parser.add_argument("--cls-image-size", type=int, default=64, help="classifier input (reference 224)")
    parser.add_argument("--keep-rate", type=float, default=0.5, help="stage-1 slice sampling (reference 0.1)")
    parser.add_argument("--seg-epochs", type=int, default=2)
    parser.add_argument("--cls-epochs", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=8, help="chunk length (reference 35; small for speed)")
    parser.add_argument("--stride", type=int, default=None, help="chunk stride (default seq-len / 2; reference 5)")
    parser.add_argument("--overwrite", action="store_true", help="start from an empty demo folder")


def main(args: argparse.Namespace) -> int:
    out: Path = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise FileExistsError(f"{out} is not empty; pass --overwrite to redo the demo there (make demo does)")
        if not (out / "demo.json").is_file():
            raise FileExistsError(f"{out} was not made by the demo; refusing to delete it")
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "demo.json").write_text(json.dumps(vars(args), default=str, indent=2))
    settings = out / "SETTINGS.json"
    settings.write_text(json.dumps(synth.settings_json(data_root="data/"), indent=2))
    t_start = time.time()
    print(f"== synthetic data: {args.patients} patients, seed {args.seed} -> {out / 'data'}", flush=True)
    subprocess.run([sys.executable, "-m", "mgmt2d", "synth", "--out", str(out / "data"),
                    "--patients", str(args.patients), "--seed", str(args.seed), "--size", "small"], check=True)
    for title, argv, required in steps(settings, args):
        print(f"\n== {title}", flush=True)
        t0 = time.time()
        code = subprocess.run(argv, cwd=out).returncode
        print(f"   ({time.time() - t0:.0f} s, exit {code})", flush=True)
        if code != 0 and required:
            print(f"error: {title} failed (exit {code}); see its output above", file=sys.stderr)
            return code
    seg = pd.read_csv(out / "models/segmentation/fold0/history.csv")
    cls = pd.read_csv(out / "models/classification/pooled/fold0/history.csv")
    best_seg = seg.loc[seg.val_loss.idxmin()]
    best_cls = cls.loc[cls.val_loss.idxmin()]
    print("\n== results (random initialisation, tiny settings: numbers show the plumbing, not the method)")
    print(f"stage 1 validation (held-out fold 0): dice loss {best_seg.val_dice_loss:.3f}, IoU {best_seg.val_iou:.3f} "
          f"(epoch {int(best_seg.epoch)})")
    print(f"stage 2 validation (held-out fold 0): chunk AUC {best_cls.val_chunk_auc:.3f}, "
          f"patient AUC {best_cls.val_patient_auc:.3f} (epoch {int(best_cls.epoch)})")
    print(f"submission: {out / synth.settings_json()['TEST_PREDICTION_FILE']}")
    print(f"demo took {time.time() - t_start:.0f} s")
    return 0
