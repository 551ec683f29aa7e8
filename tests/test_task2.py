from pathlib import Path

import pytest

from mgmt2d.data import task2


def _layout(root: Path) -> Path:
    for split, pid, types in [
        ("train", "00000", task2.MRI_TYPES),
        ("train", "00002", ("FLAIR", "T2w")),
        ("train", "00109", task2.MRI_TYPES),
        ("train", "00005", task2.MRI_TYPES),  # not in labels
        ("test", "00001", task2.MRI_TYPES),
    ]:
        for t in types:
            (root / split / pid / t).mkdir(parents=True)
    (root / "train_labels.csv").write_text("BraTS21ID,MGMT_value\n0,1\n2,0\n109,1\n")
    return root


def test_index_train_joins_labels_and_excludes(tmp_path: Path):
    idx = task2.index_split(_layout(tmp_path), "train")
    assert idx.patients == ["00000", "00002"]
    assert idx.excluded == ["00109"]
    assert idx.unlabelled == ["00005"]
    assert idx.missing_types == {"00002": ["T1w", "T1wCE"]}
    assert len(idx.series) == 6
    assert set(idx.series[idx.series.patient == "00000"].label) == {1}
    assert "00002: T1w, T1wCE" in idx.report()


def test_exclusion_list_is_a_flag(tmp_path: Path):
    idx = task2.index_split(_layout(tmp_path), "train", exclude=())
    assert "00109" in idx.patients


def test_test_split_has_no_labels(tmp_path: Path):
    idx = task2.index_split(_layout(tmp_path), "test")
    assert idx.patients == ["00001"] and set(idx.series.label) == {-1}


def test_numeric_ids_are_five_digit_strings_other_ids_are_kept():
    assert task2.format_id(109) == "00109"
    assert task2.format_id("00109") == "00109"
    assert task2.format_id(" 7 ") == "00007"
    assert task2.format_id("UPENN-GBM-00002_11") == "UPENN-GBM-00002_11"
    for bad in ("../x", "a b", ""):
        with pytest.raises(ValueError):
            task2.format_id(bad)


def test_wrong_csv_is_a_clear_error(tmp_path: Path):
    bad = tmp_path / "train_labels.csv"
    bad.write_text("id,label\n1,0\n")
    with pytest.raises(task2.Task2Error, match="lacks column"):
        task2.read_labels(bad)
    bad.write_text("BraTS21ID,MGMT_value\n1,3\n")
    with pytest.raises(task2.Task2Error, match="0 or 1"):
        task2.read_labels(bad)
    with pytest.raises(task2.Task2Error, match="does not exist"):
        task2.index_split(tmp_path / "nowhere", "train")


def test_task2_patient_ids_for_leakage_filter(tmp_path: Path):
    ids = task2.task2_patient_ids(_layout(tmp_path))
    assert ids == {"00000", "00001", "00002", "00005", "00109"}
