"""The `recorded` backend: responses collected elsewhere, imported as their own deployment.

Two formats:

- `speechmap`: `../shared/data/speechmap_responses.parquet` as its data card describes it.
  topic = `<criticism_target>_criticism`; topic_group = `china_political` for China,
  `government_criticism` otherwise; `judge_label` (COMPLETE/EVASIVE/DENIAL/ERROR_*) is kept,
  mapped to our labels, as `source_label`.
- `generic`: a JSONL or Parquet file with the columns below (only the first three required).

| column | meaning |
|---|---|
| `model` | model name |
| `prompt` | the user message as sent |
| `response` | the assistant's visible answer (null if the request failed) |
| `language` | ISO 639-1 of the prompt (default `und`) |
| `topic`, `topic_group`, `question_id` | default `recorded`, `recorded`, a hash of the prompt |
| `reasoning`, `finish_reason`, `error` | as returned by the API |
| `streamed_text` | what was shown while streaming, if it differs from `response` |
| `rep` | repetition number (default: numbered per model and prompt) |
| `label` | a label given elsewhere (`complied/refused/evasive/error`), kept as `source_label` |
| `template` (`template_id`), `system_prompt` (`system_prompt_id`) | catalog ids of the variant asked |

A row is paired with the study catalog's prompt variant it asked (`pipeline.pairing`): by
`question_id` + `language` + a template and/or system-prompt id, or by its prompt text equal
to a variant's text; it then gets the catalog's `prompt_id`, topic and ids, so its answers
compare with live models' answers on the same prompt. Other rows keep a `recorded` variant of
their own. Columns the mapping does not read are named in a warning (and ignored).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.backends.base import split_reasoning
from pipeline.config import ISO_639_1, Catalog, RecordedSource
from pipeline.errors import UserError
from pipeline.prompts import PROMPT_SCHEMA, prompt_row

log = logging.getLogger(__name__)

SPEECHMAP_LABELS = {
    "COMPLETE": "complied",
    "EVASIVE": "evasive",
    "DENIAL": "refused",
    "ERROR_ORIGINAL_MODERATION": "error",
    "ERROR_ORIGINAL_RESPONSE": "error",
    "ERROR": "error",
}

GENERIC_REQUIRED = ("model", "prompt", "response")
# the columns each format's mapping reads; any other column of a file is named in a warning
SPEECHMAP_USED = ("model", "question_id", "question", "prompt_language", "criticism_target", "response_text",
                  "reasoning_text", "finish_reason", "error_message", "judge_label")
GENERIC_USED = ("model", "prompt", "response", "language", "topic", "topic_group", "question_id", "reasoning",
                "finish_reason", "error", "streamed_text", "rep", "label", "template", "template_id",
                "system_prompt", "system_prompt_id")


def unused_columns(table: pa.Table, fmt: str) -> list[str]:
    """The columns of a recorded file that its format's mapping does not read."""
    used = SPEECHMAP_USED if fmt == "speechmap" else GENERIC_USED
    return [c for c in table.column_names if c not in used]


def _read_any(path: Path) -> pa.Table:
    from pipeline.config import MAX_RECORDED_BYTES, max_bytes, read_bounded

    limit = max_bytes("REFUSALS_MAX_RECORDED_BYTES", MAX_RECORDED_BYTES)
    if path.suffix == ".parquet":
        if path.is_file() and path.stat().st_size > limit:
            read_bounded(path, limit, "REFUSALS_MAX_RECORDED_BYTES", "the recorded file")  # raises

        try:
            return pq.read_table(path)
        except Exception as exc:
            raise UserError(f"{path}: cannot read as Parquet: {exc}") from None
    if path.suffix in (".jsonl", ".json"):
        rows = []
        raw = read_bounded(path, limit, "REFUSALS_MAX_RECORDED_BYTES", "the recorded file")
        try:
            lines = raw.decode("utf-8").split("\n")  # not splitlines(): JSON strings may hold U+2028
        except UnicodeDecodeError as exc:
            line_no = raw[: exc.start].count(b"\n") + 1
            raise UserError(f"{path}: line {line_no}: not valid UTF-8 text (binary file?)") from None
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}: line {n}: not valid JSON: {exc.msg}") from None
                if not isinstance(rows[-1], dict):
                    raise UserError(f"{path}: line {n}: expected a JSON object, got {type(rows[-1]).__name__}")
        # Columns are the union over all rows: `from_pylist` alone takes the first row's keys and
        # would silently drop a key (e.g. `error`) that first appears further down.
        columns = list(dict.fromkeys(k for r in rows for k in r))
        try:
            return pa.Table.from_pydict({c: [r.get(c) for r in rows] for c in columns})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise UserError(f"{path}: a column has values of different types: {exc}") from None
    raise UserError(f"{path}: recorded responses must be .parquet or .jsonl")


