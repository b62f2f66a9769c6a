"""What the command line does with bad input and with bugs: exit 2 with one line naming
the culprit and the fix for anything the user can fix, exit 1 with a traceback for a bug."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

import jobs.commands.evaluate as evaluate_command
from colbert_core.embeddings import DEFAULT_SHARD_SIZE
from colbert_core.errors import ColbertBatchError
from jobs.cli import build_parser, main, parse


def _qrels(tmp_path: Path) -> Path:
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 d1 1\n")
    return path


def _run(tmp_path: Path, text: str = "q1 Q0 d1 1 1.0 t\n") -> Path:
    path = tmp_path / "run.trec"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("error", "status", "expected"),
    [
        (ValueError("an internal invariant broke"), 1, ["Traceback", "a bug", "invariant"]),
        (ColbertBatchError("wrong; do this"), 2, ["ColbertBatchError: wrong; do this"]),
    ],
)
def test_exit_status_tells_a_bug_from_a_user_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    status: int,
    expected: list[str],
) -> None:
    """Only our own errors are the user's to fix (exit 2, one line); anything else is a
    bug and shows its traceback (exit 1) instead of passing for bad input."""

    def run(config: object) -> object:
        raise error

    monkeypatch.setattr(evaluate_command, "run", run)
    argv = ["evaluate", "--run", str(_run(tmp_path)), "--qrels", str(_qrels(tmp_path))]
    assert main(argv) == status
    err = capsys.readouterr().err
    assert all(text in err for text in expected)
    assert ("Traceback" in err) == (status == 1)


def test_missing_run_file_is_a_user_error(tmp_path: Path, capsys) -> None:
    argv = ["evaluate", "--run", str(tmp_path / "nope.trec"), "--qrels", str(_qrels(tmp_path))]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nope.trec'}" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--memory-budget-mb", "0"], "--memory-budget-mb must be positive, got 0"),
        (["--k", "-5"], "--k must be positive, got -5"),
        (["--k-prime", "0"], "--k-prime must be positive, got 0"),
        (["--full-scores", "0"], "--full-scores must be positive, got 0"),
        (["--query-batch-size", "0"], "--query-batch-size must be positive, got 0"),
        (["--workers", "0"], "--workers must be positive, got 0"),
        (["--max-retries", "-1"], "--max-retries must not be negative, got -1"),
    ],
)
def test_numeric_options_are_validated_at_the_boundary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    base = ["search", "--exact", "--embeddings", str(tmp_path), "--queries", "q.tsv"]
    assert main([*base, "--out", str(tmp_path / "run"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_encode_default_shard_size_keeps_workers_busy_on_small_corpora() -> None:
    _, config, _ = parse(["encode", "--corpus", "c.jsonl", "--out", "o"])
    assert config.encode.shard_size == DEFAULT_SHARD_SIZE == 1000
    assert config.encode.model == "minilm" and config.cluster.threads_per_worker == 1
    sub = build_parser()._subparsers._group_actions[0].choices["encode"]  # type: ignore[union-attr]
    help_text = " ".join(sub.format_help().split())
    assert "default 1000" in help_text and "every worker gets work" in help_text


def test_omitted_options_take_the_config_defaults() -> None:
    """Defaults live in the config dataclasses only: argparse adds nothing it was not given."""
    _, config, _ = parse(["search", "--index", "i", "--queries", "q", "--out", "o"])
    assert (config.params.k, config.params.k_prime, config.params.max_candidates) == (100, 64, 256)
    assert config.memory_budget_mb == 512 and config.query_set.split == "test"
    assert config.cluster.workers is None and config.measures == ()


def test_evaluate_refuses_duplicates_and_nan_scores_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qrels = _qrels(tmp_path)
    dup = _run(tmp_path, "q1 Q0 d2 1 2.0 t\nq1 Q0 d1 2 1.0 t\nq1 Q0 d2 3 0.5 t\n")
    assert main(["evaluate", "--run", str(dup), "--qrels", str(qrels)]) == 2
    err = capsys.readouterr().err
    assert f"{dup}:3: document 'd2' appears twice for query 'q1' (first at {dup}:1)" in err
    nan = _run(tmp_path, "q1 Q0 d2 1 2.0 t\nq1 Q0 d1 2 nan t\n")
    assert main(["evaluate", "--run", str(nan), "--qrels", str(qrels)]) == 2
    assert f"{nan}:2: score nan of document 'd1' for query 'q1' is not a finite number" in (
        capsys.readouterr().err
    )


def test_truncated_gzip_corpus_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(truncated_gzip_corpus())
    (tmp_path / "q.tsv").write_text("q1\tword\n")
    argv = ["bm25", "--corpus", str(path), "--queries", str(tmp_path / "q.tsv")]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: the compressed file is truncated or corrupt after line" in err
    assert "Traceback" not in err


def truncated_gzip_corpus(n: int = 400) -> bytes:
    """A gzip-compressed JSONL corpus of ``n`` documents with its last 300 bytes cut off."""
    lines = "".join(json.dumps({"_id": f"d{i}", "text": "word " * 50}) + "\n" for i in range(n))
    return gzip.compress(lines.encode())[:-300]
