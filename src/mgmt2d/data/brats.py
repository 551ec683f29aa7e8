"""BraTS Task 1 case reader: modality volumes and two-channel WT/ET masks.

Two layouts of the same cases (:data:`LAYOUTS`), told apart by the case folder names:

    BraTS 2021:  TASK1_DIR/BraTS2021_<id>/BraTS2021_<id>_{t1,t1ce,t2,flair,seg}.nii.gz
    BraTS 2023+: TASK1_DIR/BraTS-GLI-<id>-<n>/BraTS-GLI-<id>-<n>-{t1n,t1c,t2w,t2f,seg}.nii.gz

``<id>`` is the 5-digit BraTS 2021 ID in both (the stage-1 leakage filter compares it with the
Task 2 patients), and is the case ID here. Modalities keep the 2021 names (t1, t1ce, t2,
flair); the 2023+ files t1n, t1c, t2w, t2f are the same images. The layout decides the
labels: the enhancing tumour is 4 in 2021 (labels 0, 1, 2, 4) and 3 in 2023+ (0, 1, 2, 3).
A segmentation holding a label its layout does not define is refused (``--label-map`` converts
knowingly).

Arrays keep the NIfTI axis order (x, y, z): axis 0 sagittal, 1 coronal, 2 axial,
which is how the reference takes its three planes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
MODALITY_ALIASES: dict[str, str] = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}  # 2023+ names


class BratsCaseError(ValueError):
    """A case folder that cannot be used as asked; the message names the file."""


class UnknownLabelsError(BratsCaseError):
    """A segmentation with labels its layout does not define: a convention to convert knowingly, not to guess."""


@dataclass(frozen=True)
class Layout:
    """One BraTS Task 1 release's folder and file naming and its segmentation labels."""

    name: str
    pattern: re.Pattern[str]           # a case folder name; group 1 is the BraTS 2021 ID
    separator: str                     # between the folder name and the file kind
    files: dict[str, str]              # our modality (and "seg") -> the file kind of this layout
    labels: tuple[int, ...]            # every label a segmentation may hold
    et_label: int                      # the enhancing tumour
    example: str

    @property
    def wt_labels(self) -> tuple[int, ...]:
        return tuple(v for v in self.labels if v != 0)

    def expected(self) -> str:
        """The layout as a path pattern, for messages and dataset.json."""
        kinds = ",".join(self.files[k] for k in (*MODALITIES, "seg"))
        return f"{self.example}/{self.example}{self.separator}{{{kinds}}}.nii.gz"

    def record(self) -> dict[str, object]:
        """What dataset.json records: the layout and the label map it decided."""
        return {"name": self.name, "files": self.expected(),
                "labels": {"known": list(self.labels), "WT": list(self.wt_labels), "ET": [self.et_label]}}


BRATS2021 = Layout(
    name="BraTS 2021", pattern=re.compile(r"^BraTS2021_(\d+)$"), separator="_",
    files={"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"},
    labels=(0, 1, 2, 4), et_label=4, example="BraTS2021_<id>",
)
BRATS2023 = Layout(
    name="BraTS 2023+", pattern=re.compile(r"^BraTS-GLI-(\d{5})-\d{3}$"), separator="-",
    files={"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"},
    labels=(0, 1, 2, 3), et_label=3, example="BraTS-GLI-<id>-<n>",
)
LAYOUTS: tuple[Layout, ...] = (BRATS2021, BRATS2023)
ALL_LABELS: tuple[int, ...] = tuple(sorted({v for layout in LAYOUTS for v in layout.labels}))
# Kept for callers of the 2021 names.
KNOWN_LABELS: frozenset[int] = frozenset(BRATS2021.labels)
WT_LABELS: tuple[int, ...] = BRATS2021.wt_labels
ET_LABELS: tuple[int, ...] = (BRATS2021.et_label,)
CASE_PATTERN = BRATS2021.pattern


def parse_label_map(items: list[str] | tuple[str, ...] | None) -> tuple[tuple[int, int], ...]:
    """``--label-map 3:4 ...`` -> ((3, 4), ...); each target must be a BraTS label (checked per layout on use)."""
    out: list[tuple[int, int]] = []
    for item in items or ():
        try:
            src, dst = (int(v) for v in str(item).split(":"))
        except ValueError:
            raise BratsCaseError(f"--label-map {item!r}: expected FROM:TO with whole numbers, e.g. 3:4") from None
        if dst not in ALL_LABELS:
            raise BratsCaseError(f"--label-map {item!r}: the target must be a BraTS label: "
                                 + "; ".join(f"{' '.join(map(str, lay.labels))} ({lay.name})" for lay in LAYOUTS))
        out.append((src, dst))
    return tuple(out)


