"""Untrusted text made inert in Markdown (report.md, validation.md).

Model names, deployments, topics, languages, run ids, study names, responses and error texts
come from study files, recorded files and model output: any of them may carry Markdown or HTML.
`inline` turns one such value into text that every CommonMark/GFM renderer shows as written:

- one line: every run of whitespace (newlines, U+2028, tabs) becomes one space, control
  characters and bidirectional overrides are dropped, so a value can neither start a block nor end a table row;
- HTML is entity-escaped (`<`, `>`, `&`), so there is no raw HTML and no `<http://…>` autolink;
- the characters of inline syntax are backslash-escaped: `\\`, backticks, `*`, `_`, `~`, `$`,
  `[`, `]`, `!` and `|`, so there is no link, image, code span, emphasis, math or table cell
  boundary (`\\|` is GFM's escape for a pipe inside a cell);
- bare URLs and domains are broken up for autolinking renderers (GFM's extended autolinks,
  markdown-it's linkify): the `:` of `scheme:` and a `.` between two word characters are
  escaped, which renders the same text but is never recognised as a link.

`code` is the other form, for identifiers and messages that read better verbatim (paths,
expectation names, `column=value`): a code span, whose content no renderer interprets, fenced
with more backticks than the text holds. It is not for table cells (a GFM table splits cells on
`|` even inside code spans).

The escaping is applied once, after cutting to `limit` characters (so an escape or entity is
never cut in half), and a viewer shows the original text back.
"""

from __future__ import annotations

import html
import re
import unicodedata

_SYNTAX = re.compile(r"([\\`*_~$\[\]!|])")
_SCHEME = re.compile(r"(?<=[A-Za-z])(:)(?=\S)")  # http: javascript: data: mailto: …
_DOT = re.compile(r"(?<=\w)\.(?=[^\W\d_])")  # evil.com, www.x.org, x.png (not 0.05)


# bidirectional overrides and isolates: they reorder what a reader sees (joiners are kept)
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _printable(text: str) -> str:
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cc" and ch not in _BIDI)


def inline(value: object, limit: int = 300, none: str = "–") -> str:
    """`value` as one line of inert Markdown text, cut at `limit` characters (`none` if None)."""
    if value is None:
        return none
    text = " ".join(str(value).split())
    text = _printable(text)
    if len(text) > limit:
        text = text[:limit] + "…"
    text = html.escape(text, quote=False)
    text = _SYNTAX.sub(r"\\\1", text)
    text = _SCHEME.sub(r"\\\1", text)
    return _DOT.sub(r"\\.", text)


def code(value: object, limit: int = 300, none: str = "–") -> str:
    """`value` as an inert inline code span, one line, cut at `limit` characters."""
    if value is None:
        return none
    text = _printable(" ".join(str(value).split()))
    if len(text) > limit:
        text = text[:limit] + "…"
    if not text:
        return none
    fence = "`" * (1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    if text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.endswith(" ")):
        text = f" {text} "
    return f"{fence}{text}{fence}"


_IDENT = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?")


def word(value: object, limit: int = 300, none: str = "–") -> str:
    """An identifier such as `error_rates` as written when it is one (letters, digits, inner `_`
    and `-`, which no renderer treats as syntax), else escaped like `inline`."""
    if value is not None and _IDENT.fullmatch(str(value)) and len(str(value)) <= limit:
        return str(value)
    return inline(value, limit, none)
