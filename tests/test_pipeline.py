"""End to end: the real stage scripts on small synthetic data, real architectures, random init.

One module-scoped run of the demo driver (which runs the six scripts in order) feeds every
test here; each test then checks one promise of a stage on those outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from mgmt2d import engines as backends
from mgmt2d.data import task2
from mgmt2d.data.contract import InputContract
from mgmt2d.data.settings import load_settings

REPO = Path(__file__).resolve().parents[1]


def run(argv: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    if argv[0].endswith(".py"):
        argv = [str(REPO / argv[0]), *argv[1:]]   # the top-level scripts, run from any folder
    proc = subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True)
    if ok and proc.returncode != 0:
        raise AssertionError(f"{argv[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pipeline") / "demo"
    proc = run(["-m", "mgmt2d", "demo", "--out", str(out), "--patients", "10", "--seed", "3",
                "--seg-epochs", "2", "--cls-epochs", "2", "--cls-image-size", "32", "--seq-len", "4",
                "--stride", "4"], REPO)
    assert "submission:" in proc.stdout and "patient AUC" in proc.stdout
    return out


def test_demo_prints_both_stages_and_a_submission(demo: Path):
    sub = pd.read_csv(load_settings(demo / "SETTINGS.json")["TEST_PREDICTION_FILE"], dtype={"BraTS21ID": str})
    sample = pd.read_csv(demo / "data/task2/sample_submission.csv", dtype={"BraTS21ID": str})
    assert sub.BraTS21ID.tolist() == sample.BraTS21ID.tolist()
    assert sub.MGMT_value.between(0, 1).all()
    for run_dir in ("models/segmentation/fold0", "models/classification/pooled/fold0"):
        for name in ("best.pt", "last.pt", "history.csv", "curves.png", "train_config.json"):
            assert (demo / run_dir / name).is_file(), f"{run_dir}/{name}"


def test_stage1_folds_are_patient_disjoint_and_leakage_filtered(demo: Path):
    settings = load_settings(demo / "SETTINGS.json")
    index = pd.read_csv(settings["SEGMENT_DATA_DIR"] / "index.csv", dtype={"case": str})
    assert index.groupby("case").fold.nunique().max() == 1
    config = json.loads((settings["SEGMENT_MODEL_DIR"] / "fold0/train_config.json").read_text())["config"]
    train_cases, val_cases = set(config["train_cases"]), set(config["val_cases"])
    assert train_cases and val_cases and not train_cases & val_cases
    assert val_cases == set(index[index.fold == 0].case)
    task2_ids = task2.task2_patient_ids(settings["DICOM_DATA_DIR"])
    task1_ids = {p.name.split("_")[1] for p in settings["TASK1_DIR"].iterdir()}
    assert task1_ids & task2_ids, "the synthetic data must give the leakage filter work"
    assert not set(index.case) & task2_ids
    dataset = json.loads((settings["SEGMENT_DATA_DIR"] / "dataset.json").read_text())
    assert dataset["counts"]


def test_evaluate_segmentation_writes_niftis_and_dice(demo: Path, tmp_path: Path):
    settings = load_settings(demo / "SETTINGS.json")
    cases = sorted(settings["TASK1_DIR"].iterdir())[:2]
    task1 = tmp_path / "task1"
    task1.mkdir()
    for case in cases:
        (task1 / case.name).symlink_to(case)
    out = tmp_path / "eval"
    proc = run(["-m", "mgmt2d", "evaluate-segmentation", "--settings", str(demo / "SETTINGS.json"),
                "--task1-dir", str(task1), "--modalities", "flair", "t1ce", "--out", str(out), "--device", "cpu"], REPO)
    assert "mean dice_wt" in proc.stdout
    metrics = pd.read_csv(out / "metrics.csv", dtype={"case": str})
    assert metrics.columns.tolist() == ["case", "dice_wt", "dice_et"]
    assert metrics.case.tolist() == [c.name for c in cases]
    assert metrics[["dice_wt", "dice_et"]].apply(lambda c: c.between(0, 1)).all().all()
    for case in cases:
        pred = nib.load(str(out / f"{case.name}_pred.nii.gz"))
        ref = nib.load(str(case / f"{case.name}_flair.nii.gz"))
        assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 2, 4}
    # --fold 0: exactly the cases stage-1 training held out, from TASK1_DIR
    out0 = tmp_path / "eval_fold0"
    run(["-m", "mgmt2d", "evaluate-segmentation", "--settings", str(demo / "SETTINGS.json"), "--fold", "0",
         "--modalities", "flair", "t1ce", "--out", str(out0), "--device", "cpu"], REPO)
    seg_config = json.loads((settings["SEGMENT_MODEL_DIR"] / "fold0/train_config.json").read_text())["config"]
    held_out = seg_config["val_cases"]
    scored = pd.read_csv(out0 / "metrics.csv", dtype={"case": str}).case.tolist()
    assert scored == [f"BraTS2021_{c}" for c in sorted(held_out)]


def test_stage2_prepared_data_folds_and_resume(demo: Path):
    settings = load_settings(demo / "SETTINGS.json")
    train_dir = settings["CLASSIFICATION_DATA_DIR"] / "train"
    index = pd.read_csv(train_dir / "index.csv", dtype={"patient": str}, keep_default_na=False)
    assert index.columns.tolist() == ["patient", "type", "kept", "total", "file", "label", "fold", "note"]
    for row in index[index.kept > 0].itertuples():
        arr = np.load(train_dir / row.file, mmap_mode="r")
        assert arr.shape[0] == row.kept and arr.shape[-1] == 3 and arr.dtype == np.uint8
        assert row.kept <= row.total
    folds = pd.read_csv(settings["KFOLD_PATH"], dtype={"BraTS21ID": str})
    assert folds.groupby("BraTS21ID").fold.nunique().max() == 1
    labels = task2.read_labels(settings["DICOM_DATA_DIR"] / "train_labels.csv")
    assert set(folds.BraTS21ID) == set(labels)
    meta = json.loads((train_dir / "dataset.json").read_text())
    assert meta["folds"]["source"].startswith("generated")   # synthetic patients: not the published folds
    before = {p: p.stat().st_mtime_ns for p in (train_dir / "series").iterdir()}
    # A re-run resumes: every patient is already done, nothing is rewritten.
    proc = run(["prepare_classification.py", "--settings", str(demo / "SETTINGS.json"), "--split", "train",
                "--device", "cpu", "--image-size", "32", "--workers", "1"], demo)
    assert "already prepared" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in (train_dir / "series").iterdir()} == before
    # Other parameters without --overwrite: refused, nothing deleted.
    proc = run(["prepare_classification.py", "--settings", str(demo / "SETTINGS.json"), "--split", "train",
                "--device", "cpu", "--image-size", "48", "--workers", "1"], demo, ok=False)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in (train_dir / "series").iterdir()} == before
    config = json.loads((settings["CLASSIFICATION_MODEL_DIR"] / "pooled/fold0/train_config.json").read_text())["config"]
    assert not set(config["train_patients"]) & set(config["val_patients"])


def _blank_series(folder: Path) -> None:
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.PixelData = np.zeros_like(ds.pixel_array).tobytes()
        ds.save_as(f)


def test_submission_contract_with_broken_patients(demo: Path, tmp_path: Path):
    settings = load_settings(demo / "SETTINGS.json")
    test_dir = settings["DICOM_DATA_DIR"] / "test"
    good = sorted(p for p in test_dir.iterdir() if p.is_dir())
    inp = tmp_path / "test"
    shutil.copytree(test_dir, inp)
    # 90001: only an empty FLAIR folder. 90002: a corrupt and a truncated file in a good patient.
    # 90003: every slice blank.
    (inp / "90001" / "FLAIR").mkdir(parents=True)
    shutil.copytree(good[0], inp / "90002")
    t1 = sorted((inp / "90002" / "T1w").glob("*.dcm"))
    t1[0].write_bytes(b"not a dicom at all")
    t1[1].write_bytes(t1[1].read_bytes()[:300])
    shutil.copytree(good[0], inp / "90003")
    for series in (inp / "90003").iterdir():
        _blank_series(series)
    ids = ["90003", *[p.name for p in good], "90001", "90002"]
    spelled = [i.lstrip("0") if i.startswith("0") else i for i in ids]   # spelling is kept as given
    sample = tmp_path / "sample_submission.csv"
    pd.DataFrame({"BraTS21ID": spelled, "MGMT_value": 0.5}).to_csv(sample, index=False)
    out = tmp_path / "out" / "sub.csv"
    proc = run(["inference_on_test.py", "--settings", str(demo / "SETTINGS.json"), "--input", str(inp),
                "--sample-submission", str(sample), "--output", str(out), "--device", "cpu",
                "--workers", "2"], demo)
    sub = pd.read_csv(out, dtype={"BraTS21ID": str})
    assert sub.BraTS21ID.tolist() == spelled
    assert sub.MGMT_value.between(0, 1).all() and sub.MGMT_value.notna().all()
    values = dict(zip(ids, sub.MGMT_value))
    assert values["90001"] == 0.5 and values["90003"] == 0.5
    assert "90001" in proc.stderr + proc.stdout and "90003" in proc.stderr + proc.stdout
    detail = pd.read_csv(out.with_name("sub_per_type.csv"), dtype={"BraTS21ID": str}, keep_default_na=False)
    assert set(detail.BraTS21ID) == set(ids)
    assert (detail[detail.BraTS21ID == "90002"].kept > 0).any()   # the corrupt files did not sink the patient
    assert sorted(p.name for p in out.parent.iterdir()) == ["sub.csv", "sub_config.json", "sub_per_type.csv"]
    # the contract our checkpoint recorded (anatomical order, our sizes) is the one inference used
    run_config = json.loads(out.with_name("sub_config.json").read_text())["config"]
    trained_config = settings["CLASSIFICATION_MODEL_DIR"] / "pooled/fold0/train_config.json"
    trained = json.loads(trained_config.read_text())["config"]
    assert run_config["contract"] == InputContract.from_dict(trained["contract"]).record()
    assert run_config["contract"]["slice_order"] == "position" and run_config["contract"]["seg_image_size"] == 32


@pytest.mark.parametrize("script", ["train_segmentation.py", "train_classification.py"])
def test_missing_imagenet_weights_is_a_one_line_error_not_a_random_start(demo: Path, script: str):
    proc = run([script, "--settings", str(demo / "SETTINGS.json"), "--device", "cpu"], demo, ok=False)
    assert proc.returncode == 2
    assert "download_models.py" in proc.stderr and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1


# ---------------------------------------------------------------- --backend (issue 16)

ENGINES = [e for e in ("onnxruntime", "openvino") if backends.engine_installed(e)]


def test_engine_backends_give_the_torch_submission(demo: Path, tmp_path: Path):
    """inference_on_test.py with each CPU engine, judged by what changes a result (issue 25, item 9): the same
    kept slices; the same stacked slices but for mask pixels that float rounding flips at the 0.5 threshold;
    where the stacked slices are the same, the same probabilities to float rounding."""
    if not ENGINES:
        pytest.skip("no CPU engine installed (requirements-cpu.txt)")
    raw = json.loads((demo / "SETTINGS.json").read_text())
    outs, keep = {}, {}
    for backend in ("torch", *ENGINES):
        keep[backend] = tmp_path / backend / "temp"   # --keep-intermediate: TEMP_DATA_DIR/inference/<id>_<type>.npy
        settings = tmp_path / backend / "SETTINGS.json"
        settings.parent.mkdir()
        settings.write_text(json.dumps({**{k: str((demo / v).resolve()) for k, v in raw.items()},
                                        "TEMP_DATA_DIR": str(keep[backend])}))
        outs[backend] = tmp_path / backend / "sub.csv"
        run(["inference_on_test.py", "--settings", str(settings), "--output", str(outs[backend]), "--device", "cpu",
             "--workers", "1", "--backend", backend, "--threads", "1", "--engine-cache", str(tmp_path / "cache"),
             "--keep-intermediate"], demo)
    detail = {b: pd.read_csv(o.with_name("sub_per_type.csv"), dtype={"BraTS21ID": str}, keep_default_na=False)
              for b, o in outs.items()}
    subs = {b: pd.read_csv(o, dtype={"BraTS21ID": str}) for b, o in outs.items()}
    assert (detail["torch"].kept > 0).any()
    for engine in ENGINES:
        for col in ("BraTS21ID", "type", "kept", "total", "chunks", "note", "kept_files"):
            assert detail[engine][col].tolist() == detail["torch"][col].tolist(), (engine, col)
        exact, same_patients = 0, set(detail["torch"].BraTS21ID)
        for want, got in zip(detail["torch"].itertuples(), detail[engine].itertuples()):
            if want.kept == 0:
                assert got.prob == want.prob == ""
                continue
            name = f"inference/{want.BraTS21ID}_{want.type}.npy"
            a, b = np.load(keep["torch"] / name), np.load(keep[engine] / name)
            np.testing.assert_array_equal(a[..., 0], b[..., 0])        # the slices themselves
            flipped = float((a[..., 1:] != b[..., 1:]).mean())          # WT/ET: thresholded probabilities
            assert flipped <= 1e-3, (name, flipped)
            if flipped == 0:   # same classifier input: probabilities to fp32 rounding of the embeddings
                assert abs(float(got.prob) - float(want.prob)) <= 1e-5, name
                exact += 1
            else:              # a few mask pixels at 0.5 moved the classifier's input: a small, bounded change
                assert abs(float(got.prob) - float(want.prob)) <= 1e-2, name
                same_patients.discard(want.BraTS21ID)
        assert exact >= 1, "no series with the same stacked slices: the comparison of probabilities is empty"
        assert subs[engine].BraTS21ID.tolist() == subs["torch"].BraTS21ID.tolist()
        for want, got in zip(subs["torch"].itertuples(), subs[engine].itertuples()):
            assert abs(got.MGMT_value - want.MGMT_value) <= (1e-5 if want.BraTS21ID in same_patients else 1e-2)
        config = json.loads(outs[engine].with_name("sub_config.json").read_text())["config"]
        assert config["backend"] == engine and config["threads"] == 1
    # A second run finds the cached conversions and gives that engine's submission again.
    again = tmp_path / "again" / "sub.csv"
    proc = run(["inference_on_test.py", "--settings", str(demo / "SETTINGS.json"), "--output", str(again), "--device",
                "cpu", "--workers", "1", "--backend", ENGINES[0], "--threads", "1", "--engine-cache",
                str(tmp_path / "cache")], demo)
    assert proc.stderr.count("cached conversion") == 2 and "converting" not in proc.stderr
    np.testing.assert_allclose(pd.read_csv(again).MGMT_value, subs[ENGINES[0]].MGMT_value, atol=1e-6)


def test_engine_backend_in_prepare_classification_and_evaluate_segmentation(demo: Path, tmp_path: Path):
    if not ENGINES:
        pytest.skip("no CPU engine installed (requirements-cpu.txt)")
    engine, cache = ENGINES[0], str(tmp_path / "cache")
    settings = load_settings(demo / "SETTINGS.json")
    # prepare_classification.py --split test into another folder: the same slices as the demo's torch run.
    raw = json.loads((demo / "SETTINGS.json").read_text())
    own = tmp_path / "SETTINGS.json"
    own.write_text(json.dumps({**{k: str((demo / v).resolve()) for k, v in raw.items()},
                               "CLASSIFICATION_DATA_DIR": str(tmp_path / "prepared")}))
    run(["prepare_classification.py", "--settings", str(own), "--split", "test", "--device", "cpu",
         "--image-size", "32", "--workers", "1", "--backend", engine, "--engine-cache", cache], demo)
    want_dir, got_dir = settings["CLASSIFICATION_DATA_DIR"] / "test", tmp_path / "prepared" / "test"
    want = pd.read_csv(want_dir / "index.csv", dtype={"patient": str}, keep_default_na=False)
    got = pd.read_csv(got_dir / "index.csv", dtype={"patient": str}, keep_default_na=False)
    pd.testing.assert_frame_equal(got, want)
    for row in want[want.kept > 0].itertuples():
        a, b = np.load(got_dir / row.file), np.load(want_dir / row.file)
        np.testing.assert_array_equal(a[..., 0], b[..., 0])   # the slices themselves
        # WT/ET: thresholded probabilities; one within float rounding of 0.5 may flip a pixel.
        assert (a[..., 1:] != b[..., 1:]).mean() <= 1e-4, row.file
    # evaluate-segmentation: the same Dice on one case.
    task1 = tmp_path / "task1"
    task1.mkdir()
    case = sorted(settings["TASK1_DIR"].iterdir())[0]
    (task1 / case.name).symlink_to(case)
    metrics = {}
    for backend in ("torch", engine):
        out = tmp_path / f"eval-{backend}"
        run(["-m", "mgmt2d", "evaluate-segmentation", "--settings", str(demo / "SETTINGS.json"), "--task1-dir",
             str(task1), "--modalities", "flair", "--out", str(out), "--device", "cpu", "--backend", backend,
             "--engine-cache", cache], REPO)
        metrics[backend] = pd.read_csv(out / "metrics.csv", dtype={"case": str})
        assert json.loads((out / "evaluate_config.json").read_text())["config"]["backend"] == backend
    pd.testing.assert_frame_equal(metrics[engine], metrics["torch"], atol=1e-6)


def test_engine_backend_not_installed_is_one_line(demo: Path, tmp_path: Path):
    code = ("import runpy, sys; sys.modules['openvino'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = run(["-c", code, str(REPO / "inference_on_test.py"), "--settings", str(demo / "SETTINGS.json"),
                "--output", str(tmp_path / "sub.csv"), "--device", "cpu", "--backend", "openvino"], demo, ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "requirements-cpu.txt" in errors[0] and "mgmt2d[cpu-engines]" in errors[0]
    assert not (tmp_path / "sub.csv").exists()

# --------------------------------------------------------------------------- per-patient report (issue 14)


class _Page(HTMLParser):
    """The files an HTML page references (img src, a href) and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.refs.append(attrs["src"])
        if tag == "a":
            self.refs.append(attrs["href"])

    def handle_data(self, data):
        self.text.append(data)


