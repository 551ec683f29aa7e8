"""Which MRI type a DICOM series is (FLAIR / T1w / T1wCE / T2w / other), from its headers alone.

Why a table of rules and not SeriesDescription: a hospital export mixes every series of a study
(localisers, diffusion, perfusion, field maps, reformats, post-contrast repeats), and a name
alone is not trusted by the field's tools. A series gets one of the four types only when
independent headers agree:

1. **Exclusions** (:data:`EXCLUSIONS`, first match wins): not MR, localiser, derived image
   (reformat, map, subtraction, ADC), diffusion, perfusion, field map or phase image,
   susceptibility / T2*, angiography, EPI readout (fMRI), mosaic, steady-state sequences,
   several volumes at the same positions (time points, echoes), too few slices.
2. **The name**: SeriesDescription (else ProtocolName) keywords of each vendor's naming
   (:data:`NAME_KEYWORDS`: Siemens ``t2_tirm_tra_dark-fluid``, GE ``Ax T2 FLAIR``, Philips
   ``T2W_FLAIR``, Canon ``FLAIR_AX``, ...).
3. **The physics**: the weighting that RepetitionTime, EchoTime, InversionTime and the echo
   type (ScanningSequence / EchoPulseSequence) imply (:data:`WEIGHTINGS`); for Enhanced MR the
   same values from the functional groups, and AcquisitionContrast.
4. **Contrast** (T1 only): ContrastBolusAgent, the name (``+C``, ``KM``, ``Gd``, ``post``,
   ``pre``, ``nativ``) and the series' acquisition time against the injection
   (ContrastBolusStartTime, else the study's first post-contrast series): T1w or T1wCE.

The name and the physics must agree; where they disagree, or one is missing, the series is
``other`` and the reason says what each said, so the user can set the type by hand. Nothing
here reads files: :meth:`SeriesSummary.from_dataset` takes a header-only pydicom dataset, and
:func:`type_series` is a pure function of a summary and its study's contrast timing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

from mgmt2d.data.dicom import functional_group_item, text_values
from mgmt2d.data.task2 import MRI_TYPES

__all__ = [
    "EXCLUSIONS",
    "MIN_SLICES",
    "NAME_KEYWORDS",
    "OTHER",
    "SERIES_TYPES",
    "WEIGHTINGS",
    "SeriesSummary",
    "SeriesTyping",
    "StudyContrast",
    "name_contrast",
    "name_type",
    "study_contrast",
    "type_series",
    "weighting",
]

OTHER = "other"
SERIES_TYPES: tuple[str, ...] = (*MRI_TYPES, OTHER)
MIN_SLICES = 10   # fewer slices than this is a localiser, a calibration or a single-slice scan, not a volume


# --------------------------------------------------------------------------- the header summary


@dataclass(frozen=True)
class SeriesSummary:
    """The header values of one series that decide its type (times in ms, names as written).

    Built by :meth:`from_dataset` from one representative file; the series-wide counts
    (``n_slices``, ``n_volumes``, ``volumes_by``, ``volume_problem``, ``frame_types``, ``acquired``)
    are filled in by whoever groups the files (``mgmt2d.tools.organize``).
    """

    modality: str = "MR"
    manufacturer: str = ""
    description: str = ""              # SeriesDescription
    protocol: str = ""                 # ProtocolName
    image_type: tuple[str, ...] = ()   # ImageType, upper case
    frame_types: tuple[str, ...] = ()  # values of every slice's ImageType / FrameType (3rd on), upper case
    complex_component: str = ""        # ComplexImageComponent (Enhanced MR)
    scanning_sequence: tuple[str, ...] = ()
    sequence_variant: tuple[str, ...] = ()
    sequence_name: str = ""            # SequenceName, or PulseSequenceName (Enhanced MR)
    acquisition_type: str = ""         # MRAcquisitionType: 2D / 3D
    tr: float | None = None            # RepetitionTime
    te: float | None = None            # EchoTime / EffectiveEchoTime
    ti: float | None = None            # InversionTime / InversionTimes
    inversion_recovery: bool | None = None   # Enhanced MR: InversionRecovery
    echo_pulse_sequence: str = ""      # Enhanced MR: SPIN / GRADIENT / BOTH
    echo_planar: bool | None = None    # Enhanced MR: EchoPlanarPulseSequence
    acquisition_contrast: str = ""     # Enhanced MR: AcquisitionContrast (T1, T2, FLUID_ATTENUATED, ...)
    diffusion_b: float | None = None   # DiffusionBValue
    contrast_agent: str = ""           # ContrastBolusAgent (or its code sequence, or "administered")
    contrast_start: datetime | None = None   # ContrastBolusStartTime on the series' date
    acquired: datetime | None = None   # when acquisition of the series started
    series_number: float | None = None
    thickness: float | None = None     # SliceThickness (mm)
    rows: int | None = None
    columns: int | None = None
    n_slices: int = 0
    n_volumes: int = 1
    volumes_by: tuple[str, ...] = ()
    volume_problem: str | None = None  # several volumes that no header tells apart
    enhanced: bool = False             # values from the functional groups of a multi-frame file

    @property
    def name(self) -> str:
        """The name the keywords are read from: SeriesDescription, else ProtocolName."""
        return self.description or self.protocol

    @property
    def name_field(self) -> str:
        return "SeriesDescription" if self.description else "ProtocolName"

    @property
    def all_image_types(self) -> frozenset[str]:
        return frozenset(self.image_type) | frozenset(self.frame_types)

    @classmethod
    def from_dataset(cls, ds: Any) -> SeriesSummary:
        """The summary of a (header-only) pydicom dataset; functional groups for Enhanced MR.

        Values a malformed header cannot give are None / empty, never an exception.
        """
        groups = _functional_groups(ds)
        timing = functional_group_item(groups, "MRTimingAndRelatedParametersSequence")
        echo = functional_group_item(groups, "MREchoSequence")
        modifier = functional_group_item(groups, "MRModifierSequence")
        frame_type = functional_group_item(groups, "MRImageFrameTypeSequence")
        diffusion = functional_group_item(groups, "MRDiffusionSequence")
        measures = functional_group_item(groups, "PixelMeasuresSequence")
        frame_types: set[str] = set()
        for item in groups:
            ftype = _first(item, "MRImageFrameTypeSequence")
            values = _texts(ftype, "FrameType") if ftype is not None else ()
            frame_types |= {v.upper() for v in values[2:]}
        day = _date(_get(ds, "AcquisitionDate") or _get(ds, "SeriesDate") or _get(ds, "StudyDate")
                    or _get(ds, "ContentDate"))
        acquired = _datetime(_get(ds, "AcquisitionDateTime")) or _combine(
            day, _time(_get(ds, "AcquisitionTime") or _get(ds, "SeriesTime") or _get(ds, "ContentTime")))
        ti = _number(ds, "InversionTime")
        if ti is None:
            ti = _number(modifier, "InversionTimes")
        frames = _number(ds, "NumberOfFrames")
        return cls(
            modality=_text(ds, "Modality").upper(),
            manufacturer=_text(ds, "Manufacturer"),
            description=_text(ds, "SeriesDescription"),
            protocol=_text(ds, "ProtocolName"),
            image_type=tuple(v.upper() for v in _texts(ds, "ImageType")),
            frame_types=tuple(sorted(frame_types)),
            complex_component=_either_text((ds, frame_type), "ComplexImageComponent").upper(),
            scanning_sequence=tuple(v.upper() for v in _texts(ds, "ScanningSequence")),
            sequence_variant=tuple(v.upper() for v in _texts(ds, "SequenceVariant")),
            sequence_name=_text(ds, "SequenceName") or _text(ds, "PulseSequenceName"),
            acquisition_type=_text(ds, "MRAcquisitionType").upper(),
            tr=_either_number((ds, "RepetitionTime"), (timing, "RepetitionTime")),
            te=_either_number((ds, "EchoTime"), (echo, "EffectiveEchoTime")),
            ti=ti,
            inversion_recovery=_yes_no(_text(modifier, "InversionRecovery")),
            echo_pulse_sequence=_text(ds, "EchoPulseSequence").upper(),
            echo_planar=_yes_no(_text(ds, "EchoPlanarPulseSequence")),
            acquisition_contrast=_either_text((ds, frame_type), "AcquisitionContrast").upper(),
            diffusion_b=_either_number((ds, "DiffusionBValue"), (diffusion, "DiffusionBValue")),
            contrast_agent=_contrast_agent(ds, groups),
            contrast_start=_combine(day, _time(_get(ds, "ContrastBolusStartTime"))),
            acquired=acquired,
            series_number=_number(ds, "SeriesNumber"),
            thickness=_either_number((ds, "SliceThickness"), (measures, "SliceThickness")),
            rows=_int(_get(ds, "Rows")),
            columns=_int(_get(ds, "Columns")),
            n_slices=int(frames) if frames and frames > 1 else 1,
            enhanced=bool(groups),
        )


# --------------------------------------------------------------------------- the rules' tables


def _pattern(*alternatives: str) -> re.Pattern[str]:
    """Alternatives matched as whole words of a name (letters and digits around them do not count)."""
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(alternatives) + r")(?![a-z0-9])")


# Type keywords of SeriesDescription / ProtocolName, lower case, "_-./" read as spaces, in the
# main vendors' naming (Siemens t2_tirm_tra_dark-fluid, GE Ax T2 FLAIR, Philips T2W_FLAIR /
# sT1W_3D_TFE, Canon FLAIR_AX / T1WI_SE_AX). T1 FLAIR (GE, Canon) is a T1w; FLAIR with T2 in
# the name is a FLAIR.
NAME_KEYWORDS: dict[str, re.Pattern[str]] = {
    "FLAIR": _pattern(r"\w*flair\w*", r"dark ?fluid", r"tirm", r"da ?fl"),
    "T1w": _pattern(r"t1", r"t1wi", r"\w*t1w\w*", r"t1c", r"t1ce", r"t1gd", r"t1 ?\+ ?c?", r"\w*mp ?rage\w*",
                    r"\w*spgr", r"bravo", r"\w*tfe", r"vibe", r"3d ?t1w?"),
    "T2w": _pattern(r"t2", r"t2wi", r"\w*t2w\w*", r"t2 ?(?:tse|fse|frfse|space|spc|cube|haste|blade|propeller)"),
    "PD": _pattern(r"pd", r"pdw", r"pdwi", r"pd ?w", r"proton ?density"),
}
# Names that say the series is a map or T2* even when a type keyword is present (T2 map, T2*).
_NOT_STRUCTURAL_NAME = _pattern(r"t2 ?\*\w*", r"t2 ?star", r"t2 ?ffe", r"t[12] ?map\w*", r"\w*mapping",
                                r"relaxometry", r"mp2rage", r"inv[12]", r"uni")
# Contrast words of a name: after (post) or before (pre) the contrast injection. Longer
# alternatives first: "pre contrast" must be read as one phrase, not as "pre" plus "contrast".
_PRE_WORDS = _pattern(r"pre ?(?:contrast|con|gad|gd|km|c)", r"precontrast", r"without ?contrast", r"non ?contrast",
                      r"noncontrast", r"vor ?km", r"ohne ?km", r"sin ?contraste", r"sans ?inj\w*", r"pre", r"nativ",
                      r"native", r"w ?o", r"plain")
_POST_WORDS = _pattern(r"post ?(?:contrast|con|gad|gd|km|c)", r"postcontrast", r"with ?contrast", r"nach ?km",
                       r"con ?contrast[eo]", r"contrast ?enhanced", r"\+ ?(?:c|gd|km|contrast)", r"c ?\+",
                       r"t1 ?\+ ?c?", r"t1w?c", r"t1w?ce", r"t1w?gd", r"t1 ?post", r"km", r"gd", r"gad", r"gado\w*",
                       r"post", r"ce", r"mdc", r"kontrast", r"dotarem", r"gadavist", r"gadovist", r"magnevist",
                       r"multihance", r"prohance", r"clariscan", r"omniscan")
_NEGATIVE_AGENT = re.compile(r"^(?:none|no|nein|non|n|0|-|na|n/a|nil|keine?)$", re.IGNORECASE)


def _norm(text: str) -> str:
    """A name in lower case with ``_ - . / ( ) , :`` as spaces (``t2_tirm_tra`` -> ``t2 tirm tra``)."""
    out = re.sub(r"[_\-./(),:;\[\]]+", " ", text.lower())
    return " ".join(out.split())


def name_type(name: str) -> tuple[str | None, str]:
    """The type a SeriesDescription / ProtocolName names: (type, what was found).

    The type is FLAIR, T1w, T2w, PD, ``other`` (a map or T2* name), ``"several"`` (keywords of
    two types that no vendor convention reconciles, ``T1 T2``) or None (no type keyword).
    """
    text = _norm(name)
    if not text:
        return None, "empty"
    hit = _NOT_STRUCTURAL_NAME.search(text)
    if hit:
        return OTHER, repr(hit.group(0))
    found = {t for t, pattern in NAME_KEYWORDS.items() if pattern.search(text)}
    if "FLAIR" in found:
        if "T1w" in found and "T2w" not in found:
            return "T1w", "T1 FLAIR"   # GE / Canon T1 FLAIR: a T1-weighted inversion recovery
        return "FLAIR", "FLAIR"
    if len(found) == 1:
        return found.pop(), "keyword"
    if len(found) > 1:
        return "several", " and ".join(sorted(found))
    return None, "no type keyword"


def name_contrast(name: str) -> str | None:
    """"post", "pre", "both" or None: what a series name says about the contrast injection."""
    text = _norm(name)
    pre = bool(_PRE_WORDS.search(text))
    post = bool(_POST_WORDS.search(_PRE_WORDS.sub(" ", text)))   # "ohne KM" is not "KM"
    if post and pre:
        return "both"   # "T1 pre and post", GE's "BRAIN W WO": says nothing about one series
    return "post" if post else "pre" if pre else None


@dataclass(frozen=True)
class Weighting:
    """One row of :data:`WEIGHTINGS`: the weighting some TR / TE / TI values imply."""

    label: str                    # FLAIR, T1w, T2w, or a weighting we do not use (PD, STIR, T2*)
    rule: str                     # the rule in words, for the reason
    applies: Callable[[bool, bool | None, float, float, float | None], bool]   # (ir, gradient, tr, te, ti)


# The weighting of TR / TE / TI (ms) at 1.5 and 3 T, first match wins. ``ir``: inversion
# recovery (ScanningSequence IR, InversionRecovery YES, or an InversionTime above 0);
# ``gradient``: gradient echo (ScanningSequence GR without SE, or EchoPulseSequence GRADIENT),
# None when no header says.
WEIGHTINGS: tuple[Weighting, ...] = (
    Weighting("FLAIR", "inversion recovery, TI >= 1400 ms, TE >= 60 ms: fluid-attenuated T2",
              lambda ir, gr, tr, te, ti: ir and ti is not None and ti >= 1400 and te >= 60),
    Weighting("STIR", "inversion recovery, TI < 300 ms: fat suppression (STIR)",
              lambda ir, gr, tr, te, ti: ir and ti is not None and ti < 300),
    Weighting("T1w", "inversion recovery, TI 300-1400 ms, TE < 30 ms: MPRAGE, BRAVO, T1 FLAIR",
              lambda ir, gr, tr, te, ti: ir and ti is not None and 300 <= ti < 1400 and te < 30),
    Weighting("T2*", "gradient echo, TE >= 10 ms: T2* / susceptibility",
              lambda ir, gr, tr, te, ti: not ir and gr is True and te >= 10),
    Weighting("T1w", "gradient echo, TE < 10 ms, TR < 500 ms: spoiled gradient echo (FLASH, SPGR, TFE)",
              lambda ir, gr, tr, te, ti: not ir and gr is True and te < 10 and tr < 500),
    Weighting("T2w", "spin echo, TR >= 1500 ms, TE >= 60 ms",
              lambda ir, gr, tr, te, ti: not ir and gr is not True and tr >= 1500 and te >= 60),
    Weighting("T1w", "spin echo, TR < 1200 ms, TE < 30 ms",
              lambda ir, gr, tr, te, ti: not ir and gr is not True and tr < 1200 and te < 30),
    Weighting("PD", "spin echo, TR >= 1500 ms, TE < 40 ms: proton density",
              lambda ir, gr, tr, te, ti: not ir and gr is not True and tr >= 1500 and te < 40),
)
# Enhanced MR's AcquisitionContrast, where it names one of the weightings above.
_ACQUISITION_CONTRAST = {"T1": "T1w", "T2": "T2w", "FLUID_ATTENUATED": "FLAIR", "PROTON_DENSITY": "PD"}


@dataclass(frozen=True)
class Exclusion:
    """One row of :data:`EXCLUSIONS`: a kind of series that is none of the four types."""

    name: str
    fields: tuple[str, ...]
    test: Callable[[SeriesSummary], str | None]   # the reason, or None when the rule does not apply


def _joined(values: Iterable[str]) -> str:
    return "\\".join(values)


def _image_type_hit(s: SeriesSummary, values: Iterable[str]) -> str | None:
    hit = sorted(set(values) & s.all_image_types)
    if not hit:
        return None
    where = "ImageType" if hit[0] in s.image_type else "FrameType"
    return f"{where} {hit[0]} ({_joined(s.image_type) or 'no ImageType'})"


def _name_hit(s: SeriesSummary, pattern: re.Pattern[str]) -> str | None:
    for name, text in (("SeriesDescription", s.description), ("ProtocolName", s.protocol)):
        m = pattern.search(_norm(text))
        if m:
            return f"{name} {text!r} ({m.group(0)!r})"
    return None


def _either(*reasons: Any) -> str | None:
    return next((r for r in reasons if isinstance(r, str) and r), None)


def _names(*alternatives: str) -> re.Pattern[str]:
    return _pattern(*alternatives)


_LOCALISER_NAMES = _names(r"\w*locali[sz]er\w*", r"\w*scout\w*", r"\w*survey\w*", r"3 ?pl(?:ane)?(?: ?loc\w*)?",
                          r"tri ?pilot", r"pilot", r"loc", r"locator", r"ref ?scan", r"calibration", r"asset ?cal",
                          r"sense ?ref\w*", r"autoalign\w*")
_DIFFUSION_NAMES = _names(r"\w*dwi\w*", r"diff\w*", r"adc\w*", r"\w*dti\w*", r"trace\w*", r"b ?1000", r"resolve",
                          r"tensor", r"dw", r"apparent diffusion\w*")
_PERFUSION_NAMES = _names(r"\w*perf\w*", r"dsc", r"dce", r"asl", r"p?c?asl", r"tdyn\w*", r"dynamic", r"dyn",
                          r"r?cbv", r"cbf", r"mtt")
_FIELD_MAP_NAMES = _names(r"field ?map\w*", r"fmap", r"b[01](?: ?map)?", r"gre ?field\w*", r"phase", r"pha")
_SUSCEPTIBILITY_NAMES = _names(r"swi\w*", r"swan", r"t2 ?\*\w*", r"t2 ?star", r"hemo\w*", r"mpgr", r"susceptibility",
                               r"qsm", r"t2 ?ffe", r"me ?gre", r"merge")
_ANGIO_NAMES = _names(r"tof\w*", r"angio\w*", r"mra", r"mrv", r"venogra\w*", r"inhance")
_EPI_NAMES = _names(r"bold", r"fmri", r"rs ?fmri", r"rest(?:ing)?(?: ?state)?", r"epi", r"ep2d\w*", r"task")
_STEADY_STATE_NAMES = _names(r"\w*trufi\w*", r"true ?fisp", r"\w*ciss\w*", r"fiesta\w*", r"b ?ffe", r"balanced",
                             r"psif", r"dess")
# ImageType / FrameType values of reformats and projections (DERIVED images are caught before).
_DERIVATIONS = ("MPR", "MIP", "MINIP", "MNIP", "REFORMATTED", "PROJECTION IMAGE", "SUBTRACTION", "CSA MPR",
                "CSAPARALLEL", "CSA RESAMPLED", "COMPOSED", "MOCO")


def _not_mr(s: SeriesSummary) -> str | None:
    return f"Modality {s.modality}: not an MR series" if s.modality and s.modality != "MR" else None


def _localiser(s: SeriesSummary) -> str | None:
    hit = _either(_image_type_hit(s, ("LOCALIZER", "SCOUT")), _name_hit(s, _LOCALISER_NAMES))
    return f"localiser or calibration scan: {hit}" if hit else None


def _derived(s: SeriesSummary) -> str | None:
    if s.image_type[:1] == ("DERIVED",) or s.image_type[1:2] == ("SECONDARY",):
        return f"derived image (ImageType {_joined(s.image_type)}): a reformat, map, subtraction or projection"
    hit = _image_type_hit(s, _DERIVATIONS)
    return f"reformat or projection: {hit}" if hit else None


def _diffusion(s: SeriesSummary) -> str | None:
    hit = _either(
        _image_type_hit(s, ("DIFFUSION", "ADC", "TRACEW", "TRACE", "FA", "EADC", "ISOTROPIC", "DWI", "DTI")),
        s.acquisition_contrast == "DIFFUSION" and "AcquisitionContrast DIFFUSION",
        s.diffusion_b is not None and s.diffusion_b > 0 and f"DiffusionBValue {s.diffusion_b:g}",
        re.search(r"ep_?b\d", s.sequence_name.lower()) is not None and f"SequenceName {s.sequence_name!r}",
        _name_hit(s, _DIFFUSION_NAMES),
    )
    return f"diffusion (DWI, ADC, trace or DTI): {hit}" if hit else None


def _perfusion(s: SeriesSummary) -> str | None:
    hit = _either(
        _image_type_hit(s, ("PERFUSION", "ASL", "CBF", "CBV", "RCBV", "MTT", "TTP")),
        s.acquisition_contrast == "PERFUSION" and "AcquisitionContrast PERFUSION",
        _name_hit(s, _PERFUSION_NAMES),
    )
    return f"perfusion (DSC, DCE or ASL): {hit}" if hit else None


def _field_map(s: SeriesSummary) -> str | None:
    hit = _either(
        _image_type_hit(s, ("FIELD_MAP", "B0", "B1", "B0_MAP", "B1_MAP", "P", "PHASE", "REAL", "IMAGINARY", "R", "I")),
        s.complex_component in ("PHASE", "REAL", "IMAGINARY") and f"ComplexImageComponent {s.complex_component}",
        _name_hit(s, _FIELD_MAP_NAMES),
    )
    return f"field map or phase image: {hit}" if hit else None


def _susceptibility(s: SeriesSummary) -> str | None:
    hit = _either(_image_type_hit(s, ("SWI", "SWAN", "QSM")), _name_hit(s, _SUSCEPTIBILITY_NAMES))
    return f"susceptibility or T2* series: {hit}" if hit else None


def _angio(s: SeriesSummary) -> str | None:
    hit = _name_hit(s, _ANGIO_NAMES)
    return f"angiography: {hit}" if hit else None


def _epi(s: SeriesSummary) -> str | None:
    hit = _either(
        "EP" in s.scanning_sequence and f"ScanningSequence {_joined(s.scanning_sequence)}",
        s.echo_planar is True and "EchoPlanarPulseSequence YES",
        re.match(r"^\*?(?:ep|epi)(?:fid|se|_|\d|$)", s.sequence_name.lower()) is not None
        and f"SequenceName {s.sequence_name!r}",
        _name_hit(s, _EPI_NAMES),
    )
    return f"EPI readout (fMRI, diffusion or perfusion; distorted images): {hit}" if hit else None


def _mosaic(s: SeriesSummary) -> str | None:
    return "mosaic: several slices tiled in each image (ImageType MOSAIC)" if "MOSAIC" in s.all_image_types else None


def _steady_state(s: SeriesSummary) -> str | None:
    hit = _name_hit(s, _STEADY_STATE_NAMES)
    return f"steady-state sequence (CISS, FIESTA, TrueFISP, bFFE): {hit}" if hit else None


def _several_volumes(s: SeriesSummary) -> str | None:
    if s.volume_problem:
        return f"it {s.volume_problem}"
    if s.n_volumes > 1:
        by = ", ".join(s.volumes_by) or "their headers"
        return (f"holds {s.n_volumes} volumes told apart by {by} (time points, echoes, magnitude and phase, or "
                "another orientation); one series here must hold one volume")
    return None


def _too_few_slices(s: SeriesSummary) -> str | None:
    if 0 < s.n_slices < MIN_SLICES:
        return f"only {s.n_slices} slice{'s' if s.n_slices > 1 else ''}: not a volume (at least {MIN_SLICES})"
    return None


def _too_small(s: SeriesSummary) -> str | None:
    if s.rows is not None and s.columns is not None and min(s.rows, s.columns) < 16:
        return f"images of {s.rows}x{s.columns} pixels: too small to be an MRI volume"
    return None


_NAME_FIELDS = ("SeriesDescription", "ProtocolName")
# First match wins; the reason names the header and its value.
EXCLUSIONS: tuple[Exclusion, ...] = (
    Exclusion("not MR", ("Modality",), _not_mr),
    Exclusion("localiser", ("ImageType", *_NAME_FIELDS), _localiser),
    Exclusion("derived", ("ImageType",), _derived),
    Exclusion("diffusion", ("ImageType", "AcquisitionContrast", "DiffusionBValue", "SequenceName", *_NAME_FIELDS),
              _diffusion),
    Exclusion("perfusion", ("ImageType", "AcquisitionContrast", *_NAME_FIELDS), _perfusion),
    Exclusion("field map", ("ImageType", "FrameType", "ComplexImageComponent", *_NAME_FIELDS), _field_map),
    Exclusion("susceptibility", ("ImageType", *_NAME_FIELDS), _susceptibility),
    Exclusion("angiography", _NAME_FIELDS, _angio),
    Exclusion("EPI", ("ScanningSequence", "EchoPlanarPulseSequence", "SequenceName", *_NAME_FIELDS), _epi),
    Exclusion("mosaic", ("ImageType",), _mosaic),
    Exclusion("steady state", _NAME_FIELDS, _steady_state),
    Exclusion("several volumes", ("ImagePositionPatient", "TemporalPositionIdentifier", "EchoNumbers", "EchoTime",
                                  "AcquisitionNumber", "ImageType"), _several_volumes),
    Exclusion("too few slices", ("ImagePositionPatient",), _too_few_slices),
    Exclusion("too small", ("Rows", "Columns"), _too_small),
)


# --------------------------------------------------------------------------- the decision


@dataclass(frozen=True)
class SeriesTyping:
    """What :func:`type_series` decided: the type, why (one line), and the headers it used."""

    type: str
    reason: str
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class StudyContrast:
    """When the contrast agent was given in a study, as far as its headers tell.

    ``injection``: the earliest ContrastBolusStartTime of the study's series, else None;
    ``first_post``: the acquisition start of its earliest series that says it is post-contrast
    (ContrastBolusAgent or a post-contrast name), ``first_post_label`` naming it;
    ``any_sign``: whether any series shows a sign of contrast at all; ``agent_everywhere``: the
    ContrastBolusAgent is on every series, the first included, so it says nothing about one.
    """

    injection: datetime | None = None
    first_post: datetime | None = None
    first_post_label: str = ""
    any_sign: bool = False
    agent_everywhere: bool = False


def _agent(s: SeriesSummary) -> str:
    agent = s.contrast_agent.strip()
    return "" if not agent or _NEGATIVE_AGENT.match(agent) else agent


def _label(s: SeriesSummary) -> str:
    number = "" if s.series_number is None else f"#{s.series_number:g} "
    return f"{number}{s.name!r}"


def study_contrast(summaries: Sequence[SeriesSummary]) -> StudyContrast:
    """The contrast timing of one study from all its series (pure: the summaries only)."""
    everywhere = len(summaries) > 1 and all(_agent(s) for s in summaries)
    starts = [s.contrast_start for s in summaries if s.contrast_start is not None]
    posts = [s for s in summaries if (_agent(s) and not everywhere) or name_contrast(s.name) == "post"]
    timed = sorted((s for s in posts if s.acquired is not None), key=lambda s: s.acquired or datetime.min)
    return StudyContrast(
        injection=min(starts) if starts else None,
        first_post=timed[0].acquired if timed else None,
        first_post_label=_label(timed[0]) if timed else "",
        any_sign=bool(posts or starts or everywhere),
        agent_everywhere=everywhere,
    )


@dataclass(frozen=True)
class _Physics:
    label: str | None      # FLAIR, T1w, T2w, PD, STIR, T2*, "conflict", or None (missing / no rule)
    values: str            # "TR 9000 / TE 81 / TI 2500 ms"
    why: str               # the rule that matched, or what is missing
    fields: tuple[str, ...]


def weighting(s: SeriesSummary) -> tuple[str | None, str, tuple[str, ...]]:
    """The weighting TR / TE / TI imply: (FLAIR / T1w / T2w / PD / STIR / T2* or None, why, fields used)."""
    p = _physics(s)
    return p.label, f"{p.values}: {p.why}" if p.values else p.why, p.fields


def _physics(s: SeriesSummary) -> _Physics:
    fields = ["RepetitionTime", "EchoTime"]
    if s.tr is None or s.te is None:
        missing = " and ".join(n for n, v in (("RepetitionTime", s.tr), ("EchoTime", s.te)) if v is None)
        return _Physics(None, "", f"no {missing} in its headers", tuple(fields))
    ti = s.ti if s.ti is not None and s.ti > 0 else None
    ir = "IR" in s.scanning_sequence or s.inversion_recovery is True or ti is not None
    if ir:
        fields.append("InversionTime")
    gradient: bool | None = None
    if s.scanning_sequence:
        fields.append("ScanningSequence")
        gradient = "GR" in s.scanning_sequence and "SE" not in s.scanning_sequence
    elif s.echo_pulse_sequence:
        fields.append("EchoPulseSequence")
        gradient = s.echo_pulse_sequence == "GRADIENT"
    values = f"TR {s.tr:g} / TE {s.te:g}" + (f" / TI {ti:g}" if ti is not None else "") + " ms"
    if ir and ti is None:
        return _Physics(None, values, "inversion recovery without an InversionTime", tuple(fields))
    found = next((w for w in WEIGHTINGS if w.applies(ir, gradient, s.tr, s.te, ti)), None)
    if found is None:
        return _Physics(None, values, "no weighting of the table fits them", tuple(fields))
    named = _ACQUISITION_CONTRAST.get(s.acquisition_contrast)
    if named is not None:
        fields.append("AcquisitionContrast")
        if named != found.label:
            return _Physics("conflict", values, f"{found.rule}, but AcquisitionContrast is {s.acquisition_contrast}",
                            tuple(fields))
    return _Physics(found.label, values, found.rule, tuple(fields))


def _contrast_evidence(s: SeriesSummary, study: StudyContrast) -> tuple[list[tuple[str, str]], list[str]]:
    """(phase, what said it) pairs for one T1 series, and the fields used."""
    said: list[tuple[str, str]] = []
    fields: list[str] = []
    agent = _agent(s)
    if agent and not study.agent_everywhere:
        said.append(("post", f"ContrastBolusAgent {agent!r}"))
        fields.append("ContrastBolusAgent")
    by_name = name_contrast(s.name)
    if by_name in ("post", "pre"):
        said.append((by_name, f"its name says {by_name}-contrast"))
    when = s.acquired
    if when is not None and study.injection is not None:
        phase = "post" if when >= study.injection else "pre"
        said.append((phase, f"acquired at {when:%H:%M:%S}, {'after' if phase == 'post' else 'before'} the injection "
                            f"at {study.injection:%H:%M:%S} (ContrastBolusStartTime)"))
        fields += ["AcquisitionTime", "ContrastBolusStartTime"]
    elif when is not None and study.first_post is not None and when != study.first_post:
        phase = "post" if when > study.first_post else "pre"
        said.append((phase, f"acquired at {when:%H:%M:%S}, {'after' if phase == 'post' else 'before'} the study's "
                            f"first post-contrast series {study.first_post_label} ({study.first_post:%H:%M:%S})"))
        fields.append("AcquisitionTime")
    return said, fields


def _t1_phase(s: SeriesSummary, study: StudyContrast) -> tuple[str | None, str, list[str]]:
    """("T1w" / "T1wCE" / None, why, fields): a T1 series before or after the contrast agent."""
    said, fields = _contrast_evidence(s, study)
    phases = {p for p, _ in said}
    listed = "; ".join(w for _, w in said)
    if len(phases) > 1:
        return None, f"its headers disagree on the contrast: {listed}", fields
    if phases == {"post"}:
        return "T1wCE", f"after contrast: {listed}", fields
    if phases == {"pre"}:
        return "T1w", f"before contrast: {listed}", fields
    if not study.any_sign:
        return "T1w", ("before contrast: no contrast recorded anywhere in its study (no ContrastBolusAgent, "
                       "no post-contrast series name)"), fields + ["ContrastBolusAgent"]
    everywhere = " (ContrastBolusAgent is on every series of the study, so it tells nothing)" \
        if study.agent_everywhere else ""
    return None, ("no header tells whether it was acquired before or after the contrast (no ContrastBolusAgent, "
                  f"no contrast word in its name, no acquisition time against the injection){everywhere}"), fields


def type_series(s: SeriesSummary, study: StudyContrast | None = None) -> SeriesTyping:
    """The MRI type of one series: FLAIR, T1w, T1wCE, T2w or ``other``, with the reason and the headers used.

    ``study`` is its study's contrast timing (:func:`study_contrast` of the study's series);
    without it only the series' own ContrastBolusAgent and name tell pre- from post-contrast.
    """
    if study is None:
        study = study_contrast([s])
    for rule in EXCLUSIONS:
        why = rule.test(s)
        if why:
            named = tuple(f for f in rule.fields if f in why)   # the header the reason names, else all it read
            return SeriesTyping(OTHER, why, named or rule.fields)
    named, found = name_type(s.name)
    p = _physics(s)
    fields = ((s.name_field,) if s.name else _NAME_FIELDS) + p.fields
    quoted = f"{s.name_field} {s.name!r}" if s.name else "no SeriesDescription or ProtocolName"
    physics = f"{p.values} ({p.why})" if p.values else p.why
    if named == OTHER:
        return SeriesTyping(OTHER, f"{quoted} names a map or a T2* series ({found})", fields)
    if named == "several":
        return SeriesTyping(OTHER, f"{quoted} names several types ({found}); {physics}", fields)
    if p.label == "conflict":
        return SeriesTyping(OTHER, f"its sequence headers disagree: {physics}", fields)
    if named is None:
        hint = f"; {p.values} suggest {p.label} ({p.why}): set the type in series.csv if it is" if p.label else \
            f"; {physics}"
        return SeriesTyping(OTHER, f"{quoted} names no MRI type{hint}", fields)
    if p.label is None:
        return SeriesTyping(OTHER, f"{quoted} names {named}, but the sequence cannot confirm it: {physics}", fields)
    if named != p.label:
        return SeriesTyping(OTHER, f"{quoted} names {named}, but {p.values} say {p.label} ({p.why})", fields)
    if named not in MRI_TYPES:
        return SeriesTyping(OTHER, f"{quoted} and {p.values} agree on {named} ({p.why}), not one of "
                                   f"{', '.join(MRI_TYPES)}", fields)
    agreed = f"{quoted} names {named} and {p.values} agree ({p.why})"
    if named != "T1w":
        return SeriesTyping(named, agreed, fields)
    phase, phase_why, phase_fields = _t1_phase(s, study)
    fields += tuple(f for f in phase_fields if f not in fields)
    if phase is None:
        return SeriesTyping(OTHER, f"a T1 series ({agreed}), but {phase_why}", fields)
    return SeriesTyping(phase, f"{agreed}; {phase_why}", fields)


# --------------------------------------------------------------------------- header reading helpers


def _get(ds: Any, keyword: str) -> Any:
    """``ds.keyword`` or None: absent, empty, or a value pydicom cannot convert (real exports have them)."""
    if ds is None:
        return None
    try:
        value = ds.get(keyword)
    except Exception:   # a malformed value (bad DS/IS/DA) raises on conversion
        return None
    return None if value is None or value == "" else value


def _texts(ds: Any, keyword: str) -> tuple[str, ...]:
    return tuple(p for p in text_values(_get(ds, keyword)) if p)


def _text(ds: Any, keyword: str) -> str:
    value = _get(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        return "\\".join(str(v) for v in value).strip(" \x00")
    return str(value).strip(" \x00")


def _number(ds: Any, keyword: str) -> float | None:
    value = _get(ds, keyword)
    if value is None:
        return None
    if not isinstance(value, (str, bytes, int, float)) and hasattr(value, "__iter__"):
        value = next(iter(value), None)
    try:
        out = float(value.decode() if isinstance(value, bytes) else value)   # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _either_number(*sources: tuple[Any, str]) -> float | None:
    """The first of (dataset or item, keyword) that holds a number."""
    for ds, keyword in sources:
        value = _number(ds, keyword)
        if value is not None:
            return value
    return None


def _either_text(items: Sequence[Any], keyword: str) -> str:
    return next((t for t in (_text(item, keyword) for item in items) if t), "")


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _yes_no(text: str) -> bool | None:
    return {"YES": True, "NO": False}.get(text.upper()) if text else None


def _first(item: Any, keyword: str) -> Any:
    seq = _get(item, keyword)
    try:
        return seq[0] if seq else None
    except (TypeError, IndexError):
        return None


def _functional_groups(ds: Any) -> list[Any]:
    """The first per-frame item, the shared item (in that order), and every per-frame item's frame type."""
    per_frame = _get(ds, "PerFrameFunctionalGroupsSequence") or []
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    groups = [per_frame[0]] if len(per_frame) else []
    if shared is not None:
        groups.append(shared)
    groups.extend(per_frame[1:])
    return groups


