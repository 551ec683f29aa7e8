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


@pytest.mark.parametrize("raw, expected", [
    (109, "00109"), ("109", "00109"), ("00109", "00109"), ("0109", "00109"), ("109.0", "00109"),
    ("123456", "123456"), ("0", "00000"), ("UPENN-GBM-00002_11", "UPENN-GBM-00002_11"),
    ("UCSF-PDGM-0004_nifti", "UCSF-PDGM-0004_nifti"), ("a.b", "a.b"), ("-", "-"), ("Ab", "Ab"),
])
def test_one_id_rule_pads_only_numbers(raw, expected):
    assert task2.format_id(raw) == expected


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "a\\b", "a b", " 7 ", "naïve", "x\n", "x" * 201,
                                 "/abs", ".hidden", "...x"])
def test_ids_that_are_not_plain_folder_names_are_refused(bad: str):
    with pytest.raises(task2.PatientIdError) as err:
        task2.format_id(bad, "labels.csv line 3")
    message = str(err.value)
    assert "\n" not in message and message.startswith("labels.csv line 3: patient ID") and "letters" in message


def test_wrong_csv_is_a_clear_error(tmp_path: Path):
    bad = tmp_path / "train_labels.csv"
    bad.write_text("id,label\n1,0\n")
    with pytest.raises(task2.Task2Error, match="has no column 'BraTS21ID' .*--id-column"):
        task2.read_labels(bad)
    assert task2.read_labels(bad, task2.LabelColumns("id", "label")) == {"00001": 0}
    bad.write_text("BraTS21ID,MGMT_value\n1,3\n")
    with pytest.raises(task2.Task2Error, match="line 2: MGMT_value is '3' for patient 00001; labels must be 0 or 1"):
        task2.read_labels(bad)
    with pytest.raises(task2.Task2Error, match="does not exist"):
        task2.index_split(tmp_path / "nowhere", "train")


@pytest.mark.parametrize("text, message", [
    ("BraTS21ID,MGMT_value\n1,0\n\n2,1\n", "line 3 is blank; delete the blank line"),
    ("BraTS21ID,MGMT_value\n1,0\n,1\n", "line 3: patient ID '' is empty"),
    ("BraTS21ID,MGMT_value\n1,0\n001,1\n", "lists 00001 twice (lines 2 and 3)"),
    ("BraTS21ID,MGMT_value\n1,0\n2\n", "line 3 has 1 fields but the header has 2"),
    ("BraTS21ID,MGMT_value\na/b,0\n", "line 2: patient ID 'a/b' holds '/'"),
])
def test_every_patient_csv_names_the_bad_line(tmp_path: Path, text: str, message: str):
    """train_labels, sample submissions and folds go through one reader: a blank row is never 'patient nan'."""
    path = tmp_path / "x.csv"
    path.write_text(text)
    with pytest.raises(task2.Task2Error) as err:
        task2.read_labels(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)
    with pytest.raises(task2.Task2Error, match=message.split(" (")[0].replace("'", ".")):
        task2.read_patient_list(path)


def test_bom_and_trailing_blank_lines_are_accepted(tmp_path: Path):
    path = tmp_path / "sample.csv"
    path.write_bytes("\ufeffBraTS21ID,MGMT_value\n 7 ,0.5\nUPENN-GBM-00002_11,0.5\n\n\n".encode())
    assert task2.read_patient_list(path) == (["00007", "UPENN-GBM-00002_11"], ["7", "UPENN-GBM-00002_11"])


def test_any_patient_id_in_a_split(tmp_path: Path):
    for pid, types in [("UPENN-GBM-00002_11", ("flair", "T1WCE")), ("7", ("T2w",)), (".ipynb_checkpoints", ())]:
        for t in types or ("x",):
            (tmp_path / "train" / pid / t).mkdir(parents=True)
    (tmp_path / "train_labels.csv").write_text("case,methylated\nUPENN-GBM-00002_11,1\n00007,0\n")
    idx = task2.index_split(tmp_path, "train", columns=task2.LabelColumns("case", "methylated"))
    assert idx.patients == ["00007", "UPENN-GBM-00002_11"]   # the hidden folder is not a patient
    got = {(r.patient, r.mri_type, Path(r.path).name, r.label) for r in idx.series.itertuples()}
    assert got == {("UPENN-GBM-00002_11", "FLAIR", "flair", 1), ("UPENN-GBM-00002_11", "T1wCE", "T1WCE", 1),
                   ("00007", "T2w", "T2w", 0)}
    assert task2.find_patient_folder(tmp_path / "train", "00007") == tmp_path / "train" / "7"


def test_ambiguous_folders_are_refused_naming_both(tmp_path: Path):
    (tmp_path / "p1" / "FLAIR").mkdir(parents=True)
    (tmp_path / "p1" / "flair").mkdir()
    with pytest.raises(task2.Task2Error, match="p1 holds FLAIR and flair, both the FLAIR series"):
        task2.series_folders(tmp_path / "p1")
    assert list(task2.series_folders(tmp_path / "p1", ["T2w"])) == []   # only the types asked for are looked at
    split = tmp_path / "split"
    for name in ("7", "00007"):
        (split / name).mkdir(parents=True)
    with pytest.raises(task2.Task2Error, match="holds 00007 and 7, both patient 00007"):
        task2.patient_folders(split)
    (split / "7").rmdir()
    (split / "abc").mkdir()
    (split / "ABC").mkdir()
    with pytest.raises(task2.Task2Error, match="ABC and abc, whose IDs differ only in case"):
        task2.patient_folders(split)
    (split / "ABC").rmdir()
    (split / "a b").mkdir()
    with pytest.raises(task2.PatientIdError, match="a b: patient ID 'a b' holds ' '"):
        task2.patient_folders(split)


def test_task2_patient_ids_for_leakage_filter(tmp_path: Path):
    ids = task2.task2_patient_ids(_layout(tmp_path))
    assert ids == {"00000", "00001", "00002", "00005", "00109"}