def _check_report(folder: Path) -> tuple[dict, str]:
    """index.html parses, every file it references exists, images are not blank, NIfTI pairs match."""
    page = _Page()
    page.feed((folder / "index.html").read_text())
    page.close()
    for ref in page.refs:
        path = folder / ref
        assert path.is_file(), f"{folder.name}/index.html references missing {ref}"
        if ref.endswith(".png"):
            image = cv2.imread(str(path))
            assert image is not None and image.size > 0 and image.std() > 5, f"{ref} is blank"
    for seg in folder.glob("*_seg.nii.gz"):
        image = nib.load(str(seg).replace("_seg.nii.gz", "_image.nii.gz"))
        labels = np.asarray(nib.load(seg).dataobj)
        assert labels.shape == image.shape and set(np.unique(labels)) <= {0, 2, 4}
        np.testing.assert_allclose(nib.load(seg).affine, image.affine)
    summary = json.loads((folder / "report.json").read_text())
    assert (folder / "report_config.json").is_file()
    return summary, " ".join(page.text)


def _check_dicom_segs(folder: Path, patient: Path) -> None:
    """Each type's DICOM SEG, read back with highdicom, holds the masks the report's NIfTI shows, per
    source instance in reading order; the patient JSON names it."""
    import highdicom as hd

    from mgmt2d.data.dicom import read_series

    record = json.loads((folder / f"{folder.name}.json").read_text())
    segs = sorted(folder.glob("*_seg.dcm"))
    assert segs, f"no DICOM SEG in {folder}"
    for seg_file in segs:
        mri_type = seg_file.name[: -len("_seg.dcm")]
        assert record["types"][mri_type]["seg"] == seg_file.name
        _, meta = read_series(patient / mri_type)
        uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in meta.files]
        pixels = hd.seg.segread(seg_file).get_pixels_by_source_instance(uids)   # (S, H, W, 2)
        labels = np.asarray(nib.load(str(folder / f"{mri_type}_seg.nii.gz")).dataobj).transpose(2, 1, 0)
        # the NIfTI labels: 4 = ET (ET counts outside WT too), 2 = the rest of WT; the SEG keeps both masks whole
        np.testing.assert_array_equal(pixels[..., 0].astype(bool) | pixels[..., 1].astype(bool), labels > 0)
        np.testing.assert_array_equal(pixels[..., 1], labels == 4)
        np.testing.assert_array_equal(pixels[..., 0][labels == 2], 1)


