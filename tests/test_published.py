"""The published solution's weights: layouts, the lock file, the input contract, and its predictions.

``reference_series`` below is an independent, per-slice re-statement of the published
test-time pipeline, written in its shape with albumentations' own transforms; our
streaming, batched, embedding-reusing inference must give what it gives.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from mgmt2d.classification.model import build_classifier
from mgmt2d.data import dicom, weights
from mgmt2d.data.contract import OURS, REFERENCE, InputContract, contract_of
from mgmt2d.dev import synth
from mgmt2d.inference.pipeline import PredictOptions, Predictor
from mgmt2d.segmentation import model as segmenter
from mgmt2d.tools import published

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ layouts


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_detect_layout_ours_and_the_published_one(tmp_path: Path):
    ours = tmp_path / "ours"
    _touch(ours / "segmentation/fold0/best.pt")
    layout = weights.detect_layout(ours)
    assert layout.kind == "mgmt2d" and layout.segmenter().is_file()
    assert layout.classifier("T1w", 2) == ours / "classification/T1w/fold2/best.pt"

    t4e = tmp_path / "t4e"
    for f in published.T4E:
        _touch(t4e / f.path)
    for where in (t4e, t4e / "models"):   # its root or its models/ folder
        layout = weights.detect_layout(where)
        assert layout.kind == "t4e"
        assert layout.segmenter() == t4e / "models/densenet121_2d_segment/Fold0_densenet121_2d_segment.pth"
        assert layout.classifier("FLAIR", 0).is_file()
        assert layout.classifier("T1wCE", 0).name == "T1wCE_Fold0_eca_nfnet_l0_2d_classification.pth"
    settings_style = weights.model_dirs_layout(t4e / weights.SEGMENTER_DIR, t4e / weights.CLASSIFIER_DIR)
    assert settings_style.kind == "t4e" and settings_style.classifier("T2w", 0).is_file()
    with pytest.raises(FileNotFoundError, match="--published t4e"):
        weights.detect_layout(tmp_path / "empty")


# ------------------------------------------------------------------ lock file


def _fake_drive(contents: dict[str, bytes], calls: list[str]):
    def download(drive_id: str, output: Path) -> None:
        calls.append(drive_id)
        output.write_bytes(contents[drive_id])
    return download


def test_first_download_records_the_lock_later_runs_verify(tmp_path: Path):
    files = published.T4E[:2]
    contents = {f.drive_id: f"weights of {f.name}".encode() for f in files}
    calls: list[str] = []
    dest, lock = tmp_path / "t4e", tmp_path / "t4e.lock.json"
    results = published.fetch_published(files, dest, lock, _fake_drive(contents, calls))
    assert [s for _, s, _ in results] == ["recorded", "recorded"] and len(calls) == 2
    entries = json.loads(lock.read_text())["files"]
    assert {e["name"] for e in entries} == {f.name for f in files}
    assert all(set(e) == {"name", "id", "size", "sha256"} for e in entries)
    assert not list(dest.rglob("*.download"))

    # second run: nothing downloaded, everything verified
    results = published.fetch_published(files, dest, lock, _fake_drive(contents, calls))
    assert [s for _, s, _ in results] == ["ok", "ok"] and len(calls) == 2

    # a file changed on disk: moved aside, reported, not used
    target = dest / files[0].path
    target.write_bytes(b"tampered")
    results = published.fetch_published(files, dest, lock, _fake_drive(contents, calls))
    assert results[0][1] == "failed" and "differs from the lock file" in results[0][2]
    assert not target.exists() and target.with_name(target.name + ".rejected").read_bytes() == b"tampered"

    # Drive now serves other bytes: the download is refused by the lock, nothing put in place
    changed = dict(contents, **{files[0].drive_id: b"something else"})
    results = published.fetch_published(files, dest, lock, _fake_drive(changed, calls))
    assert results[0][1] == "failed" and not target.exists()
    # the original bytes again: accepted
    results = published.fetch_published(files, dest, lock, _fake_drive(contents, calls))
    assert results[0][1] == "ok" and target.read_bytes() == contents[files[0].drive_id]


def test_download_models_published_one_line_error_and_exit_status(tmp_path: Path, capsys):
    files = published.T4E[:1]
    lock = tmp_path / "t4e.lock.json"
    dest = tmp_path / "t4e"
    contents = {files[0].drive_id: b"abc"}
    assert published.main_published.__defaults__ is not None
    published.PUBLISHED["test"] = files
    try:
        assert published.main_published("test", dest, lock, _fake_drive(contents, [])) == 0
        (dest / files[0].path).write_bytes(b"abd")
        assert published.main_published("test", dest, lock, _fake_drive(contents, [])) == 1
    finally:
        del published.PUBLISHED["test"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "lock file" in err[0]


def test_download_models_accepts_published_flag():
    proc = subprocess.run([sys.executable, str(REPO / "download_models.py"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--published" in proc.stdout


# ------------------------------------------------------------------ stage-1 initialisation


def test_pretrained_whole_unetpp_or_encoder_strictly(tmp_path: Path):
    source = segmenter.build_segmenter()
    torch.save(source.state_dict(), tmp_path / "whole.pth")
    torch.save({**source.encoder.state_dict(), "classifier.weight": torch.zeros(3)}, tmp_path / "encoder.pth")
    model = segmenter.build_segmenter()
    assert segmenter.load_pretrained(model, tmp_path / "whole.pth") == "whole model"
    for (name, a), b in zip(model.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b), name
    assert segmenter.load_pretrained(segmenter.build_segmenter(), tmp_path / "encoder.pth") == "encoder"
    partial = {k: v for k, v in source.state_dict().items() if not k.startswith("segmentation_head.")}
    partial.pop(next(k for k in partial if k.startswith("decoder.")))
    torch.save(partial, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="broken.pth does not fit a whole UNet"):
        segmenter.load_pretrained(segmenter.build_segmenter(), tmp_path / "broken.pth")


# ------------------------------------------------------------------ contract


def test_contract_of_a_raw_state_dict_is_the_reference():
    assert contract_of(None) == REFERENCE and contract_of({}) == REFERENCE
    assert (REFERENCE.slice_order, REFERENCE.pixel_values, REFERENCE.nonempty_test) == (
        "filename",
        "stored",
        "stored_positive",
    )
    ours = InputContract(image_size=96, seq_len=8)
    assert contract_of({"contract": ours.to_dict()}) == ours
    assert contract_of({"image_size": 64, "seq_len": 8, "stride": 8}) == InputContract(
        image_size=64, seq_len=8, stride=8
    )
    with pytest.raises(ValueError, match="unknown input-contract keys"):
        InputContract.from_dict({**OURS.to_dict(), "mystery": 1})
    assert REFERENCE.with_overrides(slice_order="position", tta_zoom=None).slice_order == "position"


# ------------------------------------------------------------------ the published pipeline, restated


def reference_series(
    series_dir: Path, seg_model, classifier, c: InputContract
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(kept file names, stacked uint8 slices, chunk probabilities) the published way, slice by slice."""
    names, stacked = reference_stacked(series_dir, seg_model, c)
    return names, stacked, reference_chunk_probs(stacked, classifier, c) if names else np.zeros(0)


