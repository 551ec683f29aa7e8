"""User tools beside the stage scripts: ``info`` (``python -m mgmt2d info``), ``download``
(download_models.py) and ``published`` (the published solution's released weights)."""
