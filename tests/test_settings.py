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


# ------------------------------------------------------------------ issue 25: keys, variables, BOM


def _write(tmp_path: Path, text: str | None = None, **values: str) -> Path:
    cfg = {k: f"sub/{k.lower()}" for k in KEYS}
    cfg.update(values)
    path = tmp_path / "S.json"
    path.write_text(text if text is not None else json.dumps(cfg))
    return path


def test_a_near_miss_of_a_known_key_is_refused_with_did_you_mean(tmp_path: Path):
    with pytest.raises(SettingsError) as err:
        load_settings(_write(tmp_path, CLASSIFICATION_RAW_JPGS="jpg"))
    assert "unknown key 'CLASSIFICATION_RAW_JPGS'; did you mean CLASSIFICATION_RAW_JPG?" in str(err.value)
    cfg = {k: "x" for k in KEYS if k != "TASK1_DIR"} | {"task1_dir": "x"}   # before "lacks TASK1_DIR"
    with pytest.raises(SettingsError, match="unknown key 'task1_dir'; did you mean TASK1_DIR"):
        load_settings(_write(tmp_path, json.dumps(cfg)))


def test_another_unknown_key_is_ignored_with_a_warning_naming_it(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level("WARNING"):
        s = load_settings(_write(tmp_path, NOTES="my own remark"))
    assert "unknown key(s) NOTES ignored" in caplog.text and "NOTES" not in s.paths


def test_a_key_given_twice_is_refused(tmp_path: Path):
    text = json.dumps({k: f"sub/{k.lower()}" for k in KEYS})[:-1] + ', "KFOLD_PATH": "other.csv"}'
    with pytest.raises(SettingsError, match=r"gives KFOLD_PATH twice \(JSON keeps only the last\); keep one"):
        load_settings(_write(tmp_path, text))


def test_environment_variables_expand_and_an_unset_one_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MGMT2D_TEST_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    s = load_settings(_write(tmp_path, DICOM_DATA_DIR="${MGMT2D_TEST_DATA}/task2", TASK1_DIR="$HOME/task1",
                             SEGMENT_DATA_DIR="~/seg"))
    assert s["DICOM_DATA_DIR"] == tmp_path / "data" / "task2"
    assert s["TASK1_DIR"] == tmp_path / "home" / "task1" and s["SEGMENT_DATA_DIR"] == tmp_path / "home" / "seg"
    monkeypatch.delenv("MGMT2D_TEST_UNSET", raising=False)
    with pytest.raises(SettingsError) as err:
        load_settings(_write(tmp_path, TASK1_DIR="$MGMT2D_TEST_UNSET/task1"))
    message = str(err.value)
    assert "TASK1_DIR" in message and "MGMT2D_TEST_UNSET, which is not set" in message and "\n" not in message
    assert not (tmp_path / "$MGMT2D_TEST_UNSET").exists()


def test_a_utf8_bom_is_accepted_as_in_csv_files(tmp_path: Path):
    path = tmp_path / "S.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({k: f"sub/{k.lower()}" for k in KEYS}).encode())
    assert load_settings(path)["KFOLD_PATH"] == tmp_path / "sub" / "kfold_path"
    path.write_bytes(json.dumps({k: "caf\xe9" for k in KEYS}, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(SettingsError, match="is not UTF-8 text"):
        load_settings(path)
