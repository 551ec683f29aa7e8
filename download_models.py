#!/usr/bin/env python
"""Fetch ImageNet backbone weights and published checkpoints, once, on a connected machine.

    python download_models.py --settings SETTINGS.json [--manifest models/manifest.json]
        [--pretrained-only | --trained-only] [--offline-check]

Exit status 0 when every file is present and verified, 1 otherwise. See README.
"""

import functools
import sys
from pathlib import Path

from mgmt2d.cli import script_main
from mgmt2d.tools.download import add_arguments, main

MANIFEST = Path(__file__).resolve().parent / "models" / "manifest.json"

if __name__ == "__main__":
    sys.exit(script_main(main, functools.partial(add_arguments, default_manifest=MANIFEST), __doc__))
