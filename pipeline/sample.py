"""Stage 2: samples. Many seeded repetitions per prompt, from every model of a study.

Work is cut into chunks; each finished chunk is written atomically as its own Parquet file
under the run's staging folder. A resumed run reads which sample keys are already there and
asks only for the rest, so a run killed at any point ends with every key exactly once.

The stage can also run as independent units (a recorded source, or one shard of a model's
prompts): an Airflow DAG maps one task over them (`sample_units`, `sample_unit`).
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.backends.base import RESULT_FIELDS, Request, SamplingSettings
from pipeline.config import LoadedStudy, ModelSpec
from pipeline.errors import DeploymentFailing, UserError
from pipeline.lake import hive_path, parquet_files, readable_parquet, set_aside, staging_root, write_parquet_atomic

log = logging.getLogger(__name__)

SAMPLE_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("study", pa.string()),
        ("model", pa.string()),
        ("deployment", pa.string()),
        ("backend", pa.string()),
        ("prompt_id", pa.string()),
        ("rep", pa.int32()),
        ("seed", pa.int64()),
        ("topic", pa.string()),
        ("topic_group", pa.string()),
        ("question_id", pa.string()),
        ("language", pa.string()),
        ("template_id", pa.string()),
        ("system_prompt_id", pa.string()),
        ("temperature", pa.float64()),
        ("top_p", pa.float64()),
        ("max_tokens", pa.int32()),
        ("response_text", pa.string()),
        ("reasoning_text", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("latency_s", pa.float64()),
        ("error", pa.string()),
        ("streamed_text", pa.string()),
        ("source_label", pa.string()),
        ("sampled_at", pa.timestamp("us", tz="UTC")),
    ]
)

PROMPT_ATTRS = ("topic", "topic_group", "question_id", "language", "template_id", "system_prompt_id")


def derive_seed(study_seed: int, run_id: str, prompt_id: str, rep: int) -> int:
    """Per-sample seed from (study seed, run, prompt, rep): reproducible, and independent
    across prompts (vLLM's `n` would give seeds s, s+1, … that neighbouring prompts share)."""
    digest = hashlib.sha256(f"{study_seed}|{run_id}|{prompt_id}|{rep}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


class Progress:
    """A periodic progress line: done / total, samples per second, ETA."""

    def __init__(self, label: str, total: int, done: int = 0, every_s: float = 30.0) -> None:
        self.label, self.total, self.done = label, total, done
        self.start_done = done
        self.t0 = self.last = time.monotonic()
        self.every_s = every_s

    def update(self, n: int, force: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if force or now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            rate = (self.done - self.start_done) / max(now - self.t0, 1e-9)
            left = self.total - self.done
            eta = f"{left / rate:.0f}s" if rate > 0 else "?"
            log.info(
                "%s: %d/%d samples (%.0f%%), %.2f samples/s, ETA %s",
                self.label,
                self.done,
                self.total,
                100.0 * self.done / max(self.total, 1),
                rate,
                eta,
            )


@dataclass
class SampleSummary:
    model: str
    deployment: str
    expected: int
    sampled_now: int
    already_done: int
    engine_start_s: float = 0.0  # creating the engines (model load), before the first request
    sampling_s: float = 0.0  # first request sent to last chunk written


def model_dir(samples_dir: Path, deployment: str, model: str) -> Path:
    return hive_path(samples_dir, deployment=deployment, model=model)


def done_keys(folder: Path) -> set[tuple[str, int]]:
    """(prompt_id, rep) keys already written under a model's staging folder.

    A truncated or corrupt chunk (a full disk, a crash of the storage) is moved aside to
    `<staging>/corrupt/` with a log line: its keys count as not sampled, so they are sampled again."""
    keys: set[tuple[str, int]] = set()
    for f in parquet_files(folder):
        t = readable_parquet(f)
        if t is None or not {"prompt_id", "rep"} <= set(t.column_names):
            set_aside(f, staging_root(folder))
            continue
        keys.update(zip(t.column("prompt_id").to_pylist(), t.column("rep").to_pylist()))
    return keys


def _rows_to_table(
    results: list[dict],
    *,
    run_id: str,
    study: str,
    spec_model: str,
    deployment: str,
    backend: str,
    prompts: dict[str, dict],
    settings: SamplingSettings | None,
) -> pa.Table:
    now = datetime.now(timezone.utc)
    rows = []
    for r in results:
        p = prompts[r["prompt_id"]]
        row = {k: r.get(k) for k in RESULT_FIELDS}
        row.update({a: p[a] for a in PROMPT_ATTRS})
        row.update(
            run_id=run_id,
            study=study,
            model=spec_model,
            deployment=deployment,
            backend=backend,
            temperature=settings.temperature if settings else None,
            top_p=settings.top_p if settings else None,
            max_tokens=settings.max_tokens if settings else None,
            source_label=r.get("source_label"),
            sampled_at=now,
        )
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)


def plan_requests(
    prompts: pa.Table, repetitions: int, study_seed: int, run_id: str, done: set[tuple[str, int]]
) -> list[Request]:
    """Every (prompt, rep) not yet sampled, in a deterministic order (reps of a prompt together,
    so that prefix caching shares their prefill)."""
    out = []
    for p in prompts.select(["prompt_id", "messages"]).to_pylist():
        for rep in range(repetitions):
            if (p["prompt_id"], rep) not in done:
                out.append(Request(p["prompt_id"], rep, derive_seed(study_seed, run_id, p["prompt_id"], rep), p["messages"]))
    return out


@dataclass
class ModelPlan:
    """What one model still has to sample in a run, and where it goes."""

    folder: Path
    done: set[tuple[str, int]]
    expected: int
    requests: list[Request]
    summary: SampleSummary
    settings: SamplingSettings
    by_id: dict[str, dict]


def plan_model(loaded: LoadedStudy, spec: ModelSpec, run_id: str, prompts: pa.Table, samples_dir: Path) -> ModelPlan:
    """The samples of one model not yet in its staging folder (every backend resumes this way)."""
    study = loaded.study
    folder = model_dir(samples_dir, spec.deployment, spec.name)
    # Only the keys of these prompts count: a shard shares its model's folder with the other
    # shards, whose keys are neither its work nor its progress.
    ids = set(prompts.column("prompt_id").to_pylist())
    done = {k for k in done_keys(folder) if k[0] in ids}
    expected = prompts.num_rows * study.repetitions
    requests = plan_requests(prompts, study.repetitions, study.seed, run_id, done)
    if not requests:
        log.info("%s @ %s: all %d samples already present", spec.name, spec.deployment, expected)
    return ModelPlan(
        folder=folder,
        done=done,
        expected=expected,
        requests=requests,
        summary=SampleSummary(spec.name, spec.deployment, expected, len(requests), len(done)),
        settings=SamplingSettings(study.sampling.temperature, study.sampling.top_p, study.sampling.max_tokens),
        by_id={p["prompt_id"]: p for p in prompts.to_pylist()},
    )


def init_ray(address: str | None) -> None:
    """Connect to a Ray cluster by address, or start a local one (quiet logs, no dashboard)."""
    import os

    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(log_to_driver=False, logging_level="WARNING")
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Ray starts workers at nice 15; on a small machine the engine then loses CPU to Ray's
        # own processes (measured: 0.79 of bare vLLM's throughput on 2 cores, 0.96 at nice 0).
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(include_dashboard=False, **kwargs)


def sample_vllm(
    loaded: LoadedStudy,
    spec: ModelSpec,
    run_id: str,
    prompts: pa.Table,
    samples_dir: Path,
    tag: str = "",
) -> SampleSummary:
    """Sample one vLLM model over Ray: `replicas` engine actors, chunks of `batch_size`.

    `tag` is appended to the progress label (e.g. ` [shard 1/2]`)."""
    import ray

    from pipeline.backends.vllm_backend import engine_actor
    from pipeline.model_prep import resolve_model_path

    study = loaded.study
    plan = plan_model(loaded, spec, run_id, prompts, samples_dir)
    folder, requests, summary, expected, done = plan.folder, plan.requests, plan.summary, plan.expected, plan.done
    if not requests:
        return summary
    model_path = str(resolve_model_path(spec.model_path or "", loaded.base_dir))
    settings, by_id = plan.settings, plan.by_id
    init_ray(study.ray_address)
    Actor = engine_actor(spec.engine)
    t0 = time.monotonic()
    actors = [Actor.remote(model_path, spec.engine, study.seed) for _ in range(spec.engine.replicas)]
    try:
        ray.get([a.ready.remote() for a in actors])
        summary.engine_start_s = time.monotonic() - t0
        bs = spec.engine.batch_size
        chunks = [requests[i : i + bs] for i in range(0, len(requests), bs)]
        progress = Progress(f"sampling {spec.name} @ {spec.deployment}{tag}", expected, len(done))
        log.info("%s @ %s: %d replica(s) ready in %.1fs; %d samples to draw (%d already present)",
                 spec.name, spec.deployment, len(actors), summary.engine_start_s, len(requests), len(done))
        t1 = time.monotonic()
        in_flight: dict = {}  # ref -> actor index
        load = [0] * len(actors)
        next_chunk = 0
        # Two chunks in flight per replica keep each engine busy while the driver writes;
        # a new chunk goes to the least-loaded replica.
        while next_chunk < len(chunks) or in_flight:
            while next_chunk < len(chunks) and len(in_flight) < 2 * len(actors):
                i = min(range(len(actors)), key=load.__getitem__)
                in_flight[actors[i].generate.remote(chunks[next_chunk], settings)] = i
                load[i] += 1
                next_chunk += 1
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=progress.every_s)
            if not ready:
                progress.update(0)  # a heartbeat while a long chunk is still generating
                continue
            ref = ready[0]
            load[in_flight.pop(ref)] -= 1
            results = ray.get(ref)
            table = _rows_to_table(
                results, run_id=run_id, study=study.name, spec_model=spec.name,
                deployment=spec.deployment, backend="vllm", prompts=by_id, settings=settings,
            )
            write_parquet_atomic(table, folder / f"chunk-{uuid.uuid4().hex[:12]}.parquet")
            progress.update(table.num_rows)
        summary.sampling_s = time.monotonic() - t1
    finally:
        for a in actors:
            ray.kill(a)
    return summary


def import_recorded(loaded: LoadedStudy, run_id: str, prompts_dir: Path, samples_dir: Path,
                    deployments: set[str] | None = None) -> list[SampleSummary]:
    """Import the recorded sources of the study (all, or those of `deployments`) into staging."""
    import shutil

    from pipeline import runs
    from pipeline.backends.recorded import load_recorded

    out = []
    for source in loaded.study.recorded:
        if deployments is not None and source.deployment not in deployments:
            continue
        path = loaded.resolve(source.path)
        digest, fresh = runs.check_import(samples_dir.parent, run_id, loaded.study.name, source, path)
        if not fresh:  # the same bytes are in the lake already: import nothing for this source
            runs.drop_staged_import(samples_dir.parent, source.deployment)
            (prompts_dir / f"recorded-{source.deployment}.parquet").unlink(missing_ok=True)
            shutil.rmtree(hive_path(samples_dir, deployment=source.deployment), ignore_errors=True)
            continue
        prompt_table, rows = load_recorded(source, path, loaded.study.name, catalog=loaded.catalog)
        write_parquet_atomic(prompt_table, prompts_dir / f"recorded-{source.deployment}.parquet")
        by_id = {p["prompt_id"]: p for p in prompt_table.to_pylist()}
        by_model: dict[str, list[dict]] = {}
        for r in rows:
            by_model.setdefault(r["model"], []).append(r)
        for model, model_rows in by_model.items():
            for r in model_rows:
                r["seed"] = None
                for k in ("prompt_tokens", "completion_tokens", "latency_s"):
                    r.setdefault(k, None)
            table = _rows_to_table(
                model_rows, run_id=run_id, study=loaded.study.name, spec_model=model,
                deployment=source.deployment, backend="recorded", prompts=by_id, settings=None,
            )
            folder = model_dir(samples_dir, source.deployment, model)
            # A re-import replaces the model's file: recorded data is imported whole.
            for old in parquet_files(folder):
                old.unlink()
            write_parquet_atomic(table, folder / "recorded.parquet")
            out.append(SampleSummary(model, source.deployment, table.num_rows, table.num_rows, 0))
        runs.stage_import(samples_dir.parent, run_id, loaded.study.name, source, path, digest, len(rows),
                          list(by_model))
        log.info("recorded %s: %d responses of %d models from %s", source.deployment, len(rows), len(by_model), path)
    return out


def sample_study(loaded: LoadedStudy, run_id: str, staging_run: Path) -> list[SampleSummary]:
    """Run the sampling stage for every model and recorded source of a study."""
    prompts_dir = staging_run / "prompts"
    samples_dir = staging_run / "samples"
    summaries = import_recorded(loaded, run_id, prompts_dir, samples_dir)
    if not loaded.study.models:
        return summaries
    failing: list[str] = []
    with _ray_session():
        catalog_prompts = pq.read_table(prompts_dir / "catalog.parquet")
        for spec in loaded.study.models:
            try:
                summaries.append(_sample_model(loaded, spec, run_id, catalog_prompts, samples_dir))
            except DeploymentFailing as exc:  # the other deployments still sample their share
                failing.append(str(exc))
    if failing:
        raise DeploymentFailing("; ".join(failing))
    return summaries


def _sample_model(loaded: LoadedStudy, spec: ModelSpec, run_id: str, prompts: pa.Table, samples_dir: Path,
                  tag: str = "") -> SampleSummary:
    if spec.backend == "vllm":
        return sample_vllm(loaded, spec, run_id, prompts, samples_dir, tag=tag)
    from pipeline.backends.openai_backend import sample_openai

    return sample_openai(loaded, spec, run_id, prompts, samples_dir)


@contextmanager
def _ray_session() -> Iterator[None]:
    """Shut down a Ray that this stage started (a local one); leave a caller's Ray running.

    Ray is imported only by the vLLM backend, so an HTTP-only stage never loads it."""
    import sys

    before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    try:
        yield
    finally:
        ray = sys.modules.get("ray")
        if ray is not None and not before and ray.is_initialized():
            ray.shutdown()


# --------------------------------------------------------------------------- units
#
# The sampling stage cut into independent units, so that an orchestrator can run (and retry)
# them in parallel: one per recorded source, and `shards` per live model. Each unit writes
# only the (prompt_id, rep) keys of its own prompts, so units never write the same key, and
# each resumes from what its model's staging folder already holds.


@dataclass(frozen=True)
class SampleUnit:
    """One piece of a run's sampling: a recorded source (`model` None) or one shard of a model."""

    deployment: str
    model: str | None = None
    shard: int = 0
    shards: int = 1

    def label(self) -> str:
        if self.model is None:
            return f"recorded {self.deployment}"
        tag = f" shard {self.shard + 1}/{self.shards}" if self.shards > 1 else ""
        return f"{self.model} @ {self.deployment}{tag}"


def sample_units(loaded: LoadedStudy, shards: int = 1) -> list[SampleUnit]:
    """Every unit of a study's sampling stage: recorded sources first, then models × shards."""
    if shards < 1:
        raise UserError(f"shards must be at least 1 (got {shards})")
    units = [SampleUnit(r.deployment) for r in loaded.study.recorded]
    for spec in loaded.study.models:
        units += [SampleUnit(spec.deployment, spec.name, i, shards) for i in range(shards)]
    return units


def shard_prompts(prompts: pa.Table, shard: int, shards: int) -> pa.Table:
    """The prompts of one shard: the sorted prompt ids, dealt round-robin.

    For a given prompt set and shard count every prompt, with all its repetitions, belongs to
    exactly one shard: shards are disjoint in their keys, balanced to within one prompt, and
    the repetitions of a prompt stay together (prefix caching)."""
    if shards < 1 or not 0 <= shard < shards:
        raise UserError(f"shard {shard} of {shards}: need 0 <= shard < shards")
    ids = sorted(set(prompts.column("prompt_id").to_pylist()))
    mine = pa.array(ids[shard::shards], pa.string())
    return prompts.filter(pc.is_in(prompts.column("prompt_id"), value_set=mine))


def sample_unit(loaded: LoadedStudy, run_id: str, staging_run: Path, unit: SampleUnit) -> list[SampleSummary]:
    """Run one unit of the sampling stage (resumable, like the whole stage)."""
    prompts_dir = staging_run / "prompts"
    samples_dir = staging_run / "samples"
    if unit.model is None:
        if unit.deployment not in {r.deployment for r in loaded.study.recorded}:
            raise UserError(f"{loaded.path}: no recorded source with deployment {unit.deployment!r}")
        return import_recorded(loaded, run_id, prompts_dir, samples_dir, deployments={unit.deployment})
    spec = next((m for m in loaded.study.models if (m.name, m.deployment) == (unit.model, unit.deployment)), None)
    if spec is None:
        raise UserError(f"{loaded.path}: no model {unit.model!r} in deployment {unit.deployment!r}")
    prompts = shard_prompts(pq.read_table(prompts_dir / "catalog.parquet"), unit.shard, unit.shards)
    tag = f" [shard {unit.shard + 1}/{unit.shards}]" if unit.shards > 1 else ""
    with _ray_session():
        return [_sample_model(loaded, spec, run_id, prompts, samples_dir, tag=tag)]


def unit_entrypoint(study: str, run_id: str, data_dir: str | None, unit: SampleUnit,
                    python: str | None = None) -> str:
    """The command a Ray job runs for one unit (`python -m pipeline.sample ...`)."""
    import shlex

    from pipeline.jobs import job_python

    args = [job_python(python), "-m", "pipeline.sample", "--study", study, "--run-id", run_id,
            "--deployment", unit.deployment, "--shard", str(unit.shard), "--shards", str(unit.shards)]
    if unit.model is not None:
        args += ["--model", unit.model]
    if data_dir:
        args += ["--data-dir", data_dir]
    return " ".join(shlex.quote(a) for a in args)


def unit_submission_id(run_id: str, unit: SampleUnit) -> str:
    """A stable Ray job id per (run, unit): a retried task finds and follows its running job."""
    digest = hashlib.sha256(f"{unit.deployment}|{unit.model}".encode()).hexdigest()[:10]
    return f"refusals-{run_id}-sample-{digest}-{unit.shard}of{unit.shards}"


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.sample`: one sampling unit of a prepared run (what a Ray job runs)."""
    import argparse
    import json
    import sys

    from pipeline import run as stages

    ap = argparse.ArgumentParser(prog="python -m pipeline.sample", description=main.__doc__)
    ap.add_argument("--study", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--data-dir")
    ap.add_argument("--deployment", required=True)
    ap.add_argument("--model", help="a live model; without it, the recorded source of the deployment")
    ap.add_argument("--shard", type=int, default=0)
    ap.add_argument("--shards", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("vllm", "ray", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ctx = stages.context(args.study, args.run_id, args.data_dir)
    try:
        out = stages.sample(ctx, deployment=args.deployment, model=args.model, shard=args.shard, shards=args.shards)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, default=str, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
