"""Series typing rules (mgmt2d.data.series_type): header summaries in, (type, reason, fields) out.

Each vendor's naming with matching sequence values is typed; where the name and the physics
disagree, or one is missing, the series is ``other`` and the reason says what each said; the
T1 split into T1w / T1wCE follows ContrastBolusAgent, the name and the time of the injection.
The real headers of the shared samples are in tests/test_organize.py.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest

from mgmt2d.data.series_type import (
    SeriesSummary,
    name_contrast,
    name_type,
    study_contrast,
    type_series,
)

SE = ("SE",)
GR = ("GR",)


def series(description: str = "", **values) -> SeriesSummary:
    """A clean original 3-D-ish series of 40 slices; ``values`` override any field."""
    base = dict(description=description, image_type=("ORIGINAL", "PRIMARY", "M", "ND"), n_slices=40,
                rows=256, columns=256)
    base.update(values)
    return SeriesSummary(**base)


FLAIR_SE = dict(scanning_sequence=("SE", "IR"), tr=9000.0, te=81.0, ti=2500.0)
T2_SE = dict(scanning_sequence=SE, tr=5000.0, te=98.0)
T1_SE = dict(scanning_sequence=SE, tr=500.0, te=10.0)
MPRAGE = dict(scanning_sequence=("GR", "IR"), tr=2300.0, te=2.3, ti=900.0)
BRAVO = dict(scanning_sequence=GR, tr=8.2, te=3.2, ti=450.0)
TFE = dict(scanning_sequence=GR, tr=8.1, te=3.7, ti=0.0)      # Philips writes InversionTime 0 when there is none


@pytest.mark.parametrize(("description", "physics", "expected"), [
    ("t2_tirm_tra_dark-fluid", FLAIR_SE, "FLAIR"),          # Siemens
    ("Ax T2 FLAIR", FLAIR_SE, "FLAIR"),                     # GE
    ("T2W_FLAIR", FLAIR_SE, "FLAIR"),                       # Philips
    ("FLAIR_AX", dict(scanning_sequence=("IR",), tr=10000.0, te=100.0, ti=2500.0), "FLAIR"),   # Canon
    ("t2_space_dark-fluid_sag_p2_iso", dict(scanning_sequence=("SE", "IR"), tr=5000.0, te=387.0, ti=1800.0),
     "FLAIR"),
    ("t2_tse_tra_512_p2", T2_SE, "T2w"),
    ("Ax T2 FRFSE", T2_SE, "T2w"),
    ("T2W_TSE", T2_SE, "T2w"),
    ("T2WI_FSE_AX", T2_SE, "T2w"),
    ("t1_mprage_sag_p2_iso", MPRAGE, "T1w"),
    ("Sag T1 BRAVO", BRAVO, "T1w"),
    ("sT1W_3D_TFE", TFE, "T1w"),
    ("T1WI_SE_AX", T1_SE, "T1w"),
    ("Ax T1 FLAIR", dict(scanning_sequence=("SE", "IR"), tr=2200.0, te=12.0, ti=860.0), "T1w"),   # GE T1 FLAIR
    ("t1_mprage_sag_p2_iso_KM", MPRAGE, "T1wCE"),
    ("Sag T1 BRAVO +C", BRAVO, "T1wCE"),
    ("T1W_3D_TFE +C", TFE, "T1wCE"),
    ("T1WI_SE_AX_GD", T1_SE, "T1wCE"),
    ("AX T1 POST GAD", T1_SE, "T1wCE"),
])
def test_vendor_names_with_matching_sequences_are_typed(description, physics, expected):
    typed = type_series(series(description, **physics))
    assert typed.type == expected, typed.reason
    assert "SeriesDescription" in typed.fields and "RepetitionTime" in typed.fields and "EchoTime" in typed.fields
    assert description in typed.reason


@pytest.mark.parametrize(("values", "needle"), [
    (dict(image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), description="3Plane Loc SSFSE"), "localiser"),
    (dict(description="AAHead_Scout_64ch-head-coil"), "localiser"),
    (dict(description="t1_mprage_sag_p2_iso_MPR_tra", image_type=("DERIVED", "SECONDARY", "MPR")), "derived"),
    (dict(description="T1 post", image_type=("ORIGINAL", "PRIMARY", "M", "MIP")), "reformat or projection"),
    (dict(description="ep2d_diff_3scan_trace_p2", image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW")),
     "diffusion"),
    (dict(description="Series 7", diffusion_b=1000.0), "DiffusionBValue 1000"),
    (dict(description="Ax DWI 1000b"), "diffusion"),
    (dict(description="ep2d_perf_p2"), "perfusion"),
    (dict(description="B0 NS", frame_types=("M", "FIELD_MAP")), "field map"),
    (dict(description="t1_fl2d_tra", complex_component="PHASE"), "field map or phase"),
    (dict(description="SWI_Images"), "susceptibility"),
    (dict(description="t2_fl2d_tra_hemo"), "susceptibility"),
    (dict(description="tof_3d_multi-slab"), "angiography"),
    (dict(description="REST1 w SMS", echo_planar=True), "EPI"),
    (dict(description="ax_asc_35sl", scanning_sequence=("EP",)), "EPI"),
    (dict(description="t2 ciss3d"), "steady-state"),
    (dict(description="pd+t2_tse_tra", n_volumes=2, volumes_by=("EchoNumbers",), **T2_SE), "2 volumes"),
    (dict(description="t2_tse_tra", n_slices=3, **T2_SE), "only 3 slices"),
    (dict(description="t2_tse_tra", modality="CT", **T2_SE), "not an MR series"),
])
def test_series_that_are_none_of_the_four_types_are_other_with_the_reason(values, needle):
    typed = type_series(series(**values))
    assert typed.type == "other"
    assert needle in typed.reason


def test_exclusions_win_over_a_type_name_and_matching_physics():
    """A derived reformat of a post-contrast T1 has the T1's name and sequence, and is still not a T1wCE."""
    mpr = series("t1_mprage_sag_p2_iso_KM_MPR_cor", image_type=("DERIVED", "SECONDARY", "MPR"), **MPRAGE)
    assert type_series(mpr).type == "other"