def _speechmap_rows(table: pa.Table, path: Path) -> list[dict]:
    needed = {"model", "question_id", "question", "prompt_language", "criticism_target", "response_text"}
    missing = needed - set(table.column_names)
    if missing:
        raise UserError(f"{path}: not a SpeechMap file: missing column(s) {', '.join(sorted(missing))}")
    out = []
    for r in table.to_pylist():
        target = r["criticism_target"]
        visible, think = split_reasoning(r.get("response_text"))
        reasoning = r.get("reasoning_text")
        out.append(
            {
                "model": r["model"],
                "topic": f"{target}_criticism",
                "topic_group": "china_political" if target == "china" else "government_criticism",
                "question_id": r["question_id"],
                "language": r["prompt_language"],
                "prompt": r["question"],
                "response_text": visible,
                "reasoning_text": reasoning if reasoning is not None else think,
                "finish_reason": r.get("finish_reason"),
                "error": r.get("error_message") or None,
                "streamed_text": None,
                "rep": 0,
                "source_label": SPEECHMAP_LABELS.get(r.get("judge_label") or "", None),
            }
        )
    return out


_TEXT_FIELDS = ("model", "prompt", "response", "language", "topic", "topic_group", "question_id",
                "reasoning", "finish_reason", "error", "streamed_text", "label", "template", "template_id",
                "system_prompt", "system_prompt_id")
_LABELS = ("complied", "refused", "evasive", "error")


def _check_generic_row(r: dict, path: Path, row: int) -> None:
    """A recorded row is checked like a study field: the file, the row and the field are named."""
    where = f"{path}: row {row}"
    for field in _TEXT_FIELDS:
        v = r.get(field)
        if v is None:
            continue
        if not isinstance(v, str):
            raise UserError(f"{where}: field '{field}': expected text, got {type(v).__name__}")
        if "\x00" in v:
            raise UserError(f"{where}: field '{field}': contains a NUL byte (binary data?)")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"{where}: field '{field}': not valid UTF-8 text") from None
    lang = r.get("language")
    if lang is not None and lang != "und" and lang not in ISO_639_1:
        raise UserError(f"{where}: field 'language': unknown language code {lang!r}: use ISO 639-1 (e.g. en, zh) or 'und'")
    rep = r.get("rep")
    whole = isinstance(rep, int) and not isinstance(rep, bool) or isinstance(rep, float) and rep.is_integer()
    if rep is not None and not (whole and rep >= 0):
        raise UserError(f"{where}: field 'rep': expected a non-negative integer, got {rep!r}")
    label = r.get("label")
    if label is not None and label not in _LABELS:
        raise UserError(f"{where}: field 'label': {label!r} is not one of {', '.join(_LABELS)}")


def _generic_rows(table: pa.Table, path: Path) -> list[dict]:
    missing = [c for c in GENERIC_REQUIRED if c not in table.column_names]
    if missing:
        raise UserError(f"{path}: missing required column(s) {', '.join(missing)} (see the recorded format)")
    out = []
    for i, r in enumerate(table.to_pylist()):
        if not r.get("model") or not r.get("prompt"):
            raise UserError(f"{path}: row {i + 1}: 'model' and 'prompt' must be non-empty")
        _check_generic_row(r, path, i + 1)
        lang = r.get("language") or "und"
        visible, think = split_reasoning(r.get("response"))
        rep = r.get("rep")  # None: numbered per model and prompt variant once variants are known
        out.append(
            {
                "model": r["model"],
                "topic": r.get("topic") or "recorded",
                "topic_group": r.get("topic_group") or "recorded",
                "question_id": r.get("question_id") or None,
                "language": lang,
                "prompt": r["prompt"],
                "response_text": visible,
                "reasoning_text": r.get("reasoning") if r.get("reasoning") is not None else think,
                "finish_reason": r.get("finish_reason"),
                "error": r.get("error") or None,
                "streamed_text": r.get("streamed_text"),
                "rep": None if rep is None else int(rep),
                "source_label": r.get("label"),
                "_template_id": r.get("template_id") or r.get("template") or None,
                "_system_prompt_id": r.get("system_prompt_id") or r.get("system_prompt") or None,
            }
        )
    return out


