"""The output side of issue 25: out of disk space, one writer per output, --resume, reports of a
killed run, and an engine cache shared between users.

Each test asserts the exit status, the one ``error:`` line and what is on disk afterwards. The
inference runs use the tiny setup of ``helpers_inference`` (six patients, one 4-slice series
each, random weights), so a whole run takes seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import helpers_inference as tiny
import pandas as pd
import pytest

from mgmt2d import cli
from mgmt2d.data import io, shards
from mgmt2d.data.io import DiskFull
from mgmt2d.inference import partial

REPO = Path(__file__).resolve().parents[1]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def one_error(stderr: str) -> str:
    """The one ``error:`` line of a refused run (and no traceback)."""
    lines = error_lines(stderr)
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def run_cli(capsys, add_arguments, main, argv: list[str]) -> tuple[int, str, str]:
    """A command in this process, through the one boundary (``mgmt2d.cli.run``)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    capsys.readouterr()
    code = cli.run(main, parser, argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def enospc_at(monkeypatch, module, fails) -> list[Path]:
    """Make ``module``'s atomic writer run out of space on the paths ``fails(path)`` picks: a half
    temp file is written, then ENOSPC, as a full disk does. Returns the paths it failed."""
    real = io.atomic_path
    failed: list[Path] = []

    @contextlib.contextmanager
    def full(path, suffix=".tmp"):
        with real(path, suffix) as tmp:
            if fails(Path(path)):
                failed.append(Path(path))
                tmp.write_bytes(b"half of it")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            yield tmp

    monkeypatch.setattr(module, "atomic_path", full)
    return failed


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp*")]


# --------------------------------------------------------------------------- the one line


def test_disk_full_is_one_line_naming_the_folder_and_what_was_needed():
    err = DiskFull("/data/out", needed=5 << 20, free=1 << 20)
    line = cli.user_message(err)
    assert line.startswith("no space left on the device writing into /data/out (5.0 MiB needed, 1.0 MiB free)")
    assert "run it again" in line
    again = pickle.loads(pickle.dumps(err))   # raised in a worker process, re-raised in the parent
    assert isinstance(again, DiskFull) and cli.user_message(again) == line
    assert "writing into /a" in cli.user_message(OSError(errno.EDQUOT, "Disk quota exceeded", "/a/b.csv"))
    assert cli.user_message(OSError(errno.EDQUOT, "x", "/a/b.csv")).startswith("disk quota exceeded")
    bare = cli.user_message(OSError(errno.ENOSPC, "No space left on device"))   # torch.save deep inside, say
    assert bare is not None and bare.startswith("no space left on the device")
    assert cli.user_message(OSError(errno.EIO, "Input/output error")) is None   # not the user's: a traceback


def test_a_big_write_that_cannot_fit_is_refused_before_a_byte_is_written(tmp_path: Path, monkeypatch):
    import numpy as np

    monkeypatch.setattr(io, "free_bytes", lambda folder: 1000)
    with pytest.raises(DiskFull) as caught:
        io.save_npy_atomic(tmp_path / "a.npy", np.zeros((2, 1024, 1024), np.uint8))
    assert caught.value.folder == tmp_path and caught.value.needed > 2 << 20 and caught.value.free == 1000
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- stage 1 and stage 2 preparation


@pytest.fixture(scope="module")
def task1(tmp_path_factory) -> Path:
    from mgmt2d.dev import synth

    data = tmp_path_factory.mktemp("task1") / "data"
    synth.generate(data, patients=3, seed=5, size="small")
    return data


def _seg_settings(data: Path, store: Path, folder: Path) -> Path:
    settings = {k: str(data / v) for k, v in json.loads((data / "SETTINGS.json").read_text()).items()}
    settings["SEGMENT_DATA_DIR"] = str(store)
    path = folder / "SETTINGS.json"
    path.write_text(json.dumps(settings))
    return path


def test_disk_full_while_preparing_stage1_is_one_line_and_the_rerun_continues(task1, tmp_path, monkeypatch, capsys):
    from mgmt2d.segmentation import prepare as segdata

    store = tmp_path / "seg"
    settings = _seg_settings(task1, store, tmp_path)
    argv = ["--settings", str(settings), "--workers", "2", "--no-progress", "--keep-task2-overlap"]
    cases = sorted(p.name.split("_")[1] for p in (task1 / "task1").iterdir())
    # the second case's first array cannot be written; workers are forked, so they run out of space too
    failed = enospc_at(monkeypatch, io, lambda p: p.parent.name == cases[1] and p.suffix == ".npy")
    code, out, err = run_cli(capsys, segdata.add_arguments, segdata.main, argv)
    line = one_error(err)
    assert code == 2
    assert f"no space left on the device writing into {store / 'cases' / cases[1]}" in line
    assert "the finished cases are kept and it continues with the rest" in line
    assert not failed or failed[0].parent.name == cases[1]   # (the failing write ran in a worker)
    assert not (store / "cases" / cases[1] / "case.json").exists() and not temp_files(store)
    assert json.loads((store / "dataset.json").read_text())["status"] == "incomplete"
    done_before = {c for c in cases if (store / "cases" / c / "case.json").is_file()}
    monkeypatch.undo()
    code, out, err = run_cli(capsys, segdata.add_arguments, segdata.main, argv)
    assert code == 0, err
    meta = json.loads((store / "dataset.json").read_text())
    assert meta["status"] == "complete" and meta["counts"]["cases_finished"] == len(cases)
    assert f"{len(done_before)} already finished" in out


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    return tiny.make_setup(tmp_path_factory.mktemp("tiny"))


def test_disk_full_while_preparing_stage2_is_one_line_and_the_rerun_continues(setup, tmp_path, monkeypatch, capsys,
                                                                              caplog):
    from mgmt2d.classification import prepare as clsdata

    settings = json.loads(setup["settings"].read_text())
    root = setup["root"]
    settings = {k: str(root / v) for k, v in settings.items()}
    settings["CLASSIFICATION_DATA_DIR"], settings["KFOLD_PATH"] = str(tmp_path / "cls"), str(tmp_path / "folds.csv")
    path = tmp_path / "SETTINGS.json"
    path.write_text(json.dumps(settings))
    argv = ["--settings", str(path), "--device", "cpu", "--workers", "1", "--image-size", str(tiny.SIZE)]
    train = sorted(p.name for p in (root / "task2" / "train").iterdir())
    series = tmp_path / "cls" / "train" / "series"
    enospc_at(monkeypatch, io, lambda p: p.name.startswith(train[1]) and p.suffix == ".npy")
    code, out, err = run_cli(capsys, clsdata.add_arguments, clsdata.main, argv)
    line = one_error(err)
    assert code == 2 and f"no space left on the device writing into {series}" in line
    assert "the finished patients are kept" in line
    done = sorted(p.stem for p in (tmp_path / "cls" / "train" / "done").glob("*.csv"))
    assert done == train[:1] and not temp_files(tmp_path / "cls")
    assert not (tmp_path / "cls" / "train" / "index.csv").exists()
    monkeypatch.undo()
    caplog.set_level(logging.INFO, "mgmt2d.classification.prepare")
    code, out, err = run_cli(capsys, clsdata.add_arguments, clsdata.main, argv)
    assert code == 0 and "1 of 5 patients already prepared" in caplog.text, err[-2000:]
    index = pd.read_csv(tmp_path / "cls" / "train" / "index.csv", dtype={"patient": str})
    assert sorted(index.patient) == train


# --------------------------------------------------------------------------- inference: the reference run


@pytest.fixture(scope="module")
def reference(setup) -> Path:
    """An uninterrupted inference run: what every other run on the tiny setup must reproduce byte for byte."""
    out = setup["root"] / "reference" / "sub.csv"
    proc = tiny.infer(setup, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["sub.csv", "sub_config.json", "sub_per_type.csv"]
    sub = pd.read_csv(out, dtype={"BraTS21ID": str})
    assert sub.BraTS21ID.tolist() == tiny.PATIENTS and sub.MGMT_value.nunique() == len(tiny.PATIENTS)
    return out


def same_submission(got: Path, want: Path) -> None:
    for name in ("", "_per_type"):
        a, b = got.with_name(got.stem + name + ".csv"), want.with_name(want.stem + name + ".csv")
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs from the uninterrupted run's"


def test_disk_full_at_the_submission_keeps_every_patient_and_resume_commits(setup, reference, tmp_path, monkeypatch,
                                                                           capsys):
    from mgmt2d.inference import predict

    out = tmp_path / "out" / "sub.csv"
    argv = tiny.infer_argv(setup, out)[2:]
    # 1. the three files cannot fit: refused before a byte of them is written, with what they need
    monkeypatch.setattr(partial, "free_bytes", lambda folder: 100)
    code, _, err = run_cli(capsys, predict.add_arguments, predict.main, argv)
    line = one_error(err)
    assert code == 2 and re.search(rf"no space left on the device writing into {re.escape(str(out.parent))} "
                                   r"\(\d+\.\d KiB needed, 100 bytes free\)", line), line
    assert "--resume" in line and f"the 6 of 6 finished patients kept in {partial.resume_folder(out)}" in line
    assert sorted(p.name for p in out.parent.iterdir()) == ["sub.partial"]   # no submission, no lock, no temp
    monkeypatch.undo()
    # 2. the disk fills while the per-type file is written (the submission's temp is already complete)
    failed = enospc_at(monkeypatch, partial, lambda p: p.name == "sub_per_type.csv")
    code, _, err = run_cli(capsys, predict.add_arguments, predict.main, [*argv, "--resume"])
    line = one_error(err)
    assert code == 2 and failed and f"no space left on the device writing into {out.parent};" in line
    assert sorted(p.name for p in out.parent.iterdir()) == ["sub.partial"]
    assert len(list(partial.resume_folder(out).glob("0*.json"))) == 6
    monkeypatch.undo()
    # 3. space again: --resume computes nothing and writes the three files
    monkeypatch.setattr(partial.PatientStore, "save", lambda *a: pytest.fail("a finished patient was computed again"))
    code, stdout, err = run_cli(capsys, predict.add_arguments, predict.main, [*argv, "--resume"])
    assert code == 0, err
    assert "6 of 6 patients already finished" in stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["sub.csv", "sub_config.json", "sub_per_type.csv"]
    same_submission(out, reference)


def _mount_tmpfs(folder: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


def test_a_real_full_disk_while_preparing_stage1_then_more_space_continues(task1, tmp_path):
    """A small tmpfs fills during prepare_segmentation_data.py (each case writes about 1 MB); after it
    grows, the same command continues from the finished cases."""
    mount = tmp_path / "small"
    _mount_tmpfs(mount, "1600k")
    try:
        store = mount / "seg"
        settings = _seg_settings(task1, store, tmp_path)
        argv = [sys.executable, str(REPO / "prepare_segmentation_data.py"), "--settings", str(settings),
                "--workers", "1", "--no-progress", "--keep-task2-overlap"]
        env = tiny.env()
        full = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        line = one_error(full.stderr)
        assert full.returncode == 2 and f"no space left on the device writing into {store / 'cases'}" in line
        assert not temp_files(store)
        finished = [c for c in (store / "cases").iterdir() if (c / "case.json").is_file()]
        assert 1 <= len(finished) < 3
        subprocess.run(["mount", "-o", "remount,size=16m", str(mount)], check=True)
        again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        assert f"{len(finished)} already finished" in again.stdout
        assert json.loads((store / "dataset.json").read_text())["status"] == "complete"
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# --------------------------------------------------------------------------- one output, one run


def test_the_output_lock_names_its_holder_and_a_dead_holder_is_taken_over(tmp_path: Path):
    out = tmp_path / "sub.csv"
    with partial.output_lock(out):
        with pytest.raises(partial.OutputBusy) as busy:
            with partial.output_lock(out):
                pass
        line = cli.user_message(busy.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in line and "sub.csv.lock" in line
    assert not partial.lock_path(out).exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    partial.lock_path(out).write_text(json.dumps({"host": socket.gethostname(), "pid": int(gone.stdout)}))
    with partial.output_lock(out):   # a killed run's lock on this host
        pass
    partial.lock_path(out).write_text(json.dumps({"host": "another-node", "pid": 1}))
    with pytest.raises(partial.OutputBusy, match="pid 1 on host another-node"):
        with partial.output_lock(out):
            pass


def test_commit_writes_the_sidecars_first_and_never_replaces_without_overwrite(tmp_path: Path, monkeypatch):
    out = tmp_path / "sub.csv"
    sub = pd.DataFrame({"BraTS21ID": ["1"], "MGMT_value": [0.25]})
    detail = pd.DataFrame({"BraTS21ID": ["00001"], "type": ["FLAIR"]})
    renamed: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(io.os, "replace", lambda a, b: (renamed.append(Path(b).name), real_replace(a, b)))
    partial.commit(out, sub, detail, {"run": 1}, overwrite=False)
    assert renamed == ["sub_config.json", "sub_per_type.csv", "sub.csv"]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(FileExistsError, match="written by another run"):
        partial.commit(out, sub.assign(MGMT_value=0.75), detail, {"run": 2}, overwrite=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before   # nothing replaced, no temp left
    partial.commit(out, sub.assign(MGMT_value=0.75), detail, {"run": 2}, overwrite=True)
    assert "0.75" in out.read_text() and json.loads(partial.config_path(out).read_text())["config"] == {"run": 2}


def test_two_runs_started_together_on_one_output_write_one_submission(setup, reference, tmp_path: Path):
    out = tmp_path / "sub.csv"
    argvs = [tiny.infer_argv(setup, out, "--workers", "2"), tiny.infer_argv(setup, out)]   # equal results
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=tiny.env())
             for a in argvs]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    won = next(k for k, p in enumerate(procs) if p.returncode == 0)
    line = one_error(outs[1 - won][1])
    assert (f"is being written by another run (pid {procs[won].pid} on host {socket.gethostname()}" in line
            or f"{out} already exists" in line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv", "sub_config.json", "sub_per_type.csv"]
    same_submission(out, reference)
    config = json.loads(partial.config_path(out).read_text())
    assert config["argv"] == argvs[won][1:] and config["config"]["workers"] == (2 if won == 0 else 1)
    sub = pd.read_csv(out, dtype={"BraTS21ID": str})
    detail = pd.read_csv(partial.detail_path(out), dtype={"BraTS21ID": str})
    assert set(detail.BraTS21ID) == set(sub.BraTS21ID)
    assert detail.groupby("BraTS21ID").prob.mean().round(12).to_dict() == dict(zip(sub.BraTS21ID,
                                                                                   sub.MGMT_value.round(12)))


# --------------------------------------------------------------------------- --resume, with the reports


def test_resume_after_a_kill_gives_the_uninterrupted_submission_and_keeps_the_reports(setup, reference, tmp_path):
    out, reports = tmp_path / "sub.csv", tmp_path / "reports"
    killed = tiny.infer(setup, out, "--report-dir", str(reports), fault="patient-done:3")
    assert killed.returncode == -9, killed.stderr[-2000:]
    finished = sorted(p.stem for p in partial.resume_folder(out).glob("0*.json"))
    assert finished == tiny.PATIENTS[:3] and not out.exists() and not partial.detail_path(out).exists()
    kept = {p: (reports / p / "index.html").stat().st_mtime_ns for p in finished}
    assert sorted(p.name for p in reports.iterdir() if not p.name.startswith(".")) == finished
    stale = reports / f".{tiny.PATIENTS[3]}.tmpkilled"   # a patient's report the kill cut short
    stale.mkdir()
    (stale / "FLAIR_slices.png").write_bytes(b"half")
    # without --resume: refused, naming the way on; with other options: refused, naming the difference
    line = one_error(tiny.infer(setup, out, "--report-dir", str(reports)).stderr)
    assert "holds 3 finished patient(s)" in line and "--resume" in line and "--overwrite" in line
    other = tiny.infer(setup, out, "--resume", "--tta-zoom", "1.0")   # and without the report folder
    line = one_error(other.stderr)
    assert other.returncode == 2 and "contract.tta_zoom: 1.2 -> 1.0" in line and f"report_dir: '{reports}' -> None" \
        in line
    # --resume: the three others are computed, the submission is the uninterrupted one, reports complete
    resumed = tiny.infer(setup, out, "--report-dir", str(reports), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "3 of 6 patients already finished" in resumed.stdout
    same_submission(out, reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports", "sub.csv", "sub_config.json", "sub_per_type.csv"]
    assert sorted(p.name for p in reports.iterdir()) == tiny.PATIENTS   # no temp folder, no lock
    assert {p: (reports / p / "index.html").stat().st_mtime_ns for p in finished} == kept
    probs = {p: json.loads((reports / p / "report.json").read_text())["MGMT_value"] for p in tiny.PATIENTS}
    sub = pd.read_csv(out, dtype={"BraTS21ID": str})
    assert probs == dict(zip(sub.BraTS21ID, sub.MGMT_value))
    assert json.loads(partial.config_path(out).read_text())["config"]["resumed_patients"] == 3


# --------------------------------------------------------------------------- the engine cache and other users

CACHE_SCRIPT = textwrap.dedent("""
    import json, os, sys, tempfile
    import torch
    from mgmt2d import engines

    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).eval()
    with tempfile.TemporaryDirectory() as warm:   # every lazy import now, while the interpreter is readable
        engines.make_backend("onnxruntime", module, (3, 8, 8), warm, "0" * 64, threads=1)

    def as_user(uid, home, cache, key):
        pid = os.fork()
        if pid == 0:
            os.setgroups([]); os.setgid(uid); os.setuid(uid)
            os.environ.pop("XDG_CACHE_HOME", None)
            if home is None:
                os.environ.pop("HOME", None)
            else:
                os.environ["HOME"] = home
            try:
                b = engines.make_backend("onnxruntime", module, (3, 8, 8), cache, key * 64, threads=1)
                print(json.dumps({"ok": b.cache_status}), flush=True)
            except engines.BackendError as err:
                print(json.dumps({"error": str(err)}), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)

    for case in json.loads(sys.argv[1]):
        as_user(*case)
""")


@pytest.fixture
def shared_tmp() -> Path:
    """A temp folder other users can reach (pytest's own are 0700)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="mgmt2d-users-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_engine_cache_for_another_user_and_an_unwritable_home(shared_tmp: Path):
    from mgmt2d import engines

    if os.geteuid() != 0:
        pytest.skip("acting as other users (os.setuid) needs root")
    if not engines.engine_installed("onnxruntime"):
        pytest.skip("onnxruntime is not installed (requirements-cpu.txt)")
    tmp_path = shared_tmp
    home = tmp_path / "home"        # root's, 0755: no other user can write there
    home.mkdir(mode=0o755)
    shared = tmp_path / "shared"    # like /tmp: anyone may create a cache in it
    shared.mkdir()
    shared.chmod(0o1777)
    cache = shared / "engines"
    cases = [
        (4201, str(home), None, "a"),      # the default cache in an unwritable $HOME
        (4201, None, None, "a"),           # no $HOME at all (a uid without a passwd entry)
        (4202, None, str(cache), "a"),     # user A builds an entry in a cache of their own
        (4203, None, str(cache), "a"),     # user B loads it
        (4203, None, str(cache), "b"),     # user B needs a new entry in A's cache folder
    ]
    proc = subprocess.run([sys.executable, "-c", CACHE_SCRIPT, json.dumps(cases)], capture_output=True, text=True,
                          env=tiny.env(), timeout=300)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(cases), proc.stderr[-3000:]
    no_home_cache = home / ".cache" / "mgmt2d" / "engines"
    assert f"the engine cache {no_home_cache} cannot be used by this user (uid 4201)" in results[0]["error"]
    assert "--engine-cache" in results[0]["error"] and "XDG_CACHE_HOME" in results[0]["error"]
    assert "$HOME is not set" in results[1]["error"] and "--engine-cache" in results[1]["error"]
    assert results[2] == {"ok": "built"} and results[3] == {"ok": "loaded"}   # shared use works
    entry = next(cache.iterdir())
    assert entry.stat().st_mode & 0o777 == 0o755 and all(f.stat().st_mode & 0o777 == 0o644 for f in entry.iterdir())
    assert f"cannot be used by this user (uid 4203): Permission denied on {cache} ({cache} belongs to uid 4202" \
        in results[4]["error"]
    assert "--engine-cache" in results[4]["error"] and f"chmod -R g+rwXs {cache}" in results[4]["error"]
    # an entry made 0700 (by mgmt2d before this fix): its reader is told exactly that, and the fix
    entry.chmod(0o700)
    proc = subprocess.run([sys.executable, "-c", CACHE_SCRIPT, json.dumps([(4203, None, str(cache), "a")])],
                          capture_output=True, text=True, env=tiny.env(), timeout=300)
    error = json.loads(proc.stdout.splitlines()[-1])["error"]
    assert f"Permission denied on {entry / 'manifest.json'} ({entry} belongs to uid 4202, mode 0700)" in error
    assert f"chmod -R a+rX {cache}" in error


def test_the_torch_backend_needs_no_home(monkeypatch):
    from mgmt2d import engines

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(RuntimeError("no home"))))
    assert engines.resolve_backend("torch", "cpu").cache_dir is None
    with pytest.raises(engines.BackendError, match=r"\$HOME is not set.*--engine-cache"):
        engines.default_cache_dir()


def test_lock_file_records_are_checked(tmp_path: Path):
    lock = tmp_path / "x.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": "not a pid"}))   # not ours: taken over
    with shards.lock_file(lock) as holder:
        assert holder is None and json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
