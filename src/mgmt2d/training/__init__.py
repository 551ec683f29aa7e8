"""The engine both stages share: ``trainer`` (the loop, losses, metrics, configuration),
``checkpoint`` (the one reader and writer of weight files), ``seeding``, ``plots`` and the seeded
training augmentation ``augment``."""

from mgmt2d._lazy import lazy_exports

__all__ = ["TrainConfig", "Trainer"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "TrainConfig": "mgmt2d.training.trainer",
    "Trainer": "mgmt2d.training.trainer",
})
