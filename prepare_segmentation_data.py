#!/usr/bin/env python
"""Stage 1 data: slice BraTS Task 1 volumes into the SEGMENT_DATA_DIR store (re-running resumes). See README."""

import sys

from mgmt2d.cli import script_main
from mgmt2d.segmentation.prepare import add_arguments, main

if __name__ == "__main__":
    sys.exit(script_main(main, add_arguments, __doc__))
