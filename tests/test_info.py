import gzip
import json
import subprocess
import sys
from pathlib import Path

from mgmt2d.tools import info


def _info(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mgmt2d", "info", str(path)], capture_output=True, text=True)


def test_series_json_on_real_mprage(mprage_dir: Path):
    proc = _info(mprage_dir)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["plane"] == "sagittal" and out["n_slices"] == 176 and out["shape"] == [176, 256, 256]
    for key in ("pixel_spacing", "slice_spacing", "first_position", "last_position", "intensity_range", "skipped"):
        assert key in out
    assert out["skipped"] == []
    assert abs(out["slice_spacing"] - 1.0) < 0.1
    # first/last positions are the extremes along the normal in reading order
    assert out["first_position"] != out["last_position"]


def test_unreadable_series_is_one_line_error(tmp_path: Path):
    (tmp_path / "junk.dcm").write_bytes(b"garbage")
    proc = _info(tmp_path)
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert str(tmp_path) in proc.stderr


def test_nifti_and_case_folder(brats_sample_dir: Path):
    case = brats_sample_dir / "BraTS2021_90003"
    seg = info.describe(case / "BraTS2021_90003_seg.nii.gz")
    assert seg["shape"] == [240, 240, 155] and set(seg["labels"]) <= {"0", "1", "2", "4"}
    described = info.describe(case)
    assert described["kind"] == "brats-case" and len(described["files"]) == 3


# ------------------------------------------------------------------ broken NIfTI files, several volumes


def _broken_niftis(tmp_path: Path, source: Path) -> dict[str, Path]:
    data = source.read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(data[: len(data) // 3])            # a copy cut short: EOFError in gzip
    not_gzip = tmp_path / "not_gzip.nii.gz"
    not_gzip.write_bytes(b"this is not gzip at all\n" * 20)  # ImageFileError
    short_nii = tmp_path / "short.nii"
    short_nii.write_bytes(gzip.decompress(data)[:5000])      # uncompressed, header then too few voxels
    return {"truncated": truncated, "not_gzip": not_gzip, "short": short_nii}


def test_broken_nifti_is_one_line_error_exit_2(brats_sample_dir: Path, tmp_path: Path, capsys):
    from mgmt2d.__main__ import main

    source = brats_sample_dir / "BraTS2021_90003" / "BraTS2021_90003_seg.nii.gz"
    for kind, path in _broken_niftis(tmp_path, source).items():
        assert main(["info", str(path)]) == 2, kind
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("error: ") and len(err.strip().splitlines()) == 1, (kind, err)
        assert str(path) in err and "not a readable NIfTI file" in err and "Traceback" not in err


def test_truncated_nifti_in_a_process_has_no_traceback(brats_sample_dir: Path, tmp_path: Path):
    source = brats_sample_dir / "BraTS2021_90003" / "BraTS2021_90003_seg.nii.gz"
    path = _broken_niftis(tmp_path, source)["truncated"]
    proc = _info(path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {path} is not a readable NIfTI file (EOFError")


def test_series_with_several_volumes_lists_them(tmp_path: Path, capsys):
    from test_dicom_volumes import write_volumes

    from mgmt2d.__main__ import main

    write_volumes(tmp_path, 5, [{"EchoNumbers": 1}, {"EchoNumbers": 2}, {"EchoNumbers": 3}])
    assert main(["info", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_volumes"] == 3 and out["volume"] == 0 and out["n_slices"] == 5 and not out["multi_frame"]
    assert out["volumes"]["by"] == ["EchoNumbers"] and out["volumes"]["used"] == 0
    assert [v["key"] for v in out["volumes"]["volumes"]] == [{"EchoNumbers": e} for e in (1, 2, 3)]
    assert main(["info", str(tmp_path), "--volume", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["volume"] == 2 and out["intensity_range"] == [200.0, 204.0]
    assert main(["info", str(tmp_path), "--volume", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "volume 3 does not exist" in err


def test_single_volume_series_says_so(mprage_dir: Path):
    out = info.describe(mprage_dir)
    assert out["n_volumes"] == 1 and out["volumes"] is None and out["warnings"] == [] and out["volume"] == 0
