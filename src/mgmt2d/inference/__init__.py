"""Test-set inference. ``predict`` (inference_on_test.py; its ``predict`` function is also
``mgmt2d.predict``) runs both stages on DICOM and writes the submission; ``published`` fetches the
published weights and recognises their layout."""
