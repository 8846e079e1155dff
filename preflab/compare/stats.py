"""The statistics behind the report's verdicts: intervals and tests small enough to state.

Every figure measured over seeds is a mean with a Student-t confidence interval; a row names
a winner only when a test rejects "no difference" at ``ALPHA``. The tests fit the few runs a
comparison has (2 to 5 seeds), and each says which test it is:

    mean_ci        mean with a t interval (n - 1 degrees of freedom)
    welch          difference of two means, Welch's t (unequal variances)
    paired         mean of paired differences (the same prompts, or the same shares), t
    bonferroni     a p-value corrected for the comparisons a tested pair was picked from
    variance_test  ratio of two variances, the two-sided F test (for spreads over seeds)
    fisher_exact   two proportions (k of n), Fisher's exact test, two-sided

The t, F and beta distributions come from the regularised incomplete beta function,
evaluated by its continued fraction (Press et al., Numerical Recipes, section 6.4); only the
standard library is used, so the report renders wherever preflab installs.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

ALPHA = 0.05
LEVEL = 1 - ALPHA


# --- distributions ----------------------------------------------------------------------------
def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                    -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t (bisection on the distribution function)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile {q} outside (0, 1)")
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > 1.0 - q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_sf(mid, df) > 1.0 - q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def f_sf(f: float, d1: float, d2: float) -> float:
    """P(F > f) for the F distribution with (d1, d2) degrees of freedom."""
    if f <= 0:
        return 1.0
    return betainc(d2 / 2.0, d1 / 2.0, d2 / (d2 + d1 * f))


def f_ppf(q: float, d1: float, d2: float) -> float:
    """The q-quantile of the F distribution."""
    lo, hi = 0.0, 1.0
    while 1.0 - f_sf(hi, d1, d2) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 1.0 - f_sf(mid, d1, d2) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --- intervals and tests ----------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A mean (or a difference of means) with its confidence interval."""

    mean: float
    low: float | None
    high: float | None
    n: int
    method: str
    """How the interval was made: "t, 2 df", "Welch t, 3.1 df", ... or "one value"."""

    def text(self, digits: int = 3, sign: bool = False) -> str:
        fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
        if self.low is None:
            return fmt.format(self.mean)
        return (f"{fmt.format(self.mean)} [{fmt.format(self.low)}, "
                f"{fmt.format(self.high)}]")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Test:
    """A two-sided test of "no difference": its statistic, p-value and the verdict at ALPHA."""

    name: str
    statistic: float | None
    p: float | None
    significant: bool
    difference: Interval | None = None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["alpha"] = ALPHA
        return out

    def text(self) -> str:
        if self.p is None:
            return f"{self.name}: not tested"
        return f"{self.name}, p = {self.p:.3g}"


