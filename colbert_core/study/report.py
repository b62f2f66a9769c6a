"""What a scaling study leaves for people: ``report.md``, power-law fits and PNG plots.

Files in the study folder::

    report.md                  per size: every (index config, setting) row and the fastest
                               config within 1% of the exact nDCG@10; per index config: the
                               power-law exponents vs tokens (p50 latency, build time, peak
                               RSS) and projections to 1M and 10M documents; the skipped
                               points with why
    plots/ndcg_vs_qps.png      nDCG@10 vs QPS, one panel per real size, Pareto fronts
    plots/latency_vs_docs.png  p50 latency vs documents, one line per (config, setting)
    plots/build_vs_tokens.png  build time vs tokens, one line per index config
    plots/rss_vs_tokens.png    peak RSS vs tokens, one line per index config
    plots/bytes_vs_ndcg.png    bytes/token (index + store) vs nDCG@10, one point per row

Fits are least squares on log-log, ``y = a * tokens ** b``, over the ``ok`` rows of real
and synthetic sizes alike (a synthetic size has no quality columns but real timings and
memory). Projections extrapolate those fits and say so: they are not measurements.
"""

from __future__ import annotations

import io
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..storage import write_bytes_atomic, write_text_atomic
from .results import ResultRow

logger = logging.getLogger(__name__)

REPORT = "report.md"
PLOTS = "plots"
#: A setting "keeps quality" at this fraction of the exact (exhaustive MaxSim) nDCG@10.
QUALITY_FRACTION = 0.99
#: Corpus sizes (documents) the fits are projected to.
PROJECT_DOCS = (1_000_000, 10_000_000)
#: Every plot :func:`write_report` writes, as ``plots/<name>.png``.
PLOT_NAMES = (
    "ndcg_vs_qps",
    "latency_vs_docs",
    "build_vs_tokens",
    "rss_vs_tokens",
    "bytes_vs_ndcg",
)
NO_POINTS = "no measured points"
_FEW = "n/a (fewer than 2 sizes)"


# -- power laws -------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLaw:
    """``y = a * x ** exponent``, fitted on ``n_points`` points."""

    a: float
    exponent: float
    n_points: int

    def predict(self, x: float) -> float:
        """``a * x ** exponent``."""
        return self.a * float(x) ** self.exponent


def _positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def power_law_fit(x: Sequence[float], y: Sequence[float]) -> PowerLaw | None:
    """Least-squares fit of ``log y = log a + b log x`` over the points with ``x, y > 0``.

    Parameters
    ----------
    x, y
        Paired values of the same length; ``None``, non-finite and non-positive values
        drop their point.

    Returns
    -------
    PowerLaw or None
        None when fewer than 2 distinct ``x`` remain (no slope to fit).

    Examples
    --------
    >>> fit = power_law_fit([1, 4, 9, 16], [3, 6, 9, 12])  # y = 3 x^0.5
    >>> round(fit.exponent, 6), round(fit.a, 6), fit.n_points
    (0.5, 3.0, 4)
    >>> round(fit.predict(100), 6)
    30.0
    >>> power_law_fit([10], [1.0]) is None
    True
    """
    points = [
        (float(xi), float(yi))
        for xi, yi in zip(x, y, strict=True)
        if _positive(xi) and _positive(yi)
    ]
    if len({px for px, _ in points}) < 2:
        return None
    log_x = np.log([px for px, _ in points])
    log_y = np.log([py for _, py in points])
    slope, intercept = np.polyfit(log_x, log_y, 1)
    return PowerLaw(a=math.exp(float(intercept)), exponent=float(slope), n_points=len(points))


# -- what the report measures -----------------------------------------------------------


class _Point(NamedTuple):
    docs: int
    tokens: int
    value: float
    synthetic: bool


