"""Coverage of ``python -m mgmt2d evaluate``'s 95% AUC intervals on simulated scores with a known AUC.

    python benchmarks/interval_coverage.py [--auc 0.65] [--sizes 25 100 300] [--draws 500] [--resamples 2000]

Binormal scores (positives ~ N(d, 1), negatives ~ N(0, 1), so AUC = Phi(d / sqrt 2)) with ``n``
patients per class; for each of ``--draws`` seeded draws, the stratified percentile bootstrap and
DeLong intervals of ``mgmt2d.statistics`` are computed and checked for containing the true AUC.
Prints each interval's coverage (goal: near 0.95; the binomial SD over 500 draws is 0.01) and mean
width. A statistical check, not a timing: the load average is printed only to explain the seconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import datetime

import numpy as np
from scipy import stats

from mgmt2d import statistics as st


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--auc", type=float, default=0.65, help="true AUC of the simulated scores")
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 100, 300], help="patients per class")
    parser.add_argument("--draws", type=int, default=500, help="simulated cohorts per size")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples per cohort")
    args = parser.parse_args()
    print(f"{datetime.now().isoformat(timespec='seconds')}  {platform.node()}  "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    d = np.sqrt(2) * stats.norm.ppf(args.auc)
    for n in args.sizes:
        rng = np.random.default_rng(n)
        y = np.r_[np.ones(n, int), np.zeros(n, int)]
        covered = {"bootstrap": 0, "DeLong": 0}
        width = {"bootstrap": 0.0, "DeLong": 0.0}
        start = time.perf_counter()
        for draw in range(args.draws):
            s = rng.normal(d * y, 1.0)
            for name, iv in (("bootstrap", st.bootstrap_auc(y, s, st.BootstrapOptions(args.resamples, draw)).interval),
                             ("DeLong", st.delong_auc(y, s).interval)):
                covered[name] += iv.low <= args.auc <= iv.high
                width[name] += iv.high - iv.low
        print(f"n = {n} + {n}, {args.draws} draws, true AUC {args.auc}: "
              + "; ".join(f"{k} coverage {covered[k] / args.draws:.3f}, width {width[k] / args.draws:.3f}"
                          for k in covered)
              + f"  ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
