"""The marts from 100 million synthetic samples, and a weekly increment, on this machine.

    .venv/bin/python benchmarks/bench_marts.py [--samples 100000000] [--memory-limit 4GB] [--out bench-results]

Synthetic history: `runs` weekly runs of `models` × 2 deployments over the same prompts
(15 topics × 10 languages × variants), 10 repetitions each; every prompt has its own refusal
probability, so outcomes are clustered as in real data. The rows are generated straight
into a DuckDB warehouse with the project's own table definitions (sql/*.sql).

Measured, each phase in a fresh process so that its peak RSS is its own:
- rebuild: every run's `prompt_stats` (sql/prompt_stats.sql, per run as `refusals warehouse
  --rebuild` does), then `refusal_rates`, `comparisons` and the views (warehouse.build_global),
  from the `labels` and `prompts` tables of all the samples. Target: under 60 s on 2 cores.
- increment: one more week arrives as Parquet (its labels and prompts), is loaded with the
  load SQL of sql/labels.sql and sql/prompts.sql, its prompt_stats computed and the global
  marts rebuilt: what the `build_warehouse` task does each week.
Results go to bench-results/marts.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TOPICS = 15
LANGUAGES = ["en", "zh", "ja", "ko", "es", "fr", "de", "ru", "ar", "vi"]
REPS = 10
DEPLOYMENTS = 2


def shape(samples: int, runs: int, models: int) -> dict[str, int]:
    per_run_prompts = max(TOPICS * len(LANGUAGES), samples // (runs * models * DEPLOYMENTS * REPS))
    variants = max(1, per_run_prompts // (TOPICS * len(LANGUAGES)))
    prompts = TOPICS * len(LANGUAGES) * variants
    return {"runs": runs, "models": models, "deployments": DEPLOYMENTS, "prompts_per_run": prompts,
            "variants": variants, "reps": REPS, "samples": runs * models * DEPLOYMENTS * prompts * REPS}


def connect(path: Path, memory_limit: str):
    import duckdb

    con = duckdb.connect(str(path))
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET temp_directory = '{path.parent / 'spill'}'")
    con.execute("SET threads = 2")
    con.execute("SET preserve_insertion_order = false")
    return con


def week_of(run: int) -> str:
    return f"2026-W{run + 1:02d}" if run < 52 else f"2027-W{run - 51:02d}"


def generate(con, s: dict[str, int], first_run: int, n_runs: int, table_suffix: str = "") -> None:
    """Insert `n_runs` runs into labels/prompts/runs (or into *_new tables for the increment)."""
    langs = "[" + ", ".join(f"'{x}'" for x in LANGUAGES) + "]"
    prompts = s["prompts_per_run"]
    con.execute(f"""
        INSERT INTO prompts{table_suffix} BY NAME
        SELECT 'run-' || r AS run_id, 'p' || g AS prompt_id, 'bench' AS study, 'catalog' AS source,
               't' || (g % {TOPICS}) AS topic, 'group' || (g % 3) AS topic_group,
               'q' || (g // {len(LANGUAGES)}) AS question_id,
               {langs}[1 + (g // {TOPICS}) % {len(LANGUAGES)}] AS language,
               'tpl' || (g % 5) AS template_id, 'none' AS system_prompt_id
        FROM range({first_run}, {first_run + n_runs}) AS a(r), range({prompts}) AS b(g)""")
    con.execute(f"""
        INSERT INTO runs{table_suffix} BY NAME
        SELECT 'run-' || r AS run_id, 'bench' AS study,
               (DATE '2026-01-01' + 7 * r::INTEGER) AS run_date,
               CASE WHEN r < 52 THEN '2026-W' || lpad((r + 1)::VARCHAR, 2, '0')
                    ELSE '2027-W' || lpad((r - 51)::VARCHAR, 2, '0') END AS week
        FROM range({first_run}, {first_run + n_runs}) AS a(r)""")
    # labels: per run, so a run is one contiguous stretch (as per-run loads write it)
    for r in range(first_run, first_run + n_runs):
        con.execute(f"""
            INSERT INTO labels{table_suffix} BY NAME
            WITH keys AS (
                SELECT m, d, g, k,
                       -- a prompt's own refusal probability (Beta-like spread), the same every week
                       power((hash(m, g) % 1000) / 1000.0, 2) AS p
                FROM range({s['models']}) AS a(m), range({DEPLOYMENTS}) AS b(d), range({prompts}) AS c(g),
                     range({REPS}) AS e(k)
            )
            SELECT 'run-{r}' AS run_id, 'model-' || m AS model, 'dep-' || d AS deployment,
                   'p' || g AS prompt_id, k::INTEGER AS rep, 't' || (g % {TOPICS}) AS topic,
                   'group' || (g % 3) AS topic_group,
                   {langs}[1 + (g // {TOPICS}) % {len(LANGUAGES)}] AS language,
                   CASE WHEN (hash({r}, m, d, g, k) % 10000) / 10000.0 < p * (1 + 0.2 * d) THEN 'refused'
                        WHEN (hash({r}, m, d, g, k) % 10000) < 300 THEN 'evasive'
                        WHEN (hash({r}, m, d, g, k) % 10000) < 320 THEN 'error'
                        ELSE 'complied' END AS label,
                   (hash(k, g) % 20) <> 0 AS language_match
            FROM keys""")


def phase_generate(db: Path, s: dict[str, int], memory_limit: str) -> dict:
    from pipeline.warehouse import install_macros, statements

    con = connect(db, memory_limit)
    for name in ("runs", "prompts", "labels", "prompt_stats"):
        con.execute(statements(name)[0])  # the project's own CREATE TABLE
    install_macros(con)
    t0 = time.perf_counter()
    generate(con, s, 0, s["runs"], "")
    con.execute("CHECKPOINT")
    n = con.execute("SELECT count(*) FROM labels").fetchone()[0]
    con.close()
    return {"seconds": time.perf_counter() - t0, "labels_rows": n}


def phase_rebuild(db: Path, memory_limit: str) -> dict:
    from pipeline.warehouse import build_global, execute_file

    con = connect(db, memory_limit)
    runs = [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY run_date").fetchall()]
    t0 = time.perf_counter()
    for run_id in runs:
        execute_file(con, "prompt_stats", {"run_id": run_id})
    t1 = time.perf_counter()
    build_global(con)
    con.execute("CHECKPOINT")
    t2 = time.perf_counter()
    counts = {name: con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
              for name in ("labels", "prompt_stats", "refusal_rates", "comparisons")}
    con.close()
    return {"seconds": t2 - t0, "prompt_stats_seconds": t1 - t0, "global_seconds": t2 - t1, "rows": counts}


def phase_increment(db: Path, s: dict[str, int], memory_limit: str, parquet_dir: Path) -> dict:
    """One new week: written as Parquet first (outside the timing), then loaded and marts rebuilt."""
    import duckdb

    from pipeline.warehouse import build_global, execute_file, statements, weeks_touched

    run = s["runs"]
    run_id = f"run-{run}"
    scratch = duckdb.connect()
    for name in ("runs", "prompts", "labels"):
        scratch.execute(statements(name)[0].replace(f"EXISTS {name} (", f"EXISTS {name}_new ("))
    generate(scratch, s, run, 1, "_new")
    parquet_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in ("runs", "prompts", "labels"):
        files[name] = [str(parquet_dir / f"{name}.parquet")]
        scratch.execute(f"COPY {name}_new TO '{files[name][0]}' (FORMAT parquet)")
    new_rows = scratch.execute("SELECT count(*) FROM labels_new").fetchone()[0]
    scratch.close()

    con = connect(db, memory_limit)
    t0 = time.perf_counter()
    con.execute("BEGIN TRANSACTION")
    for name in ("runs", "prompts", "labels"):
        execute_file(con, name, {"run_id": run_id, "files": files[name]})
    execute_file(con, "prompt_stats", {"run_id": run_id})
    con.execute("COMMIT")
    t1 = time.perf_counter()
    build_global(con, weeks_touched(con, [week_of(run)]))  # what warehouse.build does for a new run
    con.execute("CHECKPOINT")
    t2 = time.perf_counter()
    con.close()
    return {"seconds": t2 - t0, "load_and_prompt_stats_seconds": t1 - t0, "global_seconds": t2 - t1,
            "new_samples": new_rows}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> int:
    db = Path(args.workdir) / "bench.duckdb"
    s = json.loads(args.shape)
    if args.phase == "generate":
        out = phase_generate(db, s, args.memory_limit)
    elif args.phase == "rebuild":
        out = phase_rebuild(db, args.memory_limit)
    else:
        out = phase_increment(db, s, args.memory_limit, Path(args.workdir) / "increment")
    out["peak_rss_mb"] = round(peak_rss_mb())
    print(json.dumps(out))
    return 0


def run_phase(phase: str, args, s: dict) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--workdir", args.workdir, "--shape", json.dumps(s),
           "--memory-limit", args.memory_limit]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{phase} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=100_000_000)
    ap.add_argument("--runs", type=int, default=50, help="weekly runs in the history")
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--memory-limit", default="4GB", help="DuckDB memory_limit (it spills beyond)")
    ap.add_argument("--also-memory-limit", default="1GB",
                    help="rebuild once more under this smaller limit, to show memory stays bounded ('' to skip)")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--out", default=str(REPO / "bench-results"))
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        return child(args)
    import tempfile

    own = args.workdir is None
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench-marts-")
    try:
        s = shape(args.samples, args.runs, args.models)
        print(f"marts bench: {s['samples']:,} samples ({s['runs']} weekly runs × {s['models']} models × "
              f"{s['deployments']} deployments × {s['prompts_per_run']:,} prompts × {s['reps']} reps)", flush=True)
        gen = run_phase("generate", args, s)
        print(f"  generated in {gen['seconds']:.0f} s", flush=True)
        db_mb = (Path(args.workdir) / "bench.duckdb").stat().st_size / 2**20
        rebuild = run_phase("rebuild", args, s)
        print(f"  rebuild: {rebuild['seconds']:.1f} s (prompt_stats {rebuild['prompt_stats_seconds']:.1f} s, "
              f"global marts {rebuild['global_seconds']:.1f} s), peak RSS {rebuild['peak_rss_mb']} MB", flush=True)
        tight = None
        if args.also_memory_limit:
            wide = args.memory_limit
            args.memory_limit = args.also_memory_limit
            tight = run_phase("rebuild", args, s)
            tight["duckdb_memory_limit"] = args.memory_limit
            args.memory_limit = wide
            print(f"  rebuild under memory_limit {tight['duckdb_memory_limit']}: {tight['seconds']:.1f} s, "
                  f"peak RSS {tight['peak_rss_mb']} MB", flush=True)
        inc = run_phase("increment", args, s)
        print(f"  weekly increment ({inc['new_samples']:,} samples): {inc['seconds']:.1f} s "
              f"(load + prompt_stats {inc['load_and_prompt_stats_seconds']:.1f} s, global marts "
              f"{inc['global_seconds']:.1f} s), peak RSS {inc['peak_rss_mb']} MB", flush=True)
        result = {
            "shape": s, "cores": os.cpu_count(), "duckdb_memory_limit": args.memory_limit,
            "warehouse_mb": round(db_mb), "generate": gen, "rebuild": rebuild,
            "rebuild_tight_memory": tight, "increment": inc,
            "target_rebuild_seconds": 60,
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "marts.json").write_text(json.dumps(result, indent=2))
    finally:
        if own:
            shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