@dataclass(frozen=True)
class _Series:
    """One line of a scaling plot / one row of a fit table: points sorted by tokens."""

    config: str
    label: str  # the setting for a latency series, the measure otherwise
    points: list[_Point]

    @property
    def fit(self) -> PowerLaw | None:
        return power_law_fit([p.tokens for p in self.points], [p.value for p in self.points])


def _ok(rows: Sequence[ResultRow]) -> list[ResultRow]:
    return [r for r in rows if r.status == "ok"]


def _configs(rows: Sequence[ResultRow]) -> list[str]:
    """Index configs in grid order (first appearance)."""
    return list(dict.fromkeys(r.index_name for r in rows))


def _sizes(rows: Sequence[ResultRow]) -> list[tuple[bool, int]]:
    """``(synthetic, documents)``: real sizes ascending, then synthetic ones."""
    return sorted({(r.synthetic, r.size_docs) for r in rows})


def build_seconds(row: ResultRow) -> float | None:
    """``build_s``, else ``train_s + add_s`` (a missing part counts 0), else None."""
    if row.build_s is not None:
        return row.build_s
    if row.train_s is None and row.add_s is None:
        return None
    return (row.train_s or 0.0) + (row.add_s or 0.0)


def _sorted(points: list[_Point]) -> list[_Point]:
    return sorted(points, key=lambda p: (p.tokens, p.docs))


def _latency_series(rows: Sequence[ResultRow], config: str) -> list[_Series]:
    """One series per search setting of ``config``: p50 ms at every size it ran."""
    ok = [r for r in _ok(rows) if r.index_name == config]
    out = []
    for setting in dict.fromkeys(r.setting for r in ok):
        points = [
            _Point(r.size_docs, r.n_tokens, r.p50_ms, r.synthetic)
            for r in ok
            if r.setting == setting and _positive(r.p50_ms)
        ]
        out.append(_Series(config, setting, _sorted(points)))
    return out


def _size_series(
    rows: Sequence[ResultRow],
    config: str,
    label: str,
    value: Callable[[ResultRow], float | None],
    combine: Callable[[list[float]], float],
) -> _Series:
    """One value per size of ``config`` (``combine`` of its ok rows' values)."""
    values: dict[tuple[bool, int], list[float]] = {}
    tokens: dict[tuple[bool, int], int] = {}
    for r in _ok(rows):
        v = value(r)
        if r.index_name == config and _positive(v):
            values.setdefault((r.synthetic, r.size_docs), []).append(float(v))  # type: ignore[arg-type]
            tokens[(r.synthetic, r.size_docs)] = r.n_tokens
    points = [_Point(d, tokens[(s, d)], combine(vs), s) for (s, d), vs in values.items()]
    return _Series(config, label, _sorted(points))


def _build_series(rows: Sequence[ResultRow], config: str) -> _Series:
    # The index is built once per size; every setting's row repeats its build time, so
    # take the first setting's (grid order).
    return _size_series(rows, config, "build s", build_seconds, lambda vs: vs[0])


def _rss_series(rows: Sequence[ResultRow], config: str) -> _Series:
    return _size_series(rows, config, "peak RSS MB", lambda r: r.peak_rss_mb, max)


def _largest_size(rows: Sequence[ResultRow]) -> ResultRow | None:
    """A row of the largest real size (of any size when none is real)."""
    known = [r for r in rows if r.size_docs > 0 and r.n_tokens > 0]
    pool = [r for r in known if not r.synthetic] or known
    return max(pool, key=lambda r: (r.size_docs, r.n_tokens), default=None)


def tokens_per_doc(rows: Sequence[ResultRow]) -> float | None:
    """Tokens per document of the largest real size (of any size when none is real)."""
    top = _largest_size(rows)
    return None if top is None else top.n_tokens / top.size_docs


