"""``python -m mgmt2d evaluate``: a submission's patient AUC with confidence intervals, and what to trust of it.

    python -m mgmt2d evaluate --predictions SUB.csv --labels LABELS.csv [--compare OTHER.csv ...]
        [--per-type SUB_per_type.csv] [--exclude-ids FILE] --out DIR [--overwrite]

Scores the patients present in both files and names those missing on either side; writes
DIR/metrics.json (every number, the interval methods, the patients scored, missing and excluded),
DIR/roc.png (ROC curve with its bootstrap band) and DIR/calibration.png (reliability diagram), and
prints a short table. The statistics are in ``mgmt2d.statistics``.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mgmt2d import statistics as st
from mgmt2d.data import task2
from mgmt2d.data.io import atomic_path, check_writable, library_versions, write_json_atomic

OUTPUTS = ("metrics.json", "roc.png", "calibration.png")
MIN_RESAMPLES = 2000
SHOW_IDS = 20  # patients named on stdout per list; metrics.json has them all


class EvaluateError(ValueError):
    """A bad input to ``evaluate``; the message names the file and the fix."""


def read_labels(path: Path, id_column: str, label_column: str) -> dict[str, int]:
    """Patient -> 0/1 label (:func:`mgmt2d.data.task2.read_labels`, the one labels reader)."""
    return task2.read_labels(path, task2.LabelColumns(id_column, label_column))


def _probability(text: str, path: Path, line: int, column: str, pid: str, allow_empty: bool = False) -> float:
    """A probability in [0, 1]; with ``allow_empty`` an empty or NaN cell is NaN (a type not scored)."""
    if allow_empty and text.lower() in ("", "nan"):
        return math.nan
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise EvaluateError(
            f"{path} line {line}: {column} is {text!r} for patient {pid}; predictions must be probabilities in [0, 1]"
        )
    return value


def read_predictions(path: Path, id_column: str, prediction_column: str) -> dict[str, float]:
    """Patient -> probability in [0, 1], finite; anything else is one line naming file, line and value."""
    return {
        row.id: _probability(row.values[prediction_column], path, row.line, prediction_column, row.id)
        for row in task2.read_id_table(path, id_column, (prediction_column,),
                                       {id_column: "--id-column", prediction_column: "--prediction-column"})
    }


def read_per_type(path: Path, id_column: str) -> dict[str, dict[str, float]]:
    """inference's <submission>_per_type.csv -> {type: {patient: prob}}, leaving out types not scored (empty prob)."""
    out: dict[str, dict[str, float]] = {}
    for row in task2.read_id_table(path, id_column, ("type", "prob"), key_columns=("type",)):
        prob = _probability(row.values["prob"], path, row.line, "prob", row.id, allow_empty=True)
        by_type = out.setdefault(row.values["type"], {})
        if math.isfinite(prob):
            by_type[row.id] = prob
    return out


def read_exclusions(path: Path, id_column: str) -> list[str]:
    """IDs to leave out: one per line, or a CSV with the ID column."""
    if not path.is_file():
        raise EvaluateError(f"{path} not found; --exclude-ids takes a file with one patient ID per line")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise EvaluateError(f"{path} is not a UTF-8 text file; --exclude-ids takes one patient ID per line") from None
    first = lines[0] if lines else ""
    if "," in first or first.strip() == id_column:
        return list(dict.fromkeys(row.id for row in task2.read_id_table(path, id_column)))
    ids = [task2.format_id(text.strip(), f"{path} line {number}")
           for number, text in enumerate(lines, start=1) if text.strip()]
    return list(dict.fromkeys(ids))


def _interval(interval: st.Interval) -> list[float]:
    return [interval.low, interval.high]


