"""Stage 1: prompt variants (topics × questions × languages × templates × system prompts).

Each variant has a stable `prompt_id`: a hash of its content, so the same inputs give the
same ids on any machine and in any run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa

from pipeline.config import LoadedStudy, selected_topics
from pipeline.lake import write_parquet_atomic

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

PROMPT_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("study", pa.string()),
        ("source", pa.string()),
        ("topic", pa.string()),
        ("topic_group", pa.string()),
        ("question_id", pa.string()),
        ("language", pa.string()),
        ("template_id", pa.string()),
        ("system_prompt_id", pa.string()),
        ("system_prompt", pa.string()),
        ("prompt_text", pa.string()),
        ("messages", pa.list_(MESSAGE)),
    ]
)


def prompt_id(
    *,
    topic: str,
    question_id: str,
    language: str,
    template_id: str,
    system_prompt_id: str,
    system_prompt: str | None,
    prompt_text: str,
) -> str:
    """Stable id of a prompt variant: sha256 over its identifying fields and final text."""
    payload = json.dumps(
        [topic, question_id, language, template_id, system_prompt_id, system_prompt, prompt_text],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


def messages_for(system_prompt: str | None, prompt_text: str) -> list[dict[str, str]]:
    msgs = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return msgs + [{"role": "user", "content": prompt_text}]


def prompt_row(
    *,
    study: str,
    source: str,
    topic: str,
    topic_group: str,
    question_id: str,
    language: str,
    template_id: str,
    system_prompt_id: str,
    system_prompt: str | None,
    prompt_text: str,
) -> dict:
    """One row of the prompts table (also used by the `recorded` backend)."""
    pid = prompt_id(
        topic=topic,
        question_id=question_id,
        language=language,
        template_id=template_id,
        system_prompt_id=system_prompt_id,
        system_prompt=system_prompt,
        prompt_text=prompt_text,
    )
    return {
        "prompt_id": pid,
        "study": study,
        "source": source,
        "topic": topic,
        "topic_group": topic_group,
        "question_id": question_id,
        "language": language,
        "template_id": template_id,
        "system_prompt_id": system_prompt_id,
        "system_prompt": system_prompt,
        "prompt_text": prompt_text,
        "messages": messages_for(system_prompt, prompt_text),
    }


def build_prompts(loaded: LoadedStudy) -> pa.Table:
    """All prompt variants a study asks for, in a deterministic order."""
    study, catalog = loaded.study, loaded.catalog
    templates = {t.id: t for t in catalog.templates}
    systems = {s.id: s for s in catalog.system_prompts}
    rows = []
    for topic in selected_topics(study, catalog):
        for question in topic.questions[: study.questions_per_topic]:
            for lang in study.languages:
                for tid in study.templates:
                    text = templates[tid].render(lang, question.text[lang])
                    for sid in study.system_prompts:
                        rows.append(
                            prompt_row(
                                study=study.name,
                                source="catalog",
                                topic=topic.id,
                                topic_group=topic.group,
                                question_id=question.id,
                                language=lang,
                                template_id=tid,
                                system_prompt_id=sid,
                                system_prompt=systems[sid].for_language(lang),
                                prompt_text=text,
                            )
                        )
    return pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA)


def write_prompts(loaded: LoadedStudy, out_dir: Path) -> Path:
    """Write the study's catalog prompt variants to `out_dir/catalog.parquet`."""
    return write_parquet_atomic(build_prompts(loaded), out_dir / "catalog.parquet")