def test_report_dir_shows_the_submission_probabilities(demo: Path, tmp_path: Path):
    settings = load_settings(demo / "SETTINGS.json")
    test_dir = settings["DICOM_DATA_DIR"] / "test"
    good = sorted(p.name for p in test_dir.iterdir() if p.is_dir())[:2]
    inp = tmp_path / "test"
    for name in good:
        shutil.copytree(test_dir / name, inp / name)
    shutil.copytree(test_dir / good[0], inp / "90003")   # every slice blank: nothing usable
    for series in (inp / "90003").iterdir():
        _blank_series(series)
    out, reports = tmp_path / "sub.csv", tmp_path / "reports"
    run(["inference_on_test.py", "--settings", str(demo / "SETTINGS.json"), "--input", str(inp),
         "--output", str(out), "--device", "cpu", "--workers", "1", "--report-dir", str(reports)], demo)
    sub = pd.read_csv(out, dtype={"BraTS21ID": str})
    assert sorted(p.name for p in reports.iterdir()) == sorted(sub.BraTS21ID)
    shown_cam = 0
    for pid, value in zip(sub.BraTS21ID, sub.MGMT_value):
        summary, text = _check_report(reports / pid)
        assert summary["MGMT_value"] == pytest.approx(value, abs=1e-12)
        assert f"{value:.4f}" in text
        shown_cam += sum(1 for t in summary["types"].values() if t.get("gradcam"))
    assert shown_cam > 0   # the trained demo keeps slices somewhere, so some heatmaps are shown
    _check_dicom_segs(reports / good[0], inp / good[0])
    empty, text = _check_report(reports / "90003")
    assert empty["fallback"] and "No usable slice in any MRI type" in text
    assert all(t["note"] == "no non-empty slice" for t in empty["types"].values())
    assert (reports / "90003" / "T1wCE_slices.png").is_file()   # the dropped slices are still shown, marked

    # python -m mgmt2d report: the same code, the same probability; an existing report is kept.
    one = tmp_path / "one"
    proc = run(["-m", "mgmt2d", "report", "--settings", str(demo / "SETTINGS.json"), "--input", str(inp),
                "--patient", good[0], "--out", str(one), "--device", "cpu", "--workers", "1"], REPO)
    summary, _ = _check_report(one / good[0])
    assert summary["MGMT_value"] == pytest.approx(dict(zip(sub.BraTS21ID, sub.MGMT_value))[good[0]], abs=1e-12)
    assert f"{summary['MGMT_value']:.4f}" in proc.stdout
    again = run(["-m", "mgmt2d", "report", "--settings", str(demo / "SETTINGS.json"), "--input", str(inp),
                 "--patient", good[0], "--out", str(one), "--device", "cpu"], REPO, ok=False)
    errors = [line for line in again.stderr.splitlines() if line.startswith("error:")]
    assert again.returncode == 2 and len(errors) == 1 and "--overwrite" in errors[0]
    assert "Traceback" not in again.stderr and (one / good[0] / "index.html").is_file()

