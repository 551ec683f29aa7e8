"""A submission in parts: sharded inference (``--shard I/N``), the finished patients of a run
(``--resume``), and writing the submission with its sidecars as one commit.

Beside ``<output>`` (say ``sub.csv``)::

    sub.csv.lock               held for the run: the pid and host of the run writing sub.csv
    sub.partial/               the run's finished patients, one file each, until the submission is written
        run.json               what the run compares on --resume (models, contract, options, patients)
        <patient>.json         the patient's submission row and per-type rows (written atomically)
    sub.shards/                sharded inference:
        part-I-of-N.csv            the shard's submission rows (IDs spelled as the sample)
        part-I-of-N_per_type.csv   the shard's per-type detail rows
        shards/                    start / done records (:mod:`mgmt2d.data.shards`)

Every submission is written by :func:`commit`: ``sub.csv``, ``sub_per_type.csv`` and
``sub_config.json`` are written in full to temp files first (after a free-space check), then
renamed, the sidecars first and ``sub.csv`` last, after checking again that no submission is
there (unless ``--overwrite``): a ``sub.csv`` is never seen without the sidecars of its own run,
and a full disk leaves none of the three. An unsharded run assembles ``sub.csv`` from its
patients' files and a sharded one from the parts, both in the sample's order, so a resumed, a
sharded and an uninterrupted run write the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mgmt2d.data import shards, task2
from mgmt2d.data.io import (
    DiskFull,
    atomic_path,
    free_bytes,
    run_config_text,
    write_csv_atomic,
    write_json_atomic,
)
from mgmt2d.faults import fault_point

log = logging.getLogger(__name__)


def part_folder(output: Path) -> Path:
    """Where the shards of ``output`` write their parts and records."""
    return output.with_name(output.stem + ".shards")


def detail_path(output: Path) -> Path:
    return output.with_name(output.stem + "_per_type.csv")


def _part(output: Path, shard: shards.Shard, detail: bool = False) -> Path:
    return part_folder(output) / f"part-{shard.index}-of-{shard.count}{'_per_type' if detail else ''}.csv"


def select(shard: shards.Shard, patients: list[str], spelled: list[str]) -> tuple[list[str], list[str]]:
    """This shard's (IDs, spellings), in the sample's order."""
    mine = set(shard.select(patients))
    keep = [k for k, p in enumerate(patients) if p in mine]
    return [patients[k] for k in keep], [spelled[k] for k in keep]


def start_shard(output: Path, shard: shards.Shard, params: dict[str, Any], config: dict[str, Any],
                patients: list[str]) -> None:
    """Refuse a shard run with other options than the shards before it, then record its start."""
    shards.claim(part_folder(output), params, shard, overwrite=False)
    shards.start(part_folder(output), shard, params, config, patients)


def finish_shard(output: Path, shard: shards.Shard, params: dict[str, Any], sub: pd.DataFrame,
                 detail: pd.DataFrame, seconds: dict[str, float], overwrite: bool = False) -> str:
    """Write this shard's parts, then its done record; assemble when it is the last. Returns what happened."""
    write_csv_atomic(_part(output, shard), sub)
    write_csv_atomic(_part(output, shard, detail=True), detail)
    merged, note = shards.finish_and_merge(part_folder(output), shard, params, sub.iloc[:, 0].tolist(),
                                           {"seconds": seconds}, lambda p, done: _assemble(output, p, done, overwrite))
    return merged or f"shard {shard.label}: {len(sub)} patients -> {_part(output, shard)}; {note}"


def merge(output: Path, overwrite: bool = False) -> str:
    """``--merge``: assemble ``output`` from every finished shard (refused, naming a missing one, before)."""
    return shards.merge(part_folder(output), None, lambda p, done: _assemble(output, p, done, overwrite), force=True)


