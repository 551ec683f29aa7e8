"""``python -m mgmt2d <command>``: the library's own tools (synthetic data, inspection, evaluation)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from mgmt2d.cli import user_message

# command -> (module, help); modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("mgmt2d.dev.synth", "write a synthetic Task 1 + Task 2 dataset"),
    "info": ("mgmt2d.tools.info", "print what the readers see in a series, NIfTI file or patient folder"),
    "demo": ("mgmt2d.dev.demo", "run the whole pipeline on synthetic data with small settings"),
    "evaluate-segmentation": ("mgmt2d.segmentation.evaluate", "segment whole volumes and report volumetric Dice"),
    "report": ("mgmt2d.inference.report", "one patient through inference as a page: overlays, Grad-CAM, NIfTI"),
    "skull-strip": ("mgmt2d.tools.skull_strip", "a brain mask of a T1 series or NIfTI with deepbet (optional extra)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mgmt2d", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    argv = sys.argv[1:] if argv is None else argv
    for name, (module_name, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text)
        # Only the chosen command's module is imported (keeps `info` free of torch).
        if argv and argv[0] == name:
            modules[name] = importlib.import_module(module_name)
            modules[name].add_arguments(sp)
    args = parser.parse_args(argv)
    # `info` reports skipped files in its JSON; its stderr stays for the one-line error.
    level = logging.WARNING if args.command == "info" else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(modules[args.command].main(args) or 0)
    except Exception as err:   # a user's mistake: one line and exit 2, as the stage scripts (cli.run)
        message = user_message(err)
        if message is None or os.environ.get("MGMT2D_DEBUG", "") not in ("", "0"):
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