def auc_summary(labels: np.ndarray, scores: np.ndarray, options: st.BootstrapOptions) -> dict[str, Any]:
    """AUC with both intervals, as stored in metrics.json."""
    boot = st.bootstrap_auc(labels, scores, options)
    delong = st.delong_auc(labels, scores, options.level)
    return {
        "auc": boot.auc,
        "bootstrap_ci": _interval(boot.interval),
        "bootstrap_se": float(np.std(boot.samples, ddof=1)),
        "delong_ci": _interval(delong.interval),
        "delong_se": delong.se,
        "patients": int(len(labels)),
        "positives": int(np.sum(labels)),
        "negatives": int(len(labels) - np.sum(labels)),
    }


def threshold_summary(labels: np.ndarray, scores: np.ndarray, level: float) -> dict[str, Any]:
    def one(threshold: float, with_ci: bool) -> dict[str, Any]:
        m = st.at_threshold(labels, scores, threshold)
        out: dict[str, Any] = {"threshold": m.threshold, "sensitivity": m.sensitivity, "specificity": m.specificity,
                               "tp": m.tp, "fn": m.fn, "tn": m.tn, "fp": m.fp}
        if with_ci:
            out["sensitivity_ci"] = _interval(st.proportion_interval(m.tp, m.tp + m.fn, level))
            out["specificity_ci"] = _interval(st.proportion_interval(m.tn, m.tn + m.fp, level))
            out["ci_method"] = "Wilson score interval"
        return out

    youden = one(st.youden_threshold(labels, scores), with_ci=False)
    youden["note"] = "threshold chosen on these patients: its sensitivity and specificity are optimistic"
    return {"0.5": one(0.5, with_ci=True), "youden": youden}


def _named(ids: list[str]) -> str:
    shown = ", ".join(ids[:SHOW_IDS])
    return shown + (f", ... ({len(ids)} in metrics.json)" if len(ids) > SHOW_IDS else "")


@dataclass
class Cohort:
    """The patients scored: those labelled and predicted, after exclusions, in sorted ID order."""

    ids: list[str]
    labels: np.ndarray
    scores: np.ndarray
    report: dict[str, Any]


def match_patients(labels: dict[str, int], predictions: dict[str, float], excluded: list[str],
                   args: argparse.Namespace) -> Cohort:
    excluded_set = set(excluded)
    report: dict[str, Any] = {
        "excluded": {
            "file": str(args.exclude_ids) if args.exclude_ids else None,
            "listed": len(excluded),
            "dropped_from_labels": sorted(excluded_set & set(labels)),
            "dropped_from_predictions": sorted(excluded_set & set(predictions)),
            "not_in_either_file": sorted(excluded_set - set(labels) - set(predictions)),
        }
    }
    labelled = set(labels) - excluded_set
    predicted = set(predictions) - excluded_set
    ids = sorted(labelled & predicted)
    report["labelled_without_prediction"] = sorted(labelled - predicted)
    report["predicted_without_label"] = sorted(predicted - labelled)
    if not ids:
        raise EvaluateError(
            f"no patient is in both {args.predictions} and {args.labels} (IDs such as "
            f"{', '.join(sorted(predicted)[:3]) or 'none'} vs {', '.join(sorted(labelled)[:3]) or 'none'}); "
            f"check --id-column and that both files describe the same cohort"
        )
    y = np.array([labels[i] for i in ids])
    if y.min() == y.max():
        raise EvaluateError(
            f"all {len(ids)} patients scored have label {y[0]} in {args.labels}; the AUC needs both classes"
        )
    report["scored"] = ids
    return Cohort(ids, y, np.array([predictions[i] for i in ids]), report)


