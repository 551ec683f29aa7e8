"""Where a set of weights keeps its segmenter and classifiers: ours or the published layout, found on disk.

Ours (``train_segmentation.py`` / ``train_classification.py``, or ``--weights-dir DIR``)::

    segmentation/fold<k>/best.pt
    classification/<type>/fold<k>/best.pt          (``pooled``: one model over every type)

The published solution's (``download_models.py --published t4e``, see ``mgmt2d.tools.published``)::

    models/densenet121_2d_segment/Fold<k>_densenet121_2d_segment.pth
    models/eca_nfnet_l0_2d_classification/<T>/<T>_Fold<k>_eca_nfnet_l0_2d_classification.pth
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mgmt2d.data.task2 import POOLED

SEGMENTER_DIR = "models/densenet121_2d_segment"
CLASSIFIER_DIR = "models/eca_nfnet_l0_2d_classification"


@dataclass(frozen=True)
class WeightsLayout:
    """Where one set of weights keeps the segmenter and the classifiers."""

    kind: str                  # "mgmt2d" or "t4e"
    segmentation_dir: Path
    classification_dir: Path

    def segmenter(self, fold: int = 0) -> Path:
        if self.kind == "t4e":
            return self.segmentation_dir / f"Fold{fold}_densenet121_2d_segment.pth"
        return self.segmentation_dir / f"fold{fold}" / "best.pt"

    def classifier(self, mri_type: str, fold: int) -> Path:
        if self.kind == "t4e":
            return self.classification_dir / mri_type / f"{mri_type}_Fold{fold}_eca_nfnet_l0_2d_classification.pth"
        return self.classification_dir / mri_type / f"fold{fold}" / "best.pt"

    def classifier_checkpoint(self, mri_type: str, fold: int) -> Path | None:
        """The type's own model, else (our layout) a pooled model trained on every type; None when neither exists."""
        candidates = [self.classifier(mri_type, fold)]
        if self.kind == "mgmt2d":
            candidates.append(self.classifier(POOLED, fold))
        return next((p for p in candidates if p.is_file()), None)


def model_dirs_layout(segmentation_dir: Path, classification_dir: Path) -> WeightsLayout:
    """SETTINGS.json's two model folders: ours, or the published folders themselves (file names tell)."""
    kind = "t4e" if any(Path(segmentation_dir).glob("Fold*_densenet121_2d_segment.pth")) else "mgmt2d"
    return WeightsLayout(kind, Path(segmentation_dir), Path(classification_dir))


def detect_layout(folder: Path) -> WeightsLayout:
    """Our layout (segmentation/, classification/) or the published one, at ``folder``.

    The published layout is recognised at its root (holding ``models/``) and at its
    ``models/`` folder itself, so a user can point at either.
    """
    folder = Path(folder)
    if (folder / "segmentation").is_dir() or (folder / "classification").is_dir():
        return WeightsLayout("mgmt2d", folder / "segmentation", folder / "classification")
    for root in (folder, folder.parent if folder.name == "models" else None):
        if root is not None and ((root / SEGMENTER_DIR).is_dir() or (root / CLASSIFIER_DIR).is_dir()):
            return WeightsLayout("t4e", root / SEGMENTER_DIR, root / CLASSIFIER_DIR)
    raise FileNotFoundError(
        f"{folder} holds neither segmentation/ + classification/ (mgmt2d) nor "
        f"{SEGMENTER_DIR}/ + {CLASSIFIER_DIR}/ (the published layout); "
        "fetch the published weights with `python download_models.py --published t4e`"
    )
