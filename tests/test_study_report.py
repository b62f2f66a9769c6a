"""The scaling-study report: power-law fits, report.md and the PNG plots, on hand-made rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import pytest

from colbert_core.study.report import (
    PLOT_NAMES,
    fastest_near_exact,
    power_law_fit,
    write_report,
)
from colbert_core.study.results import ResultRow

TOKENS_PER_DOC = 100
FLAT_64, FLAT_32 = "k'=64 cand=256", "k'=32 cand=128"
IVF_8, IVF_1 = "k'=64 cand=256 nprobe=8", "k'=64 cand=256 nprobe=1"
SKIP_REASON = "predicted 12.0 GiB > 8.0 GiB on the largest node"


def row(
    size: int,
    index: str,
    setting: str,
    *,
    status: str = "ok",
    synthetic: bool = False,
    memory_gb: float = 0.5,
    **columns: Any,
) -> ResultRow:
    """A row with every identity column filled; ``columns`` are the measured ones."""
    return ResultRow(
        point_key=f"{size}-{synthetic}-{index}-{setting}",
        study="demo",
        status=status,
        reason=columns.pop("reason", None),
        size_docs=size,
        n_tokens=size * TOKENS_PER_DOC,
        synthetic=synthetic,
        index_name=index,
        index_type=index,
        factory=None,
        setting=setting,
        k=10,
        k_prime=64,
        max_candidates=256,
        nprobe=8 if "nprobe" in setting else None,
        ef_search=None,
        store="fp16",
        predicted_memory_gb=memory_gb,
        **columns,
    )


def measured(size: int, index: str, setting: str, p50: float, **columns: Any) -> ResultRow:
    """An ``ok`` row with plausible numbers around ``p50`` ms."""
    base: dict[str, Any] = {
        "p50_ms": p50,
        "p95_ms": 1.5 * p50,
        "p99_ms": 2 * p50,
        "peak_rss_mb": 500 + size / 100,
        "index_bytes_per_token": 256.0 if index == "flat" else 16.0,
        "store_bytes_per_token": 0.0 if index == "flat" else 256.0,
        "total_bytes_per_token": 256.0 if index == "flat" else 272.0,
    }
    if index == "flat":
        base["build_s"] = 1e-6 * size * TOKENS_PER_DOC
    else:  # no build_s: the report adds train_s and add_s
        base |= {"train_s": 5.0, "add_s": 1e-5 * size * TOKENS_PER_DOC}
    return row(size, index, setting, **(base | columns))


def p50(index_setting: str, size: int) -> float:
    tokens = size * TOKENS_PER_DOC
    return {
        FLAT_64: 1e-5 * tokens,
        FLAT_32: 0.5e-5 * tokens,
        IVF_8: 0.01 * tokens**0.5,  # the series whose exponent the report must show as 0.50
        IVF_1: 0.05 * tokens**0.3,
    }[index_setting]


def quality(ndcg: float, exact: float, qps: float) -> dict[str, float]:
    return {
        "ndcg10": ndcg,
        "exact_ndcg10": exact,
        "qps": qps,
        "r10": ndcg - 0.1,
        "r100": 0.9,
        "candidate_recall": 0.95,
        "overlap10": ndcg + 0.2,
    }


def study_rows() -> list[ResultRow]:
    """2 real sizes x 2 configs x 2 settings, a synthetic size, a skipped synthetic point."""
    rows = []
    # 10K: the fastest (ivfpq nprobe=1) is below 99% of exact; the next (nprobe=8) above.
    # 30K: ivfpq is below 99% everywhere; flat k'=32 (99.3%) is faster than flat k'=64.
    grid = {
        10_000: {
            FLAT_64: (0.70, 100),
            FLAT_32: (0.69, 150),
            IVF_8: (0.695, 2000),
            IVF_1: (0.60, 5000),
        },
        30_000: {
            FLAT_64: (0.68, 40),
            FLAT_32: (0.675, 60),
            IVF_8: (0.66, 1500),
            IVF_1: (0.55, 4000),
        },
    }
    exact = {10_000: 0.70, 30_000: 0.68}
    for size, settings in grid.items():
        for setting, (ndcg, qps) in settings.items():
            index = "flat" if "nprobe" not in setting else "ivfpq"
            rows.append(
                measured(
                    size, index, setting, p50(setting, size), **quality(ndcg, exact[size], qps)
                )
            )
    for setting in (FLAT_64, FLAT_32, IVF_8, IVF_1):
        index = "flat" if "nprobe" not in setting else "ivfpq"
        rows.append(measured(100_000, index, setting, p50(setting, 100_000), synthetic=True))
    for setting in (FLAT_64, FLAT_32):
        rows.append(
            row(
                1_000_000,
                "flat",
                setting,
                status="skipped",
                synthetic=True,
                memory_gb=12.0,
                reason=SKIP_REASON,
            )
        )
    return rows


def sections(md: str) -> dict[str, str]:
    """``## `` heading -> its text."""
    out = {}
    for part in md.split("\n## ")[1:]:
        head, _, body = part.partition("\n")
        out[head] = body
    return out


