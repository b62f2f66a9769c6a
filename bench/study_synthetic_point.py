"""Measure a study's synthetic sizes from its saved template, without its real embeddings.

`colbert-batch study` draws the synthetic template from the largest real size and keeps it
in ``<study>/synthetic/template.npz``. When the real embeddings are gone (deleted to free
disk, or re-encoded so that every real point's key changed), this driver still measures
the synthetic points with the study's own planning, Ray point tasks, result rows and
report: only the real sizes, their encode and their exact references are left out.

    COLBERT_BATCH_DATA=../shared/datasets python bench/study_synthetic_point.py \
        jobs/configs/study-scifact.yaml

The report keeps the notes of the study run that measured the real sizes (its wall
times) and adds this run's, labelled. It was used for the 1M-document point in
bench/RESULTS.md ("Scaling study"), after the real sizes' embeddings had been deleted.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from colbert_core.embeddings import Manifest
from colbert_core.study import load_study
from colbert_core.study.plan import Layout
from colbert_core.study.report import write_report
from colbert_core.study.sizes import (
    SizeInfo,
    SourceSpec,
    load_template,
    template_path,
)
from jobs.cluster import connect_for
from jobs.cluster.study_tasks import StudyTasks
from jobs.commands.study import StudyOutcome, _measure_sizes, _notes, _queries
from jobs.console import configure_logging, progress_bar, quiet_third_party


def earlier_notes(out: Path) -> list[str]:
    """The notes (leading bullets) of the report already in ``out``, labelled as the
    real sizes' run; ``[]`` without a report. A previous synthetic run's notes are left
    out: this run's replace them."""
    report = out / "report.md"
    if not report.exists():
        return []
    notes = []
    for line in report.read_text(encoding="utf-8").splitlines()[1:]:
        if line.startswith("- "):
            notes.append(line[2:])
        elif notes:
            break
    notes = [n for n in notes if not n.startswith("Synthetic sizes' run")]
    return [n if n.startswith("Real sizes") else f"Real sizes' run: {n}" for n in notes]


def synthetic_notes(outcome: StudyOutcome) -> list[str]:
    """This run's notes, labelled as the synthetic sizes' run."""
    return [f"Synthetic sizes' run (bench/study_synthetic_point.py): {n}" for n in _notes(outcome)]


def main(config: str) -> int:
    configure_logging()
    quiet_third_party()
    t0 = time.perf_counter()
    study = load_study(config)
    layout = Layout(Path(study.out))
    with np.load(template_path(layout.out)) as z:
        source_sha = json.loads(str(z["meta"]))["source_sha256"]
    template = load_template(layout.out, source_sha)
    if template is None:
        raise SystemExit(f"no template in {template_path(layout.out)}")
    logging.info(
        "template: %d vectors, %.1f tokens/doc, drawn from %s",
        len(template.vectors),
        template.tokens_per_doc,
        source_sha[:12],
    )
    res = connect_for(None, {"--out": study.out}, shared_fs=False)
    queries = _queries(study, layout)
    sizes = [
        SizeInfo.of(SourceSpec(s, "", None, 0, template, study.shard_size, study.seed))
        for s in study.synthetic_sizes
    ]
    dim = Manifest.load(layout.target).dim
    outcome = StudyOutcome(study, layout, [])
    with progress_bar(None, "synthetic", unit="point") as bar:
        results = _measure_sizes(study, sizes, queries, {}, dim, StudyTasks(res), outcome, bar)
    outcome.rows = results.rows
    outcome.phases["total_s"] = time.perf_counter() - t0
    notes = earlier_notes(layout.out) + synthetic_notes(outcome)
    write_report(layout.out, outcome.rows, title=study.name, notes=notes)
    print(
        f"ran {outcome.ran}; skipped {outcome.skipped}; failed {outcome.failed}; "
        f"{outcome.phases['total_s'] / 60:.1f} min"
    )
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
