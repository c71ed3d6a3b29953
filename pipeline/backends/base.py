"""What every sampling backend takes and returns.

A backend turns `Request`s (one prompt variant, one repetition, one seed) into result
dicts with the columns of `RESULT_FIELDS`. It never drops a request: a request that fails
after its retries comes back with `error` set and no text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RESULT_FIELDS = (
    "prompt_id",
    "rep",
    "seed",
    "response_text",
    "reasoning_text",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "latency_s",
    "error",
    "streamed_text",
)


@dataclass(frozen=True)
class Request:
    prompt_id: str
    rep: int
    seed: int
    messages: list[dict[str, str]]


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float
    top_p: float
    max_tokens: int


_THINK = re.compile(r"^\s*<think>(.*?)(?:</think>|$)", re.DOTALL)


def split_reasoning(text: str | None) -> tuple[str | None, str | None]:
    """Split a leading `<think>…</think>` block from the visible answer.

    Returns (visible, reasoning); reasoning is None when there is no block, and "" when the
    block is empty (a suppressed reasoning, which the classifier flags).
    """
    if text is None:
        return None, None
    m = _THINK.match(text)
    if not m:
        return text, None
    return text[m.end() :].lstrip(), m.group(1).strip()


def error_result(req: Request, error: str) -> dict:
    """The row of a request that failed: kept, with the error text, never dropped."""
    return {
        "prompt_id": req.prompt_id,
        "rep": req.rep,
        "seed": req.seed,
        "response_text": None,
        "reasoning_text": None,
        "finish_reason": "error",
        "prompt_tokens": None,
        "completion_tokens": None,
        "latency_s": None,
        "error": error,
        "streamed_text": None,
    }
