"""The one fault-injection test aid: a process sends itself a signal at a named point.

``MGMT2D_FAULT=POINT[:N[:SIGNAL[:RANK]]]`` makes the process (of torchrun rank ``RANK``,
default 0) send itself ``SIGNAL`` (KILL by default; TERM, INT...) the ``N``-th time (default 1)
it reaches ``POINT``. The tests use it to stop runs at exact places and check that a re-run
or ``--resume`` gives what an uninterrupted run gives; unset, a point costs one environment
lookup. Points:

* preparation and inference: ``atomic-write`` (inside every atomic write, temp written, not
  renamed), ``case-done`` (segmentation store, after a case's marker), ``patient-done``
  (stage-2 preparation, after a patient's files; inference, after a patient's result is kept
  for ``--resume``), ``shard-done`` (after a shard's done
  record, before it assembles), ``merge`` (assembling: the index written, the final file not);
* training: ``step`` (after an optimiser step), ``checkpoint`` (``last.pt``'s temp file
  written, not renamed), ``epoch-end`` (``last.pt`` in place, history not yet written).
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

FAULT_ENV = "MGMT2D_FAULT"


class FaultHook:
    """One reading of ``MGMT2D_FAULT`` with its own count (a trainer keeps one per run)."""

    def __init__(self, spec: str | None, rank: int = 0) -> None:
        self.point: str | None = None
        self.count = 0
        self.signum = int(signal.SIGKILL)
        self._seen = 0
        if not spec:
            return
        parts = spec.split(":")
        if not 1 <= len(parts) <= 4 or not parts[0] or (len(parts) > 1 and not parts[1].isdigit()):
            raise ValueError(f"{FAULT_ENV}={spec!r}: expected POINT[:N[:SIGNAL[:RANK]]], e.g. step:3:TERM")
        if len(parts) > 3 and int(parts[3]) != rank:
            return
        self.point, self.count = parts[0], int(parts[1]) if len(parts) > 1 else 1
        if len(parts) > 2:
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


_process_hook: tuple[str, FaultHook] | None = None


def fault_point(name: str) -> None:
    """Count ``name`` for this process (rank 0) and signal it when ``MGMT2D_FAULT`` says so."""
    global _process_hook
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    if _process_hook is None or _process_hook[0] != spec:
        _process_hook = (spec, FaultHook(spec))
    _process_hook[1].reached(name)