def check_files(written: dict[str, str], folder: Path) -> None:
    assert set(written) == {"report", *(f"plot {name}" for name in PLOT_NAMES)}
    assert Path(written["report"]) == folder / "report.md"
    for name in PLOT_NAMES:
        path = folder / "plots" / f"{name}.png"
        assert written[f"plot {name}"] == str(path)
        assert path.read_bytes().startswith(b"\x89PNG"), name
        pixels = mpimg.imread(path)
        assert pixels.ndim == 3 and pixels.std() > 0, f"{name} is blank"
    assert not list(folder.rglob("*.tmp")), "a temp file was left behind"


# -- power_law_fit ----------------------------------------------------------------------


def test_power_law_fit_recovers_the_exponent_of_exact_data() -> None:
    x = [1e5, 3e5, 1e6, 1e7]
    fit = power_law_fit(x, [2.5 * v**-0.7 for v in x])
    assert fit is not None
    assert fit.exponent == pytest.approx(-0.7)
    assert fit.a == pytest.approx(2.5)
    assert fit.n_points == 4
    assert fit.predict(1e8) == pytest.approx(2.5 * 1e8**-0.7)


def test_power_law_fit_needs_two_distinct_positive_x() -> None:
    assert power_law_fit([1e6], [3.0]) is None
    assert power_law_fit([1e6, 1e6], [3.0, 4.0]) is None
    assert power_law_fit([], []) is None
    # None, zero and negative values drop their point.
    assert power_law_fit([1e6, 2e6, 4e6], [3.0, None, 0.0]) is None  # type: ignore[list-item]
    fit = power_law_fit([0, 1, 4, 9], [5.0, 2.0, 4.0, 6.0])
    assert fit is not None and fit.n_points == 3 and fit.exponent == pytest.approx(0.5)


# -- write_report -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str]:
    folder = tmp_path_factory.mktemp("study") / "demo"
    written = write_report(
        folder, study_rows(), title="Scaling study `demo`", notes=["wall time 12 min"]
    )
    return folder, written, (folder / "report.md").read_text(encoding="utf-8")


def test_write_report_writes_every_file(report: tuple[Path, dict[str, str], str]) -> None:
    folder, written, _ = report
    check_files(written, folder)


def test_report_has_a_section_per_size_and_the_skipped_points(
    report: tuple[Path, dict[str, str], str],
) -> None:
    _, _, md = report
    assert md.startswith("# Scaling study `demo`\n\n- wall time 12 min\n")
    heads = list(sections(md))
    sizes = [h for h in heads if "documents (" in h]
    assert sizes == [
        "10,000 documents (1M tokens)",
        "30,000 documents (3M tokens)",
        "100,000 documents (10M tokens) (synthetic: no quality columns)",
        "1,000,000 documents (100M tokens) (synthetic: no quality columns)",
    ]
    synthetic = sections(md)[sizes[2]]
    assert "nDCG@10" not in synthetic.splitlines()[1]  # no quality columns in its table
    skipped = sections(md)["Skipped points"]
    assert SKIP_REASON in skipped and "12.00" in skipped
    assert f"| skipped: {SKIP_REASON} |" in sections(md)[sizes[3]]


