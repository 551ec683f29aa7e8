"""User tools beside the stage scripts: ``info`` (``python -m mgmt2d info``) and ``download``
(download_models.py)."""
