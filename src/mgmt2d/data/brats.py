"""BraTS 2021 Task 1 case reader: modality volumes and two-channel WT/ET masks.

Arrays keep the NIfTI axis order (x, y, z): axis 0 sagittal, 1 coronal, 2 axial,
which is how the reference takes its three planes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
WT_LABELS: tuple[int, ...] = (1, 2, 4)
ET_LABELS: tuple[int, ...] = (4,)
CASE_PATTERN = re.compile(r"^BraTS2021_(\d+)$")


class BratsCaseError(ValueError):
    """A case folder that cannot be used as asked; the message names the file."""


class UnknownLabelsError(BratsCaseError):
    """A segmentation with labels outside {0, 1, 2, 4}: a convention to convert knowingly, not to guess."""


KNOWN_LABELS: frozenset[int] = frozenset({0, 1, 2, 4})


def parse_label_map(items: list[str] | tuple[str, ...] | None) -> tuple[tuple[int, int], ...]:
    """``--label-map 3:4 ...`` -> ((3, 4), ...); each target must be a BraTS 2021 label."""
    out: list[tuple[int, int]] = []
    for item in items or ():
        try:
            src, dst = (int(v) for v in str(item).split(":"))
        except ValueError:
            raise BratsCaseError(f"--label-map {item!r}: expected FROM:TO with whole numbers, e.g. 3:4") from None
        if dst not in KNOWN_LABELS:
            raise BratsCaseError(f"--label-map {item!r}: the target must be one of 0 1 2 4")
        out.append((src, dst))
    return tuple(out)


def apply_label_map(seg: np.ndarray, label_map: tuple[tuple[int, int], ...], path: Path) -> np.ndarray:
    """Relabel ``seg`` by ``label_map``, then refuse any label BraTS 2021 does not define.

    Label 3 (enhancing tumour before BraTS 2021, and in converted data) would otherwise count
    as background without a word; ``--label-map 3:4`` converts it knowingly.
    """
    if label_map:
        mapped = seg.copy()
        for src, dst in label_map:
            mapped[seg == src] = dst
        seg = mapped
    found = set(np.unique(seg).tolist())
    unknown = sorted(found - KNOWN_LABELS)
    if unknown:
        raise UnknownLabelsError(
            f"{path} has labels {sorted(found)}, of which {unknown} are not BraTS 2021 labels (0, 1, 2, 4); "
            f"convert them with --label-map (e.g. --label-map {unknown[0]}:4 for the enhancing tumour of "
            "releases before 2021)"
        )
    return seg


@dataclass
class BratsCase:
    case_id: str                      # the numeric part, e.g. "00012"
    folder: Path
    volumes: dict[str, np.ndarray]    # modality -> float32 (X, Y, Z)
    masks: np.ndarray | None          # uint8 (2, X, Y, Z): [WT, ET], None without seg
    affine: np.ndarray = field(repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return next(iter(self.volumes.values())).shape


def parse_modalities(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Validate a --modalities list (any subset of t1 t1ce t2 flair, order kept)."""
    out: list[str] = []
    for name in names:
        name = name.lower()
        if name not in MODALITIES:
            raise BratsCaseError(f"unknown modality {name!r}; choose from {' '.join(MODALITIES)}")
        if name not in out:
            out.append(name)
    if not out:
        raise BratsCaseError("at least one modality is needed")
    return tuple(out)


def list_cases(task1_dir: str | Path) -> list[Path]:
    """Case folders named BraTS2021_<id>, sorted by id."""
    task1_dir = Path(task1_dir)
    if not task1_dir.is_dir():
        raise BratsCaseError(f"Task 1 folder {task1_dir} does not exist (TASK1_DIR in SETTINGS.json)")
    cases = [p for p in task1_dir.iterdir() if p.is_dir() and CASE_PATTERN.match(p.name)]
    return sorted(cases, key=lambda p: p.name)


def case_id(case_dir: str | Path) -> str:
    match = CASE_PATTERN.match(Path(case_dir).name)
    if not match:
        raise BratsCaseError(f"{case_dir} is not a BraTS2021_<id> folder")
    return match.group(1)


def case_file(case_dir: Path, kind: str) -> Path:
    """The NIfTI of one modality (or 'seg'), accepting .nii.gz and .nii."""
    stem = f"{case_dir.name}_{kind}"
    for suffix in (".nii.gz", ".nii"):
        path = case_dir / f"{stem}{suffix}"
        if path.is_file():
            return path
    raise BratsCaseError(f"{case_dir / (stem + '.nii.gz')} is missing")


def wt_et_masks(seg: np.ndarray) -> np.ndarray:
    """Labels {1,2,4} -> uint8 [WT, ET] channels (WT = any tumour label, ET = 4)."""
    seg = np.asarray(seg)
    wt = np.isin(seg, WT_LABELS)
    et = np.isin(seg, ET_LABELS)
    return np.stack([wt, et]).astype(np.uint8)


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for broken files
        raise BratsCaseError(f"cannot read {path}: {err}") from None
    if data.ndim != 3:
        raise BratsCaseError(f"{path} has shape {data.shape}; a 3-D volume is expected")
    return data, img.affine


def read_case(
    case_dir: str | Path, modalities: tuple[str, ...] = MODALITIES, with_seg: bool = True,
    label_map: tuple[tuple[int, int], ...] = (),
) -> BratsCase:
    """Read the requested modalities (and seg) of one case; all must share one shape.

    Raises :class:`UnknownLabelsError` for a seg label outside {0, 1, 2, 4} after ``label_map``.
    """
    case_dir = Path(case_dir)
    cid = case_id(case_dir)
    volumes: dict[str, np.ndarray] = {}
    affine = None
    shapes: dict[str, tuple[int, ...]] = {}
    for mod in parse_modalities(modalities):
        data, aff = _load(case_file(case_dir, mod))
        volumes[mod] = data.astype(np.float32, copy=False)
        shapes[mod] = data.shape
        affine = aff if affine is None else affine
    masks = None
    if with_seg:
        seg_path = case_file(case_dir, "seg")
        seg, _ = _load(seg_path)
        shapes["seg"] = seg.shape
        masks = wt_et_masks(apply_label_map(np.rint(seg).astype(np.int16), label_map, seg_path))
    if len(set(shapes.values())) > 1:
        detail = ", ".join(f"{k} {v}" for k, v in shapes.items())
        raise BratsCaseError(f"{case_dir}: volumes differ in shape ({detail})")
    return BratsCase(case_id=cid, folder=case_dir, volumes=volumes, masks=masks, affine=np.asarray(affine))
