"""Stopping cleanly on SIGTERM / SIGINT (preemption, scancel, Ctrl-C), and the test aid that
injects such faults at a chosen point.

:class:`StopSignals` records the signal instead of dying; the trainer checks it after every
optimiser step, writes ``last.pt`` with its position inside the epoch and raises
:class:`Preempted`, which :func:`mgmt2d.cli.run` turns into one line and the conventional exit
status 128 + signal number (143 for SIGTERM, 130 for SIGINT). A second Ctrl-C interrupts at once.

``MGMT2D_FAULT=POINT:N:SIGNAL[:RANK]`` (a test aid, used by tests/test_distributed.py and
tests/test_preemption.py) makes the process send itself ``SIGNAL`` (TERM, INT or KILL) the
``N``-th time it reaches ``POINT`` (default: on rank 0 only). The trainer's points:

* ``step``: after an optimiser step (counted from the start of this process's run);
* ``checkpoint``: ``last.pt``'s temporary file fully written, not yet renamed into place;
* ``epoch-end``: ``last.pt`` of an epoch in place, history not yet written.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType, TracebackType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FAULT_ENV = "MGMT2D_FAULT"


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


class FaultHook:
    """The ``MGMT2D_FAULT`` test aid (see the module doc); inert when the variable is unset."""

    def __init__(self, spec: str | None, rank: int = 0) -> None:
        self.point: str | None = None
        self.count = 0
        self._seen = 0
        if not spec:
            return
        parts = spec.split(":")
        if len(parts) not in (3, 4) or not parts[1].isdigit():
            raise ValueError(f"{FAULT_ENV}={spec!r}: expected POINT:N:SIGNAL[:RANK], e.g. step:3:TERM")
        target = int(parts[3]) if len(parts) == 4 else 0
        if target != rank:
            return
        self.point, self.count = parts[0], int(parts[1])
        self.signum = int(getattr(signal, f"SIG{parts[2].upper()}"))

    @classmethod
    def from_env(cls, rank: int = 0) -> FaultHook:
        return cls(os.environ.get(FAULT_ENV), rank)

    def reached(self, point: str) -> None:
        """Count ``point``; send the configured signal to this process at the N-th time."""
        if point != self.point:
            return
        self._seen += 1
        if self._seen == self.count:
            log.warning("%s: sending %s at %s #%d", FAULT_ENV, signal.Signals(self.signum).name, point, self.count)
            os.kill(os.getpid(), self.signum)