def reference_stacked(series_dir: Path, seg_model, c: InputContract) -> tuple[list[str], np.ndarray]:
    """(kept file names, stacked uint8 slices): the published preparation of one series."""
    paths = sorted(series_dir.glob("*.dcm"), key=lambda x: int(str(x).replace(".dcm", "").split("-")[-1]))
    used, names = [], []
    for path in paths:
        img = pydicom.dcmread(path).pixel_array
        if np.where(img > 0, 1, 0).mean() > 0.1:
            used.append(img)
            names.append(path.name)
    if not used:
        return [], np.zeros((0,))
    voxels = np.array(used)
    voxels = (voxels - voxels.min()) / (voxels.max() - voxels.min()) * 255.0
    big = int(c.seg_image_size * 1.2)
    seg_in = A.Compose([A.Resize(big, big), A.CenterCrop(c.seg_image_size, c.seg_image_size), A.Normalize()])
    x = np.stack([seg_in(image=np.stack([v] * 3, axis=-1))["image"].transpose(2, 0, 1) for v in voxels])
    with torch.no_grad():
        out = (seg_model(torch.from_numpy(x)).numpy() > 0.5).astype("uint8")
    kept_names, stacked = [], []
    for name, v, o in zip(names, voxels, out):
        image = v.astype("uint8")
        inv = A.Compose([A.PadIfNeeded(big, big, border_mode=cv2.BORDER_REFLECT_101),
                         A.Resize(height=image.shape[0], width=image.shape[1])])
        m0, m1 = inv(image=o[0])["image"], inv(image=o[1])["image"]
        _, brain = cv2.threshold(image, 1, 255, cv2.THRESH_BINARY)
        brain_cnt, _ = cv2.findContours(brain, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
        _, wt = cv2.threshold(m0, 0.5, 1, cv2.THRESH_BINARY)
        wt_cnt, _ = cv2.findContours(wt, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
        if len(wt_cnt) == 0:
            continue
        ratio = max(cv2.contourArea(k) for k in wt_cnt) / max(cv2.contourArea(k) for k in brain_cnt)
        if ratio > c.min_area_ratio and len(wt_cnt) <= c.max_wt_contours:
            kept_names.append(name)
            stacked.append(np.stack([image, m0 * 255, m1 * 255], axis=-1))
    return kept_names, np.stack(stacked) if stacked else np.zeros((0,))


def reference_chunk_probs(stacked: np.ndarray, classifier, c: InputContract) -> np.ndarray:
    """Chunk probabilities the published way: every chunk through the whole model, padded chunks in float."""
    n = len(stacked)
    n_chunks = max(int(np.ceil((n - c.seq_len) / c.stride) + 1), 1)
    tta = A.Compose([A.Affine(scale=c.tta_zoom, p=1.0), A.Resize(c.image_size, c.image_size), A.Normalize()])
    probs = []
    for i in range(n_chunks):
        chunk = stacked[i * c.stride: min(i * c.stride + c.seq_len, n)]
        if len(chunk) < c.seq_len:   # zero frames appended as float64: the whole chunk becomes float
            chunk = np.concatenate([chunk, np.zeros((c.seq_len - len(chunk), *chunk.shape[1:]))])
        frames = np.stack([tta(image=f)["image"].transpose(2, 0, 1) for f in chunk])
        with torch.no_grad():
            probs.append(torch.sigmoid(classifier(torch.from_numpy(frames)[None].float())).item())
    return np.array(probs)


class _BrightIsTumour(torch.nn.Module):
    """A deterministic stand-in segmenter: WT where the normalised input is bright, ET where very bright."""

    def forward(self, x):
        return torch.cat([(x[:, :1] > 0.9).float(), (x[:, :1] > 1.6).float()], dim=1)


@pytest.fixture(scope="module")
def synth_task2(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("published") / "synth"
    synth.generate(root, patients=4, seed=1, size="small")
    return root / "task2"


@pytest.mark.parametrize("slice_order", ["filename", "position"])
def test_our_inference_equals_the_published_pipeline(synth_task2: Path, slice_order: str):
    """Same kept slices (files and order), same stacked images, same chunk probabilities (to float rounding)."""
    torch.manual_seed(0)
    c = REFERENCE.with_overrides(seg_image_size=64, image_size=32, seq_len=6, stride=2)
    classifier = build_classifier(seq_len=c.seq_len).eval()
    seg = _BrightIsTumour()
    models = Predictor(seg, {"T1wCE": [classifier], "FLAIR": [classifier]}, c.with_overrides(slice_order=slice_order))
    input_dir = synth_task2 / "train"
    patients = sorted(p.name for p in input_dir.iterdir())
    keep = input_dir.parent / f"keep-{slice_order}"
    sub, detail = models.predict(patients, input_dir, PredictOptions(["T1wCE", "FLAIR"], batch_size=16, keep_dir=keep))
    compared = 0
    for row in detail.itertuples():
        names, stacked, probs = reference_series(input_dir / row.BraTS21ID / row.type, seg, classifier, c)
        if slice_order == "position":   # the same slices kept, in anatomical order
            anatomical = [p.name for p in dicom.read_series(input_dir / row.BraTS21ID / row.type)[1].files]
            assert row.kept_files.split() == [n for n in anatomical if n in set(names)]
            compared += bool(names)
            continue
        assert row.kept_files.split() == names, (row.BraTS21ID, row.type)
        if names:
            np.testing.assert_array_equal(np.load(keep / f"{row.BraTS21ID}_{row.type}.npy"), stacked)
            np.testing.assert_allclose([float(p) for p in row.chunk_probs.split()], probs, atol=2e-6)
            compared += 1
    assert compared >= 2, "the synthetic series must give the comparison kept slices"


def test_models_that_disagree_on_their_contract_are_refused(tmp_path: Path):
    torch.manual_seed(0)
    root = tmp_path / "w"
    torch.save(segmenter.build_segmenter().state_dict(), _touch(root / "segmentation/fold0/best.pt"))
    model = build_classifier(seq_len=35)
    torch.save(model.state_dict(), _touch(root / "classification/T1w/fold0/best.pt"))   # raw: the reference's
    torch.save({"model": model.state_dict(), "config": {"contract": OURS.to_dict()}},
               _touch(root / "classification/T2w/fold0/best.pt"))
    layout = weights.detect_layout(root)
    with pytest.raises(Exception, match="slice_order"):
        Predictor.from_weights(layout, "cpu", ["T1w", "T2w"], [0])
    models = Predictor.from_weights(layout, "cpu", ["T1w"], [0], overrides={"slice_order": "position"})
    assert models.contract == REFERENCE.with_overrides(slice_order="position")


def test_published_layout_end_to_end(synth_task2: Path, tmp_path: Path):
    """Raw state dicts in the published layout -> inference_on_test.py --weights-dir -> submission + contract."""
    torch.manual_seed(0)
    weights = tmp_path / "t4e"
    seg = segmenter.build_segmenter()
    with torch.no_grad():   # a head that marks WT everywhere and ET nowhere: every used slice is kept
        seg.segmentation_head[0].weight.zero_()
        seg.segmentation_head[0].bias.copy_(torch.tensor([5.0, -5.0]))
    torch.save(seg.state_dict(), _touch(weights / "models/densenet121_2d_segment/Fold0_densenet121_2d_segment.pth"))
    classifier = build_classifier().eval()
    torch.save(
        classifier.state_dict(),
        _touch(weights / "models/eca_nfnet_l0_2d_classification/T1wCE/T1wCE_Fold0_eca_nfnet_l0_2d_classification.pth"),
    )
    settings = tmp_path / "SETTINGS.json"
    settings.write_text(json.dumps(synth.settings_json(str(synth_task2.parent) + "/")))
    # a Kaggle-layout test folder with the first 14 files of each test patient's T1wCE (CPU time at 224 px)
    test_dir = tmp_path / "test"
    for patient in sorted((synth_task2 / "test").iterdir()):
        files = sorted(patient.glob("T1wCE/*.dcm"), key=lambda f: int(f.stem.split("-")[-1]))[:14]
        (test_dir / patient.name / "T1wCE").mkdir(parents=True)
        for f in files:
            (test_dir / patient.name / "T1wCE" / f.name).symlink_to(f)
    out = tmp_path / "sub.csv"
    test_ids = sorted(p.name for p in test_dir.iterdir())
    proc = subprocess.run([sys.executable, str(REPO / "inference_on_test.py"), "--settings", str(settings),
                           "--input", str(test_dir), "--weights-dir", str(weights), "--output", str(out),
                           "--device", "cpu", "--mri-types", "T1wCE", "--batch-size", "8"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sub = pd.read_csv(out, dtype={"BraTS21ID": str})
    assert sorted(sub.BraTS21ID) == test_ids and sub.MGMT_value.between(0, 1).all()
    config = json.loads((tmp_path / "sub_config.json").read_text())["config"]
    assert config["contract"] == REFERENCE.record() and config["weights_layout"] == "t4e"
    detail = pd.read_csv(tmp_path / "sub_per_type.csv", dtype=str, keep_default_na=False)
    detail[["kept", "chunks"]] = detail[["kept", "chunks"]].astype(int)
    row = detail[detail.kept > 0].iloc[0]
    # the slices the published preparation keeps (chunk probabilities: the small-size test above)
    names, _ = reference_stacked(test_dir / row.BraTS21ID / "T1wCE", seg.eval(), REFERENCE)
    assert row.kept_files.split() == names and len(names) == row.kept
    chunk_probs = [float(p) for p in row.chunk_probs.split()]
    assert len(chunk_probs) == row.chunks == max(-(-(row.kept - 35) // 5) + 1, 1)
    assert float(sub.set_index("BraTS21ID").loc[row.BraTS21ID, "MGMT_value"]) == pytest.approx(
        np.mean(chunk_probs), abs=1e-6
    )


def test_a_model_trained_on_jpg_is_refused_by_dicom_inference(tmp_path: Path):
    root = tmp_path / "w"
    torch.save(segmenter.build_segmenter().state_dict(), _touch(root / "segmentation/fold0/best.pt"))
    jpg = InputContract(input_format="jpg")
    torch.save({"model": build_classifier().state_dict(), "config": {"contract": jpg.to_dict()}},
               _touch(root / "classification/T1w/fold0/best.pt"))
    with pytest.raises(Exception, match="trained on JPG slices"):
        Predictor.from_weights(weights.detect_layout(root), "cpu", ["T1w"], [0])
