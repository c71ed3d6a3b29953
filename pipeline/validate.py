"""Stage 4: audit. Great Expectations suites from `expectations/` run on a staged run.

Write, audit, publish: nothing reaches the lake unless every suite passes. A failing run is
moved to `data/quarantine/<run_id>/` with `validation.md` (which expectation, which values)
and the full GX results as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import ValidationFailed
from pipeline.lake import read_folder, write_json_atomic
from pipeline.paths import REPO_ROOT

log = logging.getLogger(__name__)

EXPECTATIONS_DIR = REPO_ROOT / "expectations"


@dataclass
class SuiteOutcome:
    suite: str
    success: bool
    failures: list[dict[str, Any]] = field(default_factory=list)
    evaluated: int = 0


@dataclass
class ValidationOutcome:
    run_id: str
    success: bool
    suites: list[SuiteOutcome]

    def summary_markdown(self) -> str:
        lines = [f"# Validation of run `{self.run_id}`: {'passed' if self.success else 'FAILED'}", ""]
        for s in self.suites:
            lines.append(f"## {s.suite}: {'passed' if s.success else 'FAILED'} ({s.evaluated} expectations)")
            for f in s.failures:
                lines.append(f"- `{f['expectation']}` on `{f.get('column') or f.get('columns') or 'table'}`: {f['detail']}")
            lines.append("")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "success": self.success,
            "suites": [s.__dict__ for s in self.suites],
        }


def _gx_context():
    import logging as _logging

    _logging.getLogger("great_expectations").setLevel(_logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


def load_suite(name: str):
    """An ExpectationSuite from `expectations/<name>.json` (GX's own suite format)."""
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    path = EXPECTATIONS_DIR / f"{name}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return ExpectationSuite(
        name=data["name"],
        expectations=[ExpectationConfiguration(type=e["type"], kwargs=e["kwargs"]) for e in data["expectations"]],
        meta=data.get("meta", {}),
    )


def _describe(result: Any) -> dict[str, Any]:
    cfg = result.expectation_config
    res = result.result or {}
    detail: str
    if result.exception_info and result.exception_info.get("raised_exception"):
        detail = f"could not run: {result.exception_info.get('exception_message')}"
    elif "observed_value" in res and res.get("unexpected_count") is None:
        detail = f"observed {res['observed_value']!r}"
    else:
        sample = res.get("partial_unexpected_list") or []
        detail = f"{res.get('unexpected_count')} unexpected value(s) ({res.get('unexpected_percent', 0):.2f}%), e.g. {sample[:5]!r}"
    return {
        "expectation": cfg.type,
        "column": cfg.kwargs.get("column"),
        "columns": cfg.kwargs.get("column_list"),
        "kwargs": {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)},
        "detail": detail,
    }


def run_suite(ctx: Any, name: str, table: pa.Table | Any, parameters: dict[str, Any]) -> SuiteOutcome:
    """Validate one dataset (an Arrow table or a pandas frame) against one suite."""
    import pandas as pd

    df = table if isinstance(table, pd.DataFrame) else table.to_pandas()
    source = ctx.data_sources.add_or_update_pandas(f"staging_{name}")
    asset = source.add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": df})
    suite = ctx.suites.add_or_update(load_suite(name))
    result = batch.validate(
        suite,
        expectation_parameters=parameters,
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 10},
    )
    failures = [_describe(r) for r in result.results if not r.success]
    return SuiteOutcome(name, bool(result.success), failures, len(result.results))


def validate_run(staging_run: Path, run_id: str, expected: dict[str, Any]) -> ValidationOutcome:
    """Run every suite on a staged run. `expected` comes from the run's manifest."""
    ctx = _gx_context()
    samples = read_folder(staging_run / "samples")
    labels = read_folder(staging_run / "labels")
    prompts = read_folder(staging_run / "prompts")
    outcomes: list[SuiteOutcome] = []
    if samples is None:
        outcomes.append(SuiteOutcome("samples", False, [{"expectation": "samples exist", "detail": "the run has no samples"}], 1))
    else:
        outcomes.append(
            run_suite(
                ctx,
                "samples",
                samples,
                {
                    "expected_rows": expected["rows"],
                    "run_ids": [run_id],
                    "languages": expected["languages"],
                    "max_rep": expected["max_rep"],
                    "min_ok_share": 1.0 - expected["max_error_rate"],
                },
            )
        )
        live = samples.filter(pc.is_in(samples.column("backend"), pa.array(["vllm", "openai"])))
        if expected["live_prompt_cells"]:
            counts = live.group_by(["model", "deployment", "prompt_id"]).aggregate([("rep", "count")])
            counts = counts.rename_columns(["model", "deployment", "prompt_id", "n"])
            outcomes.append(
                run_suite(
                    ctx,
                    "sample_counts",
                    counts,
                    {"expected_prompt_cells": expected["live_prompt_cells"], "repetitions": expected["repetitions"]},
                )
            )
    if labels is None:
        outcomes.append(SuiteOutcome("labels", False, [{"expectation": "labels exist", "detail": "the run has no labels"}], 1))
    else:
        outcomes.append(run_suite(ctx, "labels", labels, {"expected_rows": expected["rows"]}))
    if prompts is not None:
        outcomes.append(run_suite(ctx, "prompts", prompts, {}))
    outcome = ValidationOutcome(run_id, all(o.success for o in outcomes), outcomes)
    write_json_atomic(outcome.to_dict(), staging_run / "validation.json")
    (staging_run / "validation.md").write_text(outcome.summary_markdown(), encoding="utf-8")
    return outcome


def quarantine(staging_run: Path, quarantine_dir: Path, outcome: ValidationOutcome) -> Path:
    """Move a failed run out of staging, keep its summary, and raise ValidationFailed."""
    target = quarantine_dir / staging_run.name
    if target.exists():
        shutil.rmtree(target)
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    os.replace(staging_run, target)
    summary = target / "validation.md"
    failed = [f"{s.suite}: " + "; ".join(f"{f['expectation']} ({f.get('column') or 'table'}): {f['detail']}" for f in s.failures)
              for s in outcome.suites if not s.success]
    raise ValidationFailed(
        f"run {outcome.run_id} failed validation and is quarantined in {target}\n" + "\n".join(failed),
        str(summary),
    )