def per_type_metrics(path: Path, labels: dict[str, int], cohort: Cohort, excluded: list[str],
                     args: argparse.Namespace, options: st.BootstrapOptions) -> dict[str, Any]:
    """Each MRI type's AUC over the labelled patients that type scored."""
    out: dict[str, Any] = {}
    skip = set(excluded)
    for mri_type, probs in read_per_type(path, args.id_column).items():
        ids = sorted(set(probs) & set(labels) - skip)
        entry: dict[str, Any] = {
            "not_scored": sorted(set(cohort.ids) - set(probs)),
            "without_label": sorted(set(probs) - set(labels) - skip),
        }
        y = np.array([labels[i] for i in ids], dtype=int)
        if len(ids) == 0 or y.min() == y.max():
            entry["auc"] = None
            entry["reason"] = f"{len(ids)} labelled patient(s) scored, {'no' if not ids else 'one'} class"
        else:
            entry.update(auc_summary(y, np.array([probs[i] for i in ids]), options))
        out[mri_type] = entry
    if not out:
        raise EvaluateError(f"{path} has no rows; give the <submission>_per_type.csv that inference wrote")
    return out


def compare_metrics(other_path: Path, labels: dict[str, int], cohort: Cohort, excluded: list[str],
                    args: argparse.Namespace, options: st.BootstrapOptions) -> tuple[dict[str, Any], np.ndarray,
                                                                                      np.ndarray]:
    """This submission against another on their common patients: both AUCs and the paired difference.

    Returns the metrics and the common patients' labels and other scores (for the ROC plot).
    """
    other = read_predictions(other_path, args.id_column, args.prediction_column)
    other_ids = set(other) - set(excluded)
    ids = sorted(set(cohort.ids) & other_ids)
    index = {pid: k for k, pid in enumerate(cohort.ids)}
    y = cohort.labels[[index[i] for i in ids]] if ids else np.array([], dtype=int)
    if len(ids) == 0 or y.min() == y.max():
        raise EvaluateError(
            f"{other_path} shares {len(ids)} scored patient(s) with {args.predictions}"
            f"{' all of one class' if ids else ''}; compare files that score the same labelled patients"
        )
    a = cohort.scores[[index[i] for i in ids]]
    b = np.array([other[i] for i in ids])
    paired = st.compare_aucs(y, a, b, options)
    return ({
        "file": str(other_path),
        "patients": len(ids),
        "this": auc_summary(y, a, options),
        "other": auc_summary(y, b, options),
        "difference": paired.difference,
        "difference_bootstrap_ci": _interval(paired.bootstrap),
        "difference_delong_ci": _interval(paired.delong_interval),
        "delong_z": paired.delong_z,
        "delong_p": paired.delong_p,
        "scored_missing_in_other": sorted(set(cohort.ids) - other_ids),
        "other_without_label": sorted(other_ids - set(labels)),
    }, y, b)


