#!/usr/bin/env python
"""Test-set inference: DICOM -> stage-1 segmentation -> stage-2 classifiers -> submission CSV. See README."""

import sys

from mgmt2d.cli import script_main
from mgmt2d.inference.predict import add_arguments, main

if __name__ == "__main__":
    sys.exit(script_main(main, add_arguments, __doc__))
