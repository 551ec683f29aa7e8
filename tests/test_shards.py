"""Sharded preparation (--shard I/N, --merge) and SIGKILL-safe preparation of the segmentation store.

Proof by comparison: every file of a store made in shards, or by a run killed at a named
point (``MGMT2D_FAULT``, see :mod:`mgmt2d.faults`) and run again, equals the file
of one uninterrupted unsharded run: byte for byte, except the timing fields of JSON records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mgmt2d.data import shards
from mgmt2d.data.shards import Shard, ShardError, parse_shard
from mgmt2d.segmentation import prepare as segdata
from mgmt2d.segmentation.prepare import PrepareParams

REPO = Path(__file__).resolve().parents[1]
RUN_KEYS = {"seconds", "run", "started", "argv"}   # top-level JSON fields recording when, how long, the command


def tree(root: Path, renamed: dict[str, str] | None = None, ignore: frozenset[str] = frozenset()) -> dict[str, object]:
    """Every output file under ``root`` (shard records aside): bytes, or JSON without its timing fields
    (and with the paths in ``renamed`` replaced, for outputs that record where another output went)."""
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_dir() or rel.parts[0] == shards.SHARDS_DIR:
            continue
        if path.suffix == ".json":
            text = path.read_text()
            for old, new in (renamed or {}).items():
                text = text.replace(json.dumps(old), json.dumps(new))
            out[str(rel)] = {k: v for k, v in json.loads(text).items() if k not in RUN_KEYS | ignore}
        else:
            out[str(rel)] = path.read_bytes()
    return out


def assert_same_tree(got: Path, want: Path, renamed: dict[str, str] | None = None,
                     ignore: frozenset[str] = frozenset()) -> None:
    a, b = tree(got, renamed, ignore), tree(want, ignore=ignore)
    assert sorted(a) == sorted(b), f"files differ: {sorted(set(a) ^ set(b))}"
    for name in b:
        assert a[name] == b[name], f"{name} differs"


# --------------------------------------------------------------------------- I/N


def test_parse_shard_accepts_i_of_n_and_refuses_the_rest():
    assert parse_shard("2/3") == Shard(2, 3) and parse_shard(" 1 / 1 ") == Shard(1, 1)
    for bad in ("0/3", "4/3", "3", "a/b", "1/0", "-1/3", "2/3/4"):
        with pytest.raises(ShardError, match="--shard"):
            parse_shard(bad)


def test_select_is_strided_over_sorted_ids_disjoint_and_complete():
    ids = [f"{i:05d}" for i in (14, 3, 0, 9, 2, 5, 11)]    # given unsorted: order kept, membership by sorted position
    parts = [Shard(i, 3).select(ids) for i in (1, 2, 3)]
    assert parts[0] == ["00014", "00000", "00005"]         # sorted positions 0, 3, 6: 00000 00005 00014
    assert sorted(sum(parts, [])) == sorted(ids) and sum(len(p) for p in parts) == len(ids)
    assert Shard(1, 1).select(ids) == ids


# --------------------------------------------------------------------------- the segmentation store


@pytest.fixture(scope="module")
def task1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small Task 1 set (our synthetic phantoms) without Task 2 overlap filtering."""
    from mgmt2d.dev import synth

    data = tmp_path_factory.mktemp("shards") / "data"
    synth.generate(data, patients=7, seed=5, size="small")
    return {"data": data, "task1": data / "task1", "task2": data / "task2"}


PARAMS = PrepareParams(modalities=("flair", "t1ce"), n_folds=2, seed=3, keep_rate=0.5)
ARGS = ["--modalities", "flair", "t1ce", "--n-folds", "2", "--seed", "3", "--keep-rate", "0.5",
        "--workers", "1", "--no-progress"]


def _prepare(task1: dict[str, Path], out: Path, **kw) -> segdata.PrepareSummary:
    return segdata.prepare(task1["task1"], out, PARAMS, segdata.RunOptions(dicom_dir=task1["task2"], progress=False,
                                                                           **kw))


