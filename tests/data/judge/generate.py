#!/usr/bin/env python3
"""Reference vectors for rollgate's statistics (reconciler/engine/stats.rs).

Generated once with SciPy and committed; `tests/judge_reference.rs` checks the Rust
implementation against them (p-values to 1e-9 relative, U statistics exactly).
Regenerate with:

    pip install scipy numpy
    python3 tests/data/judge/generate.py > tests/data/judge/reference.json

Every random draw comes from a fixed seed, so the output is reproducible for a given
SciPy version. Sample values are rounded to 6 decimals (or drawn as integers, to make
ties) so that any JSON reader gets exactly the same ordering.
"""

import json
import math
import sys

import numpy as np
import scipy
from scipy import special, stats

ALTS = ["greater", "less", "two-sided"]


def rounded(a):
    return [float(round(float(v), 6)) for v in a]


def mwu_case(x, y, alternative, method):
    r = stats.mannwhitneyu(x, y, alternative=alternative, method=method, use_continuity=True)
    return {
        "x": x,
        "y": y,
        "alternative": alternative,
        "method": method,
        "statistic": float(r.statistic),
        "pvalue": float(r.pvalue),
    }


def has_ties(x, y):
    v = list(x) + list(y)
    return len(set(v)) != len(v)


def mann_whitney(rng):
    out = []
    # Asymptotic: continuous samples, many sizes and shifts (down to tiny tails).
    for n, m in [(1, 1), (2, 3), (3, 2), (5, 5), (8, 12), (10, 10), (20, 20), (30, 45), (60, 60), (150, 120), (400, 400)]:
        for shift in [0.0, 0.3, 1.5]:
            x = rounded(rng.normal(shift, 1.0, n))
            y = rounded(rng.normal(0.0, 1.0, m))
            for alt in ALTS:
                out.append(mwu_case(x, y, alt, "asymptotic"))
    # Asymptotic with ties: integer-valued samples, including heavy ties.
    for n, m, hi in [(4, 6, 3), (10, 10, 2), (10, 10, 5), (25, 30, 4), (50, 50, 10), (200, 150, 6), (300, 300, 3)]:
        x = [float(v) for v in rng.integers(0, hi, n)]
        y = [float(v) for v in rng.integers(0, hi, m)]
        for alt in ALTS:
            out.append(mwu_case(x, y, alt, "asymptotic"))
    # Extreme tails: complete or near-complete separation with large n (p down to ~1e-100).
    for n, m, shift in [(40, 40, 3.0), (100, 100, 2.0), (300, 300, 1.0), (500, 500, 10.0)]:
        x = rounded(rng.normal(shift, 1.0, n))
        y = rounded(rng.normal(0.0, 1.0, m))
        for alt in ALTS:
            out.append(mwu_case(x, y, alt, "asymptotic"))
    # Kayenta's miss, and all-equal samples.
    kx = [100.0] * 7 + [1.0] * 3
    ky = [1.0] * 10
    for alt in ALTS:
        out.append(mwu_case(kx, ky, alt, "asymptotic"))
        out.append(mwu_case([5.0] * 6, [5.0] * 7, alt, "asymptotic"))
    # Exact: small samples without ties.
    for n, m in [(1, 1), (1, 5), (2, 2), (3, 4), (4, 3), (5, 5), (6, 9), (7, 7), (8, 10), (10, 10), (12, 7), (15, 15), (20, 20), (3, 20), (20, 18)]:
        for shift in [0.0, 1.0, 5.0]:
            while True:
                x = rounded(rng.normal(shift, 1.0, n))
                y = rounded(rng.normal(0.0, 1.0, m))
                if not has_ties(x, y):
                    break
            for alt in ALTS:
                out.append(mwu_case(x, y, alt, "exact"))
    return out