# --------------------------------------------------------------------------- sharded stage 2 and inference


def _sharded_settings(demo: Path, tmp_path: Path) -> Path:
    """The demo's settings with fresh stage-2 data and folds paths (the models and inputs stay)."""
    settings = {k: str(v) for k, v in load_settings(demo / "SETTINGS.json").paths.items()}
    settings["CLASSIFICATION_DATA_DIR"] = str(tmp_path / "cls")
    settings["KFOLD_PATH"] = str(tmp_path / "folds.csv")
    path = tmp_path / "SETTINGS.json"
    path.write_text(json.dumps(settings))
    return path


def _popen(argv: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / argv[0]), *argv[1:]], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _assert_same_stage2_store(settings, tmp_path: Path) -> None:
    """The store and folds prepared under ``tmp_path`` (see _sharded_settings) equal the demo's."""
    from test_shards import assert_same_tree

    # dataset.json's "folds" says where the folds came from: a resumed reference says "existing KFOLD_PATH"
    assert_same_tree(tmp_path / "cls/train", settings["CLASSIFICATION_DATA_DIR"] / "train", ignore=frozenset({"folds"}))
    assert (tmp_path / "folds.csv").read_bytes() == settings["KFOLD_PATH"].read_bytes()
    folds = json.loads((tmp_path / "cls/train/dataset.json").read_text())["folds"]
    assert folds["source"].startswith("generated") and folds["path"] == str(tmp_path / "folds.csv")


