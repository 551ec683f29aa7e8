"""``python -m mgmt2d evaluate`` and ``mgmt2d.statistics``: AUC, its intervals, DeLong, comparisons, inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve

from mgmt2d import statistics as st
from mgmt2d.__main__ import main as mgmt2d_main

# ---------------------------------------------------------------------------------------------------------------------
# A published worked example: pROC's aSAH data (Turck et al. 2010, Intensive Care Med 36:107; 113 patients,
# 41 poor outcome = cases, 72 good = controls) and the DeLong numbers pROC publishes for it:
#   - documentation of ci.auc / print.roc: s100b AUC 0.7314, "95% CI: 0.6301-0.8326 (DeLong)";
#   - tests/testthat/test-var.R, test-cov.R, test-ci.auc.R and test-roc.test.R of github.com/xrobin/pROC:
#     var(wfns) 0.00146991470882363, var(ndka) 0.0031908105493913, var(s100b) 0.00266868245717244,
#     cov(s100b, wfns) 0.00119615567376754, cov(wfns, ndka) -0.000532967856762438,
#     cov(ndka, s100b) -0.000756164938056579, ci.auc(ndka) 0.501244999271703-0.722670989888189,
#     roc.test(wfns, s100b): Z 2.20898359144091, p 0.0271757822291882, CI 0.0104061769564846-0.174214419249478,
#     roc.test(wfns, ndka): Z 2.79777591868904, p 0.00514557970691098.
# The AUC and DeLong's (co)variances depend on the scores only through each case-control comparison
# (>, =, <). pROC's tests/testthat/helper-deLongPlacementsCpp-expected.R publishes every patient's DeLong
# placements for the three markers (cases and controls each in aSAH row order); the rank levels below were
# rebuilt from those placements (each case placed in the control ordering it implies) and reproduce every
# placement exactly, so they are the aSAH scores up to a monotone transform. wfns is the WFNS grade itself.
ASAH_CASES = {  # 41 cases, rank levels
    "wfns": "3 2 4 5 5 5 5 2 5 2 1 2 5 4 4 2 5 5 5 2 5 2 5 2 4 5 4 4 1 4 4 2 2 5 5 2 2 5 5 5 5",
    "s100b": "9 6 12 8 26 31 29 3 20 5 3 24 22 28 31 16 31 31 31 3 31 18 1 5 14 31 16 31 4 16 9 6 7 14 31 10 31 19 "
             "31 31 26",
    "ndka": "38 25 29 36 4 10 19 44 48 44 44 15 33 40 6 8 31 2 52 40 17 19 23 31 42 27 40 8 50 35 4 13 40 4 12 44 21 "
            "33 46 19 36",
}
ASAH_CONTROLS = {  # 72 controls
    "wfns": "1 1 1 1 5 1 2 2 1 2 2 1 1 1 2 1 2 1 1 3 4 1 4 1 5 5 1 1 2 4 1 1 2 2 1 2 1 2 2 1 1 1 1 2 1 2 1 1 3 2 4 2 "
            "1 4 1 1 5 4 2 2 1 1 1 3 1 2 2 4 4 1 1 1",
    "s100b": "9 10 6 2 27 13 6 6 2 4 2 5 7 3 13 3 7 9 13 2 12 10 21 5 30 27 12 3 25 27 7 4 5 4 2 9 6 10 11 2 2 5 2 5 "
             "4 12 5 4 20 7 17 3 6 19 3 2 15 23 6 11 4 10 6 3 2 13 11 27 13 11 30 28",
    "ndka": "1 9 7 18 5 35 5 39 30 39 37 47 11 5 24 5 5 51 26 14 14 39 3 7 5 13 28 7 34 45 7 5 24 11 7 28 43 41 16 22 "
            "49 5 37 14 18 18 34 3 37 24 11 18 39 18 22 7 14 18 43 9 24 27 45 20 24 11 43 16 32 41 5 30",
}


def _asah() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    labels = np.r_[np.ones(41, int), np.zeros(72, int)]
    scores = {k: np.array((ASAH_CASES[k] + " " + ASAH_CONTROLS[k]).split(), dtype=float) for k in ASAH_CASES}
    return labels, scores


def test_delong_matches_proc_published_asah_numbers():
    y, s = _asah()
    assert st.auc(y, s["s100b"]) == pytest.approx(0.731368563685637, abs=1e-12)  # pROC: 0.7314
    d = st.delong_auc(y, s["s100b"])
    assert d.variance == pytest.approx(0.00266868245717244, rel=1e-10)
    assert (round(d.interval.low, 4), round(d.interval.high, 4)) == (0.6301, 0.8326)
    ndka = st.delong_auc(y, s["ndka"])
    assert ndka.auc == pytest.approx(0.611957994579946, abs=1e-12)
    assert (ndka.interval.low, ndka.interval.high) == pytest.approx((0.501244999271703, 0.722670989888189), abs=1e-12)
    assert st.delong_auc(y, s["wfns"]).variance == pytest.approx(0.00146991470882363, rel=1e-10)
    assert ndka.variance == pytest.approx(0.0031908105493913, rel=1e-10)

    aucs, cov = st.delong_covariance(y, np.vstack([s["wfns"], s["s100b"], s["ndka"]]))
    assert aucs == pytest.approx([0.823678861788618, 0.731368563685637, 0.611957994579946], abs=1e-12)
    assert cov[1, 0] == pytest.approx(0.00119615567376754, rel=1e-10)
    assert cov[0, 2] == pytest.approx(-0.000532967856762438, rel=1e-10)
    assert cov[2, 1] == pytest.approx(-0.000756164938056579, rel=1e-10)

    diff, interval, z, p = st.delong_test(y, s["wfns"], s["s100b"])
    assert (z, p) == pytest.approx((2.20898359144091, 0.0271757822291882), rel=1e-10)
    assert (interval.low, interval.high) == pytest.approx((0.0104061769564846, 0.174214419249478), rel=1e-10)
    assert diff == pytest.approx(aucs[0] - aucs[1], abs=1e-15)
    _, _, z2, p2 = st.delong_test(y, s["wfns"], s["ndka"])
    assert (z2, p2) == pytest.approx((2.79777591868904, 0.00514557970691098), rel=1e-10)
    # pROC: identical curves give Z = 0, p = 1
    assert st.delong_test(y, s["wfns"], s["wfns"])[2:] == (0.0, 1.0)


def test_auc_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(0.4 * y, 1), 1)  # rounded: many ties across classes
    expected = roc_auc_score(y, s)
    assert st.auc(y, s) == expected
    assert st.delong_auc(y, s).auc == pytest.approx(expected, abs=1e-12)
    identity = np.argsort(-y, kind="stable")[None, :]  # one "resample": every patient once, positives first
    assert st.resampled_aucs(y, s, identity)[0] == pytest.approx(expected, abs=1e-12)
    assert st.bootstrap_auc(y, s, st.BootstrapOptions(resamples=200)).auc == expected


def _binormal(rng: np.random.Generator, n: int, true_auc: float) -> tuple[np.ndarray, np.ndarray]:
    """Positives ~ N(d, 1), negatives ~ N(0, 1): AUC = Phi(d / sqrt(2))."""
    d = np.sqrt(2) * stats.norm.ppf(true_auc)
    y = np.r_[np.ones(n, int), np.zeros(n, int)]
    return y, rng.normal(d * y, 1.0)


def test_intervals_cover_the_true_auc_at_about_the_nominal_rate():
    true_auc, draws, options = 0.70, 200, st.BootstrapOptions(resamples=400, seed=11)
    rng = np.random.default_rng(2024)
    covered_boot = covered_delong = covered_too_narrow = 0
    for _ in range(draws):
        y, s = _binormal(rng, 60, true_auc)
        boot = st.bootstrap_auc(y, s, options)
        delong = st.delong_auc(y, s)
        covered_boot += boot.interval.low <= true_auc <= boot.interval.high
        covered_delong += delong.interval.low <= true_auc <= delong.interval.high
        half = (boot.interval.high - boot.interval.low) / 4  # an interval of half the width: must fail the check
        covered_too_narrow += boot.auc - half <= true_auc <= boot.auc + half
    assert 0.88 <= covered_boot / draws <= 0.99
    assert 0.88 <= covered_delong / draws <= 0.99
    assert covered_too_narrow / draws < 0.80  # the tolerance above has the power to catch a broken interval


def test_roc_band_sensitivity_is_the_empirical_curve():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 57)
    s = np.round(rng.normal(0.8 * y, 1), 1)  # ties across classes
    fpr, tpr, _ = roc_curve(y, s)
    grid = np.linspace(0, 1, 201)
    expected = [tpr[fpr <= f + 1e-12].max() for f in grid]
    assert st.sensitivity_at(y, s, grid) == pytest.approx(expected, abs=1e-12)
    band_fpr, low, high = st.roc_band(y, s, st.BootstrapOptions(resamples=300))
    mid = np.interp(band_fpr, fpr, tpr)
    assert (low <= high).all() and np.mean((low <= mid + 1e-9) & (mid <= high + 1e-9)) > 0.9


def test_bootstrap_is_seeded_and_stratified():
    rng = np.random.default_rng(5)
    y, s = _binormal(rng, 30, 0.75)
    y = y[5:]  # unbalanced: 25 positives, 30 negatives
    s = s[5:]
    a = st.bootstrap_auc(y, s, st.BootstrapOptions(resamples=300, seed=1))
    b = st.bootstrap_auc(y, s, st.BootstrapOptions(resamples=300, seed=1))
    c = st.bootstrap_auc(y, s, st.BootstrapOptions(resamples=300, seed=2))
    assert a.interval == b.interval and a.interval != c.interval
    idx = st.stratified_resamples(y, 50, np.random.default_rng(0))
    assert (y[idx].sum(axis=1) == 25).all() and (y[idx[:, :25]] == 1).all()
    # the bootstrap and DeLong standard errors agree on a cohort of this size
    big_y, big_s = _binormal(np.random.default_rng(9), 150, 0.65)
    boot = st.bootstrap_auc(big_y, big_s, st.BootstrapOptions(resamples=2000))
    assert np.std(boot.samples, ddof=1) == pytest.approx(st.delong_auc(big_y, big_s).se, rel=0.1)


def test_paired_difference_is_the_difference_of_the_aucs():
    rng = np.random.default_rng(8)
    y, a = _binormal(rng, 80, 0.72)
    b = 0.6 * a + rng.normal(0, 0.8, len(a))
    result = st.compare_aucs(y, a, b, st.BootstrapOptions(resamples=500))
    assert result.difference == st.auc(y, a) - st.auc(y, b)
    assert (result.auc_a, result.auc_b) == (st.auc(y, a), st.auc(y, b))
    assert result.bootstrap.low < result.difference < result.bootstrap.high
    assert 0 < result.delong_p < 1
    same = st.compare_aucs(y, a, a.copy(), st.BootstrapOptions(resamples=200))
    assert same.difference == 0 and same.bootstrap == st.Interval(0.0, 0.0) and same.delong_p == 1.0


def test_thresholds_youden_and_calibration():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.3, 0.45, 0.6, 0.4, 0.55, 0.7, 0.9])
    m = st.at_threshold(y, s, 0.5)
    assert (m.tp, m.fn, m.tn, m.fp) == (3, 1, 3, 1) and m.sensitivity == 0.75 and m.specificity == 0.75
    assert st.at_threshold(y, s, 0.55).tp == 3  # score >= threshold is positive
    # sens + spec - 1 is 0.5 at 0.55 and at 0.4 (and 0.7); the highest such score is taken
    assert st.youden_threshold(y, s) == 0.7
    rng = np.random.default_rng(1)
    yy = rng.integers(0, 2, 400)
    pp = np.clip(rng.beta(2, 2, 400) * 0.6 + 0.3 * yy, 0, 1)
    pp[:3] = [0.5, 0.1, 0.0]  # values on bin edges
    bins = st.calibration_bins(yy, pp)
    assert sum(b.count for b in bins) == 400
    full = [b for b in bins if b.count]
    prob_true, prob_pred = calibration_curve(yy, pp, n_bins=10)
    assert [b.observed_rate for b in full] == pytest.approx(prob_true)
    assert [b.mean_predicted for b in full] == pytest.approx(prob_pred)
    assert st.brier_score(yy, pp) == pytest.approx(brier_score_loss(yy, pp))


def test_single_class_is_refused():
    with pytest.raises(st.StatisticsError, match="both classes"):
        st.auc(np.ones(5, int), np.linspace(0, 1, 5))


# --- the command -----------------------------------------------------------------------------------------------------

def _cohort(tmp_path: Path, n: int = 80) -> dict[str, Path]:
    """Labels (unpadded numeric IDs), a submission missing 2 labelled patients and holding 1 unlabelled,
    another submission, a per-type file with T1w unscored for some, an exclusion list."""
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], n // 2)
    z = rng.normal(0.9 * y, 1)
    p = 1 / (1 + np.exp(-z))
    q = 1 / (1 + np.exp(-(0.4 * z + rng.normal(0, 1, n))))
    ids = [f"{k + 1:05d}" for k in range(n)]
    files = {name: tmp_path / f"{name}.csv" for name in ("labels", "sub", "other", "per_type")}
    files["labels"].write_text("BraTS21ID,MGMT_value\n" + "".join(f"{int(i)},{v}\n" for i, v in zip(ids, y)))
    files["sub"].write_text("BraTS21ID,MGMT_value\n" + "".join(f"{i},{v:.6f}\n" for i, v in zip(ids[2:], p[2:]))
                            + "99999,0.5\n")
    files["other"].write_text("BraTS21ID,MGMT_value\n" + "".join(f"{i},{v:.6f}\n" for i, v in zip(ids, q)))
    rows = []
    for k, (i, v) in enumerate(zip(ids, p)):
        for t in ("FLAIR", "T1w"):
            prob = "" if (t == "T1w" and k % 5 == 0) else f"{v:.6f}"
            rows.append(f"{i},{t},3,10,1,{prob},\n")
    files["per_type"].write_text("BraTS21ID,type,kept,total,chunks,prob,note\n" + "".join(rows))
    files["exclude"] = tmp_path / "exclude.txt"
    files["exclude"].write_text("00005\n6\nUPENN-GBM-00002_11\n")
    files["y"], files["p"], files["q"], files["ids"] = y, p, q, ids  # type: ignore[assignment]
    return files


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mgmt2d", "evaluate", *argv], capture_output=True, text=True)


def test_command_end_to_end(capsys, tmp_path: Path):
    f = _cohort(tmp_path)
    out = tmp_path / "eval"
    argv = ["--predictions", str(f["sub"]), "--labels", str(f["labels"]), "--compare", str(f["other"]),
            "--per-type", str(f["per_type"]), "--exclude-ids", str(f["exclude"]), "--out", str(out)]
    proc = _run(*argv)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {"metrics.json", "roc.png", "calibration.png"}
    assert all((out / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in ("roc.png", "calibration.png"))
    m = json.loads((out / "metrics.json").read_text())

    patients = m["patients"]
    assert patients["labelled_without_prediction"] == ["00001", "00002"]
    assert patients["predicted_without_label"] == ["99999"]
    assert patients["excluded"]["dropped_from_labels"] == ["00005", "00006"]
    assert patients["excluded"]["not_in_either_file"] == ["UPENN-GBM-00002_11"]
    ids, y, p, q = f["ids"], f["y"], f["p"], f["q"]
    keep = [k for k, i in enumerate(ids) if i not in ("00001", "00002", "00005", "00006")]
    assert patients["scored"] == [ids[k] for k in keep]
    assert m["auc"]["auc"] == pytest.approx(roc_auc_score(y[keep], np.round(p[keep], 6)), abs=1e-12)
    assert m["auc"]["bootstrap_ci"][0] < m["auc"]["auc"] < m["auc"]["bootstrap_ci"][1]
    assert m["intervals"]["resamples"] == 2000 and m["intervals"]["seed"] == 0
    assert "percentile" in m["intervals"]["bootstrap"] and "stratified" in m["intervals"]["bootstrap"]

    c = m["compare"][0]
    assert c["patients"] == len(keep) and c["scored_missing_in_other"] == []
    assert c["difference"] == pytest.approx(c["this"]["auc"] - c["other"]["auc"], abs=1e-15)
    assert c["other"]["auc"] == pytest.approx(roc_auc_score(y[keep], np.round(q[keep], 6)), abs=1e-12)
    assert 0 < c["delong_p"] <= 1

    # a type's AUC is over the labelled patients it scored (the 2 without a submission row included)
    labelled = [k for k, i in enumerate(ids) if i not in ("00005", "00006")]
    assert m["per_type"]["FLAIR"]["patients"] == len(labelled)
    assert m["per_type"]["T1w"]["patients"] == len([k for k in labelled if k % 5])
    assert m["per_type"]["T1w"]["not_scored"] == [ids[k] for k in keep if k % 5 == 0]
    assert m["thresholds"]["0.5"]["tp"] + m["thresholds"]["0.5"]["fn"] == int(y[keep].sum())
    assert sum(b["count"] for b in m["calibration"]["bins"]) == len(keep)

    assert "patients scored" in proc.stdout and "00001, 00002" in proc.stdout and "DeLong p" in proc.stdout

    before = (out / "metrics.json").read_bytes()
    assert mgmt2d_main(["evaluate", *argv]) == 2  # an earlier evaluation is kept without --overwrite
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.json exists" in err and "--overwrite" in err
    assert (out / "metrics.json").read_bytes() == before
    assert mgmt2d_main(["evaluate", *argv, "--overwrite", "--seed", "1"]) == 0
    assert json.loads((out / "metrics.json").read_text())["intervals"]["seed"] == 1


def _evaluate_in_process(capsys, tmp_path: Path, labels: Path, sub: Path, *extra: str) -> tuple[int, str]:
    code = mgmt2d_main(["evaluate", "--labels", str(labels), "--predictions", str(sub),
                        "--out", str(tmp_path / "out"), *extra])
    return code, capsys.readouterr().err


H = "BraTS21ID,MGMT_value\n"


@pytest.mark.parametrize("labels_rows, sub_rows, expected", [
    ("1,0\n2,2\n", "1,0.2\n2,0.3\n", "labels.csv line 3: MGMT_value is '2' for patient 00002; labels must be 0 or 1"),
    ("1,0\n2,1\n", "1,0.2\n2,1.5\n", "sub.csv line 3: MGMT_value is '1.5'"),
    ("1,0\n2,1\n", "1,nan\n2,0.5\n", "sub.csv line 2: MGMT_value is 'nan'"),
    ("1,0\n\n2,1\n", "1,0.2\n2,0.3\n", "labels.csv line 3 is blank"),
    ("1,0\n2,1\n", "1,0.2\n2,\n", "sub.csv line 3: MGMT_value is ''"),
    ("1,1\n2,1\n", "1,0.2\n2,0.3\n", "AUC needs both classes"),
    ("1,0\n2,1\n", "3,0.2\n4,0.3\n", "no patient is in both"),
    ("1,0\n001,1\n", "1,0.2\n", "lists 00001 twice (lines 2 and 3)"),
    ("1,0\n../x,1\n", "1,0.2\n", "labels.csv line 3: patient ID '../x'"),
])
def test_bad_inputs_are_one_line_and_write_nothing(capsys, tmp_path: Path, labels_rows, sub_rows, expected):
    labels, sub = tmp_path / "labels.csv", tmp_path / "sub.csv"
    labels.write_text(H + labels_rows)
    sub.write_text(H + sub_rows)
    code, err = _evaluate_in_process(capsys, tmp_path, labels, sub)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err
    assert not (tmp_path / "out").exists()


def test_bad_input_through_the_command_line(tmp_path: Path):
    f = _cohort(tmp_path, n=10)
    proc = _run("--predictions", str(tmp_path / "missing.csv"), "--labels", str(f["labels"]),
                "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing.csv'} not found; "
                                                "give the path of an existing CSV file"]



def test_missing_column_and_too_few_resamples(capsys, tmp_path: Path):
    f = _cohort(tmp_path, n=10)
    code, err = _evaluate_in_process(capsys, tmp_path, f["labels"], f["sub"], "--resamples", "100")
    assert code == 2 and "at least 2000" in err
    code, err = _evaluate_in_process(capsys, tmp_path, f["labels"], f["sub"], "--label-column", "methylated")
    assert code == 2 and "has no column 'methylated'" in err and "--label-column" in err


def test_exclusions_as_csv_and_other_id_columns(capsys, tmp_path: Path):
    labels, sub, exclude = tmp_path / "labels.csv", tmp_path / "sub.csv", tmp_path / "overlap.csv"
    ids = [f"UPENN-GBM-{k:05d}_11" for k in range(1, 9)]
    labels.write_text("case,methylated\n" + "".join(f"{i},{int(k >= 4)}\n" for k, i in enumerate(ids)))
    sub.write_text("case,prob\n" + "".join(f"{i},{0.1 * k:.1f}\n" for k, i in enumerate(ids)))
    exclude.write_text("case,BraTS2021\n" + f"{ids[0]},00012\n{ids[1]},00013\n")
    code, _ = _evaluate_in_process(capsys, tmp_path, labels, sub, "--exclude-ids", str(exclude),
                                   "--id-column", "case", "--label-column", "methylated",
                                   "--prediction-column", "prob")
    assert code == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["patients"]["scored"] == ids[2:]
    assert m["patients"]["excluded"]["listed"] == 2 and m["auc"]["auc"] == 1.0