def _clean(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_ci(values, level: float = LEVEL) -> Interval:
    """Mean and Student-t interval; one value has no interval."""
    xs = _clean(values)
    if not xs:
        raise ValueError("no values")
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return Interval(mean, None, None, len(xs), "one value")
    half = t_ppf(0.5 + level / 2, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return Interval(mean, mean - half, mean + half, len(xs), f"t, {len(xs) - 1} df")


def welch(a, b, level: float = LEVEL) -> Test:
    """mean(a) - mean(b): Welch's t test and interval (needs 2 or more values each)."""
    xs, ys = _clean(a), _clean(b)
    if len(xs) < 2 or len(ys) < 2:
        diff = (statistics.fmean(xs) - statistics.fmean(ys)) if xs and ys else math.nan
        return Test("Welch t", None, None, False,
                    Interval(diff, None, None, min(len(xs), len(ys)), "too few runs"))
    va, vb = statistics.variance(xs) / len(xs), statistics.variance(ys) / len(ys)
    diff = statistics.fmean(xs) - statistics.fmean(ys)
    se = math.sqrt(va + vb)
    if se <= 1e-12 * max(1.0, abs(statistics.fmean(xs)), abs(statistics.fmean(ys))):
        # no spread on either side: nothing says how the figure varies, so nothing is tested
        return Test("Welch t", None, None, False,
                    Interval(diff, None, None, len(xs) + len(ys), "no spread"))
    spread = va ** 2 / (len(xs) - 1) + vb ** 2 / (len(ys) - 1)
    # Welch-Satterthwaite; variances so small that their squares underflow: pooled df
    df = (va + vb) ** 2 / spread if spread > 0 else len(xs) + len(ys) - 2.0
    t = diff / se
    p = min(1.0, 2 * t_sf(abs(t), df))
    half = t_ppf(0.5 + level / 2, df) * se
    return Test("Welch t", t, p, p < 1 - level,
                Interval(diff, diff - half, diff + half, len(xs) + len(ys),
                         f"Welch t, {df:.1f} df"))


def paired(a, b, level: float = LEVEL) -> Test:
    """mean(a - b) over matched units (prompts, shares): the paired t test and interval."""
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None
             and math.isfinite(float(x)) and math.isfinite(float(y))]
    diffs = [x - y for x, y in pairs]
    if len(diffs) < 2:
        mean = diffs[0] if diffs else math.nan
        return Test("paired t", None, None, False,
                    Interval(mean, None, None, len(diffs), "too few pairs"))
    ci = mean_ci(diffs, level)
    sd = statistics.stdev(diffs)
    if sd <= 1e-12 * max(1.0, abs(ci.mean)):
        return Test("paired t", None, None, False, ci)  # every pair differs alike: no spread
    t = ci.mean / (sd / math.sqrt(len(diffs)))
    p = min(1.0, 2 * t_sf(abs(t), len(diffs) - 1))
    return Test("paired t", t, p, p < 1 - level, ci)


def variance_test(a, b) -> Test:
    """var(a) / var(b): the two-sided F test (normal errors assumed; needs 2 or more each)."""
    xs, ys = _clean(a), _clean(b)
    if len(xs) < 2 or len(ys) < 2:
        return Test("F test of variances", None, None, False)
    va, vb = statistics.variance(xs), statistics.variance(ys)
    d1, d2 = len(xs) - 1, len(ys) - 1
    if va == 0 or vb == 0:  # a constant sample: no ratio to test
        return Test("F test of variances", None, None, False)
    ratio = va / vb
    p = min(1.0, 2 * min(f_sf(ratio, d1, d2), 1 - f_sf(ratio, d1, d2)))
    return Test("F test of variances", ratio, p, p < ALPHA)


def detectable_spread_ratio(n_a: int, n_b: int) -> float | None:
    """The smallest ratio of standard deviations the F test can call significant at ALPHA."""
    if n_a < 2 or n_b < 2:
        return None
    return math.sqrt(f_ppf(1 - ALPHA / 2, n_a - 1, n_b - 1))


def bonferroni(test: Test, comparisons: int) -> Test:
    """``test`` with its p multiplied by the number of comparisons it was picked from (the
    best of several settings against the best of several): valid whatever the dependence."""
    if test.p is None or comparisons <= 1:
        return test
    p = min(1.0, test.p * comparisons)
    return Test(f"{test.name}, Bonferroni x{comparisons}", test.statistic, p, p < ALPHA,
                test.difference)


def fisher_exact(k_a: int, n_a: int, k_b: int, n_b: int) -> Test:
    """k_a of n_a against k_b of n_b: Fisher's exact test, two-sided (tables no more likely
    than the one observed, under fixed margins)."""
    total, successes = n_a + n_b, k_a + k_b

    def prob(k: int) -> float:
        return (math.comb(successes, k) * math.comb(total - successes, n_a - k)
                / math.comb(total, n_a))

    observed = prob(k_a)
    lo, hi = max(0, successes - n_b), min(successes, n_a)
    p = sum(prob(k) for k in range(lo, hi + 1) if prob(k) <= observed * (1 + 1e-9))
    share_a, share_b = k_a / n_a if n_a else math.nan, k_b / n_b if n_b else math.nan
    return Test("Fisher's exact test", share_a - share_b, min(1.0, p), p < ALPHA)


__all__ = ["ALPHA", "Interval", "Test", "betainc", "bonferroni", "detectable_spread_ratio", "f_ppf", "f_sf",
           "fisher_exact", "mean_ci", "paired", "t_ppf", "t_sf", "variance_test", "welch"]