def test_stage2_preparation_in_three_shards_equals_one_run(demo: Path, tmp_path: Path):

    settings = load_settings(demo / "SETTINGS.json")
    sharded = _sharded_settings(demo, tmp_path)
    prep = ["prepare_classification.py", "--settings", str(sharded), "--split", "train", "--device", "cpu",
            "--image-size", "32", "--workers", "1"]
    # shards 3 and 1 at the same time; then the merge is refused while shard 2 is missing
    procs = [_popen([*prep, "--shard", f"{i}/3"], demo) for i in (3, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    proc = run([*prep, "--merge"], demo, ok=False)
    assert proc.returncode == 2 and "shard 2/3 is not started" in proc.stderr and "--shard 2/3" in proc.stderr
    assert not (tmp_path / "folds.csv").exists() and not (tmp_path / "cls/train/index.csv").exists()
    # a shard with other options is refused
    proc = run([*prep, "--shard", "2/3", "--seed", "7"], demo, ok=False)
    assert proc.returncode == 2 and "another configuration" in proc.stderr
    run([*prep, "--shard", "2/3"], demo)   # the last shard assembles folds, index and dataset.json
    _assert_same_stage2_store(settings, tmp_path)


def test_stage2_preparation_killed_then_rerun_equals_one_run(demo: Path, tmp_path: Path):

    settings = load_settings(demo / "SETTINGS.json")
    sharded = _sharded_settings(demo, tmp_path)
    prep = ["prepare_classification.py", "--settings", str(sharded), "--split", "train", "--device", "cpu",
            "--image-size", "32", "--workers", "1"]
    killed = subprocess.run([sys.executable, str(REPO / prep[0]), *prep[1:]], cwd=demo, capture_output=True,
                            text=True, env={**os.environ, "MGMT2D_FAULT": "patient-done:2"})
    assert killed.returncode == -9
    assert len(list((tmp_path / "cls/train/done").glob("*.csv"))) == 2 and not (tmp_path / "folds.csv").exists()
    run(prep, demo)
    _assert_same_stage2_store(settings, tmp_path)


def test_sharded_inference_assembles_the_unsharded_submission(demo: Path, tmp_path: Path):
    settings = load_settings(demo / "SETTINGS.json")
    reference = settings["TEST_PREDICTION_FILE"]
    out = tmp_path / "sub.csv"
    infer = ["inference_on_test.py", "--settings", str(demo / "SETTINGS.json"), "--device", "cpu",
             "--workers", "1", "--output", str(out)]
    procs = [_popen([*infer, "--shard", f"{i}/3"], demo) for i in (2, 3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    proc = run([*infer, "--merge"], demo, ok=False)
    assert proc.returncode == 2 and "shard 1/3 is not started" in proc.stderr
    assert not out.exists()
    proc = run([*infer, "--shard", "1/3"], demo)
    assert "assembled from 3 shards" in proc.stdout
    assert out.read_bytes() == reference.read_bytes()
    per_type = reference.with_name(reference.stem + "_per_type.csv")
    assert out.with_name("sub_per_type.csv").read_bytes() == per_type.read_bytes()
    ours = json.loads(out.with_name("sub_config.json").read_text())["config"]
    theirs = json.loads(reference.with_name(reference.stem + "_config.json").read_text())["config"]
    assert ours["shards"] == 3 and ours["contract"] == theirs["contract"] and ours["weights"] == theirs["weights"]


# --------------------------------------------------------------------------- NIfTI cohorts (issue 22)

BRATS_NAMING = {"FLAIR": "flair", "T1w": "t1", "T1wCE": "t1ce", "T2w": "t2"}


def _nifti_cohort(dicom_split: Path, out: Path) -> list[str]:
    """The demo's DICOM patients as a NIfTI cohort (BraTS 2021 naming): each series written on its own grid."""
    from mgmt2d.data.dicom import read_series
    from mgmt2d.data.nifti import save_nifti
    from mgmt2d.data.nifti_series import output_grid

    names = []
    for folder in sorted(p for p in dicom_split.iterdir() if p.is_dir()):
        case = out / f"case-{folder.name}"
        for mri_type, suffix in BRATS_NAMING.items():
            if (folder / mri_type).is_dir():
                volume, meta = read_series(folder / mri_type)
                save_nifti(case / f"{case.name}_{suffix}.nii.gz", *output_grid(volume, meta), voxel_order=True)
        names.append(case.name)
    return names


def test_real_brats_nifti_case_through_inference_and_the_report(demo: Path, shared_data: Path, tmp_path: Path):
    """The real BraTS 2023 case (four types, LPS int16, no label) through inference_on_test.py --input-format
    nifti and the report: outputs on the input's own grid and affine, the contract says nifti."""
    case = shared_data / "brats-gli-00001-000"
    if not case.is_dir():
        pytest.skip(f"{case} is absent")
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / case.name).symlink_to(case)
    out, reports = tmp_path / "sub.csv", tmp_path / "reports"
    run(["inference_on_test.py", "--settings", str(demo / "SETTINGS.json"), "--input", str(cohort),
         "--input-format", "nifti", "--output", str(out), "--device", "cpu", "--workers", "1",
         "--report-dir", str(reports)], demo)
    sub = pd.read_csv(out, dtype={"BraTS21ID": str})
    assert sub.BraTS21ID.tolist() == [case.name] and sub.MGMT_value.between(0, 1).all()   # the folder's name
    detail = pd.read_csv(out.with_name("sub_per_type.csv"), keep_default_na=False)
    assert sorted(detail.type) == sorted(task2.MRI_TYPES) and (detail.total == 155).all()   # axial: 155 slices
    contract = json.loads(out.with_name("sub_config.json").read_text())["config"]["contract"]
    assert contract["input_format"] == "nifti" and contract["nifti_plane"] == "axial"
    assert contract["slice_order"] == contract["pixel_values"] == "not applicable (nifti)"
    folder = reports / case.name
    summary, _ = _check_report(folder)
    assert summary["MGMT_value"] == pytest.approx(float(sub.MGMT_value.iloc[0]), abs=1e-12)
    record = json.loads((folder / f"{case.name}.json").read_text())
    assert record["contract"]["input_format"] == "nifti" and all(len(h) == 64 for h in record["weights"].values())
    assert not list(folder.glob("*.dcm"))   # no DICOM SEG for NIfTI input
    for mri_type, suffix in {"FLAIR": "t2f", "T1w": "t1n", "T1wCE": "t1c", "T2w": "t2w"}.items():
        source = nib.load(str(case / f"BraTS-GLI-00001-000-{suffix}.nii.gz"))
        image = nib.load(str(folder / f"{mri_type}_image.nii.gz"))
        assert image.shape == source.shape   # the input's own grid, voxel for voxel
        np.testing.assert_allclose(image.affine, source.affine, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(image.dataobj), np.asarray(source.dataobj, dtype=np.float32))
        assert nib.load(str(folder / f"{mri_type}_seg.nii.gz")).shape == source.shape


def test_nifti_cohort_through_prepare_inference_shards_and_engines(demo: Path, tmp_path: Path):
    """--input-format nifti on prepare_classification.py and inference_on_test.py, with --shard I/N,
    --keep-intermediate and a CPU engine, as on DICOM."""
    settings = load_settings(demo / "SETTINGS.json")
    cohort = tmp_path / "cohort"
    cases = _nifti_cohort(settings["DICOM_DATA_DIR"] / "test", cohort)
    temp = tmp_path / "temp"
    raw = {k: str(v) for k, v in settings.paths.items()}
    own = tmp_path / "SETTINGS.json"
    own.write_text(json.dumps({**raw, "TEMP_DATA_DIR": str(temp), "CLASSIFICATION_DATA_DIR": str(tmp_path / "cls")}))
    infer = ["inference_on_test.py", "--settings", str(own), "--input", str(cohort), "--input-format", "nifti",
             "--device", "cpu", "--workers", "1", "--nifti-plane", "coronal"]
    ref = tmp_path / "ref" / "sub.csv"
    run([*infer, "--output", str(ref), "--keep-intermediate"], demo)
    sub = pd.read_csv(ref, dtype={"BraTS21ID": str})
    assert sub.BraTS21ID.tolist() == cases
    detail = pd.read_csv(ref.with_name("sub_per_type.csv"), keep_default_na=False)
    kept = detail[detail.kept > 0]
    assert len(kept), "the demo models keep slices of the synthetic patients"
    for row in kept.itertuples():
        stacked = np.load(temp / "inference" / f"{row.BraTS21ID}_{row.type}.npy")
        assert len(stacked) == row.kept
        assert all(name.startswith(f"{row.BraTS21ID}_") and ":slice" in name for name in row.kept_files.split())
    config = json.loads(ref.with_name("sub_config.json").read_text())["config"]
    assert config["contract"]["nifti_plane"] == "coronal"
    # sharded: the same submission, byte for byte
    shard_out = tmp_path / "sharded" / "sub.csv"
    for i in (1, 2):
        run([*infer, "--output", str(shard_out), "--shard", f"{i}/2"], demo)
    assert shard_out.read_bytes() == ref.read_bytes()
    # a CPU engine: the same kept slices (masks as the engine test judges them)
    if ENGINES:
        engine_out = tmp_path / "engine" / "sub.csv"
        run([*infer, "--output", str(engine_out), "--backend", ENGINES[0], "--threads", "1",
             "--engine-cache", str(tmp_path / "cache")], demo)
        got = pd.read_csv(engine_out.with_name("sub_per_type.csv"), keep_default_na=False)
        assert got.kept.tolist() == detail.kept.tolist() and got.kept_files.tolist() == detail.kept_files.tolist()
    # prepare_classification.py --input-format nifti on the train split, labels from train_labels.csv
    train = tmp_path / "train-cohort"
    labels = pd.read_csv(settings["DICOM_DATA_DIR"] / "train_labels.csv", dtype={"BraTS21ID": str})
    train_cases = _nifti_cohort(settings["DICOM_DATA_DIR"] / "train", train)
    value = dict(zip(labels.BraTS21ID, labels.MGMT_value))
    relabelled = tmp_path / "labels.csv"   # the cases' own IDs: case-<Kaggle ID>
    pd.DataFrame({"BraTS21ID": train_cases, "MGMT_value": [value[c[len("case-"):]] for c in train_cases]}).to_csv(
        relabelled, index=False)
    raw_own = json.loads(own.read_text())
    own.write_text(json.dumps({**raw_own, "KFOLD_PATH": str(tmp_path / "folds.csv")}))
    run(["prepare_classification.py", "--settings", str(own), "--split", "train", "--input-format", "nifti",
         "--input", str(train), "--labels", str(relabelled), "--device", "cpu", "--image-size", "32",
         "--workers", "1"], demo)
    index = pd.read_csv(tmp_path / "cls/train/index.csv", dtype={"patient": str}, keep_default_na=False)
    assert sorted(index.patient.unique()) == sorted(train_cases)
    dataset = json.loads((tmp_path / "cls/train/dataset.json").read_text())
    assert dataset["params"]["contract"]["input_format"] == "nifti"


# --------------------------------------------------------------------------- skull stripping (issue 23)


def test_skull_strip_in_inference_and_the_unstripped_warning(demo: Path, mprage_dir: Path, tmp_path: Path):
    """The real unstripped MPRAGE as a patient's T1w: without --skull-strip a warning names the patient and the
    flag; with it the series is stripped with deepbet (recorded in the contract, the mask in the report)."""
    from mgmt2d.data.skullstrip import deepbet_installed

    if not deepbet_installed():
        pytest.skip("deepbet is not installed (requirements-skull-strip.txt)")
    inp = tmp_path / "patients" / "00042" / "T1w"
    inp.parent.mkdir(parents=True)
    inp.symlink_to(mprage_dir)
    base = ["inference_on_test.py", "--settings", str(demo / "SETTINGS.json"), "--input", str(inp.parents[1]),
            "--device", "cpu", "--workers", "1", "--mri-types", "T1w"]
    plain = run([*base, "--output", str(tmp_path / "plain" / "sub.csv")], demo)
    assert "patient 00042: the T1w series looks unstripped" in plain.stderr and "--skull-strip" in plain.stderr
    reports = tmp_path / "reports"
    stripped = run([*base, "--output", str(tmp_path / "stripped" / "sub.csv"), "--skull-strip",
                    "--report-dir", str(reports)], demo)
    assert "looks unstripped" not in stripped.stderr
    config = json.loads((tmp_path / "stripped" / "sub_config.json").read_text())["config"]
    assert config["contract"]["skull_strip"] is True
    summary, text = _check_report(reports / "00042")
    assert "skull-stripped with a" in summary["note"] and "from the T1w series" in text
    brain = nib.load(str(reports / "00042" / "T1w_brain.nii.gz"))
    ml = float(np.asarray(brain.dataobj).sum()) * abs(float(np.linalg.det(brain.affine[:3, :3]))) / 1000
    assert 1100 < ml < 1900   # an adult brain (deepbet's mask of this MPRAGE: 1549 mL)
    image = np.asarray(nib.load(str(reports / "00042" / "T1w_image.nii.gz")).dataobj)
    assert (image[np.asarray(brain.dataobj) == 0] == 0).all()   # the image the segmenter saw is stripped
