"""SETTINGS.json: the Kaggle convention for where data and models live.

Every script takes ``--settings PATH``; relative paths in the file resolve against the
folder holding the file, so a project can be moved or cloned without editing it. ``~`` and
environment variables (``$HOME``, ``${DATA}``) in a path are expanded; an unset variable is an
error. A key given twice, or a near-miss of a known key (a typo), is refused; another unknown
key is ignored with a warning naming it. A UTF-8 BOM (Windows editors) is accepted.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEYS: tuple[str, ...] = (
    "DICOM_DATA_DIR",
    "TASK1_DIR",
    "SEGMENT_DATA_DIR",
    "CLASSIFICATION_DATA_DIR",
    "KFOLD_PATH",
    "SEGMENT_MODEL_DIR",
    "CLASSIFICATION_MODEL_DIR",
    "PRETRAINED_DIR",
    "TEMP_DATA_DIR",
    "TEST_PREDICTION_FILE",
)


# Keys a SETTINGS.json may leave out: only the runs that use them need them.
OPTIONAL_KEYS: tuple[str, ...] = ("CLASSIFICATION_RAW_JPG",)
_VARIABLE = re.compile(r"\$(\w+)|\$\{([^}]*)\}")
log = logging.getLogger(__name__)


class SettingsError(ValueError):
    """A settings problem the user must fix; its message is a single line."""


@dataclass(frozen=True)
class Settings:
    """Resolved, absolute paths of every SETTINGS.json key."""

    source: Path
    paths: dict[str, Path]

    def __getitem__(self, key: str) -> Path:
        if key not in self.paths:
            raise SettingsError(f"{self.source} has no {key}; add it to use this option")
        return self.paths[key]

    def existing(self, key: str) -> Path:
        """The path of ``key``; a one-line error naming it when it does not exist."""
        path = self[key]
        if not path.exists():
            raise SettingsError(
                f"{key} = {path} does not exist (set in {self.source}); "
                "create it or point the key at your data"
            )
        return path

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.paths.items()}


def load_settings(path: str | Path = "SETTINGS.json") -> Settings:
    """Read SETTINGS.json, check every key is present, resolve relative paths."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise SettingsError(f"settings file {path} not found; pass --settings PATH")
    twice: list[str] = []

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                twice.append(key)
            out[key] = value
        return out

    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=unique_keys)
    except json.JSONDecodeError as err:
        raise SettingsError(f"settings file {path} is not valid JSON: {err}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"settings file {path} is not UTF-8 text; save it as UTF-8") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"settings file {path} must hold a JSON object")
    if twice:
        raise SettingsError(f"settings file {path} gives {twice[0]} twice (JSON keeps only the last); keep one")
    _check_unknown_keys(path, raw)
    missing = [k for k in KEYS if k not in raw]
    if missing:
        raise SettingsError(f"settings file {path} lacks key(s): {', '.join(missing)}")
    present = [k for k in (*KEYS, *OPTIONAL_KEYS) if k in raw]
    bad = [f"{k} = {json.dumps(raw[k])}" for k in present if not isinstance(raw[k], str) or not raw[k].strip()]
    if bad:
        raise SettingsError(f"settings file {path}: every path must be a non-empty string ({'; '.join(bad)})")
    base = path.parent
    paths = {k: (base / Path(_expand(path, k, raw[k])).expanduser()).resolve() for k in present}
    return Settings(source=path, paths=paths)


def _check_unknown_keys(path: Path, raw: dict[str, Any]) -> None:
    """A near-miss of a known key is a typo (its setting would be lost): refused with "did you mean";
    any other unknown key is ignored, with a warning naming it."""
    known = (*KEYS, *OPTIONAL_KEYS)
    unknown = [k for k in raw if k not in known]
    for key in unknown:
        close = difflib.get_close_matches(str(key).upper(), known, n=1, cutoff=0.8)
        if close:
            raise SettingsError(f"settings file {path}: unknown key {key!r}; did you mean {close[0]}?")
    if unknown:
        log.warning("settings file %s: unknown key(s) %s ignored (known keys: %s)", path, ", ".join(unknown),
                    ", ".join(known))


def _expand(path: Path, key: str, value: str) -> str:
    """``$NAME`` and ``${NAME}`` replaced from the environment (``~`` is expanded by the caller)."""
    for match in _VARIABLE.finditer(value):
        name = match.group(1) or match.group(2)
        if name not in os.environ:
            raise SettingsError(f"settings file {path}: {key} = {value!r} uses the environment variable "
                                f"{name or '${}'}, which is not set; set it or write the path out")
    return os.path.expandvars(value)


def add_settings_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--settings",
        default="SETTINGS.json",
        help="SETTINGS.json with the data and model paths (default: ./SETTINGS.json)",
    )
