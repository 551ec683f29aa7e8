"""The engine both stages share: ``trainer`` (phases, checkpoints, early stopping, resume), ``loop``
(the batch loop of training and evaluation), ``config`` (the run configuration and its flags),
``metrics`` (losses, metrics, patient AUC), ``checkpoint`` (the one reader and writer of weight
files), ``seeding``, ``distributed`` (torchrun), ``preemption``, ``plots``, ``tensorboard`` and the
seeded training augmentation ``augment``."""

from mgmt2d._lazy import lazy_exports

__all__ = ["TrainConfig", "Trainer"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "TrainConfig": "mgmt2d.training.config",
    "Trainer": "mgmt2d.training.trainer",
})
