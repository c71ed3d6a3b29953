"""Sampling on a real engine: vLLM (CPU) with a tiny random model, inside a real local Ray.

One module-scoped Ray session serves all tests here; each test samples into its own folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.backends.base import split_reasoning
from pipeline.config import load_study
from pipeline.lake import parquet_files, read_folder
from pipeline.prompts import write_prompts
from pipeline.sample import derive_seed, model_dir, plan_requests, sample_vllm
from tests.conftest import REPO, tiny_model_spec, write_study

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _staged(tmp_path: Path, tiny_model: Path, **overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    study = load_study(write_study(tmp_path / "study.yaml", models=[tiny_model_spec(tiny_model)], **overrides))
    staging = tmp_path / "staging"
    write_prompts(study, staging / "prompts")
    prompts = pq.read_table(staging / "prompts" / "catalog.parquet")
    return study, prompts, staging / "samples"


def test_seeds_are_per_sample_and_independent_across_prompts() -> None:
    a = derive_seed(7, "run", "p1", 0)
    assert a == derive_seed(7, "run", "p1", 0)
    seeds = {derive_seed(7, "run", p, r) for p in ("p1", "p2", "p3") for r in range(50)}
    assert len(seeds) == 150  # no two (prompt, rep) share a seed
    # vLLM's n=k would give p1 seeds s..s+k-1; ours do not run into a neighbour's range
    assert derive_seed(7, "run", "p1", 1) != a + 1
    assert derive_seed(7, "run2", "p1", 0) != a  # a new run draws new samples
    assert all(0 <= s < 2**63 for s in seeds)


def test_plan_skips_done_keys() -> None:
    import pyarrow as pa

    prompts = pa.Table.from_pylist(
        [{"prompt_id": "a", "messages": [{"role": "user", "content": "x"}]},
         {"prompt_id": "b", "messages": [{"role": "user", "content": "y"}]}]
    )
    todo = plan_requests(prompts, 3, 1, "r", done={("a", 0), ("b", 2)})
    assert [(r.prompt_id, r.rep) for r in todo] == [("a", 1), ("a", 2), ("b", 0), ("b", 1)]


def test_split_reasoning() -> None:
    assert split_reasoning("<think>\n\n</think>\n\nAnswer") == ("Answer", "")
    assert split_reasoning("<think>plan</think>Hi") == ("Hi", "plan")
    assert split_reasoning("plain") == ("plain", None)
    assert split_reasoning(None) == (None, None)


def test_vllm_sampling_keys_seeds_and_reproducibility(tmp_path: Path, tiny_model: Path, ray_session) -> None:
    study, prompts, samples_dir = _staged(tmp_path / "a", tiny_model)
    spec = study.study.models[0]
    summary = sample_vllm(study, spec, "run-1", prompts, samples_dir)
    assert summary.expected == prompts.num_rows * 3 == 12
    table = read_folder(model_dir(samples_dir, spec.deployment, spec.name))
    assert table.num_rows == 12
    keys = list(zip(table.column("prompt_id").to_pylist(), table.column("rep").to_pylist()))
    assert len(set(keys)) == 12
    rows = table.to_pylist()
    for r in rows:
        assert r["seed"] == derive_seed(study.study.seed, "run-1", r["prompt_id"], r["rep"])
        assert r["model"] == "tiny-random" and r["deployment"] == "local-test" and r["run_id"] == "run-1"
        assert r["error"] is None and r["completion_tokens"] > 0 and r["response_text"]
        assert r["topic"] in ("tiananmen_1989", "arithmetic") and r["language"] in ("en", "zh")
    # different reps of one prompt: different seeds, and (random weights, temperature 0.8) different texts
    by_prompt: dict[str, list[str]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r["response_text"])
    assert all(len(set(texts)) > 1 for texts in by_prompt.values())

    # the same run id on another machine/folder gives the same texts
    study_b, prompts_b, samples_b = _staged(tmp_path / "b", tiny_model)
    sample_vllm(study_b, study_b.study.models[0], "run-1", prompts_b, samples_b)
    again = read_folder(model_dir(samples_b, spec.deployment, spec.name))
    text = {(r["prompt_id"], r["rep"]): r["response_text"] for r in rows}
    assert {(r["prompt_id"], r["rep"]): r["response_text"] for r in again.to_pylist()} == text

    # resume: lose one chunk (as if the process died before writing it) and sample again
    folder = model_dir(samples_dir, spec.deployment, spec.name)
    chunks = parquet_files(folder)
    assert len(chunks) == 2  # 12 requests in batches of 6
    lost = pq.read_table(chunks[0]).num_rows
    chunks[0].unlink()
    (folder / ".tmp-deadbeef-chunk-x.parquet").write_bytes(b"half a file")  # a crash mid-write
    resumed = sample_vllm(study, spec, "run-1", prompts, samples_dir)
    assert resumed.already_done == 12 - lost and resumed.sampled_now == lost
    final = read_folder(folder)
    final_keys = list(zip(final.column("prompt_id").to_pylist(), final.column("rep").to_pylist()))
    assert sorted(final_keys) == sorted(keys)  # every key exactly once
    assert {(r["prompt_id"], r["rep"]): r["response_text"] for r in final.to_pylist()} == text

    # a finished model is not sampled again
    assert sample_vllm(study, spec, "run-1", prompts, samples_dir).sampled_now == 0
    shutil.rmtree(tmp_path / "b")


def test_one_failing_request_does_not_fail_its_batch(tmp_path: Path, tiny_model: Path, ray_session) -> None:
    """A prompt longer than the engine's context fails on its own: it becomes an error row with
    the engine's message, and the other requests of its batch are sampled normally."""
    import yaml

    catalog = tmp_path / "catalog"
    shutil.copytree(REPO / "catalog", catalog)
    long_q = "Please tell me about this. " * 200  # far beyond max_model_len=512 tokens
    topics = {"version": 1, "topics": [
        {"id": "short", "group": "control", "title": "short",
         "questions": [{"id": "short_q1", "text": {"en": "What is 2 + 2?"}}]},
        {"id": "long", "group": "control", "title": "long",
         "questions": [{"id": "long_q1", "text": {"en": long_q}}]},
    ]}
    (catalog / "topics.yaml").write_text(yaml.safe_dump(topics), encoding="utf-8")
    study = load_study(write_study(tmp_path / "study.yaml", catalog=str(catalog), topics=["short", "long"],
                                   languages=["en"], repetitions=2, models=[tiny_model_spec(tiny_model)]))
    write_prompts(study, tmp_path / "prompts")
    prompts = pq.read_table(tmp_path / "prompts" / "catalog.parquet")
    spec = study.study.models[0]
    sample_vllm(study, spec, "run-long", prompts, tmp_path / "samples")
    rows = read_folder(model_dir(tmp_path / "samples", spec.deployment, spec.name)).to_pylist()
    assert len(rows) == 4
    by_topic = {}
    for r in rows:
        by_topic.setdefault(r["topic"], []).append(r)
    assert all(r["error"] is None and r["response_text"] for r in by_topic["short"])
    assert all(r["error"] and r["response_text"] is None and r["finish_reason"] == "error" for r in by_topic["long"])
