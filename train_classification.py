#!/usr/bin/env python
"""Stage 2 training: CNN + BiLSTM on 35-slice chunks, one model per MRI type. See README."""

import sys

from mgmt2d.classification.train import add_arguments, main
from mgmt2d.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main(main, add_arguments, __doc__))
