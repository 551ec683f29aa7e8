#!/usr/bin/env python
"""Stage 1 training: UNet++ / DenseNet121 WT/ET segmenter on prepared BraTS slices. See README."""

import sys

from mgmt2d.cli import script_main
from mgmt2d.segmentation.train import add_arguments, main

if __name__ == "__main__":
    sys.exit(script_main(main, add_arguments, __doc__))
