"""Small pieces every stage script shares: resolving --pretrained, one-line errors."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from mgmt2d.data.settings import Settings, SettingsError
from mgmt2d.training.preemption import Preempted


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


def user_message(err: BaseException) -> str | None:
    """The one line a user can act on for an error of theirs (or their data); None for a bug.

    Bad settings, data and checkpoints raise ValueError subclasses with messages that name
    the file; OS errors (a folder without write permission, a full disk) get their file named
    here. Anything else is a bug and keeps its traceback.
    """
    if isinstance(err, (SettingsError, ValueError, FileNotFoundError, FileExistsError)):
        return " ".join(str(err).split())
    if isinstance(err, PermissionError):
        return (
            f"no permission to write or read {err.filename or 'a file'}; choose another folder or fix its permissions"
        )
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename}: {err.strerror or err}"
    return None


def run(
    main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> int:
    """Parse, set up logging, and turn user errors into one line on stderr with exit code 2."""
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or set MGMT2D_DEBUG=1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(main(args) or 0)
    except Preempted as err:  # SIGTERM/SIGINT in training: last.pt written; 143 / 130 as a killed program
        print(str(err), file=sys.stderr)
        return err.exit_status
    except Exception as err:
        message = user_message(err)
        if message is None or args.debug or os.environ.get("MGMT2D_DEBUG", "") not in ("", "0"):
            raise
        print(f"error: {message}", file=sys.stderr)
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
