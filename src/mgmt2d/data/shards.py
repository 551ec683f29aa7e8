"""Sharded runs: ``--shard I/N`` splits the patients of one preparation (or inference) over
N processes, possibly on different machines writing into one shared folder, and a merge
assembles the shared outputs once every shard has finished.

Which patients shard I of N gets: the IDs sorted as strings, position k (0-based) belongs to
shard ``k % N + 1`` (strided, not contiguous blocks). BraTS IDs are numbered roughly by site,
and sites differ in volume size and slice count, so contiguous blocks would give one shard
the slow site; strided shards mix them and finish together. The choice depends only on the
set of IDs and N, so any machine computes the same split.

Records in ``<folder>/shards/`` (each written atomically; a shard writes only its own)::

    shard-I-of-N.start.json   written before any work: the shard's resolved configuration
    shard-I-of-N.done.json    written last: the shard finished every one of its patients
    merge.lock                held (exclusive create) while one process assembles the outputs

A shard whose compared configuration differs from a shard already recorded is refused, and so
is a merge while a done record is missing (naming the shard) or when the records disagree.

The life cycle, the same for both preparations and for inference: :func:`claim` the output
folder (before any work), :func:`start` (the start record), the shard's own work,
:func:`finish_and_merge` (the done record, then the merge when this shard is the last), or
:func:`merge` alone (``--merge``). The caller only says how to assemble its shared outputs.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mgmt2d.data.io import write_json_atomic
from mgmt2d.faults import fault_point

SHARDS_DIR = "shards"
LOCK = "merge.lock"
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_RECORD = re.compile(r"^shard-(\d+)-of-(\d+)\.(start|done)\.json$")


class ShardError(ValueError):
    """A shard problem the user must fix; the message is one line and names the fix."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise ShardError(
                f"--shard {self.index}/{self.count}: I must be between 1 and N (e.g. 2/3 = the second of three)"
            )

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def name(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def select(self, ids: Sequence[str]) -> list[str]:
        """This shard's IDs, in the caller's order (membership from the sorted position, see module doc)."""
        mine = set(sorted(set(ids))[self.index - 1 :: self.count])
        return [i for i in ids if i in mine]


def parse_shard(text: str) -> Shard:
    """``"2/3"`` -> Shard(2, 3); anything else is a one-line error."""
    match = _SPEC.match(str(text))
    if not match:
        raise ShardError(f"--shard {text!r}: write it as I/N, e.g. 2/3 for the second of three shards")
    return Shard(int(match.group(1)), int(match.group(2)))


def add_shard_arguments(parser: Any, what: str = "patients") -> None:
    """--shard I/N and --merge, the same on every sharded script."""
    parser.add_argument(
        "--shard", metavar="I/N",
        help=f"process only shard I of N of the {what} (sorted IDs, every N-th from the I-th); shards may run "
             "at once on different machines into the same folder; the last one to finish assembles the outputs",
    )
    parser.add_argument("--merge", action="store_true",
                        help="only assemble the outputs of finished shards (refused while one is missing)")


def shard_of(args: Any, overwrite_clears: bool = True) -> Shard | None:
    """The parsed ``--shard`` of a command line (None without it), checked against ``--merge``.

    ``overwrite_clears``: ``--overwrite`` deletes the output (the preparations), so it makes no
    sense with ``--merge``, which only assembles finished shards.
    """
    if args.merge and args.shard:
        raise ShardError("--merge assembles the finished shards: run it without --shard")
    if args.merge and overwrite_clears and getattr(args, "overwrite", False):
        raise ShardError("--merge only assembles finished shards: run it without --overwrite")
    return parse_shard(args.shard) if args.shard else None


def claim(folder: str | Path, params: dict[str, Any], shard: Shard | None, overwrite: bool) -> None:
    """Before any work: refuse ``--overwrite`` for a shard (it would delete the other shards' work) and a
    run whose compared ``params`` differ from a shard already recorded in ``folder``."""
    if overwrite and shard is not None:
        raise ShardError(
            f"--overwrite with --shard would delete the other shards' work in {folder}; clear the folder once "
            "(or run once with --overwrite and without --shard), then start the shards"
        )
    if not overwrite:
        check_consistent(folder, params, shard)


def shards_dir(folder: str | Path) -> Path:
    return Path(folder) / SHARDS_DIR


def _record_path(folder: Path, shard: Shard, kind: str) -> Path:
    return shards_dir(folder) / f"{shard.name}.{kind}.json"


def read_records(folder: str | Path, kind: str) -> dict[Shard, dict[str, Any]]:
    """Every ``start`` or ``done`` record in ``folder``; an unreadable one is an error naming it."""
    out: dict[Shard, dict[str, Any]] = {}
    root = shards_dir(folder)
    if not root.is_dir():
        return out
    for path in sorted(root.iterdir()):
        match = _RECORD.match(path.name)
        if not match or match.group(3) != kind:
            continue
        try:
            out[Shard(int(match.group(1)), int(match.group(2)))] = json.loads(path.read_text())
        except (json.JSONDecodeError, ShardError):
            raise ShardError(f"{path} is not a valid shard record; delete it and re-run that shard") from None
    return out


def describe_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    """``key: old -> new`` for every differing key; nested dicts name the inner key (``contract.tta_zoom``)."""
    parts = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            parts.append(describe_differences(a, b, f"{prefix}{k}."))
        elif isinstance(a, list) and isinstance(b, list) and max(len(a), len(b)) > 8:   # patient lists: say where
            at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            first = f"{a[at] if at < len(a) else 'nothing'!r} -> {b[at] if at < len(b) else 'nothing'!r}"
            parts.append(f"{prefix}{k}: {len(a)} -> {len(b)} items, first difference at item {at + 1}: {first}")
        else:
            parts.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return ", ".join(parts)


def _roundtrip(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def check_consistent(folder: str | Path, params: dict[str, Any], shard: Shard | None = None) -> None:
    """Refuse a run whose compared ``params`` (or, for a shard, N) differ from a recorded shard's."""
    params = _roundtrip(params)
    for kind in ("start", "done"):
        for other, record in read_records(folder, kind).items():
            path = _record_path(Path(folder), other, kind)
            if shard is not None and other.count != shard.count:
                raise ShardError(
                    f"{folder} is being prepared in {other.count} shards ({path.name}), not {shard.count}; "
                    f"run --shard I/{other.count}, or clear the folder to start over"
                )
            if record.get("params") != params:
                diff = describe_differences(record.get("params", {}), params)
                raise ShardError(
                    f"{path} was started with another configuration ({diff}); "
                    "run every shard with the same options, or clear the folder to start over"
                )


def start(folder: str | Path, shard: Shard, params: dict[str, Any], config: dict[str, Any],
          patients: Sequence[str]) -> None:
    """Check ``params`` against the other shards, then record this shard's start (before any work).

    ``params`` is what must agree between shards (it changes the outputs); ``config`` is the
    rest of the resolved configuration (paths, workers, device), recorded only.
    """
    check_consistent(folder, params, shard)
    write_json_atomic(_record_path(Path(folder), shard, "start"), {
        "shard": shard.label, "params": _roundtrip(params), "config": _roundtrip(config),
        "patients": list(patients), "host": socket.gethostname(), "pid": os.getpid(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def finish(folder: str | Path, shard: Shard, params: dict[str, Any], patients: Sequence[str],
           extra: dict[str, Any] | None = None) -> None:
    """Write this shard's done record: the last file it writes."""
    write_json_atomic(_record_path(Path(folder), shard, "done"), {
        "shard": shard.label, "params": _roundtrip(params), "patients": list(patients), **(extra or {}),
        "host": socket.gethostname(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def completed(folder: str | Path) -> tuple[int, dict[str, Any], dict[Shard, dict[str, Any]]]:
    """(N, the shared params, done records) once every shard of N is done and they agree.

    Refuses, naming the first missing shard, while one is not done.
    """
    done = read_records(folder, "done")
    started = read_records(folder, "start")
    counts = {s.count for s in (*done, *started)}
    if not counts:
        raise ShardError(f"{shards_dir(folder)} holds no shard record: run the shards (--shard I/N) first")
    if len(counts) > 1:
        raise ShardError(f"{shards_dir(folder)} mixes shard counts {sorted(counts)}; clear the folder to start over")
    count = counts.pop()
    missing = [Shard(i, count) for i in range(1, count + 1) if Shard(i, count) not in done]
    if missing:
        first = missing[0]
        rest = ", ".join(s.label for s in missing[1:])
        others = f" (also missing: {rest})" if rest else ""
        state = "started but not finished" if first in started else "not started"
        raise ShardError(
            f"cannot assemble {folder}: shard {first.label} is {state} (no {SHARDS_DIR}/{first.name}.done.json)"
            f"{others}; run it with --shard {first.label}, then --merge"
        )
    params = done[Shard(1, count)].get("params")
    for shard, record in done.items():
        if record.get("params") != params:
            raise ShardError(
                f"shard {shard.label} in {folder} ran with another configuration than shard 1/{count} "
                f"({describe_differences(params or {}, record.get('params', {}))}); re-run it with the same options"
            )
    return count, params or {}, done


def merge(folder: str | Path, params: dict[str, Any] | None,
          assemble: Callable[[dict[str, Any], dict[Shard, dict[str, Any]]], Any], force: bool = True) -> Any:
    """Assemble the shared outputs of ``folder`` once every shard is done: ``assemble(params, done records)``
    runs under the merge lock and its result is returned; None when another process holds the lock.

    Refused (:class:`ShardError`, naming a missing shard) before every shard is done, and when
    ``params`` (this run's; None: take the recorded ones) differ from the shards'. ``force`` (an
    explicit ``--merge``) takes over any lock.
    """
    _count, recorded, done = completed(folder)
    if params is not None and recorded != _roundtrip(params):
        raise ShardError(
            f"the shards in {folder} ran with other options than this merge "
            f"({describe_differences(recorded, _roundtrip(params))}); merge with the shards' options"
        )
    with merge_lock(folder, force=force) as mine:
        if not mine:
            return None
        return assemble(recorded, done)


def finish_and_merge(folder: str | Path, shard: Shard, params: dict[str, Any], patients: Sequence[str],
                     extra: dict[str, Any], assemble: Callable[[dict[str, Any], dict[Shard, dict[str, Any]]], Any],
                     ) -> tuple[Any, str]:
    """Write this shard's done record, then assemble when it is the last to finish.

    Returns (what ``assemble`` returned or None, a note saying what happened to the shared outputs).
    """
    finish(folder, shard, params, patients, extra)
    fault_point("shard-done")
    try:
        result = merge(folder, params, assemble, force=False)
    except ShardError as err:
        return None, f"not assembled yet: {err}"
    if result is None:
        return None, f"another process is assembling {folder} (run --merge if it was killed)"
    return result, ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def merge_lock(folder: str | Path, force: bool = False) -> Iterator[bool]:
    """Yield True while this process alone may assemble the outputs, False when another holds it.

    A lock left by a killed process on this host (its pid is gone) is taken over; ``force``
    (an explicit ``--merge``) takes over any lock, since a merge writes every output atomically
    from finished shards and two merges write the same bytes.
    """
    with lock_file(shards_dir(folder) / LOCK, force) as holder:
        yield holder is None


class Busy(ValueError):
    """Another live run holds a lock this run needs; the message names it and the way out."""


@contextlib.contextmanager
def exclusive(path: str | Path, what: str, way_out: str) -> Iterator[None]:
    """Hold the lock ``path`` (:func:`lock_file`) while this run writes ``what``; refuse at once (Busy)
    when another live run holds it, naming its pid, host and start, then ``way_out``."""
    with lock_file(path) as holder:
        if holder is not None:
            since = f", started {holder['started']}" if holder.get("started") else ""
            raise Busy(f"{what} is being written by another run (pid {holder.get('pid')} on host "
                       f"{holder.get('host')}{since}; lock {path}); {way_out}")
        yield


@contextlib.contextmanager
def lock_file(path: str | Path, force: bool = False) -> Iterator[dict[str, Any] | None]:
    """Hold the lock ``path`` (exclusive create): yield None while this process holds it, else the
    record of the live process that does (``host``, ``pid``, ``started``).

    The lock holds its holder's record from the moment it exists (linked into place already
    written; a link is atomic on NFS too) and is removed on release. A lock left by a killed
    process on this host (its pid is gone) or unreadable is taken over; one of another host is
    not (its process cannot be checked from here). ``force`` takes over any lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    host, pid = socket.gethostname(), os.getpid()
    mine = {"host": host, "pid": pid, "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    holder: dict[str, Any] = {}
    for _ in range(3):
        tmp = path.with_name(f".{path.name}.{host}.{pid}.tmp")
        tmp.write_text(json.dumps(mine))
        try:
            os.link(tmp, path)
            taken = True
        except FileExistsError:
            taken = False
        finally:
            tmp.unlink(missing_ok=True)
        if taken:
            try:
                yield None
            finally:
                path.unlink(missing_ok=True)
            return
        try:
            holder = json.loads(path.read_text())
        except FileNotFoundError:
            continue   # released meanwhile: try again
        except (OSError, json.JSONDecodeError):
            holder = {}
        if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int) or holder["pid"] < 1:
            holder = {}   # not a record of ours: unreadable
        stale = bool(holder) and holder.get("host") == host and not _pid_alive(holder["pid"])
        if force or stale or not holder:
            path.unlink(missing_ok=True)
            continue
        yield holder
        return
    yield holder


def clean_stale_temps(folder: str | Path, names: Sequence[str]) -> None:
    """Remove temp files a killed writer left beside ``names`` (see :func:`mgmt2d.data.io.atomic_path`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for name in names:
        for stale in folder.glob(f".{glob.escape(name)}.tmp*"):
            stale.unlink(missing_ok=True)