def _contrast_agent(ds: Any, groups: Sequence[Any]) -> str:
    agent = _text(ds, "ContrastBolusAgent")
    if agent:
        return agent
    code = _first(ds, "ContrastBolusAgentSequence")
    if code is not None:
        return _text(code, "CodeMeaning") or _text(code, "CodeValue") or "administered"
    usage = functional_group_item(groups, "ContrastBolusUsageSequence")
    if usage is not None and _text(usage, "ContrastBolusAgentAdministered").upper() == "YES":
        return "administered"
    return ""


def _date(value: Any) -> date | None:
    text = _plain(value)
    m = re.fullmatch(r"(\d{4})\.?(\d{2})\.?(\d{2})", text)
    if not m:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None


def _time(value: Any) -> time | None:
    text = _plain(value).replace(":", "")
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", text)
    if not m:
        return None
    try:
        return time(int(m[1]), int(m[2] or 0), int(m[3] or 0), int((m[4] or "0").ljust(6, "0")))
    except ValueError:
        return None


def _datetime(value: Any) -> datetime | None:
    text = _plain(value)
    m = re.fullmatch(r"(\d{8})(\d{2,6}(?:\.\d{1,6})?)?(?:[+-]\d{4})?", text)
    if not m:
        return None
    day = _date(m[1])
    return _combine(day, _time(m[2]) if m[2] else time(0))


def _combine(day: date | None, at: time | None) -> datetime | None:
    if at is None:
        return None
    return datetime.combine(day or date(1900, 1, 1), at)


def _plain(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip(" \x00")
