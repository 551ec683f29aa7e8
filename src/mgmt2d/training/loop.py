"""One pass over batches, the batch loop both the training and the evaluation passes run
(:class:`Pass`), and the epoch result it adds up to (gathered over torchrun processes)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mgmt2d.device import autocast
from mgmt2d.training import distributed
from mgmt2d.training.metrics import Batch, Metrics, batch_field, batch_to_device

LossFn = Callable[[Tensor, Batch], Tensor]


@dataclass
class Step:
    """What a training pass does around each batch (evaluation has none).

    ``context(i)`` wraps micro-batch ``i``'s forward and ``backward(i, loss)`` (DDP's no_sync for
    an accumulated micro-batch); ``after(i)`` runs once the batch is recorded (the optimiser
    step, a stop signal).
    """

    backward: Callable[[int, Tensor], None]
    context: Callable[[int], AbstractContextManager]
    after: Callable[[int], None]


@dataclass
class Pass:
    """One pass over batches: the one batch loop of training and evaluation.

    Per batch: to the device, forward (and the loss) under the AMP policy (``amp`` takes
    effect on CUDA only), ``step`` when training, then the loss term (loss x batch size),
    the metrics and the progress bar.
    """

    model: nn.Module
    loss_fn: LossFn
    metrics: Metrics
    device: torch.device
    input_key: str = "image"
    amp: bool = False

    def run(self, batches: Iterable[Batch], terms: list[float], counts: list[int], bar: Any,
            step: Step | None = None) -> None:
        """Loop over ``batches`` (wrapped by the progress ``bar``), appending to ``terms`` / ``counts``."""
        every = max(1, int(bar.total or 0) // 10) if bar.total else 10
        for i, batch in enumerate(batches):
            batch = batch_to_device(batch, self.device)
            inputs = batch_field(batch, self.input_key, 0)
            with step.context(i) if step is not None else nullcontext():
                with autocast(self.device, self.amp):
                    outputs = self.model(inputs)
                    loss = self.loss_fn(outputs, batch)
                if step is not None:
                    step.backward(i, loss)
            n = int(inputs.shape[0])
            terms.append(float(loss.detach()) * n)
            counts.append(n)
            self.metrics.update(outputs.detach(), batch)
            bar.update(1)
            if not bar.disable and counts:
                post = {"loss": f"{sum(terms) / sum(counts):.4f}"}
                if (i + 1) % every == 0:
                    post.update({k: f"{v:.4f}" for k, v in self.metrics.compute().items()})
                bar.set_postfix(post, refresh=False)
            if step is not None:
                step.after(i)


def progress_bar(total: int, desc: str, progress: bool | None) -> Any:
    """A tqdm bar on stderr (None: shown on a terminal only)."""
    from tqdm.auto import tqdm

    disable = None if progress is None else not progress
    return tqdm(desc=desc, total=total or None, disable=disable, leave=False, dynamic_ncols=True, file=sys.stderr)


def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    loss_fn: LossFn,
    metrics: Metrics,
    device: torch.device | str = "cpu",
    input_key: str = "image",
    amp: bool = False,
    progress: bool | None = False,
    gather: bool = False,
) -> dict[str, float]:
    """Loss and metrics of ``model`` on ``loader`` (eval mode, no gradient): ``{"loss": mean loss
    weighted by batch size, **metrics.compute()}``. ``gather``: the loader is this rank's share
    (torchrun); the result covers every rank's batches (metrics must have ``state``/``load_state``)."""
    device = torch.device(device)
    model.to(device).eval()
    metrics.reset()
    terms: list[float] = []
    counts: list[int] = []
    bar = progress_bar(len(loader) if hasattr(loader, "__len__") else 0, "eval", progress)
    try:
        with torch.no_grad():
            Pass(model, loss_fn, metrics, device, input_key, amp).run(loader, terms, counts, bar)
    finally:
        bar.close()
    return epoch_result(terms, counts, metrics, gather, "eval")


def epoch_result(
    terms: Sequence[float], counts: Sequence[int], metrics: Metrics, gather: bool = False, desc: str = ""
) -> dict[str, float]:
    """``{"loss", **metrics}`` of a pass from its per-batch loss terms (loss x batch size) and sizes.

    ``gather``: first concatenate every rank's terms and metric state (rank order), so every
    rank returns the result over all batches, summed in single-process order.
    """
    if gather:
        terms, counts = distributed.concat_over_ranks(terms), distributed.concat_over_ranks(counts)
        metrics.load_state(gather_metric_state(metrics))
    count = sum(counts)
    if count == 0:
        raise ValueError(f"{desc or 'a pass'}: the loader yielded no batch")
    return {"loss": sum(terms) / count, **{k: float(v) for k, v in metrics.compute().items()}}


def gather_metric_state(metrics: Metrics) -> dict[str, list[Any]]:
    """The metric state of every rank's batches (see ``GatherableMetrics`` in training.metrics)."""
    if not (hasattr(metrics, "state") and hasattr(metrics, "load_state")):
        raise TypeError(f"{type(metrics).__name__} has no state()/load_state(): it cannot be merged over processes")
    return {k: distributed.concat_over_ranks(v) for k, v in sorted(metrics.state().items())}
