import json
from pathlib import Path

import numpy as np
import torch

from mgmt2d.data.intensity import IMAGENET_MEAN, IMAGENET_STD
from mgmt2d.segmentation import evaluate
from mgmt2d.segmentation import model as segmenter

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference_state_dicts.json"


def test_state_dict_matches_reference_constructor_and_published_keys(shared_data):
    import segmentation_models_pytorch as smp

    ours = segmenter.build_segmenter().state_dict()
    ref_model = smp.UnetPlusPlus(encoder_name="densenet121", encoder_depth=5, encoder_weights=None,
                                 classes=2, activation="sigmoid").state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref_model.items()}
    published = json.loads(REFERENCE.read_text())["segmenter"]
    assert {k: list(v.shape) for k, v in ours.items()} == published


def test_checkpoint_round_trip_strict(tmp_path):
    model = segmenter.build_segmenter().eval()
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    torch.save(model.state_dict(), tmp_path / "raw.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        for name in ("ckpt.pt", "raw.pth"):
            got = segmenter.load_segmenter(tmp_path / name)(x)
            torch.testing.assert_close(got, want)


def test_input_transform_normalises_and_crops():
    sl = np.full((1, 50, 40), 255, np.uint8)
    x = segmenter.to_input(sl, 32, zoom=1.2)
    assert x.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(x[0, :, 5, 5], (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD), rtol=1e-6)


def test_brats_dice_conventions():
    a = np.zeros((4, 4, 4), bool)
    assert evaluate.dice(a, a) == 1.0          # empty vs empty counts as 1
    b = a.copy()
    b[0, 0, 0] = True
    assert evaluate.dice(a, b) == 0.0
    c = b.copy()
    c[1, 1, 1] = True
    assert evaluate.dice(b, c) == 2 * 1 / 3


def test_labels_from_masks():
    wt = np.array([0, 1, 1, 0])
    et = np.array([0, 0, 1, 0])
    assert evaluate.labels_from_masks(wt, et).tolist() == [0, 2, 4, 0]