def plot_roc(path: Path, cohort: Cohort, summary: dict[str, Any], options: st.BootstrapOptions,
             others: list[tuple[str, np.ndarray, np.ndarray, float]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    grid, low, high = st.roc_band(cohort.labels, cohort.scores, options)
    fpr, tpr, _ = roc_curve(cohort.labels, cohort.scores)
    fig = Figure(figsize=(5.5, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pct = int(round(options.level * 100))
    ax.fill_between(grid, low, high, step="post", color="tab:blue", alpha=0.2,
                    label=f"{pct}% bootstrap band ({options.resamples} resamples)")
    lo, hi = summary["bootstrap_ci"]
    ax.plot(fpr, tpr, color="tab:blue",
            label=f"{Path(str(summary['file'])).name}: AUC {summary['auc']:.3f} ({pct}% CI {lo:.3f}-{hi:.3f})")
    for (name, y, s, value), color in zip(others, ("tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")):
        f, t, _ = roc_curve(y, s)
        ax.plot(f, t, lw=1, color=color, label=f"{name}: AUC {value:.3f} (n={len(y)})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity",
           title=f"ROC, {summary['patients']} patients ({summary['positives']} positive)")
    ax.legend(loc="lower right", fontsize=7)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=150)


def plot_calibration(path: Path, calibration: dict[str, Any]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bins = calibration["bins"]
    fig = Figure(figsize=(5.5, 6.5))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    full = [b for b in bins if b["count"]]
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    top.plot([b["mean_predicted"] for b in full], [b["observed_rate"] for b in full], "o-", color="tab:blue",
             label=f"bins (Brier {calibration['brier']:.3f}); numbers: patients")
    for b in full:
        top.annotate(str(b["count"]), (b["mean_predicted"], b["observed_rate"]), textcoords="offset points",
                     xytext=(4, 4), fontsize=7)
    top.set(xlim=(0, 1), ylim=(-0.03, 1.06), ylabel="observed fraction positive", title="Reliability diagram")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["count"] for b in bins],
               width=1 / len(bins), edgecolor="white", color="tab:blue")
    bottom.set(xlabel="predicted probability", ylabel="patients")
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=150)


def format_table(metrics: dict[str, Any]) -> str:
    """The short table printed to stdout, from metrics.json's numbers."""
    pct = int(round(metrics["intervals"]["level"] * 100))
    p = metrics["patients"]
    main = metrics["auc"]
    lines = [
        f"{len(p['scored'])} patients scored ({main['positives']} positive, {main['negatives']} negative)",
    ]
    ex = p["excluded"]
    if ex["file"]:
        lines.append(f"excluded ({ex['file']}): {ex['listed']} listed, {len(ex['dropped_from_labels'])} dropped "
                     f"from labels, {len(ex['dropped_from_predictions'])} from predictions, "
                     f"{len(ex['not_in_either_file'])} in neither file")
    for key, text in (("labelled_without_prediction", "labelled but not predicted"),
                      ("predicted_without_label", "predicted but not labelled")):
        if p[key]:
            lines.append(f"{text} ({len(p[key])}): {_named(p[key])}")

    def auc_row(name: str, s: dict[str, Any]) -> str:
        b, d = s["bootstrap_ci"], s["delong_ci"]
        return f"{name:<28}{s['auc']:>7.3f}   {b[0]:.3f}-{b[1]:.3f}   {d[0]:.3f}-{d[1]:.3f}   {s['patients']:>5}"

    lines += ["", f"{'':<28}{'value':>7}   {pct}% CI boot   {pct}% CI DeLong   n", auc_row("AUC", main)]
    for mri_type, s in (metrics.get("per_type") or {}).items():
        lines.append(auc_row(f"AUC {mri_type}", s) if s["auc"] is not None
                     else f"{'AUC ' + mri_type:<28}{'-':>7}   ({s['reason']})")
    for name, t in metrics["thresholds"].items():
        label = "0.5" if name == "0.5" else f"Youden {t['threshold']:.3f}"
        extra = ""
        if "sensitivity_ci" in t:
            extra = (f"   sens {t['sensitivity_ci'][0]:.3f}-{t['sensitivity_ci'][1]:.3f}, "
                     f"spec {t['specificity_ci'][0]:.3f}-{t['specificity_ci'][1]:.3f} (Wilson)")
        lines.append(f"{'sens / spec @ ' + label:<28}{t['sensitivity']:>7.3f} / {t['specificity']:.3f}{extra}")
    lines.append(f"{'Brier score':<28}{metrics['calibration']['brier']:>7.3f}")
    for c in metrics["compare"]:
        d = c["difference_bootstrap_ci"]
        lines += [
            "",
            f"vs {c['file']} on {c['patients']} common patients:",
            auc_row("  AUC this", c["this"]),
            auc_row("  AUC other", c["other"]),
            f"{'  difference (this - other)':<28}{c['difference']:>+7.3f}   {d[0]:+.3f} to {d[1]:+.3f} "
            f"paired bootstrap; DeLong p = {c['delong_p']:.3g}",
        ]
        if c["scored_missing_in_other"]:
            lines.append(f"  not in {Path(c['file']).name} ({len(c['scored_missing_in_other'])}): "
                         f"{_named(c['scored_missing_in_other'])}")
    iv = metrics["intervals"]
    lines += ["", f"boot:   {iv['bootstrap']}, {iv['resamples']} resamples, seed {iv['seed']}",
              f"DeLong: {iv['delong']}"]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--predictions", type=Path, required=True, metavar="SUB.csv", help="submission CSV (ID, probability)")
    a("--labels", type=Path, required=True, metavar="LABELS.csv", help="labels CSV (ID, 0/1), e.g. train_labels.csv")
    a("--compare", type=Path, nargs="+", default=[], metavar="OTHER.csv",
      help="other submission CSV(s): AUC on the common patients and the paired difference")
    a("--per-type", type=Path, metavar="SUB_per_type.csv",
      help="<submission>_per_type.csv from inference: AUC of each MRI type")
    a("--exclude-ids", type=Path, metavar="FILE",
      help="patients to leave out: one ID per line, or a CSV with the ID column")
    a("--id-column", default="BraTS21ID", help="patient ID column of every CSV (default BraTS21ID)")
    a("--label-column", default="MGMT_value", help="label column of --labels (default MGMT_value)")
    a("--prediction-column", default="MGMT_value",
      help="probability column of --predictions and --compare (default MGMT_value)")
    a("--resamples", type=int, default=MIN_RESAMPLES,
      help=f"bootstrap resamples, at least {MIN_RESAMPLES} (default {MIN_RESAMPLES})")
    a("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    a("--out", type=Path, required=True, metavar="DIR", help="output folder for metrics.json and the PNGs")
    a("--overwrite", action="store_true", help="replace an earlier evaluation in --out")


def main(args: argparse.Namespace) -> int:
    if args.resamples < MIN_RESAMPLES:
        raise EvaluateError(f"--resamples {args.resamples} is too few for the tails of a 95% interval; "
                            f"use at least {MIN_RESAMPLES}")
    existing = [name for name in OUTPUTS if (args.out / name).exists()]
    if existing and not args.overwrite:
        raise EvaluateError(f"{args.out / existing[0]} exists from an earlier evaluation; "
                            f"pass --overwrite to replace it or choose another --out")
    options = st.BootstrapOptions(resamples=args.resamples, seed=args.seed)

    labels = read_labels(args.labels, args.id_column, args.label_column)
    predictions = read_predictions(args.predictions, args.id_column, args.prediction_column)
    excluded = read_exclusions(args.exclude_ids, args.id_column) if args.exclude_ids else []
    cohort = match_patients(labels, predictions, excluded, args)
    check_writable(args.out, "evaluation")

    summary = auc_summary(cohort.labels, cohort.scores, options)
    metrics: dict[str, Any] = {
        "predictions": str(args.predictions),
        "labels": str(args.labels),
        "columns": {"id": args.id_column, "label": args.label_column, "prediction": args.prediction_column},
        "intervals": {"level": options.level, "bootstrap": st.BOOTSTRAP_METHOD, "resamples": options.resamples,
                      "seed": options.seed, "delong": st.DELONG_METHOD},
        "auc": summary,
        "thresholds": threshold_summary(cohort.labels, cohort.scores, options.level),
        "calibration": {
            "brier": st.brier_score(cohort.labels, cohort.scores),
            "bins": [asdict(b) for b in st.calibration_bins(cohort.labels, cohort.scores)],
            "binning": "10 equal-width bins of the predicted probability, (low, high], the first [0, 0.1]",
        },
        "per_type": (per_type_metrics(args.per_type, labels, cohort, excluded, args, options)
                     if args.per_type else None),
        "compare": [],
        "patients": cohort.report,
        "versions": library_versions(),
    }

    others = []
    for path in args.compare:
        compared, y, b = compare_metrics(path, labels, cohort, excluded, args, options)
        metrics["compare"].append(compared)
        others.append((path.name, y, b, compared["other"]["auc"]))
    plot_roc(args.out / "roc.png", cohort, {**summary, "file": args.predictions}, options, others)
    plot_calibration(args.out / "calibration.png", metrics["calibration"])
    write_json_atomic(args.out / "metrics.json", metrics)  # last: its presence means a complete evaluation
    print(format_table(metrics))
    print(f"wrote {args.out / 'metrics.json'}, roc.png, calibration.png", file=sys.stderr)
    return 0
