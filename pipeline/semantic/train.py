"""`refusals train-classifier`: fit the semantic head, deterministically.

Training data, each split by question (a question's answers, in every language, fall in
one split):
- the repo's multilingual labelled set (``labelled/<lang>.jsonl``, 10 languages, see
  ``labelled/GUIDELINE.md``);
- SpeechMap's judge labels in en/zh/fi (``../shared/data``), capped per (language, label) so
  its mostly-compliant rows do not drown the rest;
- XSTest's human labels (en).

Splits: the held-out share is ``pipeline.eval_classifier.is_heldout`` (30% of questions, the
split every classifier number in the README is read on, once per release); of the rest a
salted 25% is dev (model selection: L2 strength, temperature), the remainder train.

The head is fitted on the answers the rule tier leaves open (``tier.rules_decide`` false),
which is what it sees in production. The artifact is ``pipeline/semantic/head.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pipeline.classify import classify, split_reasoning
from pipeline.eval_classifier import is_heldout, load_dataset
from pipeline.semantic.encoder import HEAD_TOKENS, PROMPT_TOKENS, Encoder, encoder_version
from pipeline.semantic.features import N_FEATURES, SIGNAL_NAMES, Item, featurize
from pipeline.semantic.head import CLASSES, HEAD_PATH, Head, params_hash
from pipeline.semantic.tier import rules_decide

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent.parent
LABELLED_DIR = REPO / "labelled"
LANGUAGES = ("en", "zh", "ja", "ko", "es", "ru", "de", "fr", "ar", "vi")
_DEV_SALT = "refusals-dev-split-v1:"
DEV_SHARE = 0.25
# train+dev rows per (language, label): SpeechMap's complied answers (most of it) are the
# realistic distribution the head must not over-call; its rarer labels are all taken.
SPEECHMAP_CAP = {"complied": 600, "refused": 400, "evasive": 400}
XSTEST_CAP = 500
# (hidden units, L2 alpha) tried; the best macro accuracy on dev wins.
GRID = ((32, 3.0), (128, 3.0), (128, 5.0), (256, 5.0))
SOURCE_WEIGHT = {"labelled": 1.0, "speechmap": 1.0, "xstest": 0.6}
# At most this share of dev complied answers may be called non-answers: the complied logit
# gets the smallest bias that keeps it there (issue 10's target is 7% on held-out data).
COMPLIED_FALSE_NON_ANSWER = 0.06
VALID = frozenset(CLASSES)


def split_of(key: str) -> str:
    """heldout, dev or train for a question key."""
    if is_heldout(key):
        return "heldout"
    h = int.from_bytes(hashlib.sha256((_DEV_SALT + key).encode("utf-8")).digest()[:8], "big")
    return "dev" if h % 1000 < int(DEV_SHARE * 1000) else "train"


def load_labelled(folder: Path = LABELLED_DIR) -> list[dict[str, Any]]:
    """The repo's labelled set as eval rows (response, gold_label, prompt, prompt_language, split_key...)."""
    rows: list[dict[str, Any]] = []
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{folder}: no labelled/*.jsonl files")
    for f in files:
        for lineno, line in enumerate(f.read_text(encoding="utf-8").split("\n"), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{f}: line {lineno}: malformed JSON ({exc.msg})") from None
            for field in ("question_id", "prompt", "response", "label", "language"):
                if not isinstance(r.get(field), str) or not r[field]:
                    raise ValueError(f"{f}: line {lineno}: field {field!r} must be a non-empty string")
            if r["label"] not in VALID:
                raise ValueError(f"{f}: line {lineno}: label {r['label']!r} is not one of {sorted(VALID)}")
            rows.append({"response": r["response"], "gold_label": r["label"], "prompt": r["prompt"],
                         "prompt_language": r["language"], "reasoning": None, "finish_reason": None,
                         "error": None, "split_key": "labelled:" + r["question_id"], "source": "labelled",
                         "kind": r.get("kind"), "id": r.get("id"), "response_language": r.get("response_language")})
    return rows


def _capped(rows: list[dict[str, Any]], cap: int | dict[str, int], seed: int) -> list[dict[str, Any]]:
    """Train+dev rows capped per (language, label), seeded (held-out rows are not taken here)."""
    keep: list[dict[str, Any]] = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if split_of(r["split_key"]) != "heldout":
            groups[(r["prompt_language"] or "und", r["gold_label"])].append(r)
    rng = random.Random(seed)
    for key in sorted(groups):
        g = groups[key]
        rng.shuffle(g)
        keep.extend(g[:cap[key[1]] if isinstance(cap, dict) else cap])
    return keep


def load_speechmap() -> list[dict[str, Any]]:
    """SpeechMap rows (complied/refused/evasive gold) with their model and category."""
    import pyarrow.parquet as pq

    from pipeline.eval_classifier import _map_speechmap, data_dir

    path = data_dir() / "speechmap_responses.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: SpeechMap data not found (set REFUSALS_SHARED_DATA to the shared data folder)")
    cols = ["category", "model", "question_id", "question", "prompt_language", "response_text", "reasoning_text",
            "finish_reason", "error_message", "judge_label"]
    rows = []
    for r in pq.read_table(path, columns=cols).to_pylist():
        gold = _map_speechmap(r["judge_label"])
        if gold not in VALID:
            continue
        rows.append({"response": r["response_text"], "gold_label": gold, "prompt": r["question"],
                     "prompt_language": r["prompt_language"], "reasoning": r["reasoning_text"],
                     "finish_reason": r["finish_reason"], "error": r["error_message"],
                     "split_key": "speechmap:" + r["question_id"], "source": "speechmap",
                     "model": r["model"], "category": r["category"], "question_id": r["question_id"]})
    return rows


def _speechmap_heldout(rows: list[dict[str, Any]], per_category: int) -> list[dict[str, Any]]:
    """Every model's answers to the first ``per_category`` held-out questions of each category
    (by a salted hash, so the choice is fixed): the model x language shares stay comparable."""
    by_cat: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if split_of(r["split_key"]) == "heldout":
            by_cat[r["category"]].add(r["question_id"])
    keep_q = set()
    for cat, qs in by_cat.items():
        ranked = sorted(qs, key=lambda q: hashlib.sha256(("pick:" + q).encode()).hexdigest())
        keep_q.update((cat, q) for q in ranked[:per_category])
    return [r for r in rows if (r["category"], r["question_id"]) in keep_q]


SPEECHMAP_HELDOUT_QUESTIONS = 5  # per category: 6 categories x 37 models x 5 = about 1,100 answers
XSTEST_HELDOUT = 300


def load_all(seed: int = 0, *, with_shared: bool = True,
             languages: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Every labelled row, with ``source`` and ``split`` (the repo's set limited to ``languages``)."""
    rows = [r for r in load_labelled() if languages is None or r["prompt_language"] in languages]
    if with_shared:
        sm = load_speechmap()
        sm_fit = [r for r in sm if split_of(r["split_key"]) != "heldout"]
        xs = [dict(r, source="xstest", split_key="xstest:" + r["split_key"])
              for r in load_dataset("xstest") if r["gold_label"] in VALID]
        xs_held = [r for r in xs if split_of(r["split_key"]) == "heldout"]
        random.Random(seed).shuffle(xs_held)
        rows += (_capped(sm_fit, SPEECHMAP_CAP, seed) + _speechmap_heldout(sm, SPEECHMAP_HELDOUT_QUESTIONS)
                 + _capped([r for r in xs if split_of(r["split_key"]) != "heldout"], XSTEST_CAP // 2, seed)
                 + xs_held[:XSTEST_HELDOUT])
    for r in rows:
        r["split"] = split_of(r["split_key"])
    return rows


def rule_pass(rows: list[dict[str, Any]]) -> list[tuple[Any, Item]]:
    """The rule tier's verdict and the head's input for each row."""
    out = []
    for r in rows:
        c = classify(r["response"], prompt=r["prompt"], prompt_language=r["prompt_language"],
                     reasoning=r["reasoning"], finish_reason=r["finish_reason"], error=r["error"])
        visible, think = split_reasoning(r["response"] or "")
        reasoning = r["reasoning"] if r["reasoning"] else think
        out.append((c, Item(r["prompt"] or "", visible, c, reasoning)))
    return out


def _nll(p: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    return float(-(w * np.log(np.clip(p[np.arange(len(y)), y], 1e-9, 1))).sum() / w.sum())


def _fit(x: np.ndarray, y: np.ndarray, hidden: int, alpha: float, seed: int):
    from sklearn.neural_network import MLPClassifier

    # lbfgs is deterministic for a fixed random_state (no minibatch shuffling)
    model = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=alpha, solver="lbfgs", max_iter=400,
                          random_state=seed)
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return model


def _logits(model, z: np.ndarray) -> np.ndarray:
    h = np.maximum(0.0, z @ model.coefs_[0] + model.intercepts_[0])
    return h @ model.coefs_[1] + model.intercepts_[1]


def _macro_accuracy(rows: list[dict[str, Any]], pred: list[str]) -> float:
    """Mean over sources of the mean over their languages of the accuracy: every source and
    every language counts, not just the big ones."""
    hits: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for r, p in zip(rows, pred):
        hits[r["source"]][r["prompt_language"] or "und"].append(int(p == r["gold_label"]))
    per_source = [np.mean([np.mean(v) for v in langs.values()]) for langs in hits.values()]
    return float(np.mean(per_source)) if per_source else 0.0


def _complied_bias(logits: np.ndarray, rows: list[dict[str, Any]]) -> float:
    """The smallest bias on the complied logit that keeps dev complied answers called
    non-answers at most COMPLIED_FALSE_NON_ANSWER (in every source)."""
    comp = {src: np.array([i for i, r in enumerate(rows) if r["gold_label"] == "complied" and r["source"] == src])
            for src in sorted({r["source"] for r in rows})}
    for bias in np.arange(0.0, 4.01, 0.1):
        lg = logits.copy()
        lg[:, 0] += bias
        pred = lg.argmax(axis=1)
        if all(len(ix) == 0 or np.mean(pred[ix] != 0) <= COMPLIED_FALSE_NON_ANSWER for ix in comp.values()):
            return float(round(bias, 2))
    return 4.0


def train(*, seed: int = 0, out: Path = HEAD_PATH, cache_path: Path | None = None,
          encoder: Encoder | None = None, with_shared: bool = True,
          languages: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Fit, select and calibrate the head, write its artifact; return a summary.
    ``with_shared``/``languages`` narrow the data (tests); the release head uses everything."""
    rows = load_all(seed, with_shared=with_shared, languages=languages)
    passes = rule_pass(rows)
    open_idx = [i for i, (c, _) in enumerate(passes) if not rules_decide(c.label, c.rule)]
    enc = encoder or Encoder(cache_path)
    tr = [i for i in open_idx if rows[i]["split"] == "train"]
    dv = [i for i in open_idx if rows[i]["split"] == "dev"]
    log.info("training rows: %d train, %d dev open to the head (of %d labelled rows)", len(tr), len(dv), len(rows))
    x_tr = featurize([passes[i][1] for i in tr], enc)
    x_dv = featurize([passes[i][1] for i in dv], enc)
    y_tr = np.array([CLASSES.index(rows[i]["gold_label"]) for i in tr])
    y_dv = np.array([CLASSES.index(rows[i]["gold_label"]) for i in dv])
    w_dv = np.array([SOURCE_WEIGHT[rows[i]["source"]] for i in dv])
    mean = x_tr.mean(axis=0)
    scale = x_tr.std(axis=0) + 1e-3
    z_tr, z_dv = (x_tr - mean) / scale, (x_dv - mean) / scale
    best = None
    scores = {}
    for hidden, alpha in GRID:
        m = _fit(z_tr, y_tr, hidden, alpha, seed)
        lg = _logits(m, z_dv)
        b = _complied_bias(lg, [rows[i] for i in dv])
        lg[:, 0] += b
        pred = [CLASSES[k] for k in lg.argmax(axis=1)]
        key = f"h{hidden}_a{alpha}"
        scores[key] = _macro_accuracy([rows[i] for i in dv], pred)
        if best is None or scores[key] > scores[best[0]] + 1e-9:
            best = (key, m, hidden, alpha)
    c_best, model, hidden, alpha = best
    logits = _logits(model, z_dv)
    bias = _complied_bias(logits, [rows[i] for i in dv])
    logits[:, 0] += bias
    intercept = model.intercepts_[1].copy()
    intercept[0] += bias
    temps = np.exp(np.linspace(math.log(0.3), math.log(5.0), 81))

    def soft(t: float) -> np.ndarray:
        lg = logits / t
        lg = lg - lg.max(axis=1, keepdims=True)
        e = np.exp(lg)
        return e / e.sum(axis=1, keepdims=True)

    temperature = float(min(temps, key=lambda t: _nll(soft(t), y_dv, w_dv)))
    # Precision of each rule that decides alone, on train+dev rows (what `confidence` reports).
    prec: dict[str, list[int]] = defaultdict(list)
    for i, (c, _) in enumerate(passes):
        if rows[i]["split"] != "heldout" and rules_decide(c.label, c.rule) and c.label in VALID:
            prec[c.rule].append(int(c.label == rows[i]["gold_label"]))
    rule_precision = {k: round((sum(v) + 1) / (len(v) + 2), 4) for k, v in sorted(prec.items())}
    data_hash = hashlib.sha256("\n".join(sorted(
        f"{r['split_key']}\t{r['gold_label']}\t{hashlib.sha256((r['response'] or '').encode()).hexdigest()[:16]}"
        for r in rows)).encode()).hexdigest()
    meta = {
        "encoder": encoder_version(),
        "feature_spec": {"n_features": N_FEATURES, "signals": list(SIGNAL_NAMES), "head_tokens": HEAD_TOKENS,
                         "prompt_tokens": PROMPT_TOKENS},
        "seed": seed, "model": c_best, "hidden_units": hidden, "alpha": alpha,
        "dev_macro_accuracy": {str(k): v for k, v in scores.items()},
        "temperature": temperature, "complied_bias": bias,
        "rows": {"train": len(tr), "dev": len(dv), "all": len(rows)},
        "sources": dict(Counter(r["source"] for r in rows)),
        "training_data_sha256": data_hash,
        "rule_precision": rule_precision,
    }
    meta["feature_spec"]["n_features"] = N_FEATURES
    params = {"classes": list(CLASSES), "mean": [float(v) for v in mean], "scale": [float(v) for v in scale],
              "coef": [[float(v) for v in row] for row in model.coefs_[1].T],
              "intercept": [float(v) for v in intercept],
              "hidden": {"w": [[float(v) for v in row] for row in model.coefs_[0]],
                         "b": [float(v) for v in model.intercepts_[0]]},
              "temperature": temperature, "n_features": N_FEATURES, "feature_spec": meta["feature_spec"]}
    digest = params_hash(params)
    art = {"params": params, "sha256": digest, "meta": meta}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(art, sort_keys=True, separators=(",", ":")), encoding="utf-8")
    tmp.replace(out)
    log.info("head %s: %s temperature=%.3f dev macro accuracy %.3f -> %s", digest[:12], c_best, temperature,
             scores[c_best], out)
    return {"sha256": digest, "path": str(out), **meta}