def _assemble(output: Path, params: dict[str, Any], done: dict[shards.Shard, dict[str, Any]],
              overwrite: bool = False) -> str:
    """The submission, its per-type detail and config from the parts, rows in the sample's order."""
    folder, count = part_folder(output), len(done)
    order = {str(p): k for k, p in enumerate(params["spelled"])}
    patient_order = {str(p): k for k, p in enumerate(params["patients"])}
    parts = [shards.Shard(i, count) for i in range(1, count + 1)]
    sub = pd.concat([_read(_part(output, s)) for s in parts], ignore_index=True)
    detail = pd.concat([_read(_part(output, s, detail=True)) for s in parts], ignore_index=True)
    sub_id, detail_id = sub.columns[0], detail.columns[0]   # BraTS21ID, or the sample's --id-column
    if sorted(sub[sub_id], key=order.__getitem__) != list(params["spelled"]):
        raise shards.ShardError(f"the parts in {folder} do not cover the submission's patients once each; "
                                "re-run the shards with the same sample submission")
    sub = sub.sort_values(sub_id, key=lambda c: c.map(order), kind="stable")
    detail = detail.sort_values(detail_id, key=lambda c: c.map(patient_order), kind="stable")
    fault_point("merge")
    with output_lock(output):
        commit(output, sub, detail, {
            **params["config"], "shards": count,
            "seconds": {s.label: r.get("seconds") for s, r in sorted(done.items(), key=lambda x: x[0].index)},
        }, overwrite)
    log.info("assembled %d shard(s) into %s", count, output)
    return f"{len(sub)} patients -> {output} (assembled from {count} shards in {folder})"


def _read(path: Path) -> pd.DataFrame:
    """A part as text: written back unchanged, so the merge does not re-format a single number."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise shards.ShardError(f"{path} is missing although its shard is recorded as done; re-run that shard "
                                "with --overwrite") from None


# --------------------------------------------------------------------------- the submission: one writer, one commit


def config_path(output: Path) -> Path:
    return output.with_name(output.stem + "_config.json")


def lock_path(output: Path) -> Path:
    return output.with_name(output.name + ".lock")


OutputBusy = shards.Busy   # another live run writes this output


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold ``<output>.lock`` while writing ``output``: a second run on the same output is refused at once,
    naming the pid and host of the first (a killed run's lock on this host is taken over)."""
    with shards.exclusive(lock_path(output), str(output), "wait for it to finish or choose another --output "
                          "(delete the lock only if that run is gone)"):
        yield


