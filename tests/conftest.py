"""Shared fixtures: a tiny real model, study files written on the fly, isolated data folders."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("REFUSALS_SHARED_DATA", REPO.parent / "shared" / "data"))

# Quiet, offline, CPU-friendly settings for every engine a test starts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Airflow reads its home at import: keep tests away from ~/airflow and the demo's .airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="refusals-airflow-"))
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
# Studies that do not choose a classifier get the rule tier here: most tests are about the
# pipeline around the labels, and the recorded SpeechMap import they use (11,050 answers)
# would cost minutes of embeddings per test. The semantic tier is the default outside tests
# and has its own tests (tests/test_semantic.py), end to end included, which set
# `classifier: semantic` in their studies.
os.environ.setdefault("REFUSALS_CLASSIFIER", "rules")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "speechmap_responses.parquet").exists():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weights Llama (2 layers, 64 wide) with SmolLM2's tokenizer, built in seconds."""
    from pipeline.model_prep import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "data"
    monkeypatch.setenv("REFUSALS_DATA_DIR", str(d))
    return d


def write_study(path: Path, **overrides) -> Path:
    """A small valid study (catalog of the repo), with fields overridden; returns its path."""
    study = {
        "name": "t",
        "catalog": str(REPO / "catalog"),
        "topics": ["tiananmen_1989", "arithmetic"],
        "questions_per_topic": 1,
        "languages": ["en", "zh"],
        "templates": ["direct"],
        "system_prompts": ["none"],
        "repetitions": 3,
        "seed": 7,
        "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 12},
        "models": [],
        "recorded": [],
    }
    study.update(overrides)
    path.write_text(yaml.safe_dump(study, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def tiny_model_spec(model_dir: Path, **engine) -> dict:
    return {
        "name": "tiny-random",
        "deployment": "local-test",
        "backend": "vllm",
        "model_path": str(model_dir),
        "engine": {"max_model_len": 512, "kv_cache_memory_bytes": 64 * 2**20, "batch_size": 6, **engine},
    }


@pytest.fixture
def study_file(tmp_path: Path):
    """Factory: study_file(**overrides) -> path of a valid small study."""

    def make(**overrides) -> Path:
        return write_study(tmp_path / "study.yaml", **overrides)

    return make
