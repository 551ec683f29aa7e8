"""Stage 2 learns: on synthetic data whose label is a visible tumour property, a short CPU
training of the real classifier reaches a held-out patient AUC >= 0.8.

Stage 1 is bypassed so the check measures stage 2 alone: the true labels of every synthetic
DICOM series (``synth.generate(..., series_seg=True)``) stand in for the segmenter, and
``mgmt2d.dev.synth_stack`` stacks them exactly as ``mgmt2d.classification.stack`` does. The real script
``train_classification.py`` then trains ECA-NFNet-L0 + BiLSTM from random initialisation on
CPU, and the patient AUC of its best checkpoint on patients it never saw must reach 0.8. The label
(MGMT_value) sets the tumour's architecture: 1 = large necrotic core in a thin enhancing
rim, 0 = solid enhancement (see ``mgmt2d.dev.synth``); nothing but the images and the stacked
masks carries it.

The check (marked ``slow``: ``make test-slow``, run by CI after ``make test``) trains
on the synthetic Task 2 *train* patients (fold 0 of them picks the best epoch) and scores the
best checkpoint on the synthetic Task 2 *test* patients, which neither training nor model
selection saw, through the inference path itself (``inference.pipeline.classify_series``, zoom TTA
1.2). Measured on this 2-core CPU: see ``LEARN_*`` below and the README.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mgmt2d.classification.dataset import ChunkDataset, load_index, split_by_fold
from mgmt2d.classification.model import load_trained_classifier
from mgmt2d.classification.prepare import INDEX_COLUMNS
from mgmt2d.classification.stack import StackedSeries
from mgmt2d.data import dicom
from mgmt2d.data.contract import contract_of
from mgmt2d.dev import synth
from mgmt2d.dev.synth_stack import prepare_from_synth, stack_with_truth, true_masks
from mgmt2d.inference.gradcam import chunk_cam
from mgmt2d.inference.pipeline import classify_series

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fast checks


def test_stack_with_truth_on_a_phantom_slice_stack():
    """Hand-made series: near-empty slices dropped, small tumours filtered, channels stacked."""
    s, h, w = 6, 40, 40
    yy, xx = np.mgrid[:h, :w]
    brain = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 15**2).astype(np.float32)
    volume = np.stack([brain * (100 + 10 * k) for k in range(s)]) - 1024.0  # background -1024
    volume[0] = -1024.0                                   # blank slice
    seg = np.zeros((s, h, w), np.uint8)
    tumour = (yy - 20) ** 2 + (xx - 24) ** 2 <= 5**2
    core = (yy - 20) ** 2 + (xx - 24) ** 2 <= 2**2
    for k in (2, 3, 4):
        seg[k][tumour] = 4
        seg[k][core] = 1
    seg[5][(yy - 20) ** 2 + (xx - 24) ** 2 <= 1] = 2      # one-pixel tumour: filtered out
    res = stack_with_truth(volume, seg)   # background -1024: "above the series minimum" is tissue
    assert res.total == 6 and res.nonempty == 5
    assert res.slice_index.tolist() == [2, 3, 4]
    assert res.images.shape == (3, h, w, 3) and res.images.dtype == np.uint8
    wt, et = res.images[0, ..., 1], res.images[0, ..., 2]
    assert set(np.unique(wt)) == {0, 255} and set(np.unique(et)) == {0, 255}
    assert np.array_equal(wt > 0, tumour) and np.array_equal(et > 0, tumour & ~core)
    # min-max over the non-empty slices (slice 5 is the brightest, though not kept)
    # ... truncated, not rounded, as the published preparation did
    assert res.images[2, ..., 0].max() == int((140 - 0) / (150 - 0) * 255.0)
    masks = true_masks(np.array([[0, 1, 2, 4]]))
    assert masks[:, 0].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    none = stack_with_truth(volume, np.zeros_like(seg))
    assert none.kept == 0 and none.reason == "no slice passed the tumour filter"
    with pytest.raises(ValueError, match="do not match"):
        stack_with_truth(volume, seg[:, :-1])


@pytest.fixture(scope="module")
def small_prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """A 4-patient synthetic set, stacked with its true labels (all four MRI types)."""
    root = tmp_path_factory.mktemp("truth_stack")
    synth.generate(root / "synth", patients=4, seed=11, size="small", series_seg=True)
    frame = prepare_from_synth(root / "synth", root / "train", n_folds=2, seed=11)
    return root / "synth", root / "train", frame


def test_truth_stacking_keeps_slices_in_the_prepared_layout(small_prepared):
    synth_dir, out, frame = small_prepared
    meta = json.loads((synth_dir / "synth.json").read_text())
    on_disk = pd.read_csv(out / "index.csv", dtype={"patient": str}, keep_default_na=False)
    assert list(on_disk.columns) == INDEX_COLUMNS
    assert len(on_disk) == 4 * 4
    assert (on_disk.kept > 0).mean() >= 0.9               # most series keep tumour slices
    assert set(on_disk.label) == {0, 1}
    assert on_disk.groupby("patient").fold.nunique().max() == 1
    for row in on_disk.itertuples():
        assert row.label == meta["labels"][row.patient]
        if row.kept == 0:
            assert row.file == "" and row.note
            continue
        arr = np.load(out / row.file, allow_pickle=False)
        assert row.file == f"series/{row.patient}_{row.type}.npy"
        assert arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] == 3
        assert arr.shape[0] == row.kept <= row.total
        wt, et = arr[..., 1], arr[..., 2]
        assert set(np.unique(wt)) <= {0, 255} and set(np.unique(et)) <= {0, 255}
        assert not np.any((et > 0) & (wt == 0))           # ET inside WT
        assert (wt > 0).reshape(len(arr), -1).any(axis=1).all()
    # The stage-2 dataset reads it as prepare_classification.py's output.
    index = load_index(out, "pooled")
    train, val = split_by_fold(index, 0)
    assert not set(train.patient) & set(val.patient)
    ds = ChunkDataset(val, out, image_size=32, seq_len=8, stride=4)
    item = ds[0]
    assert tuple(item["image"].shape) == (8, 3, 32, 32)
    assert float(item["label"]) in (0.0, 1.0)


def test_series_truth_is_aligned_with_the_dicom_reading_order(small_prepared):
    """truth/series_seg is (S, H, W) in read_series order: T1wCE's enhancing rim is its
    brightest tissue only when the labels are not flipped along any axis."""
    synth_dir, _, _ = small_prepared
    meta = json.loads((synth_dir / "synth.json").read_text())
    checked = 0
    for patient in meta["task2_train_ids"][:3]:
        volume, _ = dicom.read_series(synth_dir / "task2" / "train" / patient / "T1wCE")
        seg = np.load(synth_dir / "truth" / "series_seg" / patient / "T1wCE.npz")["seg"]
        assert seg.shape == volume.shape

        def contrast(labels: np.ndarray) -> float:
            tissue = (labels == 0) & (volume > volume.min())
            return float(volume[labels == 4].mean() / volume[tissue].mean())

        aligned = contrast(seg)
        assert aligned > 1.4
        for axis in range(3):
            assert contrast(np.flip(seg, axis)) < aligned
        checked += 1
    assert checked == 3


def test_prepare_from_synth_splits(small_prepared, tmp_path):
    synth_dir, _, _ = small_prepared
    meta = json.loads((synth_dir / "synth.json").read_text())
    test_only = prepare_from_synth(synth_dir, tmp_path / "test", mri_types=("T1wCE",), n_folds=1, splits=("test",))
    assert set(test_only.patient) == set(meta["task2_test_ids"])
    assert not set(test_only.patient) & set(meta["task2_train_ids"])
    with pytest.raises(ValueError, match="splits"):
        prepare_from_synth(synth_dir, tmp_path / "bad", splits=("val",))


# --------------------------------------------------------------------------- the learning check

# Synthetic Task 2: LEARN_PATIENTS patients, ~3/4 train (LEARN_FOLDS folds: fold 0 selects the
# best epoch) and ~1/4 test (scored once, at the end). One MRI type, as the reference trains.
LEARN_PATIENTS = 80
LEARN_FOLDS = 4
LEARN_TYPE = "T1wCE"
LEARN_SEED = 0  # data, folds, initialisation, shuffling and augmentation
LEARN_THREADS = 2
# Reduced size (64 px, 8-slice chunks) so a CPU trains in minutes; random initialisation
# (no ImageNet weights offline). lr 2e-4: at 1e-3 the random-init NFNet collapses to a
# constant output. Augmentation stays on (the default): without it the model memorises the
# ~100 training chunks and does not generalise.
LEARN_ARGS = [
    "--image-size", "64", "--seq-len", "8", "--stride", "8", "--batch-size", "4",
    "--epochs", "20", "--warmup-epochs", "0", "--lr", "2e-4", "--patience", "20",
]
# 20 epochs: with the published augmentation (independent draws, reflect-101, at native size) 12
# epochs were too few (held-out 0.740 / 0.670 at seed 0); 20 gave 0.950 / 0.980 then (today: README).
# A fixed-seed regression check, deterministic on CPU at a fixed thread count. Learning from
# random initialisation at 64 px is seed dependent: measured before the published augmentation
# (12 epochs, TTA 1.2 / none): seed 0: 0.930 / 0.900, seed 1: 0.820 / 0.780, seed 2: 0.600 (the training
# loss stays at ~0.69; 4 frozen warm-up epochs, 1.5x larger tumours, 96 px or resnet18 did not
# rescue it within 12-16 epochs). A drop below MIN_AUC after a change means the change broke
# what used to learn -- or moved this seed onto a plateau: rerun with LEARN_SEED = 1 to tell.
MIN_AUC = 0.8


def score_held_out(checkpoint: Path, test_dir: Path, zooms: tuple[float, ...]) -> list[pd.DataFrame]:
    """Patient probabilities of ``checkpoint`` on the prepared test series, one table per zoom,
    through the inference path (the loader and ``classify_series`` of inference_on_test.py)."""
    model, config = load_trained_classifier(checkpoint, "cpu")
    index = pd.read_csv(test_dir / "index.csv", dtype={"patient": str}, keep_default_na=False)
    rows: dict[float, list[dict]] = {zoom: [] for zoom in zooms}
    for row in index[index.kept > 0].itertuples():
        images = np.load(test_dir / row.file, allow_pickle=False)
        stacked = StackedSeries(images, np.arange(len(images)), row.total, row.total)
        for zoom in zooms:
            contract = contract_of(config).with_overrides(tta_zoom=zoom)
            prob = float(np.mean(classify_series([model], stacked, contract, 32, None)))
            rows[zoom].append({"patient": row.patient, "label": row.label, "prob": prob})
    return [pd.DataFrame(rows[zoom]) for zoom in zooms]


@pytest.mark.slow
def test_stage2_learns_visible_tumour_property(tmp_path):
    t0 = time.perf_counter()
    root = tmp_path / "synth"
    synth.generate(root, patients=LEARN_PATIENTS, seed=LEARN_SEED, size="small", series_seg=True)
    settings = root / "SETTINGS.json"  # written by the generator; paths relative to root
    paths = json.loads(settings.read_text())
    train_index = prepare_from_synth(root, root / paths["CLASSIFICATION_DATA_DIR"] / "train",
                                     mri_types=(LEARN_TYPE,), n_folds=LEARN_FOLDS, seed=LEARN_SEED,
                                     splits=("train",))
    test_index = prepare_from_synth(root, tmp_path / "held_out", mri_types=(LEARN_TYPE,),
                                    n_folds=LEARN_FOLDS, seed=LEARN_SEED, splits=("test",))
    t1 = time.perf_counter()
    cmd = [sys.executable, "train_classification.py", "--settings", str(settings),
           "--mri-type", LEARN_TYPE, "--device", "cpu", "--pretrained", "none", "--workers", "0",
           "--no-progress", "--monitor", "patient_auc", "--seed", str(LEARN_SEED), *LEARN_ARGS]
    # A fixed thread count keeps CPU float reductions, hence the whole trajectory, the same
    # on machines with more cores (see MIN_AUC).
    env = {**os.environ, "OMP_NUM_THREADS": str(LEARN_THREADS), "MKL_NUM_THREADS": str(LEARN_THREADS)}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    t2 = time.perf_counter()
    assert proc.returncode == 0, f"train_classification.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = root / paths["CLASSIFICATION_MODEL_DIR"] / LEARN_TYPE / "fold0"
    history = pd.read_csv(out / "history.csv")
    config = json.loads((out / "train_config.json").read_text())["config"]

    # What was trained on, selected on and scored on are three disjoint patient sets.
    train, val = set(config["train_patients"]), set(config["val_patients"])
    test = set(test_index.patient)
    assert train and val and not train & val and not (train | val) & test
    assert train | val == set(train_index.patient)
    assert config["pretrained"] == "none" and config["backbone"] == "eca_nfnet_l0"
    assert config["augment"] is True

    table, no_tta = score_held_out(out / "best.pt", tmp_path / "held_out", zooms=(1.2, 1.0))
    auc, auc_no_tta = (float(roc_auc_score(t.label, t.prob)) for t in (table, no_tta))
    t3 = time.perf_counter()
    assert len(table) >= 16 and set(table.label) == {0, 1}
    shown = history[["epoch", "train_loss", "val_loss", "val_chunk_auc", "val_patient_auc", "time"]]
    report = (f"{shown.to_string(index=False)}\nheld-out test patients: {len(table)}, "
              f"patient AUC {auc:.3f} (TTA 1.2) / {auc_no_tta:.3f} (no TTA); seconds: prepare "
              f"{t1 - t0:.0f}, train {t2 - t1:.0f}, score {t3 - t2:.0f}")
    print(report)
    assert auc >= MIN_AUC, f"held-out patient AUC {auc:.3f} < {MIN_AUC}\n{report}"
    check_gradcam_is_faithful(out / "best.pt", tmp_path / "held_out")


# Grad-CAM faithfulness (issue 14): the heatmaps the report shows (top frames of the highest and the
# lowest chunk) put their mass on the tumour, whose architecture carries the label.
CAM_TOP_FRAMES = 3
CAM_DILATE_PX = 5     # tumour mask dilated by a 5x5 square at 64 px (2 px margin)
CAM_MIN_RATIO = 2.0


def check_gradcam_is_faithful(checkpoint: Path, test_dir: Path) -> None:
    """Mean over held-out patients of the share of heatmap mass inside the dilated tumour mask
    must be >= CAM_MIN_RATIO x the tumour's mean share of the image area."""
    model, config = load_trained_classifier(checkpoint, "cpu")
    contract = contract_of(config)
    index = pd.read_csv(test_dir / "index.csv", dtype={"patient": str}, keep_default_na=False)
    kernel = np.ones((CAM_DILATE_PX, CAM_DILATE_PX), np.uint8)
    mass_shares, area_shares = [], []
    for row in index[index.kept > 0].itertuples():
        images = np.load(test_dir / row.file, allow_pickle=False)
        stacked = StackedSeries(images, np.arange(len(images)), row.total, row.total)
        probs = classify_series([model], stacked, contract, 32, None)
        chunks = sorted({int(np.argmax(probs)), int(np.argmin(probs))})
        mass, area = [], []
        for chunk in chunks:
            cam = chunk_cam(model, stacked, contract, chunk)
            for t in cam.top_frames(CAM_TOP_FRAMES):
                heat = cam.cam[t]
                if heat.sum() <= 0:
                    continue
                tumour = cv2.dilate((cam.images[t][..., 1] > 127).astype(np.uint8), kernel) > 0
                mass.append(float(heat[tumour].sum() / heat.sum()))
                area.append(float(tumour.mean()))
        if mass:
            mass_shares.append(np.mean(mass))
            area_shares.append(np.mean(area))
    mass_share, area_share = float(np.mean(mass_shares)), float(np.mean(area_shares))
    print(f"Grad-CAM on {len(mass_shares)} held-out patients: heatmap mass inside the dilated tumour "
          f"{mass_share:.3f}, tumour share of the image area {area_share:.3f} (ratio {mass_share / area_share:.2f}, "
          f"need >= {CAM_MIN_RATIO})")
    assert len(mass_shares) >= 16
    assert mass_share >= CAM_MIN_RATIO * area_share