def commit(output: Path, sub: pd.DataFrame, detail: pd.DataFrame, config: dict[str, Any],
           overwrite: bool, kept: str = "") -> None:
    """Write ``output``, its ``_per_type.csv`` and ``_config.json`` together (see the module doc).

    Refused before anything is renamed when a submission is there and ``overwrite`` is not given
    (FileExistsError; ``kept`` says where this run's results stay and how to use them), and before
    anything is written when the three files cannot fit (DiskFull, naming what they need); call it
    holding :func:`output_lock`.
    """
    texts = {output: sub.to_csv(index=False), detail_path(output): detail.to_csv(index=False),
             config_path(output): run_config_text(config)}
    data = {path: text.encode("utf-8") for path, text in texts.items()}
    folder = output.parent
    folder.mkdir(parents=True, exist_ok=True)
    block = 4096
    needed = sum(-(-len(b) // block) * block for b in data.values())
    free = free_bytes(folder)
    if free < needed:
        raise DiskFull(folder, needed, free)
    shards.clean_stale_temps(folder, [p.name for p in data])
    with contextlib.ExitStack() as stack:
        # entered submission first, so renamed last (an ExitStack leaves in reverse order)
        tmps = {path: stack.enter_context(atomic_path(path)) for path in data}
        for path, payload in data.items():
            tmps[path].write_bytes(payload)
        if output.exists() and not overwrite:
            raise FileExistsError(f"{output} was written by another run while this one worked; "
                                  f"{kept or 'pass --overwrite to replace it'}")


# --------------------------------------------------------------------------- a run's finished patients (--resume)

RUN_RECORD = "run.json"


def resume_folder(output: Path) -> Path:
    """Where a run keeps its finished patients until the submission is written."""
    return output.with_name(output.stem + ".partial")


class ResumeError(ValueError):
    """A leftover run that cannot be continued or ignored as asked; one line naming the fix."""


def _finished_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.json") if p.name != RUN_RECORD) if folder.is_dir() else []


def check_leftover(output: Path, resume: bool, overwrite: bool) -> None:
    """Before any model work: a run that did not finish left ``<stem>.partial/``; continue it only with
    ``--resume``, start over only with ``--overwrite`` (refused otherwise, naming both)."""
    folder = resume_folder(output)
    if folder.is_dir() and not resume and not overwrite:
        raise ResumeError(
            f"{folder} holds {len(_finished_files(folder))} finished patient(s) of a run on {output} that did not "
            "finish; pass --resume to continue it (with the same options), or --overwrite to start over"
        )


@dataclass
class PatientStore:
    """A run's finished patients in ``folder``: one ``<patient>.json`` each, the submission row and its
    per-type rows as computed (floats survive JSON exactly, so the assembled submission is byte-identical)."""

    folder: Path

    def path(self, patient: str) -> Path:
        return self.folder / f"{task2.format_id(patient, str(self.folder))}.json"

    def finished(self, patients: Sequence[str]) -> list[str]:
        return [p for p in patients if self.path(p).is_file()]

    def save(self, patient: str, spelled: str, prob: float, detail: list[dict[str, Any]]) -> None:
        write_json_atomic(self.path(patient), {"patient": patient, "row": {"BraTS21ID": spelled, "MGMT_value": prob},
                                               "detail": detail})

    def load(self, patients: Sequence[str], detail_columns: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(submission, per-type rows) of ``patients``, in that order, built as the pipeline builds them."""
        rows, detail = [], []
        for patient in patients:
            path = self.path(patient)
            try:
                record = json.loads(path.read_text())
                if record["patient"] != patient:
                    raise ValueError
            except (OSError, ValueError, KeyError, TypeError):
                raise ResumeError(f"{path} is unreadable or not patient {patient}'s; delete it and run again with "
                                  "--resume (that patient is computed again)") from None
            rows.append(record["row"])
            detail.extend(record["detail"])
        return pd.DataFrame(rows, columns=["BraTS21ID", "MGMT_value"]), pd.DataFrame(detail, columns=detail_columns)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def open_store(output: Path, params: dict[str, Any], resume: bool, overwrite: bool) -> PatientStore:
    """The run's :class:`PatientStore`: the leftover one when resuming (refused, naming the difference, when
    ``params`` differ from the killed run's), else a fresh one (a leftover cleared only with ``overwrite``)."""
    folder = resume_folder(output)
    record_path = folder / RUN_RECORD
    params = json.loads(json.dumps(params, default=str))   # as recorded
    if folder.is_dir() and resume:
        try:
            recorded = json.loads(record_path.read_text())["params"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ResumeError(f"{record_path} is missing or unreadable, so the run in {folder} cannot be continued; "
                              "pass --overwrite to start over") from None
        if recorded != params:
            raise ResumeError(f"--resume: the run in {folder} was started with other options "
                              f"({shards.describe_differences(recorded, params)}); resume with its options, or pass "
                              "--overwrite to start over")
        log.info("resuming %s: %d patient(s) already finished", folder, len(_finished_files(folder)))
        return PatientStore(folder)
    check_leftover(output, resume, overwrite)
    if folder.is_dir():
        log.info("--overwrite: removing the unfinished run in %s", folder)
        shutil.rmtree(folder)
    elif resume:
        log.info("--resume: no unfinished run in %s; starting from the first patient", folder)
    write_json_atomic(record_path, {"params": params})
    return PatientStore(folder)