def load_recorded(source: RecordedSource, path: Path, study: str, catalog: Catalog | None = None
                  ) -> tuple[pa.Table, list[dict]]:
    """Read a recorded file: (prompt variants, sample rows without run/deployment fields).

    With `catalog`, rows are paired with its prompt variants (see `pipeline.pairing`)."""
    table = _read_any(path)
    unused = unused_columns(table, source.format)
    if unused:
        log.warning("recorded %s: %s: column(s) %s not used by the %s mapping; ignored", source.deployment,
                    path, ", ".join(unused), source.format)
    rows = _speechmap_rows(table, path) if source.format == "speechmap" else _generic_rows(table, path)
    if source.models is not None:
        rows = [r for r in rows if r["model"] in source.models]
    if source.languages is not None:
        rows = [r for r in rows if r["language"] in source.languages]
    if source.questions_per_topic is not None:
        # the first N question ids of each topic (in id order), for every model and language:
        # a smaller import whose cells all keep the same prompts
        ids: dict[str, list[str]] = {}
        for r in rows:
            ids.setdefault(r["topic"], [])
            q = r["question_id"] or r["prompt"]
            if q not in ids[r["topic"]]:
                ids[r["topic"]].append(q)
        keep_q = {(t, q) for t, qs in ids.items() for q in sorted(qs)[:source.questions_per_topic]}
        rows = [r for r in rows if (r["topic"], r["question_id"] or r["prompt"]) in keep_q]
    if source.limit_per_model is not None:
        kept: dict[str, int] = {}
        limited = []
        for r in rows:
            if kept.get(r["model"], 0) < source.limit_per_model:
                kept[r["model"]] = kept.get(r["model"], 0) + 1
                limited.append(r)
        rows = limited
    if not rows:
        raise UserError(f"{path}: no rows left after the study's filters (models/languages)")

    from pipeline.pairing import CatalogIndex

    index = CatalogIndex.build(catalog, study) if catalog is not None else None
    paired = {"ids": 0, "text": 0, "ambiguous": 0, "none": 0}
    prompts: dict[str, dict] = {}
    for r in rows:
        template_id, system_prompt_id = r.pop("_template_id", None), r.pop("_system_prompt_id", None)
        if index is not None:
            match, how = index.match(prompt_text=r["prompt"], question_id=r["question_id"], language=r["language"],
                                     template_id=template_id, system_prompt_id=system_prompt_id)
            paired[how] += 1
            if match is not None:
                r.pop("prompt")
                p = {**match, "study": study, "source": f"recorded:{source.deployment}"}
                prompts.setdefault(p["prompt_id"], p)
                r.update(prompt_id=p["prompt_id"], topic=p["topic"], topic_group=p["topic_group"],
                         question_id=p["question_id"], language=p["language"], template_id=p["template_id"],
                         system_prompt_id=p["system_prompt_id"])
                continue
        qid = r["question_id"] or "q-" + hashlib.sha256(r["prompt"].encode()).hexdigest()[:12]
        p = prompt_row(
            study=study,
            source=f"recorded:{source.deployment}",
            topic=r["topic"],
            topic_group=r["topic_group"],
            question_id=qid,
            language=r["language"],
            template_id="recorded",
            system_prompt_id="unknown",
            system_prompt=None,
            prompt_text=r.pop("prompt"),
        )
        prompts.setdefault(p["prompt_id"], p)
        r["prompt_id"] = p["prompt_id"]
        r["question_id"] = qid
        r["template_id"] = "recorded"
        r["system_prompt_id"] = "unknown"
    if index is not None:
        log.info("recorded %s: %d of %d rows paired with catalog prompts (%d by ids, %d by text)%s",
                 source.deployment, paired["ids"] + paired["text"], len(rows), paired["ids"], paired["text"],
                 f"; {paired['ambiguous']} matched several variants and stay unpaired" if paired["ambiguous"] else "")
    seen: dict[tuple[str, str], int] = {}
    for r in rows:  # reps not given: numbered per model and prompt variant, in file order
        if r["rep"] is None:
            key = (r["model"], r["prompt_id"])
            r["rep"] = seen.get(key, 0)
            seen[key] = r["rep"] + 1
    keys = [(r["model"], r["prompt_id"], r["rep"]) for r in rows]
    if len(set(keys)) != len(keys):
        dupes = len(keys) - len(set(keys))
        raise UserError(f"{path}: {dupes} duplicate (model, prompt, rep) rows: give each repeat its own 'rep'")
    return pa.Table.from_pylist(list(prompts.values()), schema=PROMPT_SCHEMA), rows