@pytest.mark.parametrize(("description", "physics", "needle"), [
    ("t2_tse_tra", T1_SE, "names T2w, but TR 500 / TE 10 ms say T1w"),              # name and physics disagree
    ("T2W_FLAIR", T2_SE, "names FLAIR, but TR 5000 / TE 98 ms say T2w"),
    ("Ax T2 FLAIR", dict(), "no RepetitionTime and EchoTime"),                       # physics missing
    ("t2_tse_tra", dict(tr=5000.0), "no EchoTime"),
    ("Series 5", T2_SE, "suggest T2w"),                                              # the name says nothing
    ("", T1_SE, "no SeriesDescription or ProtocolName names no MRI type"),
    ("T2 GRE", dict(scanning_sequence=GR, tr=600.0, te=20.0), "say T2*"),
    ("pd_tse_tra", dict(scanning_sequence=SE, tr=3000.0, te=12.0), "agree on PD"),
    ("T1 T2 combined", T2_SE, "names several types"),
    ("T2 map", T2_SE, "names a map"),
    ("FLAIR_AX", dict(scanning_sequence=("IR",), tr=10000.0, te=100.0), "inversion recovery without an InversionTime"),
])
def test_disagreement_or_missing_headers_give_other_never_a_guess(description, physics, needle):
    typed = type_series(series(description, **physics))
    assert typed.type == "other"
    assert needle in typed.reason


def test_enhanced_mr_acquisition_contrast_must_agree_with_the_timing():
    flair = series("3D_Brain_VIEW_FLAIR", echo_pulse_sequence="SPIN", inversion_recovery=True, tr=4800.0, te=320.0,
                   ti=1650.0, enhanced=True)
    assert type_series(replace(flair, acquisition_contrast="FLUID_ATTENUATED")).type == "FLAIR"
    assert "EchoPulseSequence" in type_series(flair).fields
    clash = type_series(replace(flair, acquisition_contrast="T1"))
    assert clash.type == "other" and "AcquisitionContrast is T1" in clash.reason


# --------------------------------------------------------------------------- T1 before / after contrast


def at(hour: int, minute: int) -> datetime:
    return datetime(2024, 3, 1, hour, minute)


def t1(description: str = "t1_mprage_sag", when: datetime | None = None, **values) -> SeriesSummary:
    return series(description, acquired=when, **{**MPRAGE, **values})