def check_label_map(label_map: tuple[tuple[int, int], ...], layout: Layout) -> None:
    """Refuse a ``--label-map`` whose targets are not labels of ``layout`` (one line)."""
    wrong = sorted({dst for _, dst in label_map if dst not in layout.labels})
    if wrong:
        raise UnknownLabelsError(
            f"--label-map maps to {wrong}, which the {layout.name} layout does not define "
            f"(its labels: {' '.join(map(str, layout.labels))}; enhancing tumour {layout.et_label})"
        )


def apply_label_map(
    seg: np.ndarray, label_map: tuple[tuple[int, int], ...], path: Path, layout: Layout = BRATS2021
) -> np.ndarray:
    """Relabel ``seg`` by ``label_map``, then refuse any label ``layout`` does not define.

    A 2021 segmentation holding 3 (the enhancing tumour before 2021, and of 2023+) or a 2023+
    one holding 4 (the enhancing tumour of 2021) would otherwise count part of the tumour as
    background, or label the wrong region ET, without a word; ``--label-map`` converts knowingly.
    """
    check_label_map(label_map, layout)
    if label_map:
        mapped = seg.copy()
        for src, dst in label_map:
            mapped[seg == src] = dst
        seg = mapped
    found = set(np.unique(seg).tolist())
    unknown = sorted(found - set(layout.labels))
    if unknown:
        other = next((lay for lay in LAYOUTS if lay is not layout and unknown[0] == lay.et_label), None)
        hint = (f"{unknown[0]} is the enhancing tumour in {other.name} files: if it is here, convert it with "
                f"--label-map {unknown[0]}:{layout.et_label} (check what it means in your data's release)"
                if other else f"convert them with --label-map (e.g. --label-map {unknown[0]}:{layout.et_label} "
                "for an enhancing tumour; check what they mean in your data's release)")
        raise UnknownLabelsError(
            f"{path} has labels {sorted(found)}, of which {unknown} are not {layout.name} labels "
            f"({', '.join(map(str, layout.labels))}); {hint}"
        )
    return seg


@dataclass
class BratsCase:
    case_id: str                      # the numeric part, e.g. "00012"
    folder: Path
    volumes: dict[str, np.ndarray]    # modality -> float32 (X, Y, Z)
    masks: np.ndarray | None          # uint8 (2, X, Y, Z): [WT, ET], None without seg
    affine: np.ndarray = field(repr=False)
    layout: Layout = BRATS2021

    @property
    def shape(self) -> tuple[int, int, int]:
        return next(iter(self.volumes.values())).shape


def parse_modalities(names: Sequence[str]) -> tuple[str, ...]:
    """Validate a --modalities list (any subset of t1 t1ce t2 flair, or their 2023+ names; order kept)."""
    out: list[str] = []
    for name in names:
        name = MODALITY_ALIASES.get(name.lower(), name.lower())
        if name not in MODALITIES:
            raise BratsCaseError(f"unknown modality {name!r}; choose from {' '.join(MODALITIES)} "
                                 f"(or the 2023+ names {' '.join(MODALITY_ALIASES)})")
        if name not in out:
            out.append(name)
    if not out:
        raise BratsCaseError("at least one modality is needed")
    return tuple(out)


def layout_of(case_dir: str | Path) -> Layout:
    """The layout a case folder's name belongs to."""
    name = Path(case_dir).name
    for layout in LAYOUTS:
        if layout.pattern.match(name):
            return layout
    raise BratsCaseError(f"{case_dir} is not a BraTS case folder ({' or '.join(lay.example for lay in LAYOUTS)})")


@dataclass
class Task1Folder:
    """The cases of a TASK1_DIR: its layout, case folders by BraTS 2021 ID, and what else was there."""

    root: Path
    layout: Layout
    cases: dict[str, Path]          # 5-digit ID -> case folder, sorted by ID
    ignored: list[str]              # entries of root that are not case folders of the layout

    def describe(self) -> str:
        more = f"; {len(self.ignored)} other entries ignored ({', '.join(self.ignored[:3])}" + (
            ", ...)" if len(self.ignored) > 3 else ")") if self.ignored else ""
        return f"{self.root}: {self.layout.name} layout ({self.layout.expected()}), {len(self.cases)} case(s){more}"


