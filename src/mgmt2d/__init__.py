"""mgmt2d: two-stage 2D MGMT promoter methylation prediction from brain MRI.

The package follows the pipeline:

* ``mgmt2d.data``: readers and file conventions (DICOM series, BraTS cases, Task 2 layout,
  SETTINGS.json, atomic writes, intensity scaling, the input contract).
* ``mgmt2d.segmentation``: stage 1 (prepare the slice store, dataset, UNet++ model, train, evaluate).
* ``mgmt2d.classification``: stage 2 (segment-and-stack, chunks, frames, dataset, CNN + BiLSTM
  model, prepare, train).
* ``mgmt2d.inference``: test-set prediction and the published weights.
* ``mgmt2d.training``: the engine both stages share (trainer, checkpoints, seeding, plots,
  augmentation).
* ``mgmt2d.tools``: user tools (``info``, ``download``); ``mgmt2d.dev``: development-only code
  (synthetic data, the demo).

The few names a user imports are available here (imported on first use)::

    from mgmt2d import read_series, build_segmenter, build_classifier, predict
"""

from mgmt2d._lazy import lazy_exports

__version__ = "0.1.0"

__all__ = ["build_classifier", "build_segmenter", "load_segmenter", "load_trained_classifier", "predict", "read_series"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "read_series": "mgmt2d.data.dicom",
    "build_segmenter": "mgmt2d.segmentation.model",
    "load_segmenter": "mgmt2d.segmentation.model",
    "build_classifier": "mgmt2d.classification.model",
    "load_trained_classifier": "mgmt2d.classification.model",
    "predict": "mgmt2d.inference.predict",
})
