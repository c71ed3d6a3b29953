"""Stage 3: labels. The rule classifier and language detector over a run's samples, and
optionally an LLM judge for the responses the rule tier is unsure of.

Works file by file (each staging chunk gives one labels file of the same name), so memory is
bounded by the chunk size, and a resumed run labels only chunks not yet labelled. With a judge
(`judge:` in the study, see `pipeline.judge`), the run's staging folder also gets
`judge_agreement.json`: how often the judge agreed with the rule tier where it was asked.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.lake import parquet_files, read_folder, readable_parquet, set_aside, write_json_atomic, write_parquet_atomic

if TYPE_CHECKING:
    from pipeline.config import JudgeConfig
    from pipeline.judge import JudgeAgreement, JudgeBackend

log = logging.getLogger(__name__)

SAMPLE_KEY = ["run_id", "model", "deployment", "prompt_id", "rep"]
CARRIED = ["topic", "topic_group", "language", "source_label"]
# The judge tier's columns (see pipeline.judge); `label` itself comes from the classifier's columns.
JUDGE_COLUMNS = ["rule_label", "judge_label", "judge_version"]
AGREEMENT_FILE = "judge_agreement.json"


def label_table(samples: pa.Table, prompt_text: dict[str, str], *, judge: "JudgeConfig | None" = None,
                backend: "JudgeBackend | None" = None, budget: int | None = None,
                agreement: "JudgeAgreement | None" = None, tier: Any = None) -> pa.Table:
    """Labels of a samples table: the sample key, carried attributes, the classifier's columns
    and the judge's (`rule_label`, `judge_label`, `judge_version`; null judge columns without a judge)."""
    from pipeline.classify import OUTPUT_COLUMNS, classify_table, split_reasoning
    from pipeline.judge import label_columns

    prompts = [prompt_text.get(p) for p in samples.column("prompt_id").to_pylist()]
    work = samples.append_column("prompt_text", pa.array(prompts, pa.string()))
    labelled = classify_table(
        work,
        response="response_text",
        prompt="prompt_text",
        prompt_language="language",
        reasoning="reasoning_text",
        finish_reason="finish_reason",
        error="error",
        streamed_text="streamed_text",
        tier=tier,
    )
    out = labelled.select(SAMPLE_KEY + CARRIED + list(OUTPUT_COLUMNS))
    rule_labels = out.column("label").to_pylist()
    unsure = out.column("unsure").to_pylist()
    visible: list[str | None] = []
    if judge is not None and judge.enabled and any(unsure):
        for text, is_unsure in zip(samples.column("response_text").to_pylist(), unsure):
            visible.append(split_reasoning(text)[0] if is_unsure and isinstance(text, str) else None)
    else:
        visible = [None] * out.num_rows
    cols = label_columns(rule_labels, unsure, prompts, visible, judge, backend, budget, agreement)
    out = out.set_column(out.column_names.index("label"), "label", pa.array(cols["label"], pa.string()))
    judged = [jl is not None and jl == lab and lab != rl
              for jl, lab, rl in zip(cols["judge_label"], cols["label"], rule_labels)]
    if any(judged):  # the judge overrode the tier below it
        by = [("judge" if j else b) for j, b in zip(judged, out.column("decided_by").to_pylist())]
        out = out.set_column(out.column_names.index("decided_by"), "decided_by", pa.array(by, pa.string()))
    for name in JUDGE_COLUMNS:
        out = out.append_column(name, pa.array(cols[name], pa.string()))
    return out


def _judge_calls_so_far(labels_dir: Path) -> int:
    """Judge requests already recorded in this run's labels files (a resumed run keeps its budget)."""
    n = 0
    for f in parquet_files(labels_dir):
        if "judge_version" in pq.read_schema(f).names:
            col = pq.read_table(f, columns=["judge_version"]).column("judge_version")
            n += len(col) - col.null_count
    return n


