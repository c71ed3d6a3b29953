"""Remove secrets (API keys, bearer tokens, auth headers) from provider text before it is stored or logged."""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"

_PATTERNS = [
    # header values: Authorization: ..., "authorization": "..."
    re.compile(r'''(?i)(["']?authorization["']?\s*[:=]\s*["']?)[^"'\r\n,}]+'''),
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]+"),
    # api_key=..., "api_key": "...", api-key, apikey
    re.compile(r'''(?i)(["']?\bapi[-_]?key["']?\s*[:=]\s*["']?)[^"'\s&,}]+'''),
    # generic long tokens after key/token/secret words
    re.compile(r'''(?i)(\b\w*(?:key|token|secret)["']?\s*[:=]\s*["']?)[A-Za-z0-9+/_=-]{16,}'''),
    # common key shapes
    re.compile(r"\bsk-proj-[A-Za-z0-9_-]+"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{14,}"),
    re.compile(r"\bghp_[A-Za-z0-9]{10,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"\bxox[bp]-[A-Za-z0-9-]+"),
]


def scrub(text: str | None, secrets: Iterable[str | None] = ()) -> str | None:
    """``text`` with the given secret values and anything that looks like a credential replaced."""
    if not text:
        return text
    for s in secrets:
        if s:
            text = text.replace(s, REDACTED)
    for pat in _PATTERNS:
        if pat.groups:
            text = pat.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = pat.sub(REDACTED, text)
    return text
