"""Features of (request, answer) pairs for the semantic head.

Three groups, concatenated:
- the answer's head-window embedding and the request embedding multiplied elementwise with
  it (what the answer says about *this* request), 2 x 384;
- the request-head cosine;
- the rule tier's signals (its label and rule family, refusal phrases found, talking-point
  and deflection scores, length, script, reasoning flags): cheap, and precise where they fire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline import classify as C
from pipeline.semantic.encoder import DIM, PROMPT_TOKENS, Encoder, head_window

# Rule ids grouped into families (a one-hot each); anything else falls in "other".
RULE_FAMILIES = {
    "default_complied": "default",
    "refusal_short": "refusal", "refusal_head": "refusal", "refusal_bare": "refusal",
    "moralising_short": "moralising", "moralising_head": "moralising",
    "refusal_then_redirect": "redirect", "tail_refusal": "tail",
    "talking_points": "talking_points", "premise_denied": "talking_points", "official_opener": "talking_points",
    "premise_rejected": "talking_points", "framing_opener": "framing",
    "deflection_short": "deflection", "asks_clarification": "clarify", "too_short_for_request": "short",
    "degenerate": "degenerate",
}
FAMILIES = sorted(set(RULE_FAMILIES.values())) + ["other"]
RULE_LABELS = ("complied", "refused", "evasive")
SIGNAL_NAMES = (
    [f"rule_label={lab}" for lab in RULE_LABELS] + [f"family={f}" for f in FAMILIES]
    + ["refusal_phrase_head", "refusal_phrase_any", "tp_score", "soft_score", "log_chars", "short_80", "short_200",
       "wide_script", "language_mismatch", "has_reasoning", "refusal_in_reasoning", "retracted", "longform_request",
       "cos_q_head"]
)
N_FEATURES = 2 * DIM + len(SIGNAL_NAMES)


@dataclass
class Item:
    """One (request, visible answer) pair with the rule tier's verdict on it."""

    prompt: str
    visible: str
    rule: "C.Classification"
    reasoning: str | None = None


def rule_signals(item: Item) -> list[float]:
    """The rule-tier part of the features (without the two cosines)."""
    c = item.rule
    v = item.visible.strip()
    lang = c.response_language
    low = v[:C._TP_WINDOW].lower()
    fam = RULE_FAMILIES.get(c.rule, "other")
    n = len(v)
    wide = sum(1 for ch in v[:200] if "\u1100" <= ch <= "\ud7af") / max(1, min(n, 200))
    any_ref = C._refusal_re(lang).search(v[:3000].replace("’", "'")) is not None
    feats = [float(c.label == lab) for lab in RULE_LABELS] + [float(fam == f) for f in FAMILIES]
    feats += [
        float(C._find_refusal(v, lang) >= 0), float(any_ref),
        min(C._tp_score(low, lang), 8) / 8.0, min(C._soft_count(low[:800], lang), 4) / 4.0,
        math.log1p(n) / 10.0, float(n < 80), float(n < 200), wide,
        float(c.language_match is False), float(bool(item.reasoning and item.reasoning.strip())),
        float(c.refusal_in_reasoning), float(c.retracted),
        float(bool(item.prompt) and C._LONGFORM_PROMPT_RE.search(item.prompt or "") is not None),
    ]
    return feats


def featurize(items: Sequence[Item], encoder: Encoder) -> np.ndarray:
    """The feature matrix (len(items) x N_FEATURES), float32."""
    if not items:
        return np.zeros((0, N_FEATURES), dtype=np.float32)
    heads = [head_window(it.visible) or "." for it in items]
    prompts = [head_window(it.prompt or "", PROMPT_TOKENS) or "." for it in items]
    uniq_p = list(dict.fromkeys(prompts))
    qv = dict(zip(uniq_p, encoder.encode(uniq_p, "query")))
    hv = encoder.encode(heads, "passage")
    q = np.stack([qv[p] for p in prompts])
    cos_h = np.sum(q * hv, axis=1)
    sig = np.array([rule_signals(it) + [cos_h[i]] for i, it in enumerate(items)], dtype=np.float32)
    return np.hstack([hv, q * hv * 10.0, sig]).astype(np.float32)
