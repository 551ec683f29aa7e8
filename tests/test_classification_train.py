"""train_classification.py on a hand-made prepared split: --mri-type all / pooled, recorded schedule."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from mgmt2d.classification import train as classification_train
from mgmt2d.data.settings import KEYS
from mgmt2d.data.task2 import MRI_TYPES


def prepared_split(root: Path, patients: int = 4) -> Path:
    """CLASSIFICATION_DATA_DIR/train with every type of ``patients`` patients (tiny random frames)."""
    train = root / "cls" / "train"
    (train / "series").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(patients):
        pid = f"{i + 1:05d}"
        for mri_type in MRI_TYPES:
            kept = 3 + i
            np.save(train / "series" / f"{pid}_{mri_type}.npy", (rng.random((kept, 12, 10, 3)) * 255).astype(np.uint8))
            rows.append({"patient": pid, "type": mri_type, "kept": kept, "total": kept + 2,
                         "file": f"series/{pid}_{mri_type}.npy", "label": i % 2, "fold": i % 2, "note": ""})
    pd.DataFrame(rows).to_csv(train / "index.csv", index=False)
    settings = {k: f"unused/{k.lower()}" for k in KEYS}
    settings.update({"CLASSIFICATION_DATA_DIR": "cls", "CLASSIFICATION_MODEL_DIR": "models"})
    (root / "SETTINGS.json").write_text(json.dumps(settings))
    return root / "SETTINGS.json"


def parse(settings: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    classification_train.add_arguments(parser)
    return parser.parse_args([*_argv(settings), *extra])


def test_mri_type_all_trains_the_four_per_type_models(tmp_path: Path):
    settings = prepared_split(tmp_path)
    assert classification_train.main(parse(settings, "--mri-type", "all")) == 0
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == sorted(MRI_TYPES)
    for mri_type in MRI_TYPES:
        run = models / mri_type / "fold0"
        assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
        config = json.loads((run / "train_config.json").read_text())["config"]
        assert config["mri_type"] == mri_type and config["train_patients"] == ["00002", "00004"]
        # the published schedule is the default and is recorded
        assert config["plateau_on"] == "train_loss"
        assert config["plateau_factor"] == [0.67, 0.1] and config["plateau_patience"] == [3, 10]
        assert config["augment"] is True


def test_mri_type_pooled_trains_one_model_on_every_type(tmp_path: Path):
    settings = prepared_split(tmp_path)
    args = parse(settings, "--mri-type", "pooled", "--plateau-on", "val_loss", "--plateau-factor", "0.5")
    assert classification_train.main(args) == 0
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["pooled"]
    config = json.loads((tmp_path / "models/pooled/fold0/train_config.json").read_text())["config"]
    assert config["plateau_on"] == "val_loss" and config["plateau_factor"] == [0.5, 0.5]
    history = pd.read_csv(tmp_path / "models/pooled/fold0/history.csv")
    assert len(history) == 1


def test_any_timm_backbone_trains_from_its_imagenet_weights_in_pretrained_dir(tmp_path: Path):
    """--backbone NAME --pretrained imagenet: the registry finds NAME's weights, once download_models.py stored them
    (here stored from a fake hub: the real fetch needs the internet). Without them: one line naming the fix."""
    import torch

    from mgmt2d import cli, pretrained
    from mgmt2d.tools import download

    settings = prepared_split(tmp_path)
    raw = json.loads(settings.read_text())
    raw["PRETRAINED_DIR"] = "pretrained"
    settings.write_text(json.dumps(raw))
    argv = _argv(settings, "imagenet")
    parser = argparse.ArgumentParser()
    classification_train.add_arguments(parser)
    assert cli.run(classification_train.main, parser, argv) == 2   # not fetched yet: refused, not a random start

    source = pretrained.source("test_resnet")            # any timm model: the classifier module's family
    torch.manual_seed(5)
    weights = source.build().state_dict()
    result = download.save_pretrained(tmp_path / "pretrained", "test_resnet",
                                      lambda cache: pretrained.FetchedWeights(weights, {"hf_hub_id": "fake"}))
    assert result.status == "saved" and result.path.name == "test_resnet_imagenet.safetensors"
    parser = argparse.ArgumentParser()
    classification_train.add_arguments(parser)
    assert cli.run(classification_train.main, parser, argv) == 0
    config = json.loads((tmp_path / "models/FLAIR/fold0/train_config.json").read_text())["config"]
    assert config["backbone"] == "test_resnet" and config["pretrained"] == str(result.path)
    first = torch.load(tmp_path / "models/FLAIR/fold0/last.pt", weights_only=True)["model"]
    key = next(k for k in weights if k.endswith("conv1.weight"))
    # one epoch at lr 1e-6 moves a weight by at most ~1e-6: the backbone started from the stored weights
    assert torch.allclose(first[f"backbone.{key}"], weights[key], atol=1e-4)


def _argv(settings: Path, pretrained: str = "none") -> list[str]:
    return ["--settings", str(settings), "--device", "cpu", "--pretrained", pretrained, "--workers", "0",
            "--no-progress", "--backbone", "test_resnet", "--image-size", "16", "--seq-len", "4", "--stride", "2",
            "--lstm-hidden", "4", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "4"]
