#!/usr/bin/env python
"""Stage 1 data: slice BraTS Task 1 volumes into the SEGMENT_DATA_DIR store.

Re-running resumes (finished cases are skipped); --overwrite starts again.
See mgmt2d.segmentation.prepare for the store layout.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mgmt2d.segmentation import prepare as segdata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    segdata.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return segdata.main(args)


if __name__ == "__main__":
    sys.exit(main())
