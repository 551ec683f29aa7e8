"""Training curves: loss and metrics per epoch, train vs validation, into a PNG."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mgmt2d.data.io import atomic_path


def plot_history(
    history: Sequence[Mapping[str, Any]],
    path: str | Path,
    warmup_epochs: int = 0,
    best_epoch: int | None = None,
    monitor: str | None = None,
) -> None:
    """Loss and metric curves (train vs val) into a PNG, atomically; Agg canvas, no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    names = ["loss"] + sorted(
        {k[4:] for r in history for k in r if k.startswith("val_") and k != "val_loss"}
    )
    fig = Figure(figsize=(4.5 * len(names), 3.6))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.9, wspace=0.25)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        for split in ("train", "val"):
            key = f"{split}_{name}"
            if any(key in r for r in history):
                ax.plot(epochs, [r.get(key, math.nan) for r in history], marker=".", label=split)
        if 0 < warmup_epochs < (epochs[-1] if epochs else 0):
            ax.axvline(warmup_epochs + 0.5, color="grey", ls=":", label="unfreeze")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="tab:red", ls="--", lw=0.8, label=f"best ({monitor})")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