def fastest_near_exact(
    rows: Sequence[ResultRow], fraction: float = QUALITY_FRACTION
) -> ResultRow | None:
    """The ``ok`` row with the highest QPS whose nDCG@10 is >= ``fraction`` x exact."""
    eligible = [
        r
        for r in _ok(rows)
        if r.ndcg10 is not None
        and r.exact_ndcg10 is not None
        and r.qps is not None
        and r.ndcg10 >= fraction * r.exact_ndcg10 - 1e-12
    ]
    return max(eligible, key=lambda r: r.qps or 0.0, default=None)


# -- markdown ---------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:,.{digits}f}"


def _sig(value: float | None) -> str:
    """A projected value, to a sensible precision."""
    if value is None or not math.isfinite(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _count(n: float) -> str:
    """``1_234_567`` -> ``1.23M``.

    >>> _count(303_588), _count(1_000_000), _count(1.5e9), _count(950), _count(0.25)
    ('304K', '1M', '1.5B', '950', '0.25')
    """
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def _pct(part: float | None, whole: float | None) -> str:
    if part is None or whole is None or whole <= 0:
        return "-"
    return f"{100 * part / whole:.1f}%"


def _bytes(r: ResultRow) -> str:
    if r.index_bytes_per_token is None and r.store_bytes_per_token is None:
        return _fmt(r.total_bytes_per_token, 1)
    return f"{_fmt(r.index_bytes_per_token, 1)} + {_fmt(r.store_bytes_per_token, 1)}"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table_row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


_Column = tuple[str, Callable[[ResultRow], str]]

_QUALITY_COLUMNS: list[_Column] = [
    ("nDCG@10", lambda r: _fmt(r.ndcg10)),
    ("% of exact", lambda r: _pct(r.ndcg10, r.exact_ndcg10)),
    ("R@10", lambda r: _fmt(r.r10)),
    ("R@100", lambda r: _fmt(r.r100)),
    ("cand. recall", lambda r: _fmt(r.candidate_recall)),
    ("overlap@10", lambda r: _fmt(r.overlap10)),
]
_COST_COLUMNS: list[_Column] = [
    ("QPS", lambda r: _fmt(r.qps, 1)),
    ("p50 ms", lambda r: _fmt(r.p50_ms, 2)),
    ("p95 ms", lambda r: _fmt(r.p95_ms, 2)),
    ("p99 ms", lambda r: _fmt(r.p99_ms, 2)),
    ("train s", lambda r: _fmt(r.train_s, 2)),
    ("add s", lambda r: _fmt(r.add_s, 2)),
    ("build s", lambda r: _fmt(r.build_s, 2)),
    ("peak RSS MB", lambda r: _fmt(r.peak_rss_mb, 0)),
    ("bytes/token index + store", _bytes),
]


def _percent_label() -> str:
    return f"{QUALITY_FRACTION:.0%}"


def _size_section(rows: Sequence[ResultRow], synthetic: bool, size: int) -> list[str]:
    here = [r for r in rows if r.synthetic == synthetic and r.size_docs == size]
    tokens = max(r.n_tokens for r in here)
    head = f"## {size:,} documents ({_count(tokens)} tokens)"
    columns = _COST_COLUMNS if synthetic else _QUALITY_COLUMNS + _COST_COLUMNS
    if synthetic:
        head += " (synthetic: no quality columns)"
    names = ["index", "setting", "status", *(name for name, _ in columns)]
    lines = [head, "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for r in here:
        if r.status == "ok":
            cells = [r.status, *(cell(r) for _, cell in columns)]
        else:
            cells = [f"{r.status}: {r.reason or 'no reason recorded'}", *([""] * len(columns))]
        lines.append(_table_row([r.index_name, r.setting, *cells]))
    lead = f"fastest config with nDCG@10 >= {_percent_label()} of exact:"
    if synthetic:
        lines += ["", f"{lead} n/a (synthetic size, no quality)", ""]
        return lines
    best = fastest_near_exact(here)
    if best is None:
        lines += ["", f"{lead} none reaches {_percent_label()} of exact", ""]
    else:
        lines += [
            "",
            f"{lead} {best.index_name} {best.setting} (QPS {_fmt(best.qps, 1)}, "
            f"nDCG {_fmt(best.ndcg10)}, {_pct(best.ndcg10, best.exact_ndcg10)} of exact "
            f"{_fmt(best.exact_ndcg10)})",
            "",
        ]
    return lines


def _fit_cells(series: _Series, project_tokens: list[float] | None) -> list[str]:
    fit = series.fit
    if fit is None:
        return [_FEW, str(len(series.points)), *(["-"] * len(PROJECT_DOCS))]
    projected = [_sig(fit.predict(t)) for t in project_tokens] if project_tokens else []
    projected += ["-"] * (len(PROJECT_DOCS) - len(projected))
    return [f"{fit.exponent:.2f}", str(fit.n_points), *projected]


def _config_section(
    rows: Sequence[ResultRow], config: str, project_tokens: list[float] | None
) -> list[str]:
    mine = [r for r in rows if r.index_name == config]
    first = mine[0]
    kind = first.index_type + (f", factory `{first.factory}`" if first.factory else "")
    lines = [f"### {config} ({kind})", ""]
    if not _ok(mine):
        return [*lines, f"{NO_POINTS} (every point skipped or failed).", ""]
    if project_tokens:
        proj = [
            f"projected @ {_count(d)} docs ({_count(t)} tokens)"
            for d, t in zip(PROJECT_DOCS, project_tokens, strict=True)
        ]
    else:
        proj = [f"projected @ {_count(d)} docs (tokens/doc unknown)" for d in PROJECT_DOCS]
    names = ["measure", "exponent vs tokens", "points", *proj]
    lines += ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    table = [(f"p50 ms, {s.label}", s) for s in _latency_series(rows, config)]
    table += [("build s", _build_series(rows, config)), ("peak RSS MB", _rss_series(rows, config))]
    for measure, series in table:
        lines.append(_table_row([measure, *_fit_cells(series, project_tokens)]))
    with_bytes = [r for r in _ok(mine) if _positive(r.total_bytes_per_token)]
    if with_bytes:
        top = max(with_bytes, key=lambda r: (r.n_tokens, r.size_docs))
        bpt = float(top.total_bytes_per_token)  # type: ignore[arg-type]
        ram = [_sig(bpt * t / 2**30) for t in project_tokens] if project_tokens else []
        ram += ["-"] * (len(PROJECT_DOCS) - len(ram))
        measure = (
            f"RAM index + store GiB = {bpt:.1f} bytes/token (at {top.size_docs:,} docs) x tokens"
        )
        lines.append(_table_row([measure, "1 (linear)", "1", *ram]))
    return [*lines, ""]


def _scaling_section(rows: Sequence[ResultRow]) -> list[str]:
    top = _largest_size(rows)
    tpd = tokens_per_doc(rows)
    project_tokens = [d * tpd for d in PROJECT_DOCS] if tpd else None
    if top is None or tpd is None:
        basis = "no tokens/document known, so nothing"
    else:
        kind = "synthetic" if top.synthetic else "real"
        basis = f"{tpd:.1f} tokens/document (of the largest {kind} size, {top.size_docs:,} docs)"
    lines = [
        "## Scaling per index config (power-law fits vs tokens)",
        "",
        "Exponent b of y = a · tokens^b, least squares on log-log over the `ok` rows of real "
        "and synthetic sizes (b = 1: linear, b < 1: sublinear). Projections convert documents "
        f"to tokens with {basis}; they are **projected** (extrapolated from the fits), not "
        "measured.",
        "",
    ]
    for config in _configs(rows):
        lines += _config_section(rows, config, project_tokens)
    return lines


def _not_run_section(rows: Sequence[ResultRow], status: str, heading: str) -> list[str]:
    grouped: Counter[tuple[bool, int, str, str, float]] = Counter(
        (r.synthetic, r.size_docs, r.index_name, r.reason or "", r.predicted_memory_gb)
        for r in rows
        if r.status == status
    )
    lines = [f"## {heading}", ""]
    if not grouped:
        return [*lines, "none", ""]
    lines += [
        "| size (documents) | index | settings | reason | predicted memory GB |",
        "|---|---|---|---|---|",
    ]
    for (synthetic, size, config, reason, memory), n in grouped.items():
        size_text = f"{size:,}" + (" (synthetic)" if synthetic else "")
        cells = [size_text, config, n, reason or "no reason recorded", _fmt(memory, 2)]
        lines.append(_table_row(cells))
    return [*lines, ""]


def markdown(rows: Sequence[ResultRow], *, title: str, notes: Sequence[str] = ()) -> str:
    """The text of ``report.md`` (see the module docstring for what it holds)."""
    counts = Counter(r.status for r in rows)
    lines = [f"# {title}", ""]
    if notes:
        lines += [*(f"- {note}" for note in notes), ""]
    lines += [
        f"{len(rows)} rows: {counts['ok']} ok, {counts['skipped']} skipped, "
        f"{counts['failed']} failed; {len(_configs(rows))} index configs, "
        f"{len(_sizes(rows))} sizes.",
        "",
    ]
    for synthetic, size in _sizes(rows):
        lines += _size_section(rows, synthetic, size)
    lines += _scaling_section(rows)
    lines += _not_run_section(rows, "skipped", "Skipped points")
    if counts["failed"]:
        lines += _not_run_section(rows, "failed", "Failed points")
    lines += ["## Plots", ""]
    lines += [f"![{name}]({PLOTS}/{name}.png)" for name in PLOT_NAMES]
    return "\n".join(lines) + "\n"


# -- plots ------------------------------------------------------------------------------

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_STYLES = ("-", "--", ":", "-.")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The ``(qps, ndcg)`` points no other point beats on both, by increasing QPS.

    >>> pareto_front([(10, 0.9), (100, 0.8), (50, 0.7), (1000, 0.5), (100, 0.6)])
    [(10, 0.9), (100, 0.8), (1000, 0.5)]
    """
    front: list[tuple[float, float]] = []
    best = -math.inf
    for qps, ndcg in sorted(points, key=lambda p: (-p[0], -p[1])):
        if ndcg > best:
            front.append((qps, ndcg))
            best = ndcg
    return front[::-1]


def _png(fig: Any, plt: Any) -> bytes:
    try:
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        return buf.getvalue()
    finally:
        plt.close(fig)


def _no_points(ax: Any, title: str) -> None:
    ax.text(0.5, 0.5, NO_POINTS, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


def _plain(value: float) -> str:
    return f"{value:g}"


def _log_axis(ax: Any, which: str, fmt: Callable[[float], str]) -> None:
    """A log scale with plain tick labels (``300K``, ``20``, not ``3x10^5``); the minor
    ticks are labelled too when the data spans too little to show 2 decades."""
    from matplotlib import ticker

    getattr(ax, f"set_{which}scale")("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    low, high = getattr(ax, f"get_{which}lim")()
    label = ticker.FuncFormatter(lambda v, _pos: fmt(v))
    axis.set_major_formatter(label)
    narrow = low > 0 and high / low < 10**1.5
    axis.set_minor_formatter(label if narrow else ticker.NullFormatter())


def _legend(ax: Any, **kwargs: Any) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7, ncol=2 if len(handles) > 10 else 1, **kwargs)


def _exponent_label(fit: PowerLaw | None, symbol: str) -> str:
    if fit is None:
        return f"{symbol}: 1 size, no fit"
    return f"{symbol} ∝ tokens^{fit.exponent:.2f}"


def _ndcg_vs_qps(plt: Any, rows: Sequence[ResultRow], colours: dict[str, Any]) -> bytes:
    title = "nDCG@10 vs QPS (lines: Pareto front per index config)"
    points = [r for r in _ok(rows) if not r.synthetic and r.ndcg10 is not None and _positive(r.qps)]
    sizes = sorted({r.size_docs for r in points})
    if not sizes:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        _no_points(ax, title)
        return _png(fig, plt)
    ncols = min(len(sizes), 3)
    nrows = math.ceil(len(sizes) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4.5 * nrows), squeeze=False)
    for i, size in enumerate(sizes):
        ax = axes[i // ncols][i % ncols]
        here = [r for r in points if r.size_docs == size]
        for config in _configs(here):
            mine = [(float(r.qps), float(r.ndcg10)) for r in here if r.index_name == config]  # type: ignore[arg-type]
            colour = colours[config]
            ax.scatter(*zip(*mine, strict=True), color=colour, s=30, label=config, zorder=3)
            front = pareto_front(mine)
            ax.plot(*zip(*front, strict=True), color=colour, linewidth=1.2)
        exact = [r.exact_ndcg10 for r in here if r.exact_ndcg10 is not None]
        if exact:
            ax.axhline(
                QUALITY_FRACTION * max(exact),
                color="grey",
                linestyle=":",
                label=f"{_percent_label()} of exact",
            )
        _log_axis(ax, "x", _count)
        ax.set_xlabel("queries per second (all queries in one call, log)")
        ax.set_ylabel("nDCG@10")
        ax.set_title(f"{size:,} documents")
        ax.grid(alpha=0.3)
        _legend(ax, loc="lower left")
    for j in range(len(sizes), nrows * ncols):
        axes[j // ncols][j % ncols].set_axis_off()
    fig.suptitle(title)
    return _png(fig, plt)


def _draw_series(ax: Any, series: _Series, x: str, colour: Any, style: str, label: str) -> None:
    xs = [getattr(p, x) for p in series.points]
    ys = [p.value for p in series.points]
    ax.plot(xs, ys, color=colour, linestyle=style, marker="o", markersize=5, label=label)
    synthetic = [(xv, yv) for xv, yv, p in zip(xs, ys, series.points, strict=True) if p.synthetic]
    if synthetic:
        ax.scatter(
            *zip(*synthetic, strict=True), s=36, facecolors="white", edgecolors=colour, zorder=3
        )


def _scaling_plot(
    plt: Any,
    series: list[_Series],
    colours: dict[str, Any],
    *,
    x: str,
    xlabel: str,
    ylabel: str,
    title: str,
    label: Callable[[_Series], str],
) -> bytes:
    series = [s for s in series if s.points and all(_positive(getattr(p, x)) for p in s.points)]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    if not series:
        _no_points(ax, title)
        return _png(fig, plt)
    styles: Counter[str] = Counter()
    for s in series:
        style = _STYLES[styles[s.config] % len(_STYLES)]
        styles[s.config] += 1
        _draw_series(ax, s, x, colours[s.config], style, label(s))
    _log_axis(ax, "x", _count)
    _log_axis(ax, "y", _plain)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    _legend(ax, loc="best")
    return _png(fig, plt)


def _bytes_vs_ndcg(plt: Any, rows: Sequence[ResultRow], colours: dict[str, Any]) -> bytes:
    title = "Memory vs quality (real sizes; one point per index config, setting and size)"
    points = [
        r
        for r in _ok(rows)
        if not r.synthetic and r.ndcg10 is not None and _positive(r.total_bytes_per_token)
    ]
    fig, ax = plt.subplots(figsize=(8, 5))
    if not points:
        _no_points(ax, title)
        return _png(fig, plt)
    sizes = sorted({r.size_docs for r in points})
    for config in _configs(points):
        for k, size in enumerate(sizes):
            mine = [r for r in points if r.index_name == config and r.size_docs == size]
            if mine:
                ax.scatter(
                    [r.total_bytes_per_token for r in mine],
                    [r.ndcg10 for r in mine],
                    color=colours[config],
                    marker=_MARKERS[k % len(_MARKERS)],
                    s=36,
                    label=f"{config}, {_count(size)} docs",
                )
    _log_axis(ax, "x", _plain)
    ax.set_xlabel("bytes per token, index + token store (log)")
    ax.set_ylabel("nDCG@10")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    _legend(ax, loc="best")
    return _png(fig, plt)


def study_plots(rows: Sequence[ResultRow]) -> dict[str, bytes]:
    """Every plot of :data:`PLOT_NAMES` as PNG bytes (one saying "no measured points"
    when it has nothing to draw, so every file always exists)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    colours = {c: cmap(i % 10) for i, c in enumerate(_configs(rows))}
    configs = _configs(_ok(rows))
    latency = [s for c in configs for s in _latency_series(rows, c)]
    docs = "documents (log)"
    tokens = "tokens in the corpus (log)"
    hollow = "hollow markers: synthetic sizes"
    return {
        "ndcg_vs_qps": _ndcg_vs_qps(plt, rows, colours),
        "latency_vs_docs": _scaling_plot(
            plt,
            latency,
            colours,
            x="docs",
            xlabel=docs,
            ylabel="p50 latency per query (ms, log)",
            title=f"p50 latency vs corpus size (exponent fitted vs tokens; {hollow})",
            label=lambda s: f"{s.config} {s.label} ({_exponent_label(s.fit, 'p50')})",
        ),
        "build_vs_tokens": _scaling_plot(
            plt,
            [_build_series(rows, c) for c in configs],
            colours,
            x="tokens",
            xlabel=tokens,
            ylabel="build time (s, log): train + add",
            title=f"Index build time vs tokens ({hollow})",
            label=lambda s: f"{s.config} ({_exponent_label(s.fit, 'build')})",
        ),
        "rss_vs_tokens": _scaling_plot(
            plt,
            [_rss_series(rows, c) for c in configs],
            colours,
            x="tokens",
            xlabel=tokens,
            ylabel="peak RSS (MB, log)",
            title=f"Peak resident memory vs tokens ({hollow})",
            label=lambda s: f"{s.config} ({_exponent_label(s.fit, 'RSS')})",
        ),
        "bytes_vs_ndcg": _bytes_vs_ndcg(plt, rows, colours),
    }


# -- the files --------------------------------------------------------------------------


def write_report(
    folder: str | Path,
    rows: Sequence[ResultRow],
    *,
    title: str,
    notes: Sequence[str] = (),
) -> dict[str, str]:
    """Write ``<folder>/report.md`` and ``<folder>/plots/*.png``, each atomically.

    Parameters
    ----------
    folder
        A local folder (created when missing).
    rows
        Every row of the study, any status, in grid order.
    title
        The report's heading.
    notes
        Extra lines under the title (wall time, what was skipped, ...).

    Returns
    -------
    dict
        ``{"report": path, "plot <name>": path, ...}`` of every file written.
    """
    folder = Path(folder)
    rows = list(rows)
    written: dict[str, str] = {}
    for name, png in study_plots(rows).items():
        path = folder / PLOTS / f"{name}.png"
        write_bytes_atomic(path, png)
        written[f"plot {name}"] = str(path)
    path = folder / REPORT
    write_text_atomic(path, markdown(rows, title=title, notes=notes))
    written["report"] = str(path)
    logger.info("wrote the study report of %d rows to %s", len(rows), path)
    return written


__all__ = [
    "PLOT_NAMES",
    "REPORT",
    "PowerLaw",
    "build_seconds",
    "fastest_near_exact",
    "markdown",
    "pareto_front",
    "power_law_fit",
    "study_plots",
    "tokens_per_doc",
    "write_report",
]
