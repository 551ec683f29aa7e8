"""Atomic output writing: a killed run never leaves a file that looks complete."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from mgmt2d.faults import fault_point


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    ``suffix`` lets writers that pick the format from the name (nibabel) see the right one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are data others may read
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fault_point("atomic-write")
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_writable(folder: str | Path, what: str = "output") -> Path:
    """Create ``folder`` if needed and prove a file can be written there, before any long work.

    A run that fails to write only after hours of model work loses all of it; this fails at once
    with one line naming the folder.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise OutputNotWritable(
            f"cannot write the {what} in {folder} ({reason}); choose another folder or fix its permissions"
        ) from None
    return folder


class OutputNotWritable(ValueError):
    """An output folder that cannot be created or written; checked before the first model call."""


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file (weights, downloads, cache keys), read in chunks so large checkpoints never sit in memory."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def save_npy_atomic(path: str | Path, array: np.ndarray) -> None:
    """np.save through a temp file (the temp name keeps the .npy suffix numpy wants)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def write_csv_atomic(path: str | Path, frame: Any) -> None:
    """Write a pandas DataFrame as CSV atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


LIBRARIES = (
    "torch", "torchvision", "timm", "segmentation-models-pytorch", "albumentations",
    "opencv-python-headless", "pydicom", "nibabel", "numpy", "pandas", "scikit-learn",
)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape results, recorded beside every output."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    from mgmt2d import __version__

    out["mgmt2d"] = __version__
    return out


def write_run_config(out_dir: str | Path, name: str, config: dict[str, Any]) -> Path:
    """Write the resolved configuration of a run next to its outputs."""
    path = Path(out_dir) / name
    write_json_atomic(path, {"config": config, "versions": library_versions(), "argv": sys.argv})
    return path


# A test aid: SIGKILL this process at a named point, to prove a killed run resumes cleanly.
