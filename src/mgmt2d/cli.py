"""Small pieces every stage script shares: resolving --pretrained, one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from mgmt2d.data.settings import Settings, SettingsError


def add_pretrained_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--pretrained", default="imagenet",
        help=f"imagenet (the {what} ImageNet weights in PRETRAINED_DIR), none (random init), or a weights file",
    )


def resolve_pretrained(value: str, settings: Settings, name: str) -> Path | None:
    """--pretrained imagenet|none|PATH -> a local weights file or None; never a silent random start."""
    if value == "none":
        return None
    if value == "imagenet":
        from mgmt2d.tools.download import MissingWeightsError, require_pretrained

        try:
            return require_pretrained(settings["PRETRAINED_DIR"], name)
        except MissingWeightsError as err:
            raise SettingsError(str(err)) from None
    path = Path(value).expanduser()
    if not path.is_file():
        raise SettingsError(f"--pretrained {value}: no such file (use imagenet, none or a weights file)")
    return path


def run(
    main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> int:
    """Parse, set up logging, and turn user errors into one line on stderr with exit code 2."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(main(args) or 0)
    except (SettingsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def script_main(
    module_main: Callable[[argparse.Namespace], int],
    add_arguments: Callable[[argparse.ArgumentParser], None],
    description: str | None,
) -> int:
    """The body of every top-level stage script."""
    parser = argparse.ArgumentParser(description=description)
    add_arguments(parser)
    return run(module_main, parser)
