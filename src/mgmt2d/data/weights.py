"""Where a set of weights keeps its segmenter and classifiers: ours or the published layout, found on disk.

Ours (``train_segmentation.py`` / ``train_classification.py``, or ``--weights-dir DIR``)::

    segmentation/fold<k>/best.pt
    classification/<type>/fold<k>/best.pt          (``pooled``: one model over every type)

The published solution's (``download_models.py --published t4e``, see ``mgmt2d.tools.published``)::

    models/densenet121_2d_segment/Fold<k>_densenet121_2d_segment.pth
    models/eca_nfnet_l0_2d_classification/<T>/<T>_Fold<k>_eca_nfnet_l0_2d_classification.pth
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mgmt2d.data.task2 import POOLED

SEGMENTER_DIR = "models/densenet121_2d_segment"
CLASSIFIER_DIR = "models/eca_nfnet_l0_2d_classification"


class WeightsError(ValueError):
    """Weights that do not match what was asked for (a fold without its checkpoint); one line."""


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

    def folds_present(self, mri_type: str) -> list[int]:
        """The folds of ``mri_type`` (or ``pooled``) that have a classifier checkpoint here."""
        folder = self.classification_dir / mri_type
        if self.kind == "t4e":
            found = (re.search(r"_Fold(\d+)_", p.name) for p in folder.glob(f"{mri_type}_Fold*_*.pth"))
        else:
            found = (re.fullmatch(r"fold(\d+)", p.parent.name) for p in folder.glob("fold*/best.pt"))
        return sorted({int(m.group(1)) for m in found if m})

    def fold_checkpoints(self, mri_type: str, folds: Sequence[int]) -> list[Path]:
        """The checkpoints of ``folds`` for ``mri_type``, in order: all the type's own, or (our layout, when the
        type has none of them) all pooled; [] when neither has any (the type is left out, with a warning).

        A fold missing from the models used is refused, naming its file: averaging fewer models than
        asked for, or mixing the type's own models with pooled ones, would change every probability unseen.
        """
        for source in [mri_type] + ([POOLED] if self.kind == "mgmt2d" else []):
            paths = [self.classifier(source, f) for f in folds]
            missing = [p for p in paths if not p.is_file()]
            if len(missing) == len(paths):
                continue
            if missing:
                asked = " ".join(str(f) for f in folds)
                have = " ".join(str(f) for f in self.folds_present(source))
                used = f"{mri_type} uses the {source} models" if source != mri_type else f"the {mri_type} models"
                raise WeightsError(
                    f"--folds {asked}: {', '.join(str(p) for p in missing)} not found ({used}, folds present: "
                    f"{have}); train the missing fold(s) or pass --folds {have}"
                )
            return paths
        return []


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
