"""Paired significance tests over users between a model and a reference model.

Every function takes two aligned per-user metric vectors ``a`` (model) and ``b`` (reference) and
works on the differences ``d = a - b``. Random procedures take a seed, so a report is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

N_RESAMPLES = 10_000
_CHUNK = 500  # resamples drawn at once: bounds memory at _CHUNK x n_users


def _diff(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired vectors must be 1-D and aligned, got {a.shape} and {b.shape}")
    return a - b


def paired_ttest(a, b) -> tuple[float, float]:
    """Paired t-test (two-sided): ``(t, p)``. Constant differences give ``p = 1`` when they are
    all zero and ``p = 0`` otherwise (scipy returns NaN there)."""
    from scipy import stats

    d = _diff(a, b)
    if len(d) < 2 or np.all(d == d[0]):
        mean = float(d.mean()) if len(d) else 0.0
        return (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    res = stats.ttest_rel(a, b)
    return float(res.statistic), float(res.pvalue)


def paired_bootstrap(a, b, n_resamples: int = N_RESAMPLES, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean difference and its percentile bootstrap CI, resampling users with replacement:
    ``(mean, low, high)``."""
    d = _diff(a, b)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        means[start:start + size] = d[rng.integers(0, len(d), size=(size, len(d)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(d.mean()), float(low), float(high)


def permutation_test(a, b, n_resamples: int = N_RESAMPLES, seed: int = 0) -> float:
    """Two-sided sign-flip permutation test of a zero mean difference: the p-value.

    Under the null each user's two values are exchangeable, so each difference keeps or flips its
    sign. Exact (all ``2^n`` flips) when ``2^n <= n_resamples``; otherwise Monte Carlo with the
    observed statistic counted once, ``p = (1 + #{|T*| >= |T|}) / (n_resamples + 1)``.
    """
    d = _diff(a, b)
    n = len(d)
    observed = abs(d.sum())
    threshold = observed * (1 - 1e-12) - 1e-15  # float noise must not turn ties into misses
    if n < 63 and 2**n <= n_resamples:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        return float(np.mean(np.abs(signs @ d) >= threshold))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        signs = rng.integers(0, 2, size=(size, n), dtype=np.int8) * 2 - 1
        hits += int(np.count_nonzero(np.abs(signs @ d) >= threshold))
    return (1 + hits) / (n_resamples + 1)


def holm(pvalues) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (same order as given; NaN stays NaN and is not counted).

    Sorted ascending, ``p_adj(i) = max_{j <= i} min(1, (m - j) * p(j))`` with ``j`` from 0:
    reject ``H_i`` at level alpha exactly when ``p_adj(i) <= alpha``.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m = len(order)
    adjusted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adjusted) if m else adjusted
    return out


def cohens_dz(a, b) -> float:
    """Standardised paired effect size: mean difference over its standard deviation."""
    d = _diff(a, b)
    sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    mean = float(d.mean()) if len(d) else 0.0
    if sd == 0:
        return 0.0 if mean == 0 else math.copysign(math.inf, mean)
    return mean / sd


@dataclass
class Comparison:
    """One model against the reference on one dataset (paired over ``n`` users)."""

    dataset: str
    model: str
    reference: str
    n: int
    mean_model: float
    mean_reference: float
    diff: float
    ci_low: float
    ci_high: float
    dz: float
    p_t: float
    p_perm: float
    p_t_holm: float = math.nan
    p_perm_holm: float = math.nan

    @property
    def p_holm(self) -> float:
        """The deciding corrected p-value: the larger of the two tests' Holm p-values."""
        return max(self.p_t_holm, self.p_perm_holm)

    def significant(self, alpha: float = 0.05) -> bool:
        """Both tests reject after Holm correction (the report's only use of the word)."""
        return self.p_t_holm <= alpha and self.p_perm_holm <= alpha

    def flipped(self) -> Comparison:
        """The same comparison read the other way (reference - model): the differences change
        sign, so do the mean, its bootstrap CI (same resamples) and d_z; the p-values stay.
        (``0.0 - x``, not ``-x``: a zero difference must not print as ``-0.0000``.)"""
        return replace(self, model=self.reference, reference=self.model,
                       mean_model=self.mean_reference, mean_reference=self.mean_model,
                       diff=0.0 - self.diff, ci_low=0.0 - self.ci_high,
                       ci_high=0.0 - self.ci_low, dz=0.0 - self.dz)


def compare(dataset: str, model: str, reference: str, a, b, n_resamples: int = N_RESAMPLES,
            seed: int = 0) -> Comparison:
    """Every statistic of one paired comparison (Holm fields are filled by :func:`correct`)."""
    diff, low, high = paired_bootstrap(a, b, n_resamples, seed=seed)
    return Comparison(dataset, model, reference, len(a), float(np.mean(a)), float(np.mean(b)),
                      diff, low, high, cohens_dz(a, b), paired_ttest(a, b)[1],
                      permutation_test(a, b, n_resamples, seed=seed))


def correct(comparisons: list[Comparison]) -> list[Comparison]:
    """Holm correction across all comparisons of a report, for each test separately."""
    for c, pt, pp in zip(comparisons, holm([c.p_t for c in comparisons]),
                         holm([c.p_perm for c in comparisons])):
        c.p_t_holm, c.p_perm_holm = float(pt), float(pp)
    return comparisons
