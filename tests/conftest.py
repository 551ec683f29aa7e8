"""Shared test fixtures: the real sample data beside the repo, when present."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip: those samples are never copied into the repo."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mprage_dir(shared_data: Path) -> Path:
    path = shared_data / "dicom-t1-mprage"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="session")
def brats_sample_dir(shared_data: Path) -> Path:
    path = shared_data / "brats2015-sample"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path
