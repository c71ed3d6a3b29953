"""Study and catalog validation: bad input stops early, naming the file and the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from pipeline.config import load_catalog, load_study
from pipeline.errors import UserError


@pytest.fixture
def recorded_file(tmp_path: Path) -> Path:
    p = tmp_path / "recorded.jsonl"
    p.write_text('{"model": "m", "prompt": "Hello?", "response": "Hi.", "language": "en"}\n', encoding="utf-8")
    return p


@pytest.fixture
def rec(recorded_file: Path) -> list[dict]:
    """A valid `recorded` list, so a study has something to do."""
    return [{"path": str(recorded_file), "deployment": "rec", "format": "generic"}]


def fails(path: Path, *fragments: str) -> str:
    """Load `path`, expect a UserError whose message names the file and every fragment."""
    with pytest.raises(UserError) as info:
        load_study(path)
    msg = str(info.value)
    assert str(path.resolve()) in msg or str(path) in msg, msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


# --------------------------------------------------------------------------- study files


def test_valid_study_loads(study_file, rec) -> None:
    loaded = load_study(study_file(recorded=rec))
    assert loaded.study.name == "t"
    assert loaded.study.languages == ["en", "zh"]
    assert {t.id for t in loaded.catalog.topics} >= {"tiananmen_1989", "arithmetic"}
    assert re.fullmatch(r"[0-9a-f]{16}", loaded.study_hash)


def test_study_hash_stable_and_sensitive(study_file, rec) -> None:
    path = study_file(recorded=rec)
    h1 = load_study(path).study_hash
    h2 = load_study(path).study_hash
    assert h1 == h2
    changed = load_study(study_file(recorded=rec, repetitions=4)).study_hash
    assert changed != h1
    changed_lang = load_study(study_file(recorded=rec, languages=["en"])).study_hash
    assert changed_lang not in (h1, changed)
    # back to the original: the same hash again (a function of content, not of time or order of loads)
    assert load_study(study_file(recorded=rec)).study_hash == h1


def test_malformed_yaml(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("name: t\nlanguages: [en, zh\nrepetitions: 3\n", encoding="utf-8")
    msg = fails(path, "not valid YAML")
    assert "line" in msg  # the YAML position, so a person can find it


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    fails(path, "mapping")


def test_missing_study_file(tmp_path: Path) -> None:
    fails(tmp_path / "nope.yaml", "not found")


def test_unknown_field(study_file, rec) -> None:
    fails(study_file(recorded=rec, colour="red"), "field 'colour'")


def test_unknown_field_nested(study_file, rec) -> None:
    fails(study_file(recorded=rec, sampling={"temperature": 0.5, "top_k": 3}), "sampling.top_k")


def test_unknown_language_code(study_file, rec) -> None:
    fails(study_file(recorded=rec, languages=["en", "jp"]), "field 'languages'", "'jp'")


def test_unknown_language_in_recorded_filter(study_file, rec) -> None:
    rec[0]["languages"] = ["cn"]
    fails(study_file(recorded=rec), "recorded.0.languages", "'cn'")


def test_repeated_language(study_file, rec) -> None:
    fails(study_file(recorded=rec, languages=["en", "zh", "en"]), "field 'languages'", "repeated")


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("topics", ["tiananmen_1989", "no_such_topic"], "'no_such_topic'"),
        ("templates", ["direct", "no_such_template"], "'no_such_template'"),
        ("system_prompts", ["no_such_system_prompt"], "'no_such_system_prompt'"),
        ("topic_groups", ["no_such_group"], "'no_such_group'"),
    ],
)
def test_unknown_catalog_reference(study_file, rec, field, value, needle) -> None:
    fails(study_file(recorded=rec, **{field: value}), f"field '{field}'", needle)


def test_missing_models_and_recorded(study_file) -> None:
    # conftest's default study has empty `models` and `recorded`
    fails(study_file(), "'models'", "'recorded'")


def test_vllm_model_without_model_path(study_file) -> None:
    fails(
        study_file(models=[{"name": "m", "deployment": "d", "backend": "vllm"}]),
        "field 'models.0'",
        "model_path",
    )


def test_vllm_model_path_folder_missing(study_file, tmp_path: Path) -> None:
    missing = tmp_path / "no-model-here"
    fails(
        study_file(models=[{"name": "m", "deployment": "d", "backend": "vllm", "model_path": str(missing)}]),
        "field 'models.0.model_path'",
        "not found",
    )


def test_unknown_builtin_model(study_file) -> None:
    fails(
        study_file(models=[{"name": "m", "deployment": "d", "backend": "vllm", "model_path": "builtin:nope"}]),
        "field 'models.0.model_path'",
        "builtin:nope",
    )


def test_recorded_path_missing(study_file, tmp_path: Path) -> None:
    fails(
        study_file(recorded=[{"path": str(tmp_path / "gone.jsonl"), "deployment": "rec"}]),
        "field 'recorded.0.path'",
        "gone.jsonl",
    )


def test_recorded_deployment_repeated(study_file, rec) -> None:
    fails(study_file(recorded=rec + rec), "deployment")


def test_catalog_folder_missing(study_file, rec, tmp_path: Path) -> None:
    fails(study_file(recorded=rec, catalog=str(tmp_path / "no-catalog")), "field 'catalog'")


def test_language_missing_from_catalog_for_live_model(study_file, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    models = [{"name": "m", "deployment": "d", "backend": "vllm", "model_path": str(model_dir)}]
    fails(study_file(models=models, languages=["en", "fi"]), "field 'languages'", "'fi'")


# --------------------------------------------------------------------------- catalogs


def small_catalog(folder: Path, topics=None, templates=None, system_prompts=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if topics is None:
        topics = [
            {"id": "t1", "group": "g", "title": "T1",
             "questions": [{"id": "q1", "text": {"en": "Why is the sky blue?", "zh": "天空为什么是蓝色的？"}}]},
            {"id": "t2", "group": "g", "title": "T2",
             "questions": [{"id": "q2", "text": {"en": "What is 2+2?", "zh": "2+2等于几？"}}]},
        ]
    if templates is None:
        templates = [{"id": "direct", "text": {"default": "{question}"}}]
    if system_prompts is None:
        system_prompts = [{"id": "none", "text": None}]
    for name, items in (("topics", topics), ("templates", templates), ("system_prompts", system_prompts)):
        (folder / f"{name}.yaml").write_text(
            yaml.safe_dump({name: items}, allow_unicode=True, sort_keys=False), encoding="utf-8"
        )
    return folder


def catalog_fails(folder: Path, file: str, *fragments: str) -> str:
    with pytest.raises(UserError) as info:
        load_catalog(folder)
    msg = str(info.value)
    assert str(folder / file) in msg, f"{folder / file} not named in {msg!r}"
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


def test_small_catalog_is_valid(tmp_path: Path) -> None:
    cat = load_catalog(small_catalog(tmp_path / "cat"))
    assert [t.id for t in cat.topics] == ["t1", "t2"]
    assert re.fullmatch(r"[0-9a-f]{16}", cat.source)


def test_catalog_duplicate_topic_ids(tmp_path: Path) -> None:
    topics = [
        {"id": "t1", "group": "g", "title": "A", "questions": [{"id": "q1", "text": {"en": "a?"}}]},
        {"id": "t1", "group": "g", "title": "B", "questions": [{"id": "q2", "text": {"en": "b?"}}]},
    ]
    catalog_fails(small_catalog(tmp_path / "cat", topics=topics), "topics.yaml", "topics", "duplicate", "t1")


def test_catalog_duplicate_question_ids_across_topics(tmp_path: Path) -> None:
    topics = [
        {"id": "t1", "group": "g", "title": "A", "questions": [{"id": "q1", "text": {"en": "a?"}}]},
        {"id": "t2", "group": "g", "title": "B", "questions": [{"id": "q1", "text": {"en": "b?"}}]},
    ]
    catalog_fails(small_catalog(tmp_path / "cat", topics=topics), "topics.yaml", "duplicate", "q1")


def test_catalog_duplicate_template_ids(tmp_path: Path) -> None:
    templates = [
        {"id": "direct", "text": {"default": "{question}"}},
        {"id": "direct", "text": {"default": "Q: {question}"}},
    ]
    catalog_fails(small_catalog(tmp_path / "cat", templates=templates), "templates.yaml", "templates", "duplicate")


def test_catalog_duplicate_system_prompt_ids(tmp_path: Path) -> None:
    sps = [{"id": "none", "text": None}, {"id": "none", "text": {"default": "Be nice."}}]
    catalog_fails(small_catalog(tmp_path / "cat", system_prompts=sps), "system_prompts.yaml", "duplicate", "none")


def test_empty_catalog(tmp_path: Path) -> None:
    catalog_fails(small_catalog(tmp_path / "cat", topics=[]), "topics.yaml", "topics", "no topics")


def test_empty_catalog_through_study(study_file, rec, tmp_path: Path) -> None:
    folder = small_catalog(tmp_path / "cat", topics=[])
    with pytest.raises(UserError) as info:
        load_study(study_file(recorded=rec, catalog=str(folder), topics=None))
    # the error is in the catalog, so the catalog file is the one named
    assert str(folder / "topics.yaml") in str(info.value)
    assert "no topics" in str(info.value)


def test_template_without_question_placeholder(tmp_path: Path) -> None:
    templates = [{"id": "direct", "text": {"default": "{question}"}},
                 {"id": "bad", "text": {"en": "Tell me something."}}]
    catalog_fails(small_catalog(tmp_path / "cat", templates=templates), "templates.yaml",
                  "templates.1.text", "{question}")


def test_template_with_other_braces(tmp_path: Path) -> None:
    templates = [{"id": "bad", "text": {"en": "{question} {extra}"}}]
    catalog_fails(small_catalog(tmp_path / "cat", templates=templates), "templates.yaml", "templates.0.text")


def test_catalog_unknown_language_key(tmp_path: Path) -> None:
    topics = [{"id": "t1", "group": "g", "title": "A", "questions": [{"id": "q1", "text": {"jp": "何?"}}]}]
    catalog_fails(small_catalog(tmp_path / "cat", topics=topics), "topics.yaml",
                  "topics.0.questions.0.text", "'jp'")


def test_catalog_topics_key_missing(tmp_path: Path) -> None:
    folder = small_catalog(tmp_path / "cat")
    (folder / "topics.yaml").write_text("version: 1\n", encoding="utf-8")
    catalog_fails(folder, "topics.yaml", "field 'topics'")


def test_catalog_file_malformed_yaml(tmp_path: Path) -> None:
    folder = small_catalog(tmp_path / "cat")
    (folder / "templates.yaml").write_text("templates:\n  - id: [direct\n", encoding="utf-8")
    catalog_fails(folder, "templates.yaml", "not valid YAML")


def test_repo_catalog_loads() -> None:
    cat = load_catalog(REPO / "catalog")
    assert len(cat.topics) >= 10
    assert {"direct"} <= {t.id for t in cat.templates}
    assert {"none"} <= {s.id for s in cat.system_prompts}


def test_study_hash_ignores_an_absent_judge(tmp_path) -> None:
    """Runs started before the `judge` field existed still resume: a study without a judge
    hashes as it did then, whether the field is left out or null; a configured judge counts."""
    import yaml

    from pipeline.config import load_study
    from tests.conftest import write_study

    model = {"name": "m", "deployment": "api", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}
    plain = load_study(write_study(tmp_path / "a.yaml", models=[model])).study_hash
    data = yaml.safe_load((tmp_path / "a.yaml").read_text())
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({**data, "judge": None}))
    assert load_study(tmp_path / "b.yaml").study_hash == plain
    judged = {**data, "judge": {"name": "j", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(judged))
    assert load_study(tmp_path / "c.yaml").study_hash != plain


def test_study_hash_ignores_execution_settings(tmp_path) -> None:
    """The hash covers what a run measures, not how it is executed: replicas, batch size,
    cpus/gpus per replica, concurrency and the Ray address resume the same run; sampling
    settings and the seed do not."""
    from tests.conftest import write_study

    model = {"name": "m", "deployment": "local", "backend": "vllm", "model_path": "builtin:smollm2"}
    base = load_study(write_study(tmp_path / "a.yaml", models=[model])).study_hash
    executed = {**model, "concurrency": 16,
                "engine": {"replicas": 3, "batch_size": 8, "cpus_per_replica": 2, "gpus_per_replica": 0}}
    same = load_study(write_study(tmp_path / "b.yaml", models=[executed], ray_address="ray://head:10001"))
    assert same.study_hash == base
    for i, extra in enumerate([
        {"sampling": {"temperature": 0.2, "top_p": 0.95, "max_tokens": 12}},
        {"sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 17}},
        {"seed": 8},
    ]):
        other = load_study(write_study(tmp_path / f"c{i}.yaml", models=[model], **extra)).study_hash
        assert other != base, extra
