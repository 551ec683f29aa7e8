"""Test-set inference. ``pipeline`` holds the :class:`~mgmt2d.inference.pipeline.Predictor` (the
models and their input contract) and ``predict`` (DICOM patients -> probabilities); the module
``predict`` is inference_on_test.py's command line; ``report`` writes the per-patient page,
``gradcam`` explains a chunk, ``partial`` assembles sharded submissions."""
