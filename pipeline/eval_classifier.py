"""Measure the rule classifier against labelled data (XSTest, SpeechMap, or a file).

Splits: every dataset is divided deterministically by a hash of the
question/prompt id into a fixed 30% ``heldout`` part and a 70% ``dev`` part
(SpeechMap by ``question_id``, XSTest by ``id``, so all completions of one
prompt, from every model and in every language, stay on the same side).

**Rules may only be tuned by looking at ``dev``.** ``heldout`` is for
reporting; reading its rows to adjust patterns makes its numbers meaningless.

Label mappings:

- XSTest ``final_label``: ``1_full_compliance`` -> complied,
  ``2_full_refusal`` -> refused, ``3_partial_refusal`` -> refused. XSTest has
  no evasive class, so its headline number is binary comply-vs-refuse
  agreement in which our ``evasive`` counts as refused (XSTest's "partial
  refusal" and "offers only alternatives" are exactly what we call evasive or
  refused). The 3-way table is reported too.
- SpeechMap ``judge_label``: COMPLETE -> complied, EVASIVE -> evasive,
  DENIAL -> refused, ERROR_* -> error.

By default the evaluation is of the rule tier alone and needs no network. With
a judge (``evaluate(..., judge=JudgeConfig)``, or ``python -m
pipeline.eval_classifier --judge FILE``) the rows the rule tier is unsure of
are sent to the LLM judge as in the labels stage, and the report adds, per
language, how many were asked, how often the judge agreed with the rules, and
the agreement with the gold labels of the final (rule + judge) labels.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.classify import LABELS, classify

if TYPE_CHECKING:
    from pipeline.config import JudgeConfig
    from pipeline.judge import JudgeBackend

__all__ = ["EvalResult", "LanguageReport", "evaluate", "is_heldout", "data_dir", "load_dataset", "HELDOUT_SHARE",
           "load_judge_config", "main"]

HELDOUT_SHARE = 0.30
_SPLIT_SALT = "refusals-eval-split-v1:"

XSTEST_MAP = {"1_full_compliance": "complied", "2_full_refusal": "refused", "3_partial_refusal": "refused"}
SPEECHMAP_MAP = {"COMPLETE": "complied", "EVASIVE": "evasive", "DENIAL": "refused"}


def data_dir() -> Path:
    """The shared data folder: $REFUSALS_SHARED_DATA or <repo>/../shared/data."""
    env = os.environ.get("REFUSALS_SHARED_DATA")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    return repo.parent / "shared" / "data"


def is_heldout(key: str) -> bool:
    """True if the prompt/question id ``key`` belongs to the fixed 30% held-out part."""
    h = int.from_bytes(hashlib.sha256((_SPLIT_SALT + str(key)).encode("utf-8")).digest()[:8], "big")
    return h % 1000 < int(HELDOUT_SHARE * 1000)


def _map_speechmap(label: str | None) -> str | None:
    if label is None:
        return None
    if label.startswith("ERROR"):
        return "error"
    return SPEECHMAP_MAP.get(label)


def load_dataset(dataset: str, *, split: str = "all") -> list[dict[str, Any]]:
    """Rows with keys response, gold_label, prompt, prompt_language, reasoning, finish_reason, error, split_key."""
    if split not in ("all", "dev", "heldout"):
        raise ValueError(f"split must be all, dev or heldout, not {split!r}")
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    if dataset == "xstest":
        path = data_dir() / "xstest_v2_completions.parquet"
        _require(path)
        for r in pq.read_table(path).to_pylist():
            rows.append({"response": r["completion"], "gold_label": XSTEST_MAP[r["final_label"]], "prompt": r["prompt"],
                         "prompt_language": "en", "reasoning": None, "finish_reason": None, "error": None,
                         "split_key": r["id"]})
    elif dataset == "speechmap":
        path = data_dir() / "speechmap_responses.parquet"
        _require(path)
        cols = ["question_id", "question", "prompt_language", "response_text", "reasoning_text", "finish_reason",
                "error_message", "judge_label"]
        for r in pq.read_table(path, columns=cols).to_pylist():
            gold = _map_speechmap(r["judge_label"])
            if gold is None:
                continue
            rows.append({"response": r["response_text"], "gold_label": gold, "prompt": r["question"],
                         "prompt_language": r["prompt_language"], "reasoning": r["reasoning_text"],
                         "finish_reason": r["finish_reason"], "error": r["error_message"],
                         "split_key": r["question_id"]})
    else:
        rows = _load_path(Path(dataset))
    if split != "all":
        want = split == "heldout"
        rows = [r for r in rows if is_heldout(r["split_key"]) == want]
    return rows


def _require(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: labelled data not found (set REFUSALS_SHARED_DATA to the shared data folder)")


def _load_path(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: dataset file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        raw = pq.read_table(path).to_pylist()
    elif suffix == ".jsonl":
        raw = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        raw.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}: line {lineno}: malformed JSON ({exc.msg})") from None
    else:
        raise ValueError(f"{path}: unsupported dataset type; use xstest, speechmap, or a .parquet/.jsonl path")
    rows = []
    for i, r in enumerate(raw):
        for col in ("response", "gold_label"):
            if col not in r:
                raise ValueError(f"{path}: row {i + 1}: missing required column {col!r}")
        if r["gold_label"] not in LABELS:
            raise ValueError(f"{path}: row {i + 1}: gold_label {r['gold_label']!r} is not one of {LABELS}")
        key = r.get("question_id") or r.get("prompt_id") or r.get("id") or r.get("prompt") or str(i)
        rows.append({"response": r["response"], "gold_label": r["gold_label"], "prompt": r.get("prompt"),
                     "prompt_language": r.get("prompt_language"), "reasoning": r.get("reasoning"),
                     "finish_reason": r.get("finish_reason"), "error": r.get("error"), "split_key": str(key)})
    return rows


@dataclass
class LanguageReport:
    """Agreement statistics for one language (or ``all``)."""

    n: int
    accuracy: float
    per_label: dict[str, dict[str, float]]  # label -> precision, recall, f1, support
    confusion: dict[str, dict[str, int]]  # gold -> predicted -> count
    binary_agreement: float | None = None  # comply-vs-refuse (XSTest)
    unsure: int = 0  # rows the rule tier was unsure of
    judge: dict[str, Any] | None = None  # with a judge: asked, answered, agreement with rules, final accuracy

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"n": self.n, "accuracy": self.accuracy, "per_label": self.per_label, "confusion": self.confusion,
                "binary_agreement": self.binary_agreement, "unsure": self.unsure, "judge": self.judge}


@dataclass
class EvalResult:
    """Per-language agreement of the classifier with gold labels."""

    dataset: str
    split: str
    classifier: str
    languages: dict[str, LanguageReport] = field(default_factory=dict)  # includes "all"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"dataset": self.dataset, "split": self.split, "classifier": self.classifier,
                "languages": {k: v.to_dict() for k, v in self.languages.items()}}

    def to_text(self) -> str:
        """An aligned plain-text report."""
        lines = [f"classifier {self.classifier} on {self.dataset} (split: {self.split})", ""]
        for lang, rep in self.languages.items():
            head = f"language {lang}: n={rep.n}  accuracy (4-way)={rep.accuracy:.3f}"
            if rep.binary_agreement is not None:
                head += f"  comply-vs-refuse agreement={rep.binary_agreement:.3f}"
            head += f"  unsure={rep.unsure}"
            lines.append(head)
            if rep.judge is not None:
                j = rep.judge
                agree = "n/a" if j["agreement_with_rules"] is None else f"{j['agreement_with_rules']:.3f}"
                line = (f"  judge {j['judge_version']}: asked={j['asked']} answered={j['answered']} "
                        f"agreement with rules={agree}  final accuracy (4-way)={j['final_accuracy']:.3f}")
                if j.get("final_binary_agreement") is not None:
                    line += f"  final comply-vs-refuse={j['final_binary_agreement']:.3f}"
                lines.append(line)
            lines.append(f"  {'label':<10}{'precision':>10}{'recall':>9}{'f1':>8}{'support':>9}")
            for lab in LABELS:
                m = rep.per_label[lab]
                lines.append(f"  {lab:<10}{m['precision']:>10.3f}{m['recall']:>9.3f}{m['f1']:>8.3f}{int(m['support']):>9d}")
            lines.append("  confusion (rows gold, columns predicted):")
            lines.append("  " + f"{'':<10}" + "".join(f"{lab:>10}" for lab in LABELS))
            for g in LABELS:
                lines.append("  " + f"{g:<10}" + "".join(f"{rep.confusion[g][p]:>10d}" for p in LABELS))
            lines.append("")
        return "\n".join(lines).rstrip() + "\n"


def _report(pairs: list[tuple[str, str]], *, binary: bool) -> LanguageReport:
    confusion = {g: {p: 0 for p in LABELS} for g in LABELS}
    for g, p in pairs:
        confusion[g][p] += 1
    n = len(pairs)
    correct = sum(confusion[lab][lab] for lab in LABELS)
    per_label = {}
    for lab in LABELS:
        tp = confusion[lab][lab]
        pred = sum(confusion[g][lab] for g in LABELS)
        sup = sum(confusion[lab].values())
        prec = tp / pred if pred else 0.0
        rec = tp / sup if sup else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_label[lab] = {"precision": prec, "recall": rec, "f1": f1, "support": sup}
    bin_agree = None
    if binary:
        def side(label: str) -> str:
            return "complied" if label == "complied" else "refused"
        bin_agree = sum(side(g) == side(p) for g, p in pairs) / n if n else 0.0
    return LanguageReport(n, correct / n if n else 0.0, per_label, confusion, bin_agree)


def _classify_rows(rows: list[dict[str, Any]]):
    return [classify(r["response"], prompt=r["prompt"], prompt_language=r["prompt_language"],
                     reasoning=r["reasoning"], finish_reason=r["finish_reason"], error=r["error"]) for r in rows]


def predict(rows: list[dict[str, Any]]) -> list[str]:
    """Classifier labels for rows as returned by load_dataset."""
    return [c.label for c in _classify_rows(rows)]


def evaluate(dataset: str, *, split: str = "all", judge: "JudgeConfig | None" = None,
             backend: "JudgeBackend | None" = None) -> EvalResult:
    """Classify ``dataset`` (xstest, speechmap, or a .parquet/.jsonl path) and compare with its gold labels.

    With an enabled ``judge`` the unsure rows (at most ``judge.max_calls``) also go to the LLM
    judge (``backend`` replaces the configured client); the rule-tier numbers are unchanged and
    the judge's are added per language.
    """
    from pipeline.classify import CLASSIFIER_NAME, CLASSIFIER_VERSION

    rows = load_dataset(dataset, split=split)
    results = _classify_rows(rows)
    preds = [c.label for c in results]
    binary = dataset == "xstest"
    final: list[str] | None = None
    judged: list[str | None] = [None] * len(rows)
    version = None
    if judge is not None and judge.enabled:
        final, judged, version = _with_judge(rows, results, judge, backend)
    by_lang: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_lang.setdefault(r["prompt_language"] or "und", []).append(i)
    result = EvalResult(dataset, split, f"{CLASSIFIER_NAME} {CLASSIFIER_VERSION}")
    groups = {"all": list(range(len(rows)))}
    if len(by_lang) > 1:
        groups.update({lang: by_lang[lang] for lang in sorted(by_lang)})
    for name, idx in groups.items():
        rep = _report([(rows[i]["gold_label"], preds[i]) for i in idx], binary=binary)
        rep.unsure = sum(results[i].unsure for i in idx)
        if final is not None:
            asked = [i for i in idx if judged[i] != "not asked"]
            answered = [i for i in asked if judged[i] is not None]
            fin = _report([(rows[i]["gold_label"], final[i]) for i in idx], binary=binary)
            rep.judge = {
                "judge_version": version, "asked": len(asked), "answered": len(answered),
                "agreement_with_rules": (sum(judged[i] == preds[i] for i in answered) / len(answered)
                                         if answered else None),
                "judge_accuracy_on_answered": (sum(judged[i] == rows[i]["gold_label"] for i in answered)
                                               / len(answered) if answered else None),
                "rule_accuracy_on_answered": (sum(preds[i] == rows[i]["gold_label"] for i in answered)
                                              / len(answered) if answered else None),
                "final_accuracy": fin.accuracy, "final_binary_agreement": fin.binary_agreement,
            }
        result.languages[name] = rep
    return result


def _with_judge(rows: list[dict[str, Any]], results: list[Any], judge: "JudgeConfig",
                backend: "JudgeBackend | None") -> tuple[list[str], list[str | None], str]:
    """Final labels, the judge's label per row ("not asked", None for no usable label) and its version."""
    from pipeline.classify import split_reasoning
    from pipeline.judge import judge_version, make_backend, run_judge

    todo = [i for i, c in enumerate(results)
            if c.unsure and c.label != "error" and isinstance(rows[i]["response"], str)]
    if judge.max_calls is not None:
        todo = todo[: judge.max_calls]
    judged: list[str | None] = ["not asked"] * len(rows)
    final = [c.label for c in results]
    own = backend is None
    backend = backend or make_backend(judge)
    try:
        verdicts = run_judge([(rows[i]["prompt"], split_reasoning(rows[i]["response"])[0]) for i in todo],
                             judge, backend)
    finally:
        if own:
            backend.close()
    for i, v in zip(todo, verdicts):
        if v.skipped:  # the judge stopped answering: rule label, counted as not asked
            continue
        judged[i] = v.label
        if v.label is not None:
            final[i] = v.label
    return final, judged, judge_version(judge)


def load_judge_config(path: str | Path) -> "JudgeConfig":
    """A JudgeConfig from a YAML file: the judge's fields, or a study file with a ``judge:`` block."""
    import yaml
    from pydantic import ValidationError

    from pipeline.config import JudgeConfig
    from pipeline.errors import UserError

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: judge configuration not found")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and isinstance(data.get("judge"), dict):
        data = data["judge"]
    try:
        return JudgeConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{path}: not a judge configuration: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.eval_classifier``: like ``refusals eval-classifier``, plus ``--judge FILE``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pipeline.eval_classifier", description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="xstest", help="xstest, speechmap or a path")
    ap.add_argument("--split", choices=["all", "dev", "heldout"], default="all")
    ap.add_argument("--judge", default=None, help="YAML with a judge configuration (or a study with judge:)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    judge = load_judge_config(args.judge) if args.judge else None
    result = evaluate(args.dataset, split=args.split, judge=judge)
    print(json.dumps(result.to_dict(), indent=1, default=str) if args.json else result.to_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
