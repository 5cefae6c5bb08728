"""Confidence intervals over seeds and a two-sample test (Welch's t, or a seeded bootstrap without scipy).

Everything takes plain sequences of per-seed values. With scipy (installed with scikit-learn) intervals are
Student-t intervals and the test is Welch's unequal-variance t-test (``scipy.stats.ttest_ind(equal_var=False)``);
without scipy, or with ``method="bootstrap"``, both come from a seeded bootstrap (Efron & Tibshirani 1993,
percentile interval; the test resamples both groups shifted to the pooled mean and compares Welch statistics),
so the numbers are reproducible. Fewer than two values in a group give NaN: there is no spread to test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

N_BOOT = 10_000
LEVEL = 0.95
MIN_N = 3            # fewer values give no interval: t with 1 degree of freedom is 12.7 standard errors wide
DETERMINISTIC_CV = 1e-4   # a group whose std is below this share of its mean does not vary (e.g. byte counts)


def have_scipy() -> bool:
    """Whether scipy.stats can be imported."""
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        return False
    return True


def _method(method: str) -> str:
    if method not in ("auto", "t", "bootstrap"):
        raise ValueError(f"method: unknown value {method!r}; valid: auto, t, bootstrap")
    if method == "auto":
        return "t" if have_scipy() else "bootstrap"
    return method


def _clean(values: ArrayLike) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[np.isfinite(v)]


def mean_ci(values: ArrayLike, *, level: float = LEVEL, method: str = "auto", seed: int = 0,
            n_boot: int = N_BOOT, bounds: tuple[float, float] = (-math.inf, math.inf),
            min_n: int = MIN_N) -> tuple[float, float, float]:
    """(mean, low, high) of the mean over seeds. low/high are NaN with fewer than ``min_n`` values (no interval
    worth printing); the interval is clipped to ``bounds``, the range the metric can take (an accuracy lies in
    [0, 1], a byte count is never negative)."""
    v = _clean(values)
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if len(v) < max(min_n, 2):
        return mean, math.nan, math.nan
    if _method(method) == "t":
        from scipy import stats

        half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1)) * float(v.std(ddof=1)) / math.sqrt(len(v))
        lo, hi = mean - half, mean + half
    else:
        rng = np.random.default_rng(seed)
        boots = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
        lo, hi = (float(q) for q in np.quantile(boots, [0.5 - level / 2, 0.5 + level / 2]))
    return mean, float(min(max(lo, bounds[0]), bounds[1])), float(min(max(hi, bounds[0]), bounds[1]))


def deterministic(values: ArrayLike, cv: float = DETERMINISTIC_CV) -> bool:
    """Do the values not vary, beyond ``cv`` of their mean (byte counts that differ in the last bytes)?"""
    v = _clean(values)
    if len(v) < 2:
        return False
    return float(v.std(ddof=1)) <= cv * max(abs(float(v.mean())), 1e-300)


@dataclass(frozen=True)
class TestResult:
    """Difference of means (a - b) with its interval and the two-sided p-value of 'no difference'."""

    diff: float
    low: float
    high: float
    statistic: float
    p_value: float
    method: str


def _welch_t(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(t, standard error, Welch-Satterthwaite degrees of freedom)."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    scale = max(abs(float(a.mean())), abs(float(b.mean())), 1e-300)
    if se <= 1e-12 * scale:   # no spread beyond float rounding (e.g. byte counts equal on every seed)
        return math.nan, 0.0, math.nan
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float((a.mean() - b.mean()) / se), se, float(df)


def compare_means(a: ArrayLike, b: ArrayLike, *, level: float = LEVEL, method: str = "auto",
                  seed: int = 0, n_boot: int = N_BOOT) -> TestResult:
    """Welch's t-test (or a seeded bootstrap) of mean(a) == mean(b); NaN where a group has < 2 values or
    neither group varies (identical values on every seed: nothing to test)."""
    x, y = _clean(a), _clean(b)
    how = _method(method)
    name = "welch" if how == "t" else "bootstrap"
    if len(x) == 0 or len(y) == 0:
        return TestResult(math.nan, math.nan, math.nan, math.nan, math.nan, name)
    diff = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return TestResult(diff, math.nan, math.nan, math.nan, math.nan, name)
    if deterministic(x) and deterministic(y):   # nothing to test: the difference is exact
        return TestResult(diff, diff, diff, math.nan, math.nan, "exact")
    t, se, df = _welch_t(x, y)
    if se == 0.0:
        return TestResult(diff, diff, diff, math.nan, math.nan, "exact")
    if how == "t":
        from scipy import stats

        # Welch's test, as scipy.stats.ttest_ind(equal_var=False) computes it, from the statistic above
        p = float(2.0 * stats.t.sf(abs(t), df))
        half = float(stats.t.ppf(0.5 + level / 2, df)) * se
        return TestResult(diff, diff - half, diff + half, t, p, name)
    rng = np.random.default_rng(seed)
    pooled = float(np.concatenate([x, y]).mean())
    x0, y0 = x - x.mean() + pooled, y - y.mean() + pooled  # both groups under the null of equal means
    bx = rng.integers(0, len(x), size=(n_boot, len(x)))
    by = rng.integers(0, len(y), size=(n_boot, len(y)))
    xs, ys = x0[bx], y0[by]
    se_b = np.sqrt(xs.var(axis=1, ddof=1) / len(x) + ys.var(axis=1, ddof=1) / len(y))
    with np.errstate(divide="ignore", invalid="ignore"):
        t_b = (xs.mean(axis=1) - ys.mean(axis=1)) / se_b
    t_b = t_b[np.isfinite(t_b)]
    p = float((np.sum(np.abs(t_b) >= abs(t)) + 1) / (len(t_b) + 1))
    diffs = x[bx].mean(axis=1) - y[by].mean(axis=1)
    lo, hi = np.quantile(diffs, [0.5 - level / 2, 0.5 + level / 2])
    return TestResult(diff, float(lo), float(hi), t, p, name)


def paired_compare(a: ArrayLike, b: ArrayLike, *, level: float = LEVEL, min_n: int = MIN_N) -> TestResult:
    """Paired comparison of two configurations on the same seeds (``a[i]`` and ``b[i]`` from seed i): the mean
    difference a - b with its Student-t interval and the paired t-test's two-sided p-value. Pairs with a
    non-finite value are dropped; fewer than ``min_n`` pairs give NaN interval and p; differences that do not vary
    give an exact result (method ``exact``, no statistic)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    d = x[keep] - y[keep]
    if len(d) == 0:
        return TestResult(math.nan, math.nan, math.nan, math.nan, math.nan, "paired")
    diff = float(d.mean())
    if len(d) < max(min_n, 2):
        return TestResult(diff, math.nan, math.nan, math.nan, math.nan, "paired")
    sd = float(d.std(ddof=1))
    if sd <= DETERMINISTIC_CV * max(abs(diff), float(np.abs(x[keep]).mean()), 1e-300):
        return TestResult(diff, diff, diff, math.nan, 0.0 if diff else 1.0, "exact")
    from scipy import stats

    se = sd / math.sqrt(len(d))
    t = diff / se
    p = float(2.0 * stats.t.sf(abs(t), len(d) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1)) * se
    return TestResult(diff, diff - half, diff + half, float(t), p, "paired")
