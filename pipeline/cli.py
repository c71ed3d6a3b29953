"""The `refusals` command line (CONTRACT.md). Expected bad input exits non-zero with a message,
no traceback."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from typing import Sequence

from pipeline.errors import UserError, ValidationFailed


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("great_expectations", "vllm", "ray", "filelock", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.run import run_all

    result = run_all(args.study, run_id=args.run_id, data_dir=args.data_dir, force=args.force,
                     preflight=not args.no_preflight)
    if result.get("skipped") and result.get("reason"):
        print(f"run {result['run_id']}: {result['reason']} (every recorded file was imported by an earlier run; "
              f"--force-reimport imports it again); nothing published")
    elif result.get("skipped"):
        print(f"run {result['run_id']} is already published; nothing to do (--force redoes it)")
    else:
        print(f"run {result['run_id']} published")
        print(f"warehouse: {result['warehouse']}")
        for kind, path in result["report"].items():
            print(f"report ({kind}): {path}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from pipeline.config import load_study
    from pipeline.preflight import PreflightFailed, format_plan, plan_study, run_checks

    loaded = load_study(args.study)
    print(format_plan(plan_study(loaded)))
    if args.no_check:
        return 0
    checks = run_checks(loaded, timeout_s=args.timeout)
    if checks:
        print("  checks:")
    for c in checks:
        print(f"    {c}")
    failed = [c for c in checks if not c.ok]
    if failed:
        raise PreflightFailed("preflight failed: " + "; ".join(f"{c.model} @ {c.deployment}: {c.message}"
                                                               for c in failed))
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from pipeline import run as stages

    ctx = stages.context(args.study, args.run_id, args.data_dir)
    fn = {
        "prepare": stages.prepare,
        "sample": stages.sample,
        "label": stages.label,
        "validate": stages.validate,
        "publish": stages.publish,
        "warehouse": stages.warehouse,
        "report": stages.report,
    }[args.stage]
    from pipeline.locks import run_lock

    with run_lock(ctx.data, ctx.run_id):  # one writer per run id (sampling units, run in parallel, take none)
        result = fn(ctx)
    print(json.dumps(result, default=str, indent=1) if not isinstance(result, int) else result)
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from pipeline.classify import classify_file

    tier = None
    if args.classifier == "semantic":
        from pipeline.semantic import load_tier

        tier = load_tier()
    n = classify_file(args.input, args.output, tier=tier)
    print(f"labelled {n} responses → {args.output}")
    return 0


def _print_rows(cols: list[str], rows: list[tuple], fmt: str, width: int = 60) -> None:
    """`rows` as a table (values cut at `width` characters, 0: never cut), csv or json (full values)."""
    if fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows(rows)
    elif fmt == "json":
        json.dump([dict(zip(cols, r)) for r in rows], sys.stdout, default=str, ensure_ascii=False, indent=1)
        print()
    else:
        cells = [[("NULL" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)) for v in r] for r in rows]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
        if width > 0:
            widths = [min(width, w) for w in widths]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
        print("  ".join("-" * w for w in widths))
        for r in cells:
            print("  ".join((v if len(v) <= w else v[: w - 1] + "…").ljust(w) for v, w in zip(r, widths)).rstrip())
        print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


def _width(args: argparse.Namespace) -> int:
    if args.width < 0:
        raise UserError(f"--width {args.width}: use 0 (never cut) or a positive number of characters")
    return args.width


def _one_line(sql: str, limit: int = 200) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cmd_sql(args: argparse.Namespace) -> int:
    """One statement: its result as before. Several (`SELECT 1; SELECT 2`): each is run, in
    order, on one connection under the same bounds, and each result is printed: in a table
    under a `-- statement i of n: …` header, in json as [{"statement", "rows"}]; csv holds one
    result, so a script with several results is refused there. A failing statement stops the
    script with an error naming it, and nothing is printed."""
    import duckdb

    from pipeline.paths import DataDir
    from pipeline.warehouse import queries

    width = _width(args)
    try:
        results = queries(DataDir.from_env(args.data_dir), args.query, timeout=args.timeout,
                          memory_limit=args.memory_limit, threads=args.threads, max_rows=args.max_rows)
    except duckdb.Error as exc:
        raise UserError(f"SQL error: {exc}") from None
    if len(results) == 1:
        _, cols, rows = results[0]
        if cols is None and args.format == "table":
            print("(no result)")
        else:
            _print_rows(cols or [], rows or [], args.format, width)
        return 0
    with_rows = [r for r in results if r[1] is not None]
    if args.format == "csv":
        if len(with_rows) > 1:
            raise UserError(f"csv holds one result, and these {len(results)} statements return {len(with_rows)}: "
                            "use --format table or json, or one statement per call")
        if with_rows:
            _print_rows(with_rows[0][1], with_rows[0][2], "csv")
        return 0
    if args.format == "json":
        json.dump([{"statement": stmt, "rows": None if cols is None else [dict(zip(cols, r)) for r in rows]}
                   for stmt, cols, rows in results], sys.stdout, default=str, ensure_ascii=False, indent=1)
        print()
        return 0
    for i, (stmt, cols, rows) in enumerate(results):
        if i:
            print()
        print(f"-- statement {i + 1} of {len(results)}: {_one_line(stmt)}")
        if cols is None:
            print("(no result)")
        else:
            _print_rows(cols, rows, "table", width)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """The public tables and views with their comments, or one's columns, types and comments."""
    from pipeline.paths import DataDir
    from pipeline.warehouse import describe, public_relations

    data = DataDir.from_env(args.data_dir)
    width = _width(args)
    if not args.table:
        _print_rows(["name", "kind", "comment"], public_relations(data), args.format, width)
        return 0
    kind, comment, cols = describe(data, args.table)
    if args.format == "table":
        print(f"{args.table} ({kind}): {comment or ''}")
        print()
        _print_rows(["column", "type", "comment"], cols, "table", width)
    else:
        _print_rows(["column", "type", "comment"], cols, args.format, width)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.paths import DataDir
    from pipeline.report import write_report

    paths = write_report(DataDir.from_env(args.data_dir), week=args.week)
    for kind, path in paths.items():
        print(f"report ({kind}): {path}")
    return 0


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.semantic.encoder import default_cache_path
    from pipeline.semantic.head import HEAD_PATH

    from pipeline.semantic.train import train

    summary = train(seed=args.seed, out=Path(args.out) if args.out else HEAD_PATH, cache_path=default_cache_path())
    print(f"head {summary['sha256'][:12]} written to {summary['path']} ({summary['model']}, "
          f"temperature={summary['temperature']:.3f}, train rows={summary['rows']['train']}, "
          f"dev rows={summary['rows']['dev']})")
    if not args.no_eval and not args.out:
        from pipeline.semantic import load_tier
        from pipeline.semantic.evaluate import CONFUSION_PATH, EVAL_PATH, release, to_text

        print(to_text(release(load_tier())))
        print(f"held-out evaluation: {EVAL_PATH}; confusion matrices: {CONFUSION_PATH}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pipeline.eval_classifier import evaluate, load_judge_config

    if args.tier == "semantic" and not args.judge:
        import json as _json

        from pipeline.semantic import load_tier
        from pipeline.semantic.evaluate import release, to_text

        if args.dataset != "release":
            raise UserError("eval-classifier --tier semantic evaluates the release held-out sets: "
                            "use --dataset release (or --tier rules for one dataset)")
        result = release(load_tier(), write=args.write)
        print(_json.dumps(result, indent=1, default=float) if args.json else to_text(result))
        return 0
    if args.dataset == "release":
        raise UserError("--dataset release needs --tier semantic")
    judge = load_judge_config(args.judge) if args.judge else None
    result = evaluate(args.dataset, split=args.split, judge=judge)
    print(json.dumps(result.to_dict(), indent=1, default=str) if args.json else result.to_text())
    return 0


def cmd_warehouse(args: argparse.Namespace) -> int:
    from pipeline.paths import DataDir
    from pipeline.run import load_published

    counts = load_published(DataDir.from_env(args.data_dir), rebuild=args.rebuild)
    for name, n in counts.items():
        print(f"{name}: {n} rows")
    return 0


def cmd_prepare_model(args: argparse.Namespace) -> int:
    from pipeline.model_prep import prepare_builtin

    print(prepare_builtin(args.name))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from pipeline.paths import DataDir
    from pipeline.runs import delete_run, describe_run, list_runs

    data = DataDir.from_env(args.data_dir)
    if args.runs_command == "list":
        cols = ["run_id", "study", "study_hash", "status", "published_at", "n_samples"]
        _print_rows(cols, [tuple(r[c] for c in cols) for r in list_runs(data)], args.format)
        return 0
    info = describe_run(data, args.run_id)  # unknown run id: a UserError, exit 2
    if not args.yes:
        raise UserError(f"refusing to delete run {args.run_id} (study {info['study']}, week {info['week']}, "
                        f"{info['n_samples']} samples) without --yes: it leaves the lake and the warehouse, "
                        f"and cannot be undone")
    result = delete_run(data, args.run_id)
    print(f"run {args.run_id} deleted: {result['partitions']} lake partitions, {result['warehouse_rows']} "
          f"warehouse rows; marts rebuilt for {', '.join(result['weeks']) or 'no week'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pipeline.serve import exec_server, serve_command, study_snippet

    extra = list(args.vllm_args or [])
    if extra[:1] == ["--"]:
        extra = extra[1:]
    cmd = serve_command(args.model, host=args.host, port=args.port, name=args.name,
                        max_model_len=args.max_model_len, extra=extra)
    if args.dry_run:
        print(cmd.shell())
        return 0
    print(f"serving {cmd.folder} as {cmd.name!r} at {cmd.url} (Ctrl-C stops it); as a deployment of a study:\n"
          f"{study_snippet(cmd)}", file=sys.stderr)
    print(f"$ {cmd.shell()}", file=sys.stderr)
    exec_server(cmd)
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refusals", description="Refusal statistics at scale.")
    p.add_argument("--data-dir", default=None, help="data folder (default ./data or $REFUSALS_DATA_DIR)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="all stages for one study, locally, no Airflow")
    r.add_argument("--study", required=True, help="study YAML file")
    r.add_argument("--run-id", default=None, help="resume or name a run (default: <study>-<UTC time>)")
    r.add_argument("--force", action="store_true", help="redo a run that is already published")
    r.add_argument("--force-reimport", action="store_true",
                   help="import recorded files even if a published run already imported the same bytes")
    r.add_argument("--no-preflight", action="store_true",
                   help="skip the checks of the live models before sampling (see `refusals plan`)")
    r.set_defaults(func=cmd_run)

    pl = sub.add_parser("plan", help="the work of a study, and a check that its live models answer (no sampling)")
    pl.add_argument("--study", required=True, help="study YAML file")
    pl.add_argument("--timeout", type=float, default=10.0, metavar="S",
                    help="seconds to wait for each endpoint's one-token answer (default 10)")
    pl.add_argument("--no-check", action="store_true", help="only print the work; contact nothing")
    pl.set_defaults(func=cmd_plan)

    st = sub.add_parser("stage", help="one stage of a run (what Airflow tasks and Ray jobs call)")
    st.add_argument("stage", choices=["prepare", "sample", "label", "validate", "publish", "warehouse", "report"])
    st.add_argument("--study", required=True)
    st.add_argument("--run-id", required=True)
    st.add_argument("--force-reimport", action="store_true",
                    help="sample: import recorded files even if a published run already imported the same bytes")
    st.set_defaults(func=cmd_stage)

    c = sub.add_parser("classify", help="label responses in a .jsonl or .parquet file")
    c.add_argument("--input", required=True)
    c.add_argument("--output", required=True)
    c.add_argument("--classifier", choices=["semantic", "rules"], default="semantic",
                   help="semantic: rules plus the trained head (default); rules: the rule tier alone")
    c.set_defaults(func=cmd_classify)

    s = sub.add_parser("sql", help="ad hoc SQL on the warehouse, read-only; several statements: each result")
    s.add_argument("query", help="one or more statements separated by ';'")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="time limit in seconds (default $REFUSALS_SQL_TIMEOUT or 60)")
    s.add_argument("--memory-limit", default=None, metavar="SIZE",
                   help="DuckDB memory limit, e.g. 512MB (default $REFUSALS_SQL_MEMORY_LIMIT or 2GB)")
    s.add_argument("--threads", type=int, default=None, help="thread cap (default $REFUSALS_SQL_THREADS or 2)")
    s.add_argument("--max-rows", type=int, default=None,
                   help="most rows returned per statement (default $REFUSALS_SQL_MAX_ROWS or 1000000)")
    s.add_argument("--width", type=int, default=60, metavar="N",
                   help="table format: cut values at N characters (default 60; 0: never cut)")
    s.set_defaults(func=cmd_sql)

    sc = sub.add_parser("schema", help="the warehouse's public tables and views, or one's columns, with comments")
    sc.add_argument("table", nargs="?", default=None, help="a table or view: its columns, types and comments")
    sc.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sc.add_argument("--width", type=int, default=0, metavar="N",
                    help="table format: cut values at N characters (default 0: never cut)")
    sc.set_defaults(func=cmd_schema)

    rep = sub.add_parser("report", help="write the weekly report (HTML and Markdown)")
    rep.add_argument("--week", default=None, help="YYYY-Www (default: the latest week with data)")
    rep.set_defaults(func=cmd_report)

    e = sub.add_parser("eval-classifier", help="agreement of the classifier with labelled data")
    e.add_argument("--dataset", default="xstest", help="xstest, speechmap or a path")
    e.add_argument("--split", choices=["all", "dev", "heldout"], default="all")
    e.add_argument("--json", action="store_true")
    e.add_argument("--judge", default=None, metavar="FILE",
                   help="also ask an LLM judge about unsure rows (a judge YAML, or a study with judge:)")
    e.add_argument("--tier", choices=["rules", "semantic"], default="rules",
                   help="rules: the rule tier on --dataset; semantic: rules, head and combination on the "
                        "release held-out sets (--dataset release)")
    e.add_argument("--write", action="store_true",
                   help="with --tier semantic: rewrite pipeline/semantic/confusion.json and eval.json")
    e.set_defaults(func=cmd_eval)

    tc = sub.add_parser("train-classifier", help="fit the semantic head (seeded; minutes on 2 cores)")
    tc.add_argument("--seed", type=int, default=0)
    tc.add_argument("--out", default=None, help="write the artifact here instead of pipeline/semantic/head.json")
    tc.add_argument("--no-eval", action="store_true", help="skip the held-out release evaluation")
    tc.set_defaults(func=cmd_train_classifier)

    w = sub.add_parser("warehouse", help="load published runs into the warehouse and rebuild the marts")
    w.add_argument("--rebuild", action="store_true", help="drop everything and rebuild from the lake")
    w.set_defaults(func=cmd_warehouse)

    ru = sub.add_parser("runs", help="list the runs, or delete one from the lake and the warehouse")
    ru_sub = ru.add_subparsers(dest="runs_command", required=True)
    rl = ru_sub.add_parser("list", help="run id, study, hash, status, published time, samples")
    rl.add_argument("--format", choices=["table", "csv", "json"], default="table")
    rd = ru_sub.add_parser("delete", help="remove a run from the lake and the warehouse, its weeks' marts rebuilt")
    rd.add_argument("run_id")
    rd.add_argument("--yes", action="store_true", help="really delete it")
    ru.set_defaults(func=cmd_runs)

    m = sub.add_parser("prepare-model", help="convert a builtin model (e.g. smollm2) once, print its folder")
    m.add_argument("name", nargs="?", default="smollm2")
    m.set_defaults(func=cmd_prepare_model)

    sv = sub.add_parser("serve", help="start vLLM's OpenAI-compatible server for a model (a second deployment "
                        "of the same weights, backend: openai)")
    sv.add_argument("--model", required=True, help="a Hugging Face model folder, or builtin:smollm2")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    sv.add_argument("--name", default=None,
                    help="the model id clients ask for (default: the builtin model's name, else the folder name)")
    sv.add_argument("--max-model-len", type=int, default=2048)
    sv.add_argument("--dry-run", action="store_true", help="print the command line and exit")
    sv.add_argument("vllm_args", nargs=argparse.REMAINDER, help="after --: more arguments for vLLM")
    sv.set_defaults(func=cmd_serve)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.data_dir:
        os.environ["REFUSALS_DATA_DIR"] = args.data_dir
    if getattr(args, "force_reimport", False):
        os.environ["REFUSALS_FORCE_REIMPORT"] = "1"  # read where recorded files are imported (pipeline.runs)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationFailed as exc:
        print(f"validation failed: {exc}", file=sys.stderr)
        if exc.summary_path:
            print(f"summary: {exc.summary_path}", file=sys.stderr)
        return 3
    except (ValueError, TypeError, OSError) as exc:
        # bad input files (the classifier's helpers raise ValueError), unreadable paths
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        import duckdb

        if isinstance(exc, duckdb.Error):  # e.g. the warehouse is locked by a running build
            print(f"error: warehouse: {exc}", file=sys.stderr)
            return 2
        raise

