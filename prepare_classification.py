#!/usr/bin/env python
"""Stage 2 data: Task 2 DICOM series -> tumour slices [slice, WT, ET] segmented by stage 1. See README."""

import sys

from mgmt2d.classification.prepare import add_arguments, main
from mgmt2d.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main(main, add_arguments, __doc__))