def find_task1(task1_dir: str | Path, label_map: tuple[tuple[int, int], ...] = ()) -> Task1Folder:
    """Detect the layout of ``task1_dir`` and list its cases; one-line BratsCaseError otherwise.

    Refused: a folder in neither layout (the message names what was there and the naming
    expected), one mixing both layouts, two 2023+ folders of one BraTS 2021 ID (two time
    points of one patient: which one is the case is not ours to guess), and a ``label_map``
    whose targets the layout does not define.
    """
    task1_dir = Path(task1_dir)
    if not task1_dir.is_dir():
        raise BratsCaseError(f"Task 1 folder {task1_dir} does not exist (TASK1_DIR in SETTINGS.json)")
    entries = sorted(task1_dir.iterdir(), key=lambda p: p.name)
    by_layout: dict[str, list[Path]] = {lay.name: [] for lay in LAYOUTS}
    ignored: list[str] = []
    for path in entries:
        layout = next((lay for lay in LAYOUTS if lay.pattern.match(path.name)), None) if path.is_dir() else None
        if layout is None:
            ignored.append(path.name + ("/" if path.is_dir() else ""))
        else:
            by_layout[layout.name].append(path)
    found = [lay for lay in LAYOUTS if by_layout[lay.name]]
    expected = " or ".join(f"{lay.expected()} ({lay.name})" for lay in LAYOUTS)
    if not found:
        shown = ", ".join(ignored[:5]) + (f" (+{len(ignored) - 5} more)" if len(ignored) > 5 else "")
        raise BratsCaseError(f"{task1_dir} holds no BraTS case folder (it holds: {shown or 'nothing'}); "
                             f"expected {expected} (TASK1_DIR in SETTINGS.json)")
    if len(found) > 1:
        counts = ", ".join(f"{len(by_layout[lay.name])} {lay.name} ({by_layout[lay.name][0].name}, ...)"
                           for lay in found)
        raise BratsCaseError(f"{task1_dir} mixes BraTS layouts ({counts}): keep one release per TASK1_DIR")
    layout = found[0]
    cases: dict[str, Path] = {}
    for path in by_layout[layout.name]:
        cid = case_id(path)
        if cid in cases:
            raise BratsCaseError(f"{cases[cid].name} and {path.name} in {task1_dir} are both BraTS 2021 case {cid} "
                                 "(the 5 digits): keep one folder per case")
        cases[cid] = path
    check_label_map(label_map, layout)
    return Task1Folder(task1_dir, layout, dict(sorted(cases.items())), ignored)


def list_cases(task1_dir: str | Path) -> list[Path]:
    """Case folders of ``task1_dir`` (either layout, see :func:`find_task1`), sorted by ID."""
    return list(find_task1(task1_dir).cases.values())


def case_id(case_dir: str | Path) -> str:
    """The 5-digit BraTS 2021 ID of a case folder of either layout."""
    match = layout_of(case_dir).pattern.match(Path(case_dir).name)
    assert match is not None
    return match.group(1)


def case_file(case_dir: Path, kind: str) -> Path:
    """The NIfTI of one modality (2021 name) or 'seg' in the case's layout, accepting .nii.gz and .nii."""
    layout = layout_of(case_dir)
    stem = f"{case_dir.name}{layout.separator}{layout.files[kind]}"
    for suffix in (".nii.gz", ".nii"):
        path = case_dir / f"{stem}{suffix}"
        if path.is_file():
            return path
    raise BratsCaseError(f"{case_dir / (stem + '.nii.gz')} is missing")


def wt_et_masks(seg: np.ndarray, layout: Layout = BRATS2021) -> np.ndarray:
    """Labels -> uint8 [WT, ET] channels (WT = any tumour label of the layout, ET = its enhancing tumour)."""
    seg = np.asarray(seg)
    wt = np.isin(seg, layout.wt_labels)
    et = seg == layout.et_label
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
    """Read the requested modalities (and seg) of one case of either layout; all must share one shape.

    Raises :class:`UnknownLabelsError` for a seg label its layout does not define after ``label_map``.
    """
    case_dir = Path(case_dir)
    cid = case_id(case_dir)
    layout = layout_of(case_dir)
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
        masks = wt_et_masks(apply_label_map(np.rint(seg).astype(np.int16), label_map, seg_path, layout), layout)
    if len(set(shapes.values())) > 1:
        detail = ", ".join(f"{k} {v}" for k, v in shapes.items())
        raise BratsCaseError(f"{case_dir}: volumes differ in shape ({detail})")
    return BratsCase(case_id=cid, folder=case_dir, volumes=volumes, masks=masks, affine=np.asarray(affine),
                     layout=layout)
