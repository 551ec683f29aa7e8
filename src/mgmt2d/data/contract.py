"""The input contract of a stage-2 model: how the slices it was trained on were made.

A classifier only gives its trained numbers when its test inputs are made exactly as its
training inputs were. Every checkpoint mgmt2d writes records its contract (under
``config["contract"]``); a raw state dict without a config, i.e. a published checkpoint,
runs with :data:`REFERENCE`, the published solution's test-time contract.

Three fields differ between the reference and what mgmt2d uses for models it trains, all
deliberate (README, table of deliberate differences):

* ``slice_order``: ``"filename"`` orders a series by the trailing integer of its file names
  (the reference); ``"position"`` by ImagePositionPatient projected on the slice normal
  (anatomical order, ours).
* ``pixel_values``: ``"stored"`` uses the stored pixel values as the reference did;
  ``"modality"`` applies RescaleSlope/Intercept and inverts MONOCHROME1 first (ours). On
  data without rescale tags both give the same numbers.
* ``nonempty_test``: a slice is used when more than ``min_nonzero_fraction`` of its pixels
  are tissue, tissue being ``"stored_positive"`` (stored value > 0, the reference) or
  ``"above_series_min"`` (value above the series minimum, ours: a stored offset such as
  -1024 for background does not hide every slice). Both agree whenever the series'
  smallest stored value is 0, as on the Kaggle data.

Where the slices come from (``input_format``): DICOM series (the Kaggle layout, ours and the
reference's), NIfTI cohorts (``nifti``, a volume sliced in ``nifti_plane`` exactly as the DICOM
series of that volume in that plane would be read: ``mgmt2d.data.nifti_series``), or the
optional JPG copy (``jpg``, training only). On NIfTI the DICOM-only choices ``slice_order``
(there is no file name to order by: the order is the geometry's) and ``pixel_values`` (the
scaled values are the file's values) do not apply; :meth:`InputContract.record` says so in every
run configuration. ``skull_strip``: the series were skull-stripped by mgmt2d (deepbet,
``mgmt2d.data.skullstrip``) before segmentation; a model trained on stripped data gets stripped
inputs.

Everything else is one rule for every model (see ``mgmt2d.classification.stack``).
``min_slice_size`` (the reader's floor: a series whose slices are smaller is not an MRI) and
``tta_zoom`` are checked here: a contract outside their ranges cannot be made.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from mgmt2d.data.dicom import MIN_SLICE_SIZE

SLICE_ORDERS = ("position", "filename")
PIXEL_VALUES = ("modality", "stored")
NONEMPTY_TESTS = ("above_series_min", "stored_positive")
INPUT_FORMATS = ("dicom", "nifti", "jpg")
NIFTI_PLANES = ("axial", "coronal", "sagittal")
NOT_APPLICABLE = {"nifti": ("slice_order", "pixel_values", "min_slice_size")}   # DICOM-only reading choices
# --tta-zoom: below 0.5 the brain fills under a quarter of the frame, above 2.0 under a quarter of it is left;
# both far from what a model saw in training (scale 0.9-1.1, the reference's zoom-in 1.2). Zoom-out (< 1) is allowed.
TTA_ZOOM_RANGE = (0.5, 2.0)


@dataclass(frozen=True)
class InputContract:
    slice_order: str = "position"
    pixel_values: str = "modality"
    nonempty_test: str = "above_series_min"
    seg_image_size: int = 224          # segmenter input
    seg_zoom: float = 1.2              # resize to int(seg_image_size * seg_zoom), centre-crop
    min_nonzero_fraction: float = 0.1  # a slice is used when more of its pixels than this are tissue
    min_area_ratio: float = 0.025      # largest WT contour / largest brain contour must exceed this
    max_wt_contours: int = 5
    threshold: float = 0.5
    image_size: int = 224              # classifier input
    seq_len: int = 35
    stride: int = 5
    tta_zoom: float = 1.2              # test-time zoom-in about the centre (1.0: none)
    input_format: str = "dicom"        # what the slices are read from: DICOM series, NIfTI volumes, JPG (training)
    nifti_plane: str = "axial"         # input_format nifti: the plane the volumes are sliced in
    skull_strip: bool = False          # the series were skull-stripped by mgmt2d (deepbet) before segmentation
    min_slice_size: int = MIN_SLICE_SIZE   # series whose slices are smaller (either side, pixels) are refused

    def __post_init__(self) -> None:
        if self.slice_order not in SLICE_ORDERS:
            raise ValueError(f"slice_order must be one of {SLICE_ORDERS}, got {self.slice_order!r}")
        if self.pixel_values not in PIXEL_VALUES:
            raise ValueError(f"pixel_values must be one of {PIXEL_VALUES}, got {self.pixel_values!r}")
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {self.input_format!r}")
        if self.nonempty_test not in NONEMPTY_TESTS:
            raise ValueError(f"nonempty_test must be one of {NONEMPTY_TESTS}, got {self.nonempty_test!r}")
        if self.nifti_plane not in NIFTI_PLANES:
            raise ValueError(f"nifti_plane must be one of {NIFTI_PLANES}, got {self.nifti_plane!r}")
        low, high = TTA_ZOOM_RANGE
        if not low <= self.tta_zoom <= high:   # NaN fails too
            raise ValueError(f"--tta-zoom {self.tta_zoom:g} is out of range: the test-time zoom must be between "
                             f"{low:g} (zoom out) and {high:g} (zoom in); 1.0 means none, the reference uses 1.2")
        if not isinstance(self.min_slice_size, int) or self.min_slice_size < 1:
            raise ValueError(f"min_slice_size must be a whole number of pixels >= 1, got {self.min_slice_size!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record(self) -> dict[str, Any]:
        """The contract as a run configuration records it: the fields that do not apply to this input
        format (DICOM-only reading choices on NIfTI) say so instead of showing a value that was not used."""
        out = self.to_dict()
        for name in NOT_APPLICABLE.get(self.input_format, ()):
            out[name] = f"not applicable ({self.input_format})"
        if self.input_format != "nifti":
            out["nifti_plane"] = f"not applicable ({self.input_format})"
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputContract:
        """Known keys only; a key this version does not know is an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown input-contract keys {unknown}: written by a newer mgmt2d?")
        return cls(**{k: data[k] for k in data})

    def with_overrides(self, **values: Any) -> InputContract:
        """A copy with the given fields replaced; None means "keep"."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


REFERENCE = InputContract(slice_order="filename", pixel_values="stored", nonempty_test="stored_positive")
OURS = InputContract()


def contract_of(config: Mapping[str, Any] | None) -> InputContract:
    """The contract a checkpoint's config records; a raw state dict (no config) -> REFERENCE.

    A config written before contracts were recorded describes data that mgmt2d prepared,
    so it gets mgmt2d's defaults with the sizes the config does record.
    """
    if not config:
        return REFERENCE
    if "contract" in config:
        return InputContract.from_dict(config["contract"])
    sizes = {k: config[k] for k in ("image_size", "seq_len", "stride") if k in config}
    return replace(OURS, **sizes)


def shared_contract(contracts: Mapping[Any, InputContract]) -> InputContract:
    """The one contract of several checkpoints (keys name them); refused, naming two that differ."""
    distinct = list(dict.fromkeys(contracts.values()))
    if not distinct:
        raise ValueError("no checkpoint, hence no input contract")
    if len(distinct) > 1:
        (a, ca), (b, cb) = [next((k, c) for k, c in contracts.items() if c == d) for d in distinct[:2]]
        diff = sorted(k for k, v in ca.to_dict().items() if cb.to_dict()[k] != v)
        raise ValueError(f"{a} and {b} were trained on inputs made differently ({', '.join(diff)}); "
                         "run them in separate inference runs")
    return distinct[0]


def add_contract_arguments(parser: argparse.ArgumentParser, defaults: InputContract | None) -> None:
    """The input-contract flags, in one group: how a series becomes slices.

    ``defaults`` set the values a preparation uses (``OURS``); None adds them as overrides
    (inference: None keeps what the checkpoints record), with ``--tta-zoom`` as well.
    Read them back with :func:`contract_overrides`.
    """
    d = defaults
    group = parser.add_argument_group(
        "input contract", "how series become slices" + ("" if d else "; default: what the classifier checkpoints "
                                                        "record (published weights: the reference's)"))
    formats = INPUT_FORMATS if d else tuple(f for f in INPUT_FORMATS if f != "jpg")
    group.add_argument("--input-format", choices=list(formats), default=d.input_format if d else "dicom",
                       help="dicom: a folder per patient and type (Kaggle layout); nifti: a folder per case, one "
                            "NIfTI per type (BraTS 2021/2023, UPENN-GBM, UCSF-PDGM namings)"
                            + ("; jpg: the optional JPG copy (CLASSIFICATION_RAW_JPG)" if d else ""))
    group.add_argument("--nifti-plane", choices=list(NIFTI_PLANES), default=d and d.nifti_plane,
                       help="NIfTI input: the plane the volumes are sliced in (each slice as the DICOM series of the "
                            "volume in that plane would give it; default axial)")
    group.add_argument("--skull-strip", action=argparse.BooleanOptionalAction, default=d and d.skull_strip,
                       help="skull-strip every patient's series with one brain mask (deepbet on the T1w, else "
                            "T1wCE series) before segmentation; recorded in the contract"
                            + ("" if d else " (default: as the checkpoints were trained)"))
    group.add_argument("--slice-order", choices=list(SLICE_ORDERS), default=d and d.slice_order,
                       help="position: anatomical (ours); filename: trailing number of the file name (reference)")
    group.add_argument("--pixel-values", choices=list(PIXEL_VALUES), default=d and d.pixel_values,
                       help="modality: rescale slope/intercept, MONOCHROME1 inverted (ours); stored: raw (reference)")
    group.add_argument("--nonempty-test", choices=list(NONEMPTY_TESTS), default=d and d.nonempty_test,
                       help="tissue for the near-empty test: above the series minimum (ours) or stored value > 0 "
                            "(reference)")
    group.add_argument("--min-slice-size", type=int, default=d and d.min_slice_size,
                       help="refuse a series whose slices are smaller than this many pixels on a side (not an "
                            f"MRI); reader's default {MIN_SLICE_SIZE}")
    if d is None:
        low, high = TTA_ZOOM_RANGE
        group.add_argument("--tta-zoom", type=float, help=f"test-time zoom about the centre, {low:g} to {high:g} "
                           "(reference 1.2: zoom in; 1.0 disables; below 1 zooms out)")


def contract_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The contract fields a command line sets: every flag named as an :class:`InputContract` field
    (``--slice-order`` -> ``slice_order``, ...) whose value is not None."""
    names = {f.name for f in fields(InputContract)}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    InputContract().with_overrides(**overrides)   # a value out of range is one line now, before any model loads
    return overrides