def fisher(rng):
    tables = [
        [[97, 3], [10000, 0]],
        [[3, 97], [0, 10000]],
        [[8, 2], [1, 5]],
        [[1, 9], [11, 3]],
        [[0, 5], [0, 7]],
        [[0, 0], [3, 4]],
        [[10, 10], [10, 10]],
        [[5, 0], [0, 5]],
        [[2, 7], [8, 2]],
        [[0, 10], [10, 0]],
        [[1000, 1], [1000, 0]],
        [[9990, 10], [9999, 1]],
        [[50, 50], [30, 70]],
        [[300, 0], [0, 300]],
        [[1, 0], [0, 1]],
    ]
    for _ in range(30):
        n = int(rng.integers(1, 60))
        tables.append([[int(v) for v in rng.integers(0, n, 2)], [int(v) for v in rng.integers(0, n, 2)]])
    for _ in range(10):
        tables.append([[int(rng.integers(500, 5000)), int(rng.integers(0, 8))], [int(rng.integers(500, 5000)), int(rng.integers(0, 8))]])
    out = []
    for t in tables:
        for alt in ALTS:
            r = stats.fisher_exact(t, alternative=alt)
            out.append({"table": t, "alternative": alt, "pvalue": float(r.pvalue)})
    return out


def two_proportion(rng):
    cases = [(97, 100, 10000, 10000), (990, 1000, 995, 1000), (50, 100, 50, 100), (0, 100, 0, 100), (100, 100, 100, 100), (9000, 10000, 9100, 10000), (1, 2, 1, 3)]
    for _ in range(15):
        n1 = int(rng.integers(10, 100000))
        n2 = int(rng.integers(10, 100000))
        p = rng.uniform(0.5, 1.0)
        x1 = int(rng.binomial(n1, p))
        x2 = int(rng.binomial(n2, min(1.0, p + rng.normal(0, 0.01))))
        cases.append((x1, n1, x2, n2))
    out = []
    for x1, n1, x2, n2 in cases:
        p1, p2 = x1 / n1, x2 / n2
        pp = (x1 + x2) / (n1 + n2)
        se = math.sqrt(pp * (1 - pp) * (1 / n1 + 1 / n2))
        z = 0.0 if se == 0 else (p1 - p2) / se
        for alt in ALTS:
            if se == 0:
                p = 1.0
            elif alt == "greater":
                p = float(stats.norm.sf(z))
            elif alt == "less":
                p = float(stats.norm.cdf(z))
            else:
                p = float(min(1.0, 2 * stats.norm.sf(abs(z))))
            out.append({"x1": x1, "n1": n1, "x2": x2, "n2": n2, "alternative": alt, "z": z, "pvalue": p})
    return out


def normal():
    xs = [-38.0, -30.0, -20.0, -10.0, -8.5, -7.0, -5.0, -3.3, -2.0, -1.0, -0.5, -0.1, -1e-9, 0.0,
          1e-9, 0.1, 0.3, 0.46875, 0.5, 1.0, 1.96, 2.5, 3.0, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.5, 12.0, 20.0, 26.0, 27.0]
    erfc = [{"x": x, "erfc": float(special.erfc(x))} for x in xs]
    sf = [{"z": x, "sf": float(stats.norm.sf(x)), "cdf": float(stats.norm.cdf(x))} for x in xs]
    ps = [1e-300, 1e-100, 1e-20, 1e-12, 1e-6, 0.001, 0.01, 0.025, 0.05, 0.075, 0.1, 0.3, 0.5, 0.7, 0.925, 0.95, 0.975, 0.999, 0.999999]
    ppf = [{"p": p, "ppf": float(stats.norm.ppf(p))} for p in ps]
    return {"erfc": erfc, "normal": sf, "quantile": ppf}


def main():
    rng = np.random.default_rng(20260505)
    doc = {
        "generator": "tests/data/judge/generate.py",
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "mannwhitneyu": mann_whitney(rng),
        "fisher_exact": fisher(rng),
        "two_proportion_z": two_proportion(rng),
    }
    doc.update(normal())
    json.dump(doc, sys.stdout, indent=None, separators=(",", ":"), allow_nan=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
