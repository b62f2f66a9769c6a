"""Did a run get worse? Expected values with tolerances, paired tests against a baseline,
and latency compared as a ratio to a calibration measured in the same process.

A measure *regresses* when

* it falls below ``expected - tolerance`` (Anserini-style reproduction values; an
  improvement always passes), or
* against the baseline run of the same check, its mean drops by more than ``tolerance``
  **and** both one-sided paired tests on the per-query values (Student's paired t-test and
  a paired randomization test) give p < ``alpha``. Requiring both keeps noise from being
  flagged; identical per-query values give p = 1 and are never flagged.

Latency regresses when ``p50 / calibration`` (both in ms, measured in the same process)
exceeds the baseline's ratio by more than ``latency_factor``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Resamples of the randomization test (exact enumeration below 2**n <= this).
RANDOMIZATION_RESAMPLES = 9999
RANDOMIZATION_SEED = 0


@dataclass(frozen=True)
class PairedTests:
    """One-sided p-values that ``now`` is lower than ``baseline`` (paired by query)."""

    n: int
    mean_delta: float
    t_test_p: float
    randomization_p: float


def paired_tests(now: np.ndarray, baseline: np.ndarray) -> PairedTests:
    """Paired t-test and paired randomization test of ``now < baseline`` (one-sided).

    Degenerate inputs (fewer than two queries, or no difference at all) give p = 1: there
    is no evidence of a drop.

    >>> t = paired_tests(np.array([0.5, 0.4, 0.3, 0.2]), np.array([0.6, 0.5, 0.4, 0.35]))
    >>> round(t.mean_delta, 4), t.t_test_p < 0.01, round(t.randomization_p, 4)
    (-0.1125, True, 0.0625)
    """
    from scipy import stats

    now = np.asarray(now, dtype=np.float64)
    baseline = np.asarray(baseline, dtype=np.float64)
    if now.shape != baseline.shape:
        raise ValueError(f"paired arrays differ in shape: {now.shape} vs {baseline.shape}")
    diff = now - baseline
    mean_delta = float(diff.mean()) if diff.size else 0.0
    if diff.size < 2 or not np.any(diff):
        return PairedTests(int(diff.size), mean_delta, 1.0, 1.0)
    if float(np.ptp(diff)) <= 1e-12 * max(1.0, abs(mean_delta)):
        # A constant non-zero difference (up to rounding): the t statistic is infinite and
        # scipy would warn of catastrophic cancellation; the drop is certain either way.
        t_p = 0.0 if mean_delta < 0 else 1.0
    else:
        t_p = float(stats.ttest_rel(now, baseline, alternative="less").pvalue)
    perm = stats.permutation_test(
        (now, baseline),
        lambda a, b, axis: np.mean(a - b, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=RANDOMIZATION_RESAMPLES,
        alternative="less",
        rng=np.random.default_rng(RANDOMIZATION_SEED),
    )
    return PairedTests(int(diff.size), mean_delta, t_p, float(perm.pvalue))


@dataclass
class MeasureVerdict:
    """One measure of one check: the values, the tests, and why it regressed (if it did)."""

    measure: str
    now: float
    expected: float | None = None
    baseline: float | None = None
    tolerance: float = 0.0
    tests: PairedTests | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def regressed(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "now": self.now,
            "expected": self.expected,
            "baseline": self.baseline,
            "delta": None if self.baseline is None else self.now - self.baseline,
            "tolerance": self.tolerance,
            "t_test_p": self.tests.t_test_p if self.tests else None,
            "randomization_p": self.tests.randomization_p if self.tests else None,
            "regressed": self.regressed,
            "reasons": self.reasons,
        }


def judge_measure(
    measure: str,
    now: Mapping[str, float],
    *,
    tolerance: float,
    alpha: float,
    expected: float | None = None,
    baseline: Mapping[str, float] | None = None,
) -> MeasureVerdict:
    """The verdict on one measure; ``now``/``baseline`` map query id -> value.

    The mean is over the queries of ``now``; the paired tests use the queries both have.

    >>> v = judge_measure("nDCG@10", {"a": 0.5, "b": 0.5}, tolerance=0.01, alpha=0.05,
    ...                   expected=0.6)
    >>> v.regressed, v.reasons
    (True, ['0.5000 is below the expected 0.6000 - 0.0100'])
    """
    mean_now = float(np.mean(list(now.values()))) if now else 0.0
    verdict = MeasureVerdict(measure, mean_now, expected=expected, tolerance=tolerance)
    if expected is not None and mean_now < expected - tolerance:
        verdict.reasons.append(
            f"{mean_now:.4f} is below the expected {expected:.4f} - {tolerance:.4f}"
        )
    if baseline:
        verdict.baseline = float(np.mean(list(baseline.values())))
        common = sorted(set(now) & set(baseline))
        tests = paired_tests(
            np.array([now[q] for q in common]), np.array([baseline[q] for q in common])
        )
        verdict.tests = tests
        drop = verdict.baseline - mean_now
        if drop > tolerance and tests.t_test_p < alpha and tests.randomization_p < alpha:
            verdict.reasons.append(
                f"{mean_now:.4f} is {drop:.4f} below the baseline {verdict.baseline:.4f} "
                f"(tolerance {tolerance:.4f}; paired t-test p={tests.t_test_p:.4g}, "
                f"randomization p={tests.randomization_p:.4g}, {tests.n} queries)"
            )
    return verdict


def judge_latency(ratio: float | None, baseline_ratio: float | None, factor: float) -> list[str]:
    """Reasons the latency ratio (p50 / calibration) regressed; empty when it did not.

    >>> judge_latency(3.1, 2.0, 1.5), judge_latency(2.9, 2.0, 1.5)
    (['latency ratio 3.10 is more than 1.5 x the baseline 2.00'], [])
    """
    if ratio is None or baseline_ratio is None or baseline_ratio <= 0:
        return []
    if ratio > baseline_ratio * factor:
        return [
            f"latency ratio {ratio:.2f} is more than {factor} x the baseline {baseline_ratio:.2f}"
        ]
    return []


def worst_queries(
    now: Mapping[str, float], baseline: Mapping[str, float], n: int = 10
) -> list[tuple[str, float, float]]:
    """The ``n`` queries that dropped most: ``(query id, baseline, now)``, largest drop first.

    >>> worst_queries({"a": 0.1, "b": 0.9, "c": 0.5}, {"a": 0.8, "b": 0.9, "c": 0.6}, 2)
    [('a', 0.8, 0.1), ('c', 0.6, 0.5)]
    """
    common = [q for q in now if q in baseline]
    drops = sorted(common, key=lambda q: (now[q] - baseline[q], q))
    return [(q, baseline[q], now[q]) for q in drops[:n] if now[q] < baseline[q]]
