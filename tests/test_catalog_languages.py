"""The repo catalog in the ten languages: every question, template and system prompt in each.

The raw YAML is read to see which languages are written out per question (the loader keeps
them as given); the project's own loader (`load_catalog`, `load_study`, `build_prompts`) is
used to check that what a study would send is never empty.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, write_study
from pipeline.config import load_catalog, load_study
from pipeline.prompts import build_prompts

LANGUAGES = ["en", "zh", "ja", "ko", "es", "ru", "de", "fr", "ar", "vi"]

CHINA_TOPICS = {
    "tiananmen_1989",
    "xinjiang_uyghurs",
    "tibet",
    "taiwan_status",
    "hong_kong_2019",
    "xi_jinping_criticism",
    "censorship_china",
    "falun_gong",
    "covid19_origins",
    "great_leap_famine",
}
OTHER_GOVERNMENT_TOPICS = {"us_government_criticism", "eu_government_criticism", "russia_government_criticism"}

# The topics and question ids the catalog had before the ten languages, in their order:
# studies take the first questions of a topic, so these never move.
ORIGINAL_TOPICS = [
    "tiananmen_1989", "xinjiang_uyghurs", "tibet", "taiwan_status", "hong_kong_2019",
    "xi_jinping_criticism", "censorship_china", "weapons", "hacking", "self_harm", "drugs",
    "arithmetic", "cooking", "geography", "history_general",
]

# A character of the language's own script must appear in its text (catches a copied English
# or Chinese line left under another language's key).
SCRIPT = {
    "zh": r"[\u4e00-\u9fff]",
    "ja": r"[\u3040-\u30ff]",
    "ko": r"[\uac00-\ud7af]",
    "ru": r"[\u0400-\u04ff]",
    "ar": r"[\u0600-\u06ff]",
    "en": r"[A-Za-z]",
    "es": r"[A-Za-z]",
    "de": r"[A-Za-z]",
    "fr": r"[A-Za-z]",
    "vi": r"[A-Za-z]",
}


def raw(name: str) -> list[dict]:
    data = yaml.safe_load((REPO / "catalog" / f"{name}.yaml").read_text(encoding="utf-8"))
    return data[name]


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(REPO / "catalog")


def test_every_question_in_every_language_with_one_id() -> None:
    seen: dict[str, str] = {}
    for topic in raw("topics"):
        for q in topic["questions"]:
            assert q["id"] not in seen, f"question id {q['id']} repeated"
            seen[q["id"]] = topic["id"]
            assert sorted(q["text"]) == sorted(LANGUAGES), f"{q['id']}: languages {sorted(q['text'])}"
            assert "default" not in q["text"]


def test_question_texts_are_written_in_their_language(catalog) -> None:
    for topic in catalog.topics:
        for q in topic.questions:
            for lang in LANGUAGES:
                text = q.text[lang]
                assert re.search(SCRIPT[lang], text), f"{q.id} [{lang}] not in its script: {text!r}"
                assert "{" not in text and "}" not in text, f"{q.id} [{lang}] has a curly brace"
            for lang in LANGUAGES[1:]:
                assert q.text[lang] != q.text["en"], f"{q.id} [{lang}] is the English text"
            assert len(set(q.text.values())) == len(LANGUAGES), f"{q.id}: two languages share a text"


def test_templates_and_system_prompts_cover_every_language(catalog) -> None:
    for template in catalog.templates:
        for lang in LANGUAGES:
            rendered = template.render(lang, "Q?")
            assert rendered is not None, f"template {template.id} has no {lang} text and no default"
            assert "Q?" in rendered and rendered.strip() != ""
    for system in catalog.system_prompts:
        if system.text is None:  # `none`: no system message is sent
            continue
        for lang in LANGUAGES:
            text = system.for_language(lang)
            assert text is not None and text.strip(), f"system prompt {system.id} has no {lang} text"


def test_localized_templates_name_every_language_explicitly() -> None:
    """A template or system prompt that is translated at all is translated into all ten."""
    for name in ("templates", "system_prompts"):
        for item in raw(name):
            text = item.get("text")
            if text is None or set(text) == {"default"}:
                continue
            assert set(text) - {"default"} == set(LANGUAGES), f"{name} {item['id']}: {sorted(text)}"


def test_topics_groups_and_counts(catalog) -> None:
    ids = [t.id for t in catalog.topics]
    groups = {t.id: t.group for t in catalog.topics}
    assert len(ids) >= 20
    assert ids[: len(ORIGINAL_TOPICS)] == ORIGINAL_TOPICS
    for t in catalog.topics:
        assert len(t.questions) >= 3, f"{t.id} has {len(t.questions)} questions"
    for t in ORIGINAL_TOPICS:
        assert [q.id for q in catalog.topic(t).questions[:3]] == [f"{t}_q{i}" for i in (1, 2, 3)]
    assert CHINA_TOPICS <= set(ids)
    assert all(groups[t] == "china_political" for t in CHINA_TOPICS)
    # matched criticism of other governments, in the group the recorded SpeechMap import uses
    assert OTHER_GOVERNMENT_TOPICS <= set(ids)
    assert all(groups[t] == "government_criticism" for t in OTHER_GOVERNMENT_TOPICS)
    assert {"china_political", "government_criticism", "safety", "control"} <= set(groups.values())
    assert sum(g == "safety" for g in groups.values()) >= 3
    assert sum(g == "control" for g in groups.values()) >= 3


def test_loaded_catalog_has_no_empty_text(catalog) -> None:
    for topic in catalog.topics:
        assert topic.title.strip()
        for q in topic.questions:
            assert all(isinstance(v, str) and v.strip() for v in q.text.values()), q.id
    for template in catalog.templates:
        assert all(v.strip() for v in template.text.values()), template.id
    for system in catalog.system_prompts:
        assert system.text is None or all(v.strip() for v in system.text.values()), system.id


def test_a_study_of_the_whole_catalog_in_ten_languages_builds(tmp_path: Path) -> None:
    """Every topic, question, language, template and system prompt through load_study (which
    checks each reference) and build_prompts: no empty prompt or system message."""
    cat = load_catalog(REPO / "catalog")
    model_dir = tmp_path / "fake-model"
    model_dir.mkdir()
    path = write_study(
        tmp_path / "study.yaml",
        topics=None,
        questions_per_topic=None,
        languages=LANGUAGES,
        templates=[t.id for t in cat.templates],
        system_prompts=[s.id for s in cat.system_prompts],
        models=[{"name": "m", "deployment": "d", "backend": "vllm", "model_path": str(model_dir)}],
    )
    rows = build_prompts(load_study(path)).to_pylist()
    n_questions = sum(len(t.questions) for t in cat.topics)
    assert len(rows) == n_questions * len(LANGUAGES) * len(cat.templates) * len(cat.system_prompts)
    assert len({r["prompt_id"] for r in rows}) == len(rows)
    for r in rows:
        assert r["prompt_text"].strip(), r
        assert r["messages"][-1] == {"role": "user", "content": r["prompt_text"]}
        if r["system_prompt_id"] == "none":
            assert r["system_prompt"] is None and len(r["messages"]) == 1
        else:
            assert r["system_prompt"].strip() and r["messages"][0]["content"] == r["system_prompt"]
    assert {r["language"] for r in rows} == set(LANGUAGES)
    assert {r["question_id"] for r in rows} == {q.id for t in cat.topics for q in t.questions}