def test_the_injection_time_splits_t1_into_pre_and_post():
    perfusion = series("ep2d_perf", acquired=at(9, 30), contrast_agent="Gadovist", contrast_start=at(9, 31))
    pre, post = t1(when=at(9, 10)), t1(when=at(9, 45))
    study = study_contrast([perfusion, pre, post])
    assert study.injection == at(9, 31)
    typed_pre, typed_post = type_series(pre, study), type_series(post, study)
    assert typed_pre.type == "T1w" and "before the injection at 09:31:00" in typed_pre.reason
    assert typed_post.type == "T1wCE" and "after the injection" in typed_post.reason
    assert "ContrastBolusStartTime" in typed_post.fields


def test_without_a_start_time_the_first_post_contrast_series_is_the_mark():
    post = t1("Sag T1 BRAVO +C", at(10, 0), contrast_agent="Dotarem")
    before, after = t1("Sag T1 BRAVO", at(9, 40)), t1("Sag T1 BRAVO", at(10, 20))
    study = study_contrast([before, post, after])
    assert type_series(before, study).type == "T1w"
    typed = type_series(after, study)
    assert typed.type == "T1wCE" and "first post-contrast series" in typed.reason


def test_contradicting_contrast_headers_give_other():
    perfusion = series("ep2d_perf", acquired=at(9, 30), contrast_start=at(9, 31))
    labelled_post_but_early = t1("t1_mprage_KM", at(9, 0))
    typed = type_series(labelled_post_but_early, study_contrast([perfusion, labelled_post_but_early]))
    assert typed.type == "other" and "disagree on the contrast" in typed.reason
    named_pre_with_agent = t1("T1 pre", at(9, 0), contrast_agent="Gadovist")
    assert type_series(named_pre_with_agent).type == "other"


def test_an_agent_on_every_series_says_nothing():
    """Sites that fill ContrastBolusAgent for the whole study: the agent cannot mark the post-contrast T1."""
    scout = series("localizer", acquired=at(8, 0), contrast_agent="Gadovist")
    first, second = t1(when=at(8, 10), contrast_agent="Gadovist"), t1(when=at(8, 40), contrast_agent="Gadovist")
    study = study_contrast([scout, first, second])
    assert study.agent_everywhere
    typed = type_series(first, study)
    assert typed.type == "other" and "every series" in typed.reason


def test_a_study_without_any_sign_of_contrast_has_pre_contrast_t1():
    study = study_contrast([t1(when=at(8, 10)), series("t2_tse", acquired=at(8, 20), **T2_SE)])
    typed = type_series(t1(when=at(8, 10)), study)
    assert typed.type == "T1w" and "no contrast recorded anywhere" in typed.reason


def test_a_t1_that_cannot_be_placed_against_the_injection_is_other():
    post = t1("t1_mprage_KM", at(10, 0), contrast_agent="Gadovist")
    untimed = t1("t1_mprage", None)
    typed = type_series(untimed, study_contrast([post, untimed]))
    assert typed.type == "other" and "before or after the contrast" in typed.reason


@pytest.mark.parametrize(("name", "expected"), [
    ("t1_mprage_sag_KM", "post"), ("Ax T1 +C", "post"), ("T1 post Gd", "post"), ("T1_GD", "post"),
    ("T1 pre contrast", "pre"), ("T1 ohne KM", "pre"), ("t1_se_tra_nativ", "pre"), ("T1 w/o", "pre"),
    ("T1wCE", "post"), ("BraTS-GLI-00001-000-t1c", "post"),
    ("T1 pre and post", "both"), ("t1_space_sag", None), ("t1_mprage_sag_p2_iso", None),
])
def test_contrast_words_of_a_name(name, expected):
    assert name_contrast(name) == expected


@pytest.mark.parametrize(("name", "expected"), [
    ("t1_MPRAGEcr_noGRAPPA", "T1w"), ("T1W_3D_TFE", "T1w"), ("t2_tirm_tra_dark-fluid", "FLAIR"),
    ("Sag CUBE FLAIR", "FLAIR"), ("Ax T1 FLAIR", "T1w"), ("t2*_gre", "other"), ("B0 NS", None),
    ("REST1 w SMS PF7-8", None), ("pd+t2_tse", "several"),
])
def test_type_words_of_a_name(name, expected):
    assert name_type(name)[0] == expected
