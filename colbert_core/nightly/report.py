"""What a nightly run leaves for people: ``verdict.json``, ``report.md`` and trend plots.

Files in the run folder (local or ``s3://``)::

    verdict.json         status (pass | regressed), per check: verdict, measures, p-values
    report.md            a table per check (expected, baseline, now, delta, p-values,
                         verdict), latency, and the worst queries of a regressed check
    plots/<measure>.png  each measure over the history, one line per check; accepted
                         baselines and regressions marked
    plots/latency_ratio.png
    checks/<name>/       each check's run folder (run.trec, metrics.json, per_query.parquet)
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from typing import Any

from ..evaluation.history import HistoryRow
from ..storage import open_storage
from .runner import CheckOutcome, NightlyResult

VERDICT = "verdict.json"
REPORT = "report.md"
PLOTS = "plots"


def write_reports(result: NightlyResult, history: Sequence[HistoryRow]) -> dict[str, str]:
    """Write the verdict, the report and the plots; returns their locations."""
    storage = open_storage(result.folder)
    storage.put(VERDICT, (json.dumps(verdict(result), indent=2) + "\n").encode())
    storage.put(REPORT, markdown(result).encode())
    written = {"verdict": storage.describe(VERDICT), "report": storage.describe(REPORT)}
    for name, png in trend_plots(history).items():
        key = f"{PLOTS}/{name}.png"
        storage.put(key, png)
        written[f"plot {name}"] = storage.describe(key)
    return written


def verdict(result: NightlyResult) -> dict[str, Any]:
    return {
        "run_id": result.run_id,
        "suite": result.suite.name,
        "status": "regressed" if result.regressed else "pass",
        "accepted": result.accepted,
        "checks": [
            {
                "name": o.check.name,
                "verdict": o.row.verdict,
                "baseline_run": o.baseline.run_id if o.baseline else None,
                "reasons": o.row.reasons,
                "measures": [v.to_dict() for v in o.verdicts],
                "latency_ms": o.row.latency_ms,
                "calibration_ms": o.row.calibration_ms,
                "latency_ratio": o.row.latency_ratio,
                "worst_queries": [{"query_id": q, "baseline": b, "now": n} for q, b, n in o.worst],
                "folder": o.folder,
            }
            for o in result.outcomes
        ],
    }


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(result: NightlyResult) -> str:
    status = "REGRESSED" if result.regressed else "pass"
    lines = [
        f"# Nightly `{result.suite.name}` run {result.run_id}: {status}",
        "",
        f"{len(result.outcomes)} checks; alpha {result.suite.alpha}; "
        f"{'accepted as the new baseline' if result.accepted else 'not accepted'}.",
        "",
    ]
    for outcome in result.outcomes:
        lines += _check_section(outcome)
    return "\n".join(lines) + "\n"


def _check_section(o: CheckOutcome) -> list[str]:
    base = f"baseline run {o.baseline.run_id}" if o.baseline else "no baseline yet"
    lines = [
        f"## {o.check.name}: {o.row.verdict}",
        "",
        f"{o.check.kind} over `{o.check.source}`; {base}.",
        "",
        "| measure | expected | baseline | now | delta | t-test p | randomization p | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in o.verdicts:
        d = v.to_dict()
        lines.append(
            f"| {v.measure} | {_fmt(v.expected)} | {_fmt(v.baseline)} | {_fmt(v.now)} | "
            f"{_fmt(d['delta'])} | {_fmt(d['t_test_p'], 3)} | {_fmt(d['randomization_p'], 3)} | "
            f"{'REGRESSED' if v.regressed else 'ok'} |"
        )
    lat = o.row.latency_ms
    base_ratio = o.baseline.latency_ratio if o.baseline else None
    lines += [
        "",
        f"Latency p50/p95/p99 {_fmt(lat.get('p50'), 1)}/{_fmt(lat.get('p95'), 1)}/"
        f"{_fmt(lat.get('p99'), 1)} ms; calibration {_fmt(o.row.calibration_ms, 2)} ms; "
        f"ratio {_fmt(o.row.latency_ratio, 2)} (baseline {_fmt(base_ratio, 2)}, "
        f"allowed x{o.check.latency_factor}).",
        "",
    ]
    if o.row.reasons:
        lines += ["Why:", *[f"- {r}" for r in o.row.reasons], ""]
    if o.regressed and o.worst:
        lines += ["Worst queries (largest drops vs the baseline):", ""]
        lines += ["| query | baseline | now |", "|---|---|---|"]
        lines += [f"| {q} | {_fmt(b)} | {_fmt(n)} |" for q, b, n in o.worst]
        lines.append("")
    return lines


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


#: Runs a trend plot shows (the newest): a year of nightly runs would be unreadable.
PLOT_RUNS = 60


def trend_plots(history: Sequence[HistoryRow], last: int = PLOT_RUNS) -> dict[str, bytes]:
    """PNG trend plots over the ``last`` runs: one per measure, one of the latency ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted({r.run_id for r in history})[-last:]
    history = [r for r in history if r.run_id in set(runs)]
    position = {run: i for i, run in enumerate(runs)}
    checks = sorted({r.check for r in history})
    measures = sorted({m for r in history for m in r.measures})
    series = [(m, lambda r, m=m: r.measures.get(m), m) for m in measures]
    series.append(("latency_ratio", lambda r: r.latency_ratio, "p50 latency / calibration"))
    out = {}
    for name, value, label in series:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        for check in checks:
            rows = [r for r in history if r.check == check and value(r) is not None]
            xs = [position[r.run_id] for r in rows]
            ax.plot(xs, [value(r) for r in rows], marker="o", label=check)
            for r in rows:
                if r.accepted:
                    ax.scatter(position[r.run_id], value(r), s=140, facecolors="none",
                               edgecolors="green", linewidths=2)  # fmt: skip
                if r.verdict == "regressed":
                    ax.scatter(position[r.run_id], value(r), s=90, marker="x", color="red")
        ax.set_xlabel("nightly run (oldest to newest)")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per check (green ring: accepted baseline, red x: regressed)")
        step = max(1, len(runs) // 20)  # at most ~20 labels
        ax.set_xticks(range(0, len(runs), step), [r[:15] for r in runs[::step]], rotation=30,
                      fontsize=7)  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        out[_safe(name)] = buf.getvalue()
    return out


__all__ = ["REPORT", "VERDICT", "markdown", "trend_plots", "verdict", "write_reports"]
