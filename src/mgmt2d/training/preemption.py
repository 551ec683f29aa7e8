"""Stopping cleanly on SIGTERM / SIGINT (preemption, scancel, Ctrl-C), and the test aid that
injects such faults at a chosen point.

:class:`StopSignals` records the signal instead of dying; the trainer checks it after every
optimiser step, writes ``last.pt`` with its position inside the epoch and raises
:class:`Preempted`, which :func:`mgmt2d.cli.run` turns into one line and the conventional exit
status 128 + signal number (143 for SIGTERM, 130 for SIGINT). A second Ctrl-C interrupts at once.

The tests stop runs at exact points with the ``MGMT2D_FAULT`` test aid (:mod:`mgmt2d.faults`).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Training stopped by a signal after writing a checkpoint; exit with 128 + signum."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Context manager: while inside, SIGTERM/SIGINT set :attr:`signum` instead of killing.

    Installed only in the main thread (Python delivers signals there); elsewhere it is inert.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        if self.signum is None:
            log.warning("%s received: finishing the current step, then writing last.pt", signal.Signals(signum).name)
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None
