"""Sharded inference (``inference_on_test.py --shard I/N``): each shard writes a partial
submission; the last shard to finish (or ``--merge``) assembles the submission.

Beside ``<output>`` (say ``sub.csv``) the shards share ``sub.shards/``::

    part-I-of-N.csv            the shard's submission rows (IDs spelled as the sample)
    part-I-of-N_per_type.csv   the shard's per-type detail rows
    shards/                    start / done records (:mod:`mgmt2d.data.shards`)

The merge reads the parts as text and writes them back in the sample's order, so the
assembled ``sub.csv`` and ``sub_per_type.csv`` are byte-identical to an unsharded run's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from mgmt2d.data import shards
from mgmt2d.data.io import write_csv_atomic, write_run_config
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
                 detail: pd.DataFrame, seconds: dict[str, float]) -> str:
    """Write this shard's parts, then its done record; assemble when it is the last. Returns what happened."""
    write_csv_atomic(_part(output, shard), sub)
    write_csv_atomic(_part(output, shard, detail=True), detail)
    merged, note = shards.finish_and_merge(part_folder(output), shard, params, sub.iloc[:, 0].tolist(),
                                           {"seconds": seconds}, lambda p, done: _assemble(output, p, done))
    return merged or f"shard {shard.label}: {len(sub)} patients -> {_part(output, shard)}; {note}"


def merge(output: Path) -> str:
    """``--merge``: assemble ``output`` from every finished shard (refused, naming a missing one, before)."""
    return shards.merge(part_folder(output), None, lambda p, done: _assemble(output, p, done), force=True)


def _assemble(output: Path, params: dict[str, Any], done: dict[shards.Shard, dict[str, Any]]) -> str:
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
    for name in (output.name, detail_path(output).name, output.stem + "_config.json"):
        shards.clean_stale_temps(output.parent, (name,))
    write_csv_atomic(output, sub)
    fault_point("merge")
    write_csv_atomic(detail_path(output), detail)
    write_run_config(output.parent, output.stem + "_config.json", {
        **params["config"], "shards": count,
        "seconds": {s.label: r.get("seconds") for s, r in sorted(done.items(), key=lambda x: x[0].index)},
    })
    log.info("assembled %d shard(s) into %s", count, output)
    return f"{len(sub)} patients -> {output} (assembled from {count} shards in {folder})"


def _read(path: Path) -> pd.DataFrame:
    """A part as text: written back unchanged, so the merge does not re-format a single number."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise shards.ShardError(f"{path} is missing although its shard is recorded as done; re-run that shard "
                                "with --overwrite") from None
