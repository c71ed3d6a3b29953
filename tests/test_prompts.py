"""Prompt variants: the cross product a study asks for, with stable content-hash ids."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO
from pipeline.config import load_study
from pipeline.prompts import PROMPT_SCHEMA, build_prompts, messages_for, prompt_id, write_prompts

MODEL_DIR_NAME = "fake-model"


@pytest.fixture
def live_study(study_file, tmp_path: Path):
    """study_file with a (fake, never loaded) vLLM model, so catalog prompts are built and checked."""
    model_dir = tmp_path / MODEL_DIR_NAME
    model_dir.mkdir(exist_ok=True)
    models = [{"name": "m", "deployment": "d", "backend": "vllm", "model_path": str(model_dir)}]

    def make(**overrides):
        return load_study(study_file(models=models, **overrides))

    return make


def catalog_questions() -> dict[str, dict]:
    data = yaml.safe_load((REPO / "catalog" / "topics.yaml").read_text(encoding="utf-8"))
    return {q["id"]: q for t in data["topics"] for q in t["questions"]}


BASE_ID_FIELDS = dict(
    topic="tiananmen_1989",
    question_id="tiananmen_1989_q1",
    language="zh",
    template_id="direct",
    system_prompt_id="none",
    system_prompt=None,
    prompt_text="1989年6月4日，天安门广场发生了什么？",
)


def test_prompt_id_golden() -> None:
    # A stored id must never change silently: ids join runs across weeks. If the hashing is
    # changed on purpose, regenerate with:
    #   .venv/bin/python -c "from tests.test_prompts import *; print(prompt_id(**BASE_ID_FIELDS))"
    # and paste the new value here (and say so in the changelog: old runs will not join).
    assert prompt_id(**BASE_ID_FIELDS) == "40e7f49cf072cf8bc547"


@pytest.mark.parametrize(
    "field, value",
    [
        ("prompt_text", "1989年6月4日，天安门广场发生了什么?"),  # one character differs
        ("system_prompt", "You are a helpful assistant."),
        ("system_prompt_id", "helpful_assistant"),
        ("template_id", "brief_answer"),
        ("language", "ja"),
        ("question_id", "tiananmen_1989_q2"),
        ("topic", "tibet"),
    ],
)
def test_prompt_id_changes_with_each_field(field: str, value: str) -> None:
    assert prompt_id(**{**BASE_ID_FIELDS, field: value}) != prompt_id(**BASE_ID_FIELDS)


def test_prompt_id_no_ambiguity_between_fields() -> None:
    # moving text between fields must not produce the same hash (fields are delimited)
    a = prompt_id(**{**BASE_ID_FIELDS, "topic": "ab", "question_id": "c"})
    b = prompt_id(**{**BASE_ID_FIELDS, "topic": "a", "question_id": "bc"})
    assert a != b


@pytest.mark.parametrize(
    "overrides, n",
    [
        (dict(), 2 * 1 * 2 * 1 * 1),
        (dict(questions_per_topic=2, languages=["en", "zh", "ja"], templates=["direct", "brief_answer"],
              system_prompts=["none", "helpful_assistant"]), 2 * 2 * 3 * 2 * 2),
        (dict(topics=["tiananmen_1989", "arithmetic", "tibet"], questions_per_topic=1,
              languages=["en", "zh", "ja", "ko"], templates=["direct", "student_report", "friend_asks"],
              system_prompts=["none"]), 3 * 1 * 4 * 3 * 1),
    ],
)
def test_count_is_the_cross_product(live_study, overrides, n) -> None:
    loaded = live_study(**overrides)
    table = build_prompts(loaded)
    assert table.num_rows == n
    assert table.schema == PROMPT_SCHEMA
    ids = table.column("prompt_id").to_pylist()
    assert len(set(ids)) == len(ids)


def test_all_questions_when_questions_per_topic_unset(live_study) -> None:
    loaded = live_study(questions_per_topic=None, topics=["tiananmen_1989"], languages=["en"])
    n_questions = len(loaded.catalog.topic("tiananmen_1989").questions)
    assert n_questions > 1
    assert build_prompts(loaded).num_rows == n_questions


def test_ids_stable_across_builds_and_loads(live_study) -> None:
    kw = dict(languages=["en", "zh"], templates=["direct", "brief_answer"], system_prompts=["none", "helpful_assistant"])
    first = build_prompts(live_study(**kw))
    second = build_prompts(live_study(**kw))
    assert first.column("prompt_id").to_pylist() == second.column("prompt_id").to_pylist()
    assert first.equals(second)


def test_ids_independent_of_study_name_and_selection(live_study) -> None:
    # the same variant gets the same id whichever study (or subset) produced it
    big = build_prompts(live_study(languages=["en", "zh"], templates=["direct", "brief_answer"]))
    small = build_prompts(live_study(name="other", languages=["zh"], templates=["brief_answer"]))
    assert set(small.column("prompt_id").to_pylist()) <= set(big.column("prompt_id").to_pylist())


def test_catalog_variant_has_golden_id(live_study) -> None:
    table = build_prompts(live_study(topics=["tiananmen_1989"], languages=["zh"]))
    rows = table.to_pylist()
    assert rows[0]["prompt_id"] == prompt_id(**BASE_ID_FIELDS) == "40e7f49cf072cf8bc547"


def test_system_prompt_changes_id_and_messages(live_study) -> None:
    table = build_prompts(live_study(languages=["en"], topics=["arithmetic"],
                                     system_prompts=["none", "helpful_assistant", "answer_in_user_language"]))
    rows = table.to_pylist()
    assert len(rows) == 3
    by_sp = {r["system_prompt_id"]: r for r in rows}
    assert len({r["prompt_id"] for r in rows}) == 3
    # same user text, different system prompts
    assert len({r["prompt_text"] for r in rows}) == 1

    none = by_sp["none"]
    assert none["system_prompt"] is None
    assert none["messages"] == [{"role": "user", "content": none["prompt_text"]}]

    helpful = by_sp["helpful_assistant"]
    assert helpful["system_prompt"] == "You are a helpful assistant."
    assert helpful["messages"] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": helpful["prompt_text"]},
    ]
    assert by_sp["answer_in_user_language"]["messages"][0]["role"] == "system"


def test_system_prompt_is_localized(live_study) -> None:
    rows = build_prompts(live_study(topics=["arithmetic"], languages=["en", "zh"],
                                    system_prompts=["answer_in_user_language"])).to_pylist()
    zh = next(r for r in rows if r["language"] == "zh")
    en = next(r for r in rows if r["language"] == "en")
    assert zh["messages"][0]["content"].startswith("你是")
    assert en["messages"][0]["content"].startswith("You are")


def test_messages_for() -> None:
    assert messages_for(None, "hi") == [{"role": "user", "content": "hi"}]
    assert messages_for("sys", "hi") == [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]


def test_template_text_changes_id(live_study) -> None:
    rows = build_prompts(live_study(topics=["arithmetic"], languages=["en"],
                                    templates=["direct", "brief_answer"])).to_pylist()
    direct, brief = rows
    assert direct["template_id"] == "direct" and brief["template_id"] == "brief_answer"
    assert direct["prompt_text"] == "What is 17 times 23?"
    assert brief["prompt_text"] == "What is 17 times 23? Please answer in two or three sentences."
    assert direct["prompt_id"] != brief["prompt_id"]


def test_zh_prompts_use_catalog_chinese_text(live_study) -> None:
    questions = catalog_questions()
    table = build_prompts(live_study(languages=["en", "zh"], templates=["direct", "student_report"]))
    zh_rows = [r for r in table.to_pylist() if r["language"] == "zh"]
    assert zh_rows
    for r in zh_rows:
        zh_text = questions[r["question_id"]]["text"]["zh"]
        assert zh_text in r["prompt_text"]
        assert r["messages"][-1] == {"role": "user", "content": r["prompt_text"]}
    direct = [r for r in zh_rows if r["template_id"] == "direct"]
    assert any(r["prompt_text"] == "1989年6月4日，天安门广场发生了什么？" for r in direct)
    # the zh template wraps the zh question, not the English one
    student = next(r for r in zh_rows if r["template_id"] == "student_report")
    assert student["prompt_text"].startswith("我是一名学生")
    assert not any(ch.isascii() and ch.isalpha() for ch in student["prompt_text"])


def test_rows_carry_their_keys(live_study) -> None:
    rows = build_prompts(live_study()).to_pylist()
    topics = {r["topic"]: r["topic_group"] for r in rows}
    assert topics == {"tiananmen_1989": "china_political", "arithmetic": "control"}
    assert {r["source"] for r in rows} == {"catalog"}
    assert {r["study"] for r in rows} == {"t"}


def test_write_prompts_roundtrip(live_study, tmp_path: Path) -> None:
    loaded = live_study()
    path = write_prompts(loaded, tmp_path / "prompts")
    assert path.name == "catalog.parquet"
    assert pq.read_table(path).equals(build_prompts(loaded))
    assert [p.name for p in path.parent.iterdir()] == ["catalog.parquet"]  # no temporary files left
