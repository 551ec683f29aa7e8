"""SETTINGS.json: the Kaggle convention for where data and models live.

Every script takes ``--settings PATH``; relative paths in the file resolve against the
folder holding the file, so a project can be moved or cloned without editing it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

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
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SettingsError(f"settings file {path} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"settings file {path} must hold a JSON object")
    missing = [k for k in KEYS if k not in raw]
    if missing:
        raise SettingsError(f"settings file {path} lacks key(s): {', '.join(missing)}")
    present = [k for k in (*KEYS, *OPTIONAL_KEYS) if k in raw]
    bad = [f"{k} = {json.dumps(raw[k])}" for k in present if not isinstance(raw[k], str) or not raw[k].strip()]
    if bad:
        raise SettingsError(f"settings file {path}: every path must be a non-empty string ({'; '.join(bad)})")
    base = path.parent
    paths = {k: (base / Path(raw[k]).expanduser()).resolve() for k in present}
    return Settings(source=path, paths=paths)


def add_settings_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--settings",
        default="SETTINGS.json",
        help="SETTINGS.json with the data and model paths (default: ./SETTINGS.json)",
    )
