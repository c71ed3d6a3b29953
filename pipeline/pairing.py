"""Pair recorded responses with the catalog's prompt variants.

Responses collected elsewhere (an app, an API log) answer prompts the catalog may hold. A
recorded row that names its variant, or whose prompt text is a catalog variant's text, gets
that variant's `prompt_id` (the hash `pipeline.prompts.prompt_id` gives it), so its answers
meet the answers of live weights on the same prompt in `prompt_stats` and in the
deployment comparisons.

A row is paired by, in order:

1. ids: `question_id`, `language` and a `template` (`template_id`) and/or `system_prompt`
   (`system_prompt_id`) id, all in the catalog; a missing one of the two is the catalog's
   plain one (`direct`, the system prompt without text, e.g. `none`);
2. text: the prompt text equals a catalog variant's user message exactly. Whatever ids and
   language the row does carry narrow the candidates; of several left (the same message under
   several system prompts), the one without a system prompt is taken; still several: unpaired.

Every catalog variant can be paired, not only those the study samples live: the catalog is
what an app's answers are compared on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.config import Catalog
from pipeline.prompts import prompt_row


@dataclass
class CatalogIndex:
    """Every prompt variant of a catalog, by its ids and by its prompt text."""

    by_ids: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    by_text: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    default_template: str | None = None
    default_system_prompt: str | None = None

    @classmethod
    def build(cls, catalog: Catalog, study: str) -> "CatalogIndex":
        index = cls()
        ids = [t.id for t in catalog.templates]
        index.default_template = "direct" if "direct" in ids else None
        plain = [s.id for s in catalog.system_prompts if s.text is None]
        index.default_system_prompt = plain[0] if plain else None
        for topic in catalog.topics:
            for question in topic.questions:
                for lang, qtext in question.text.items():
                    if lang == "default":
                        continue
                    for template in catalog.templates:
                        text = template.render(lang, qtext)
                        if text is None:
                            continue
                        for system in catalog.system_prompts:
                            # the same arguments as pipeline.prompts.build_prompts: the same prompt_id
                            row = prompt_row(
                                study=study, source="catalog", topic=topic.id, topic_group=topic.group,
                                question_id=question.id, language=lang, template_id=template.id,
                                system_prompt_id=system.id, system_prompt=system.for_language(lang),
                                prompt_text=text,
                            )
                            index.by_ids[(question.id, lang, template.id, system.id)] = row
                            index.by_text.setdefault(text, []).append(row)
        return index

    def match(self, *, prompt_text: str, question_id: str | None, language: str | None,
              template_id: str | None, system_prompt_id: str | None) -> tuple[dict[str, Any] | None, str]:
        """(the catalog prompt row, how: `ids`, `text`) or (None, why not: `none`, `ambiguous`)."""
        lang = None if language in (None, "", "und") else language
        if question_id and lang and (template_id or system_prompt_id):
            key = (question_id, lang, template_id or self.default_template or "",
                   system_prompt_id or self.default_system_prompt or "")
            if key in self.by_ids:
                return self.by_ids[key], "ids"
        cands = self.by_text.get(prompt_text, [])
        for name, value in (("language", lang), ("question_id", question_id), ("template_id", template_id),
                            ("system_prompt_id", system_prompt_id)):
            if value:
                cands = [c for c in cands if c[name] == value]
        if len(cands) > 1:
            cands = [c for c in cands if c["system_prompt"] is None] or cands
        if len(cands) == 1:
            return cands[0], "text"
        return None, "ambiguous" if cands else "none"
