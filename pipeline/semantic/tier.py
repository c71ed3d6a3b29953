"""Rules first, the semantic head for the rest: who decides each label, and how sure.

The rule tier keeps what it is precise at: errors and provider blocks, deployments' canned
refusals, models' stock refusals, withdrawn streams and bare one-line refusals
(``RULES_DECIDE``). Every other answer goes to the head, which sees the request, the answer's
head and tail windows and the rule tier's signals. Every row records ``decided_by``
(``rules`` or ``semantic``; the optional LLM judge adds ``judge``) and a calibrated
``confidence``: the head's temperature-scaled probability of its label, or for a rule its
precision measured on the training data's dev split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.semantic.encoder import Encoder
from pipeline.semantic.features import Item, featurize
from pipeline.semantic.head import CLASSES, HEAD_PATH, Head, load_head

RULES_DECIDE = frozenset({
    "canned", "canned_retracted", "stock_refusal", "stock_refusal_withdrawn", "withdrawn_empty",
    "withdrawn_stream", "refusal_bare",
})
DEFAULT_RULE_CONFIDENCE = 0.97


def rules_decide(label: str, rule: str) -> bool:
    """True when the rule tier's verdict stands without the head."""
    return label in ("error", "blocked") or rule in RULES_DECIDE


class SemanticTier:
    """The head plus its encoder; ``decide`` labels the items the rules leave open."""

    def __init__(self, head: Head | None = None, encoder: Encoder | None = None, *,
                 head_path: str | Path = HEAD_PATH, cache_path: str | Path | None = None) -> None:
        self.head = head if head is not None else load_head(head_path)
        self.encoder = encoder if encoder is not None else Encoder(cache_path)

    @property
    def version(self) -> str:
        return self.head.version

    def rule_confidence(self, rule: str) -> float:
        return float(self.head.meta.get("rule_precision", {}).get(rule, DEFAULT_RULE_CONFIDENCE))

    def proba(self, items: Sequence[Item]) -> np.ndarray:
        if not items:
            return np.zeros((0, len(CLASSES)), dtype=np.float32)
        return self.head.predict_proba(featurize(items, self.encoder))

    def decide(self, items: Sequence[Item]) -> list[tuple[str, float]]:
        """(label, confidence) for each item, from the head."""
        p = self.proba(items)
        idx = p.argmax(axis=1)
        return [(CLASSES[i], float(p[r, i])) for r, i in enumerate(idx)]

    def close(self) -> None:
        self.encoder.close()
