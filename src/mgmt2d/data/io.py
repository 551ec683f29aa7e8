"""Atomic output writing: a killed run never leaves a file that looks complete."""

from __future__ import annotations

import contextlib
import errno
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

# --------------------------------------------------------------------------- out of disk space

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)   # no space left on the device; the user's disk quota exceeded
BIG_WRITE = 1 << 20   # writes from this many bytes check the free space first (below it, ENOSPC is caught)


class DiskFull(OSError):
    """Out of disk space (or quota) while writing into ``folder`` (None: the system did not say where);
    ``needed`` / ``free`` bytes when known.

    An OSError (ENOSPC / EDQUOT) so that code catching OS errors still sees one; ``mgmt2d.cli``
    turns it (and any other ENOSPC / EDQUOT) into one line with :func:`disk_full_message`.
    ``hint`` is what the command that was running says about continuing (e.g. ``--resume``).
    """

    def __init__(self, folder: str | Path | None, needed: int | None = None, free: int | None = None,
                 code: int = errno.ENOSPC, hint: str = "") -> None:
        super().__init__(code, os.strerror(code), None if folder is None else str(folder))
        self.folder = None if folder is None else Path(folder)
        self.needed, self.free, self.hint = needed, free, hint

    def __reduce__(self):   # raised in a worker process, re-raised in the parent (multiprocessing pickles it)
        return type(self), (self.filename, self.needed, self.free, self.errno, self.hint)

    def __str__(self) -> str:
        return disk_full_message(self)


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS


def as_disk_full(err: OSError, folder: str | Path | None = None, hint: str = "") -> DiskFull:
    """An ENOSPC / EDQUOT error as a :class:`DiskFull` naming ``folder`` (default: its own, else its file's
    folder); ``hint`` replaces the generic advice on continuing."""
    if isinstance(err, DiskFull):
        folder = err.folder if folder is None else folder
        return DiskFull(folder, err.needed, err.free, err.errno, hint or err.hint)
    if folder is None and err.filename:
        folder = Path(os.fsdecode(err.filename)).parent
    return DiskFull(folder, code=err.errno, hint=hint)


@contextlib.contextmanager
def disk_full_hint(hint: str) -> Iterator[None]:
    """Inside: running out of space is a :class:`DiskFull` with ``hint`` (how this command continues)."""
    try:
        yield
    except OSError as err:
        if is_disk_full(err):
            raise as_disk_full(err, hint=hint) from None
        raise


def _short_write(err: OSError, folder: Path) -> bool:
    """An OSError without errno that a full disk gives: numpy's ``tofile`` reports a short write as
    "N requested and M written"; any other errno-less OSError counts when the folder has no room left."""
    if err.errno is not None:
        return False
    if "requested and" in str(err) and "written" in str(err):
        return True
    try:
        return free_bytes(folder) < 64 * 1024
    except OSError:
        return False


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def disk_full_message(err: OSError) -> str:
    """The one line for running out of space: the folder, what was needed and free when known, the fix."""
    full = as_disk_full(err)
    what = "disk quota exceeded" if err.errno == errno.EDQUOT else "no space left on the device"
    hint = full.hint or "then run it again: what was finished is kept"
    if full.folder is None:
        return f"{what} (the system did not name the file); free some space, {hint}"
    sizes = [f"{_size(n)} {w}" for n, w in ((full.needed, "needed"), (full.free, "free")) if n is not None]
    amount = f" ({', '.join(sizes)})" if sizes else ""
    return f"{what} writing into {full.folder}{amount}; free some space there or choose another folder, {hint}"


def free_bytes(folder: str | Path) -> int:
    """Bytes this process may still write in ``folder``'s file system (root may use the reserved blocks)."""
    st = os.statvfs(folder)
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def ensure_space(folder: str | Path, needed: int) -> None:
    """Refuse (:class:`DiskFull`, naming what is needed and free) a big write that cannot fit, before writing it.

    Writes under :data:`BIG_WRITE` bytes are not checked: they rely on ENOSPC being caught.
    """
    if needed < BIG_WRITE:
        return
    free = free_bytes(folder)
    if free < needed:
        raise DiskFull(folder, needed, free)


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    ``suffix`` lets writers that pick the format from the name (nibabel) see the right one.
    Running out of space (ENOSPC / EDQUOT) becomes a :class:`DiskFull` naming the folder;
    the partial temp file is removed, so nothing half-written is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp", suffix=suffix, dir=path.parent)
    except OSError as err:
        if is_disk_full(err):
            raise as_disk_full(err, path.parent) from None
        raise
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are data others may read
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fault_point("atomic-write")
        os.replace(tmp_path, path)
    except OSError as err:
        if is_disk_full(err):
            raise as_disk_full(err, path.parent) from err
        if _short_write(err, path.parent):
            raise DiskFull(path.parent) from err
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    data = text.encode("utf-8")
    ensure_space(Path(path).parent, len(data))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


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
    write_text_atomic(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def save_npy_atomic(path: str | Path, array: np.ndarray) -> None:
    """np.save through a temp file (the temp name keeps the .npy suffix numpy wants); a big array that
    cannot fit is refused before a byte is written (:func:`ensure_space`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ensure_space(Path(path).parent, int(np.asarray(array).nbytes) + 128)   # + the .npy header
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def write_csv_atomic(path: str | Path, frame: Any) -> None:
    """Write a pandas DataFrame as CSV atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for our records: paths as strings, numpy scalars and arrays as Python values."""
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


def run_config_text(config: dict[str, Any]) -> str:
    """The text of a run's ``*_config.json``: its resolved configuration, library versions and command line."""
    return json.dumps({"config": config, "versions": library_versions(), "argv": sys.argv}, indent=2,
                      default=json_default) + "\n"


def write_run_config(out_dir: str | Path, name: str, config: dict[str, Any]) -> Path:
    """Write the resolved configuration of a run next to its outputs."""
    path = Path(out_dir) / name
    write_text_atomic(path, run_config_text(config))
    return path


# A test aid: SIGKILL this process at a named point, to prove a killed run resumes cleanly.
