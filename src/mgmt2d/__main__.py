"""``python -m mgmt2d <command>``: the library's own tools (synthetic data, inspection, evaluation)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from mgmt2d.cli import run

# command -> (module, help); modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("mgmt2d.dev.synth", "write a synthetic Task 1 + Task 2 dataset"),
    "synth-export": ("mgmt2d.dev.synth_export", "write a synthetic hospital DICOM export (PACS dump) for organize"),
    "info": ("mgmt2d.tools.info", "print what the readers see in a series, NIfTI file or patient folder"),
    "demo": ("mgmt2d.dev.demo", "run the whole pipeline on synthetic data with small settings"),
    "evaluate-segmentation": ("mgmt2d.segmentation.evaluate", "segment whole volumes and report volumetric Dice"),
    "evaluate": ("mgmt2d.tools.evaluate", "patient AUC with confidence intervals, thresholds, calibration, compare"),
    "report": ("mgmt2d.inference.report", "one patient through inference as a page: overlays, Grad-CAM, NIfTI"),
    "organize": ("mgmt2d.tools.organize", "a hospital's DICOM export -> the Task 2 layout, series typed in series.csv"),
    "skull-strip": ("mgmt2d.tools.skull_strip", "a brain mask of a T1 series or NIfTI with deepbet (optional extra)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mgmt2d", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text)
        # Only the chosen command's module is imported (keeps `info` free of torch).
        if argv and argv[0] == name:
            modules[name] = importlib.import_module(module_name)
            modules[name].add_arguments(sp)
            sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show the traceback of an error (or set MGMT2D_DEBUG=1)")

    def command(args: argparse.Namespace) -> int:
        return modules[args.command].main(args)

    # `info` reports skipped files in its JSON; its stderr stays for the one-line error.
    level = logging.WARNING if argv[:1] == ["info"] else logging.INFO
    return run(command, parser, argv, log_level=level)


if __name__ == "__main__":
    sys.exit(main())
