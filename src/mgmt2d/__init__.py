"""mgmt2d: two-stage 2D MGMT promoter methylation prediction from brain MRI.

The package follows the pipeline:

* ``mgmt2d.data``: readers and file conventions (DICOM series, BraTS cases, Task 2 layout,
  SETTINGS.json, atomic writes, intensity scaling, the input contract).
* ``mgmt2d.segmentation``: stage 1 (prepare the slice store, dataset, UNet++ model, train, evaluate).
* ``mgmt2d.classification``: stage 2 (segment-and-stack, chunks, frames, dataset, CNN + BiLSTM
  model, prepare, train).
* ``mgmt2d.training``: the engine both stages share (trainer, batch loop, run configuration,
  checkpoints, seeding, torchrun, plots, augmentation).
* ``mgmt2d.inference``: the predictor (``pipeline``), its command line (``predict``), the
  per-patient report, Grad-CAM, sharded submissions.
* ``mgmt2d.tools``: user tools (``info``, ``download``, the published weights);
  ``mgmt2d.dev``: development-only code (synthetic data, the demo).
* Shared base modules: ``device`` (device and autocast policy), ``engines`` (``--backend``),
  ``pretrained`` (where ImageNet weights come from), ``overlay``, ``faults``.

The names a user needs are available here (imported on first use); a prediction from them alone::

    from pathlib import Path
    from mgmt2d import Predictor, PredictOptions

    predictor = Predictor.from_weights("models/t4e", device="cpu")   # ours or the published layout
    submission, per_type = predictor.predict(["00001"], Path("test"), PredictOptions(mri_types=["T1wCE"]))
"""

from mgmt2d._lazy import lazy_exports

__version__ = "0.1.0"

__all__ = [
    "InputContract", "PatientResult", "PredictOptions", "Predictor", "build_classifier", "build_segmenter",
    "load_segmenter", "load_trained_classifier", "predict", "read_series",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    "read_series": "mgmt2d.data.dicom",
    "InputContract": "mgmt2d.data.contract",
    "build_segmenter": "mgmt2d.segmentation.model",
    "load_segmenter": "mgmt2d.segmentation.model",
    "build_classifier": "mgmt2d.classification.model",
    "load_trained_classifier": "mgmt2d.classification.model",
    "Predictor": "mgmt2d.inference.pipeline",
    "PredictOptions": "mgmt2d.inference.pipeline",
    "PatientResult": "mgmt2d.inference.pipeline",
    "predict": "mgmt2d.inference.pipeline",
})