def test_report_fits_and_projects(report: tuple[Path, dict[str, str], str]) -> None:
    _, _, md = report
    scaling = next(body for head, body in sections(md).items() if head.startswith("Scaling"))
    assert "projected" in scaling
    ivfpq = scaling.split("### ivfpq")[1]
    header = next(line for line in ivfpq.splitlines() if line.startswith("| measure"))
    assert "projected @ 1M docs (100M tokens)" in header
    assert "projected @ 10M docs (1B tokens)" in header
    # p50 = 0.01 tokens^0.5 over 3 sizes (2 real, 1 synthetic); 100 tokens/doc, so 1M docs
    # are 1e8 tokens -> 100 ms, 10M docs 1e9 tokens -> 316 ms.
    assert f"| p50 ms, {IVF_8} | 0.50 | 3 | 100 | 316 |" in ivfpq
    flat = scaling.split("### flat")[1].split("###")[0]
    assert f"| p50 ms, {FLAT_64} | 1.00 | 3 |" in flat
    assert "| build s | 1.00 | 3 |" in flat  # build_s = 1e-6 tokens
    assert "RAM index + store GiB" in flat


def test_fastest_config_within_99_percent_of_exact(
    report: tuple[Path, dict[str, str], str],
) -> None:
    _, _, md = report
    by_head = sections(md)
    lead = "fastest config with nDCG@10 >= 99% of exact: "
    small = next(b for h, b in by_head.items() if h.startswith("10,000 "))
    # ivfpq nprobe=1 is faster (5000 QPS) but at 85.7% of exact.
    assert f"{lead}ivfpq {IVF_8} (QPS 2,000.0, nDCG 0.6950, 99.3% of exact 0.7000)" in small
    large = next(b for h, b in by_head.items() if h.startswith("30,000 "))
    assert f"{lead}flat {FLAT_32} (QPS 60.0," in large
    synthetic = next(b for h, b in by_head.items() if h.startswith("100,000 "))
    assert f"{lead}n/a" in synthetic


def test_fastest_near_exact_none_when_no_row_reaches_it() -> None:
    rows = [
        measured(10_000, "ivfpq", IVF_1, 1.0, **quality(0.5, 0.7, 5000)),
        measured(10_000, "ivfpq", IVF_8, 2.0, **quality(0.68, 0.7, 2000)),
        row(10_000, "flat", FLAT_64, status="skipped", reason="over max_docs"),
    ]
    assert fastest_near_exact(rows) is None
    assert fastest_near_exact(rows, fraction=0.95).setting == IVF_8  # type: ignore[union-attr]


def test_all_skipped_rows_still_write_every_file(tmp_path: Path) -> None:
    rows = [
        row(size, index, FLAT_64, status="skipped", memory_gb=size / 1e4, reason="too big")
        for size in (10_000, 1_000_000)
        for index in ("flat", "ivfpq")
    ]
    written = write_report(tmp_path, rows, title="All skipped")
    check_files(written, tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "none reaches 99% of exact" in md
    assert "no measured points" in md
    assert md.count("| too big |") == 4


def test_missing_numbers_single_size_and_synthetic_only_configs(tmp_path: Path) -> None:
    rows = [
        row(10_000, "flat", FLAT_64),  # ok but every measured column None
        measured(10_000, "ivfpq", IVF_8, 3.0, **quality(0.695, 0.7, 900)),
        measured(1_000_000, "hnsw", "k'=64 cand=256 ef=64", 4.0, synthetic=True),
        row(10_000, "hnsw", "k'=64 cand=256 ef=64", status="failed", reason="out of | memory"),
    ]
    written = write_report(tmp_path, rows, title="Edge cases")
    check_files(written, tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "n/a (fewer than 2 sizes)" in md
    assert "## Failed points" in md
    assert "out of \\| memory" in md  # a pipe in a reason does not break the table
    assert f"fastest config with nDCG@10 >= 99% of exact: ivfpq {IVF_8}" in md