def label_run(staging_run: Path, judge: "JudgeConfig | None" = None, *, backend: "JudgeBackend | None" = None,
              base_dir: Path | None = None, classifier: str | None = None, cache_path: Path | None = None) -> int:
    """Label every samples file of a staging run that has no labels file yet; return rows labelled.

    With an enabled ``judge``, unsure rows are sent to it (at most ``judge.max_calls`` judge
    requests over the whole run) and `judge_agreement.json` is written; ``backend`` replaces
    the configured client (tests), ``base_dir`` resolves a relative vLLM ``model_path``.
    """
    from pipeline.judge import JudgeAgreement, judge_version

    samples_dir = staging_run / "samples"
    labels_dir = staging_run / "labels"
    prompts = read_folder(staging_run / "prompts", columns=["prompt_id", "prompt_text"])
    prompt_text = {} if prompts is None else dict(
        zip(prompts.column("prompt_id").to_pylist(), prompts.column("prompt_text").to_pylist())
    )
    use_judge = judge is not None and judge.enabled
    agreement = JudgeAgreement(judge_version(judge)) if use_judge else None
    budget = None
    if use_judge and judge.max_calls is not None:
        budget = max(0, judge.max_calls - _judge_calls_so_far(labels_dir))
    if classifier is None:  # as a study that does not choose: $REFUSALS_CLASSIFIER, else semantic
        import os

        classifier = os.environ.get("REFUSALS_CLASSIFIER", "").strip() or "semantic"
    own_backend = False
    tier = None
    n = 0
    try:
        for src in parquet_files(samples_dir):
            dst = labels_dir / src.relative_to(samples_dir)
            if dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime:
                if readable_parquet(dst, columns=["prompt_id"]) is not None:
                    continue
                set_aside(dst, staging_run)  # a damaged labels file is labelled again
            if tier is None and classifier == "semantic":
                from pipeline.semantic import load_tier

                tier = load_tier(cache_path)  # loaded once, on the first chunk to label
            samples = readable_parquet(src)
            if samples is None:  # damaged after sampling checked it: the next sampling pass redraws it
                set_aside(src, staging_run)
                dst.unlink(missing_ok=True)
                from pipeline.errors import UserError

                raise UserError(f"{src}: a staged samples file is corrupt; it was moved aside, "
                                "resume the run to sample its keys again")
            if use_judge and backend is None:
                backend, own_backend = _LazyBackend(judge, base_dir), True
            before = agreement.asked if agreement else 0
            labels = label_table(samples, prompt_text, judge=judge if use_judge else None, backend=backend,
                                 budget=budget, agreement=agreement, tier=tier)
            if budget is not None and agreement is not None:
                budget = max(0, budget - (agreement.asked - before))
            write_parquet_atomic(labels, dst)
            n += labels.num_rows
    finally:
        if own_backend and backend is not None:
            backend.close()
        if tier is not None:
            tier.close()
    # A samples file that was replaced (a recorded re-import) leaves no stale labels behind.
    for dst in parquet_files(labels_dir):
        if not (samples_dir / dst.relative_to(labels_dir)).exists():
            dst.unlink()
    if use_judge:
        summary = judge_summary(labels_dir, judge_version(judge))
        summary["over_budget_this_pass"] = agreement.over_budget
        summary["skipped_unavailable_this_pass"] = agreement.skipped_unavailable
        summary["max_calls"] = judge.max_calls
        write_json_atomic(summary, staging_run / AGREEMENT_FILE)
        log.info("judge %s: asked about %d responses, answered %d, agreed with the rules on %s",
                 summary["judge_version"], summary["asked"], summary["answered"],
                 "n/a" if summary["agreement"] is None else f"{summary['agreement']:.3f}")
    log.info("labelled %d responses", n)
    return n


class _LazyBackend:
    """The judge's backend, created on the first request: a run with nothing unsure never
    loads a judge model or opens a connection."""

    def __init__(self, cfg: "JudgeConfig", base_dir: Path | None) -> None:
        self.cfg, self.base_dir, self.backend = cfg, base_dir, None

    def ask(self, conversations):
        if self.backend is None:
            from pipeline.judge import make_backend

            self.backend = make_backend(self.cfg, self.base_dir)
        return self.backend.ask(conversations)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


def judge_summary(labels_dir: Path, version: str) -> dict[str, Any]:
    """Judge-versus-rule agreement over every labels file of a run (all passes of a resumed run)."""
    from pipeline.judge import agreement_from_labels

    rows: list[dict[str, Any]] = []
    for f in parquet_files(labels_dir):
        names = pq.read_schema(f).names
        if all(c in names for c in JUDGE_COLUMNS):
            rows.extend(pq.read_table(f, columns=JUDGE_COLUMNS).to_pylist())
    return agreement_from_labels(rows, version).to_dict()
