"""Stage 2: MGMT from stacked [slice, WT, ET] images. ``stack`` segments and stacks a series (shared
with inference), ``chunks`` cuts 35-slice windows, ``frames`` makes model inputs, ``dataset``
serves training chunks, ``model`` is the CNN + BiLSTM, ``prepare`` (prepare_classification.py) and
``train`` (train_classification.py) are the stage's scripts."""

from mgmt2d._lazy import lazy_exports

__all__ = ["MGMTClassifier", "build_classifier", "load_trained_classifier"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "MGMTClassifier": "mgmt2d.classification.model",
    "build_classifier": "mgmt2d.classification.model",
    "load_trained_classifier": "mgmt2d.classification.model",
})
