"""Run a training script as ``python SCRIPT ARGS...`` would, and record its optimiser step times and peak GPU memory.

    python benchmarks/timed_training.py OUT.json train_segmentation.py --device cuda --batch-size 128 ...

The script file itself runs in this process (``runpy``, as ``__main__``, with its own argument list), so
what is measured is the real script: its loaders, AMP, checkpoints, validation. The one addition is a
wrapper around the trainer's optimiser step (``mgmt2d.training.trainer.Trainer._step``, called once per
``--accumulate`` micro-batches, also when AMP skips the update) that records after each step the time
(after ``torch.cuda.synchronize`` on CUDA, so the step's kernels are done), the epoch, the phase and
``torch.cuda.max_memory_allocated()`` so far. At the end ``OUT.json`` holds:

* ``status``: the script's exit status (1 when it raised, e.g. CUDA out of memory);
* ``oom``: whether it ran out of GPU memory (``torch.OutOfMemoryError``), ``error``: the exception's line;
* ``steps``: ``[{"epoch", "phase", "t", "peak_allocated"}]`` (``t``: seconds since this process started
  the script; ``peak_allocated``: bytes, None off CUDA);
* ``peak_allocated`` / ``peak_reserved``: the whole run's peak (``torch.cuda.max_memory_allocated`` /
  ``max_memory_reserved`` of the trainer's device), None when CUDA was not used.

Used by ``benchmarks/gpu_check.py`` (stages 1 and 2); handy alone to see what a batch size needs.
"""

from __future__ import annotations

import json
import runpy
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: timed_training.py OUT.json SCRIPT [ARGS...]", file=sys.stderr)
        return 2
    out, script, args = Path(argv[0]), Path(argv[1]), argv[2:]
    import torch

    from mgmt2d.training.trainer import Trainer

    if not callable(getattr(Trainer, "_step", None)):
        raise SystemExit("error: mgmt2d.training.trainer.Trainer has no _step (the optimiser step) to time; "
                         "update benchmarks/timed_training.py to the trainer")
    steps: list[dict[str, Any]] = []
    devices: set[Any] = set()
    start = time.perf_counter()
    original = Trainer._step

    def timed_step(self: Trainer) -> None:
        original(self)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            devices.add(self.device)
        steps.append({"epoch": int(self.epoch), "phase": str(self.phase), "t": time.perf_counter() - start,
                      "peak_allocated": int(torch.cuda.max_memory_allocated(self.device)) if cuda else None})

    Trainer._step = timed_step  # type: ignore[method-assign]
    result: dict[str, Any] = {"script": str(script), "args": args, "status": 0, "oom": False, "error": None}
    sys.argv = [str(script), *args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        code = done.code
        result["status"] = code if isinstance(code, int) else (0 if code is None else 1)
    except Exception as err:  # a bug or CUDA out of memory: the traceback goes to the log, the line to OUT.json
        traceback.print_exc()
        result.update(status=1, oom=isinstance(err, torch.OutOfMemoryError),
                      error=f"{type(err).__name__}: {' '.join(str(err).split())[:500]}")
    finally:
        Trainer._step = original  # type: ignore[method-assign]
    result["seconds"] = time.perf_counter() - start
    if torch.cuda.is_initialized():  # also when the run failed before its first step (out of memory)
        devices.add(torch.device("cuda", torch.cuda.current_device()))
    result["steps"] = steps
    result["peak_allocated"] = max((torch.cuda.max_memory_allocated(d) for d in devices), default=None)
    result["peak_reserved"] = max((torch.cuda.max_memory_reserved(d) for d in devices), default=None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    return int(result["status"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