@pytest.fixture(scope="module")
def reference(task1: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "seg"
    summary = _prepare(task1, out)
    assert summary.n_slices > 0 and len(summary.processed) >= 3
    return out


def _settings(task1: dict[str, Path], out: Path, folder: Path) -> Path:
    data = task1["data"]
    settings = {k: str(data / v) for k, v in json.loads((data / "SETTINGS.json").read_text()).items()}
    assert settings["TASK1_DIR"] == str(task1["task1"]) and settings["DICOM_DATA_DIR"] == str(task1["task2"])
    settings["SEGMENT_DATA_DIR"] = str(out)
    path = folder / "SETTINGS.json"
    path.write_text(json.dumps(settings))
    return path


def _cli(settings: Path, *extra: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("MGMT2D_FAULT", None)
    if kill_at:
        env["MGMT2D_FAULT"] = kill_at
    return subprocess.run([sys.executable, str(REPO / "prepare_segmentation_data.py"), "--settings", str(settings),
                           *ARGS, *extra], capture_output=True, text=True, env=env, timeout=300)


def test_three_shards_one_after_another_equal_one_run(task1, reference: Path, tmp_path: Path):
    out = tmp_path / "seg"
    first = _prepare(task1, out, shard=Shard(3, 3))
    assert "not assembled yet" in first.note and "shard 1/3" in first.note
    assert not (out / "index.csv").exists() and not (out / "folds.csv").exists()
    _prepare(task1, out, shard=Shard(1, 3))
    last = _prepare(task1, out, shard=Shard(2, 3))
    assert last.note.startswith("assembled 3 shard(s)")
    assert_same_tree(out, reference)
    # the shards split the cases without overlap, and each finished its own
    done = shards.read_records(out, "done")
    assert sorted(sum((r["patients"] for r in done.values()), [])) == sorted(
        p.name for p in (reference / "cases").iterdir())
    # a second --merge (explicit) writes the same bytes again
    _prepare(task1, out, merge_only=True)
    assert_same_tree(out, reference)


def test_three_shards_at_once_equal_one_run(task1, reference: Path, tmp_path: Path):
    out = tmp_path / "seg"
    settings = _settings(task1, out, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("MGMT2D_FAULT", None)
    procs = [subprocess.Popen([sys.executable, str(REPO / "prepare_segmentation_data.py"), "--settings",
                               str(settings), *ARGS, "--shard", f"{i}/3"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2, 3)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    if not (out / "dataset.json").exists():   # every shard finished before any saw the others' records: merge
        assert _cli(settings, "--merge").returncode == 0
    assert_same_tree(out, reference)
    assert not (out / shards.SHARDS_DIR / shards.LOCK).exists()


def test_merge_refuses_a_missing_shard_naming_it(task1, tmp_path: Path):
    out = tmp_path / "seg"
    settings = _settings(task1, out, tmp_path)
    assert _cli(settings, "--shard", "1/3").returncode == 0
    assert _cli(settings, "--shard", "3/3").returncode == 0
    proc = _cli(settings, "--merge")
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and "shard 2/3 is not started" in line and "--shard 2/3" in line
    assert not (out / "index.csv").exists() and not (out / "dataset.json").exists()
    # bad I/N, another N, other options, --overwrite with a shard: one line each, nothing written
    for extra, words in ((["--shard", "4/3"], "between 1 and N"), (["--shard", "1/2"], "in 3 shards"),
                         (["--shard", "2/3", "--seed", "4"], "another configuration"),
                         (["--shard", "2/3", "--overwrite"], "other shards' work")):
        proc = _cli(settings, *extra)
        assert proc.returncode == 2 and words in proc.stderr, (extra, proc.stderr)
    assert 2 not in {s.index for s in shards.read_records(out, "done")} and not (out / "index.csv").exists()


@pytest.mark.parametrize("kill_at", ["atomic-write:4", "case-done:2", "merge"])
def test_sigkill_during_an_unsharded_run_then_rerun_equals_uninterrupted(task1, reference, tmp_path, kill_at):
    out = tmp_path / "seg"
    settings = _settings(task1, out, tmp_path)
    killed = _cli(settings, kill_at=kill_at)
    assert killed.returncode == -9, killed.stderr
    assert json.loads((out / "dataset.json").read_text())["status"] == "incomplete"
    again = _cli(settings)
    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stdout
    assert_same_tree(out, reference)


@pytest.mark.parametrize("kill_at", ["shard-done", "merge"])
def test_sigkill_in_the_last_shard_then_rerun_assembles(task1, reference, tmp_path, kill_at):
    out = tmp_path / "seg"
    settings = _settings(task1, out, tmp_path)
    for i in (1, 2):
        assert _cli(settings, "--shard", f"{i}/3").returncode == 0
    assert _cli(settings, "--shard", "3/3", kill_at=kill_at).returncode == -9
    assert not (out / "dataset.json").exists()
    proc = _cli(settings, "--shard", "3/3")   # a lock left by the killed merge (dead pid, this host) is taken over
    assert proc.returncode == 0 and "assembled 3 shard(s)" in proc.stdout, proc.stdout + proc.stderr
    assert_same_tree(out, reference)


def test_merge_lock_is_exclusive_and_a_dead_holder_is_taken_over(tmp_path: Path):
    import socket

    lock = tmp_path / shards.SHARDS_DIR / shards.LOCK
    with shards.merge_lock(tmp_path) as first:
        assert first and lock.is_file()
        with shards.merge_lock(tmp_path) as second:   # held by a live process (us): refused
            assert not second
        with shards.merge_lock(tmp_path, force=True) as forced:   # --merge takes it over
            assert forced
    assert not lock.exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(gone.stdout)}))   # a killed merger
    with shards.merge_lock(tmp_path) as taken:
        assert taken
    lock.write_text(json.dumps({"host": "another-node", "pid": 1}))   # cannot tell from here: left alone
    with shards.merge_lock(tmp_path) as other:
        assert not other and lock.is_file()
