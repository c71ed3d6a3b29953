"""Sampling throughput: the whole sampling stage (Ray actor, chunking, Parquet writes) against
a bare `vllm.LLM.chat` of the same requests (same prompts, seeds and parameters), on the same
machine, in one run; and the driver's peak memory at two run sizes.

    .venv/bin/python benchmarks/bench_sampling.py [--models tiny,smollm2] [--out bench-results]

Engine start is measured apart and excluded from both throughputs (it is paid once per
worker, not per sample). Results: bench-results/sampling.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.backends.base import SamplingSettings  # noqa: E402
from pipeline.config import EngineOptions, load_study  # noqa: E402
from pipeline.prompts import build_prompts  # noqa: E402
from pipeline.sample import plan_requests  # noqa: E402

CASES = {
    # name: (topics, languages, repetitions, max_tokens, batch_size)
    "tiny": (["tiananmen_1989", "taiwan_status", "weapons", "arithmetic", "cooking"], ["en", "zh"], 10, 32, 100),
    "smollm2": (["tiananmen_1989", "taiwan_status", "weapons", "arithmetic", "cooking"], ["en", "zh"], 5, 32, 50),
}


def _study(tmp: Path, model_path: str, topics: list[str], langs: list[str], reps: int, max_tokens: int,
           batch: int, name: str = "bench") -> Path:
    import yaml

    spec = {"name": name, "catalog": str(REPO / "catalog"), "topics": topics, "languages": langs,
            "questions_per_topic": 1, "repetitions": reps, "seed": 3,
            "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": max_tokens},
            "models": [{"name": name, "deployment": "bench", "backend": "vllm", "model_path": model_path,
                        "engine": {"max_model_len": 1024, "batch_size": batch,
                                   "kv_cache_memory_bytes": 512 * 2**20}}]}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def stage(study_path: Path, run_id: str, out: Path) -> dict:
    """The sampling stage as the pipeline runs it; returns its timings and token count."""
    from pipeline.lake import read_folder
    from pipeline.sample import sample_vllm

    loaded = load_study(study_path)
    prompts = build_prompts(loaded)
    summary = sample_vllm(loaded, loaded.study.models[0], run_id, prompts, out)
    table = read_folder(out)
    tokens = sum(table.column("completion_tokens").to_pylist())
    return {"samples": table.num_rows, "tokens": tokens, "engine_start_s": summary.engine_start_s,
            "seconds": summary.sampling_s}


def bare(study_path: Path, run_id: str) -> dict:
    """`vllm.LLM.chat` over the same requests in one call, in this process."""
    from pipeline.backends.vllm_backend import VllmEngine

    loaded = load_study(study_path)
    spec = loaded.study.models[0]
    from pipeline.model_prep import resolve_model_path

    prompts = build_prompts(loaded)
    reqs = plan_requests(prompts, loaded.study.repetitions, loaded.study.seed, run_id, set())
    t0 = time.monotonic()
    engine = VllmEngine(str(resolve_model_path(spec.model_path, loaded.base_dir)), spec.engine, loaded.study.seed)
    start = time.monotonic() - t0
    from vllm import SamplingParams

    s = loaded.study.sampling
    params = [SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=r.seed)
              for r in reqs]
    t1 = time.monotonic()
    outs = engine.llm.chat([r.messages for r in reqs], params, use_tqdm=False)
    seconds = time.monotonic() - t1
    result = {"samples": len(outs), "tokens": sum(len(o.outputs[0].token_ids) for o in outs),
              "engine_start_s": start, "seconds": seconds}
    # The alternative for repetitions: one request per prompt with n=k (prefill shared by
    # construction; vLLM seeds the children s, s+1, …). Same engine, same prompts.
    k = loaded.study.repetitions
    per_prompt = [reqs[i] for i in range(0, len(reqs), k)]
    n_params = [SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=r.seed, n=k)
                for r in per_prompt]
    t2 = time.monotonic()
    outs_n = engine.llm.chat([r.messages for r in per_prompt], n_params, use_tqdm=False)
    result["n_variant"] = {"samples": sum(len(o.outputs) for o in outs_n),
                           "tokens": sum(len(c.token_ids) for o in outs_n for c in o.outputs),
                           "seconds": time.monotonic() - t2}
    return result


def driver_memory(study_path: Path, out: Path) -> dict:
    """Peak RSS of a driver process that runs the stage (engine memory lives in the actor)."""
    code = (
        "import sys, json, resource; sys.path.insert(0, sys.argv[3]);"
        "from benchmarks.bench_sampling import stage;"
        "r = stage(__import__('pathlib').Path(sys.argv[1]), 'mem', __import__('pathlib').Path(sys.argv[2]));"
        "r['driver_peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024;"
        "print('RESULT ' + json.dumps(r))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(study_path), str(out), str(REPO)],
                          capture_output=True, text=True, timeout=3600)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(line[-1][7:])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--out", default=str(REPO / "bench-results"))
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    import ray

    from pipeline.model_prep import build_tiny_model, prepare_builtin

    tmp = Path(tempfile.mkdtemp(prefix="bench-sampling-"))
    paths = {"tiny": str(build_tiny_model(tmp / "tiny")), "smollm2": str(prepare_builtin("smollm2"))}
    from pipeline.sample import init_ray

    init_ray(None)  # the local Ray exactly as the pipeline starts it
    results: dict = {"machine": {"cpus": os.cpu_count()}, "cases": {}}
    for name in args.models.split(","):
        topics, langs, reps, max_tokens, batch = CASES[name]
        study = _study(tmp, paths[name], topics, langs, reps, max_tokens, batch, name=name)
        st = stage(study, "bench", tmp / f"out-{name}")
        ba = bare(study, "bench")
        ratio = (st["tokens"] / st["seconds"]) / (ba["tokens"] / ba["seconds"])
        nv = ba["n_variant"]
        results["cases"][name] = {"stage": st, "bare": ba, "throughput_ratio": round(ratio, 3),
                                  "same_tokens": st["tokens"] == ba["tokens"],
                                  "n_vs_duplicated_rows": round((nv["tokens"] / nv["seconds"])
                                                                / (ba["tokens"] / ba["seconds"]), 3)}
        print(f"{name}: stage {st['tokens'] / st['seconds']:.1f} tok/s, bare {ba['tokens'] / ba['seconds']:.1f} "
              f"tok/s, ratio {ratio:.3f}; n=k instead of duplicated rows: "
              f"{nv['tokens'] / nv['seconds']:.1f} tok/s", flush=True)
    ray.shutdown()
    if not args.skip_memory:
        mem = {}
        for reps in (5, 50):
            study = _study(tmp, paths["tiny"], CASES["tiny"][0], ["en", "zh", "ja", "ko"], reps, 4, 200,
                           name=f"mem{reps}")
            mem[f"{reps * 20}_samples"] = driver_memory(study, tmp / f"mem-{reps}")
        results["driver_memory"] = mem
        print("driver peak RSS:", {k: round(v["driver_peak_rss_mb"]) for k, v in mem.items()}, "MB")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sampling.json").write_text(json.dumps(results, indent=2))
    print(f"written {out / 'sampling.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
