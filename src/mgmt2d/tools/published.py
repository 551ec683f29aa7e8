"""The published solution's released weights: the Drive table, the lock file, the gdown call.

Seven files on Google Drive (named in the published download script), all raw
``state_dict()``s saved by torch 1.7. They are fetched with ``gdown`` (the library made for
Drive: confirmation page, resume), into the published layout below a folder (default
``models/t4e``; ``mgmt2d.data.weights`` finds it for inference)::

    pretrained_models/eca_nfnet_l0.pth
    pretrained_models/unet_pp_densenet121_2channels_out.pth
    models/densenet121_2d_segment/Fold0_densenet121_2d_segment.pth
    models/eca_nfnet_l0_2d_classification/<T>/<T>_Fold0_eca_nfnet_l0_2d_classification.pth

Their SHA-256 were never published, so the first download records name, Drive id, size and
SHA-256 in a lock file beside the manifest (``models/t4e.lock.json``) and every later run
verifies against it: a file that does not match is moved aside (``<file>.rejected``) and
reported, never used.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mgmt2d.data.io import file_sha256, write_json_atomic
from mgmt2d.data.weights import CLASSIFIER_DIR, SEGMENTER_DIR

LOCK_FORMAT = "mgmt2d-lock/1"


@dataclass(frozen=True)
class PublishedFile:
    name: str
    path: str        # relative to the download folder, the published layout
    drive_id: str


T4E: tuple[PublishedFile, ...] = (
    PublishedFile("eca_nfnet_l0-imagenet", "pretrained_models/eca_nfnet_l0.pth", "14dmJ2HEEsdDzcsbJC_qTAQPxOGSSkDY3"),
    PublishedFile("unetpp-densenet121-init", "pretrained_models/unet_pp_densenet121_2channels_out.pth",
                  "1hV4HECWeiHpFkBTES2nYPpnlYM0dApRJ"),
    PublishedFile("segmenter-fold0", f"{SEGMENTER_DIR}/Fold0_densenet121_2d_segment.pth",
                  "12EVeyHI_kQlryAp6554Au4S1pt1ektnY"),
    PublishedFile("classifier-T1w-fold0", f"{CLASSIFIER_DIR}/T1w/T1w_Fold0_eca_nfnet_l0_2d_classification.pth",
                  "1wFJAurtdm8_G-nV2DVUQlWy7X4h4lBjo"),
    PublishedFile("classifier-T1wCE-fold0", f"{CLASSIFIER_DIR}/T1wCE/T1wCE_Fold0_eca_nfnet_l0_2d_classification.pth",
                  "1fmMScOnUyDWNDEYewtX7CpDMz6EFr3Vd"),
    PublishedFile("classifier-T2w-fold0", f"{CLASSIFIER_DIR}/T2w/T2w_Fold0_eca_nfnet_l0_2d_classification.pth",
                  "1JPAcR2vCDtvblDqPljx_poZNUTC00OET"),
    PublishedFile("classifier-FLAIR-fold0", f"{CLASSIFIER_DIR}/FLAIR/FLAIR_Fold0_eca_nfnet_l0_2d_classification.pth",
                  "12UBvr4ewswPWzf-8OyM4GjqYugonlTjY"),
)
PUBLISHED = {"t4e": T4E}


# ------------------------------------------------------------------ lock file


class LockMismatch(ValueError):
    """A file whose size or SHA-256 differs from the lock file."""


def read_lock(path: Path) -> dict[str, dict]:
    """name -> {name, id, size, sha256}; an absent lock file is empty."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if data.get("format") != LOCK_FORMAT or not isinstance(data.get("files"), list):
        raise ValueError(f"{path} is not an mgmt2d lock file (format {LOCK_FORMAT!r}); move it away to re-record")
    return {entry["name"]: entry for entry in data["files"]}


def write_lock(path: Path, entries: Mapping[str, dict]) -> None:
    write_json_atomic(path, {
        "format": LOCK_FORMAT,
        "about": "SHA-256 of the published weights, recorded at their first download; later runs verify against it.",
        "files": [entries[k] for k in sorted(entries)],
    })


def verify_against_lock(path: Path, entry: Mapping) -> None:
    """Raise LockMismatch when ``path`` differs from its lock entry; the file is moved aside first."""
    size = path.stat().st_size
    digest = file_sha256(path) if size == entry["size"] else None
    if digest == entry["sha256"]:
        return
    aside = path.with_name(path.name + ".rejected")
    os.replace(path, aside)
    found = f"sha256 {digest}" if digest else f"size {size}"
    raise LockMismatch(
        f"{path.name}: {found} differs from the lock file (size {entry['size']}, sha256 {entry['sha256']}); "
        f"moved aside to {aside}, not used"
    )


# ------------------------------------------------------------------ fetching

Downloader = Callable[[str, Path], None]


def gdown_download(drive_id: str, output: Path) -> None:
    """Fetch one Drive file to ``output`` with gdown (resumes a partial download)."""
    import gdown

    got = gdown.download(id=drive_id, output=str(output), quiet=False, resume=True)
    if not got or not output.is_file():
        raise OSError(f"Google Drive file {drive_id} could not be downloaded (gdown returned nothing)")


def fetch_published(
    files: tuple[PublishedFile, ...], dest: Path, lock_path: Path, download: Downloader = gdown_download,
) -> list[tuple[PublishedFile, str, str]]:
    """Fetch (or check) every file; returns (file, status, message) with status ok|recorded|failed.

    A file already in place is verified against the lock (or recorded if the lock lacks
    it); a missing one is downloaded to ``<file>.download`` and renamed into place only
    after its check, so a killed run never leaves a file that looks complete.
    """
    lock = read_lock(lock_path)
    results = []
    for f in files:
        target = dest / f.path
        entry = lock.get(f.name)
        try:
            if entry is not None and entry.get("id") != f.drive_id:
                raise LockMismatch(f"{f.name}: the lock file names Drive id {entry.get('id')}, expected {f.drive_id}")
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                staging = target.with_name(target.name + ".download")
                download(f.drive_id, staging)
                if entry is not None:
                    verify_against_lock(staging, entry)
                os.replace(staging, target)
            elif entry is not None:
                verify_against_lock(target, entry)
            if entry is None:
                lock[f.name] = {"name": f.name, "id": f.drive_id, "size": target.stat().st_size,
                                "sha256": file_sha256(target)}
                write_lock(lock_path, lock)   # after each file, so a later failure keeps what was recorded
                results.append((f, "recorded", f"{target} (sha256 recorded in {lock_path.name})"))
            else:
                results.append((f, "ok", str(target)))
        except (LockMismatch, OSError) as err:
            results.append((f, "failed", str(err)))
    return results


def main_published(which: str, dest: Path, lock_path: Path, download: Downloader = gdown_download) -> int:
    """``download_models.py --published NAME``: 0 when every file is in place and verified, 1 otherwise."""
    files = PUBLISHED[which]
    print(f"published weights '{which}' ({len(files)} files) -> {dest}")
    results = fetch_published(files, dest, lock_path, download)
    bad = [(f, m) for f, status, m in results if status == "failed"]
    for f, status, message in results:
        if status != "failed":
            print(f"{status:<9}{f.name}: {message}")
    for f, message in bad:
        print(f"error: {message}", file=sys.stderr)
    if not bad:
        print(f"all {len(files)} file(s) in place; run inference with --weights-dir {dest}")
    return 1 if bad else 0
