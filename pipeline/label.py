"""Stage 3: labels. The rule classifier and language detector over a run's samples.

Works file by file (each staging chunk gives one labels file of the same name), so memory is
bounded by the chunk size, and a resumed run labels only chunks not yet labelled.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.lake import parquet_files, read_folder, write_parquet_atomic

log = logging.getLogger(__name__)

SAMPLE_KEY = ["run_id", "model", "deployment", "prompt_id", "rep"]
CARRIED = ["topic", "topic_group", "language", "source_label"]


def label_table(samples: pa.Table, prompt_text: dict[str, str]) -> pa.Table:
    """Labels of a samples table: the sample key, carried attributes and the classifier's columns."""
    from pipeline.classify import OUTPUT_COLUMNS, classify_table

    texts = pa.array([prompt_text.get(p) for p in samples.column("prompt_id").to_pylist()], pa.string())
    work = samples.append_column("prompt_text", texts)
    labelled = classify_table(
        work,
        response="response_text",
        prompt="prompt_text",
        prompt_language="language",
        reasoning="reasoning_text",
        finish_reason="finish_reason",
        error="error",
        streamed_text="streamed_text",
    )
    return labelled.select(SAMPLE_KEY + CARRIED + list(OUTPUT_COLUMNS))


def label_run(staging_run: Path) -> int:
    """Label every samples file of a staging run that has no labels file yet; return rows labelled."""
    samples_dir = staging_run / "samples"
    labels_dir = staging_run / "labels"
    prompts = read_folder(staging_run / "prompts", columns=["prompt_id", "prompt_text"])
    prompt_text = {} if prompts is None else dict(
        zip(prompts.column("prompt_id").to_pylist(), prompts.column("prompt_text").to_pylist())
    )
    n = 0
    for src in parquet_files(samples_dir):
        dst = labels_dir / src.relative_to(samples_dir)
        if dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime:
            continue
        samples = pq.read_table(src)
        labels = label_table(samples, prompt_text)
        write_parquet_atomic(labels, dst)
        n += labels.num_rows
    # A samples file that was replaced (a recorded re-import) leaves no stale labels behind.
    for dst in parquet_files(labels_dir):
        if not (samples_dir / dst.relative_to(labels_dir)).exists():
            dst.unlink()
    log.info("labelled %d responses", n)
    return n

