import json
from pathlib import Path

import pytest

from mgmt2d.data.settings import KEYS, OPTIONAL_KEYS, SettingsError, load_settings

REPO = Path(__file__).resolve().parents[1]


def test_repo_settings_has_every_key():
    s = load_settings(REPO / "SETTINGS.json")
    assert set(s.paths) == set(KEYS) | set(OPTIONAL_KEYS)
    assert s["TASK1_DIR"].is_absolute() and s["TASK1_DIR"].is_relative_to(REPO)


def test_optional_key_may_be_left_out_and_is_named_when_used(tmp_path: Path):
    (tmp_path / "S.json").write_text(json.dumps({k: f"sub/{k.lower()}" for k in KEYS}))
    s = load_settings(tmp_path / "S.json")
    with pytest.raises(SettingsError, match="has no CLASSIFICATION_RAW_JPG"):
        s.existing("CLASSIFICATION_RAW_JPG")


def test_relative_paths_resolve_against_settings_folder(tmp_path: Path):
    cfg = {k: f"sub/{k.lower()}" for k in KEYS}
    (tmp_path / "S.json").write_text(json.dumps(cfg))
    s = load_settings(tmp_path / "S.json")
    assert s["KFOLD_PATH"] == tmp_path / "sub" / "kfold_path"


def test_missing_key_and_missing_path_are_one_line_errors(tmp_path: Path):
    cfg = {k: "x" for k in KEYS if k != "TASK1_DIR"}
    (tmp_path / "S.json").write_text(json.dumps(cfg))
    with pytest.raises(SettingsError, match="TASK1_DIR") as err:
        load_settings(tmp_path / "S.json")
    assert "\n" not in str(err.value)
    cfg["TASK1_DIR"] = "absent"
    (tmp_path / "S.json").write_text(json.dumps(cfg))
    with pytest.raises(SettingsError, match=r"TASK1_DIR = .*absent does not exist"):
        load_settings(tmp_path / "S.json").existing("TASK1_DIR")
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.json")
