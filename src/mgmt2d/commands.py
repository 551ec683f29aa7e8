"""The stage scripts as console commands of an installed package (``[project.scripts]`` in
pyproject.toml): ``mgmt2d-train-segmentation --help`` is ``python train_segmentation.py --help``.

The download command has no manifest beside it: its ``--manifest`` defaults to
models/manifest.json beside SETTINGS.json.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from mgmt2d.cli import script_main


def _command(module_name: str) -> Callable[[], int]:
    """A console command running ``module_name``'s ``add_arguments`` and ``main`` as its script does."""

    def command() -> int:
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or "").strip().split("\n\n")[0]
        return script_main(module.main, module.add_arguments, summary)

    command.__name__ = module_name.rsplit(".", 1)[-1]
    return command


download_models = _command("mgmt2d.tools.download")
prepare_segmentation_data = _command("mgmt2d.segmentation.prepare")
train_segmentation = _command("mgmt2d.segmentation.train")
prepare_classification = _command("mgmt2d.classification.prepare")
train_classification = _command("mgmt2d.classification.train")
inference_on_test = _command("mgmt2d.inference.predict")
