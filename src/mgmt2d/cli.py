"""The one user-error boundary of every command: parse, log, and turn a user's mistake into one line, exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from mgmt2d.data.io import disk_full_message, is_disk_full
from mgmt2d.data.settings import SettingsError
from mgmt2d.training.preemption import Preempted


def user_message(err: BaseException) -> str | None:
    """The one line a user can act on for an error of theirs (or their data); None for a bug.

    Bad settings, data and checkpoints raise ValueError subclasses with messages that name
    the file; OS errors (a folder without write permission, a full disk) get their file named
    here. Out of space or quota (ENOSPC / EDQUOT) anywhere names the folder, what was needed
    when known, and that a re-run continues (:func:`mgmt2d.data.io.disk_full_message`).
    Anything else is a bug and keeps its traceback.
    """
    if is_disk_full(err):
        return " ".join(disk_full_message(err).split())
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
    main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: list[str] | None = None,
    log_level: int = logging.INFO,
) -> int:
    """Parse, set up logging, and turn user errors into one line on stderr with exit code 2.

    ``--debug`` (or ``MGMT2D_DEBUG=1``) shows the traceback instead; a bug (an error that is not
    the user's, see :func:`user_message`) always keeps its traceback.
    """
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or set MGMT2D_DEBUG=1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
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
