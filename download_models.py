#!/usr/bin/env python
"""Fetch ImageNet backbone weights and published checkpoints, once, on a connected machine.

    python download_models.py --settings SETTINGS.json [--manifest models/manifest.json]
        [--pretrained-only | --trained-only] [--offline-check]

Exit status 0 when every file is present and verified, 1 otherwise. The work is done by
mgmt2d.tools.download; this file only points it at the manifest beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run() -> int:
    try:
        from mgmt2d.tools.download import main
    except ModuleNotFoundError as err:  # a source checkout without `pip install -e .`
        if err.name != "mgmt2d":
            raise
        sys.path.insert(0, str(HERE / "src"))
        from mgmt2d.tools.download import main
    return main(default_manifest=HERE / "models" / "manifest.json")


if __name__ == "__main__":
    sys.exit(_run())
