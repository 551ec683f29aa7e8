"""Stage 1: WT/ET segmentation of 2D slices. ``prepare`` (prepare_segmentation_data.py) writes the
slice store, ``dataset`` reads it, ``model`` builds and loads the UNet++, ``train``
(train_segmentation.py) fits it, ``evaluate`` scores whole volumes."""

from mgmt2d._lazy import lazy_exports

__all__ = ["build_segmenter", "load_segmenter"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "build_segmenter": "mgmt2d.segmentation.model",
    "load_segmenter": "mgmt2d.segmentation.model",
})
