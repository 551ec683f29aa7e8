"""Worker of tests/test_distributed.py: the first optimiser step's gradient of stage 2's
BatchNorm-free classifier (timm ``test_nfnet`` + BiLSTM) through the training engine.

Usage: ``[torchrun --nproc_per_node N] ddp_first_step.py OUT.pt GLOBAL_BATCH ACCUMULATE``; rank 0
saves the gradients the optimiser is about to apply (after DDP's all-reduce) and stops.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import Dataset

from mgmt2d.classification.model import build_classifier
from mgmt2d.training import distributed
from mgmt2d.training.config import TrainConfig
from mgmt2d.training.metrics import ClassificationLoss, ClassificationMetrics
from mgmt2d.training.seeding import seed_everything
from mgmt2d.training.trainer import Trainer


class Chunks(Dataset):
    """8 fixed random chunks of 4 slices, 16 px; labels 0/1; one patient per chunk."""

    def __init__(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(8, 4, 3, 16, 16, generator=g)
        self.y = torch.tensor([0.0, 1.0] * 4)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        return self.x[i], self.y[i], f"p{i}"


class FirstStep(Exception):
    pass


def main(out: Path, batch_size: int, accumulate: int) -> None:
    ctx, device = distributed.init_distributed("cpu")
    seed_everything(0)
    model = build_classifier("test_nfnet", lstm_hidden=4, seq_len=4)
    config = TrainConfig(epochs=1, lr=1e-3, amp=False, device="cpu", out_dir=str(out.parent / "run"), seed=3,
                         accumulate=accumulate, overwrite=True, progress=False)
    train = distributed.make_train_loader(Chunks(0), batch_size, config.seed, device, 0, accumulate, ctx)
    val = distributed.make_eval_loader(Chunks(1), 4, device, 0, ctx)
    trainer = Trainer(model, train, val, ClassificationLoss(), ClassificationMetrics(), config)

    def save_and_stop(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if ctx.is_main:
            torch.save({k: p.grad.clone() for k, p in trainer.model.named_parameters() if p.grad is not None}, out)
        raise FirstStep

    register_optimizer_step_pre_hook(save_and_stop)
    try:
        trainer.fit()
    except FirstStep:
        pass
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
