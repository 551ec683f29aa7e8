from pathlib import Path

import cv2
import numpy as np
import pytest

from mgmt2d.classification_prep import read_jpg_series


def test_jpg_series_ordered_by_number_in_name(tmp_path: Path):
    for n in (10, 2, 1):
        cv2.imwrite(str(tmp_path / f"Image-{n}.jpg"), np.full((8, 6), n * 20, np.uint8))
    vol = read_jpg_series(tmp_path)
    assert vol.shape == (3, 8, 6) and vol.dtype == np.float32
    assert [int(round(v)) for v in vol[:, 4, 3]] == [20, 40, 200]


def test_jpg_series_without_images_is_a_clear_error(tmp_path: Path):
    (tmp_path / "Image-1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="no readable .jpg"):
        read_jpg_series(tmp_path)
