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
