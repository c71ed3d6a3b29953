"""Response-language detection: pycld2 plus CJK script ratios.

cld2 is fast and ships its model inside the wheel, but it confuses Japanese
written mostly in kanji with Chinese and reports several Chinese variants, so
Han/kana/Hangul counts decide between zh, ja and ko before cld2 is asked.
Only the first ``MAX_CHARS`` characters of the visible text are inspected:
that is enough to identify a language and keeps detection well under a
millisecond for long answers.
"""

from __future__ import annotations

import re

import pycld2

__all__ = ["detect_language", "language_match", "normalize_language", "strip_reasoning_markup", "UNDETERMINED"]

UNDETERMINED = "und"
MAX_CHARS = 2000
_SCRIPT_CHARS = 600
# Fewer letters than this and no CJK: detectors guess, so we say "und".
_MIN_LETTERS = 8

_THINK_BLOCK = re.compile(r"(?:<think>|◁think▷).*?(?:</think>|◁/think▷)", re.S)
_THINK_OPEN = re.compile(r"<think>|◁think▷")
_THINK_CLOSE = re.compile(r"</think>|◁/think▷")
_CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)", re.S)
_URL = re.compile(r"https?://\S+|www\.\S+")
_LETTER = re.compile(r"[^\W\d_]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_CJK_ANY = re.compile(r"[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")
# Surrogates or other unencodable code points make cld2 raise.
_BAD_CODEPOINTS = re.compile(r"[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# cld2 still emits a few retired ISO 639 codes.
_LEGACY_CODES = {"iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro", "sh": "sr", "tl": "tl"}


def normalize_language(code: str | None) -> str | None:
    """Reduce a language tag (``zh-Hant``, ``pt_BR``, ``EN``) to its ISO 639-1 base, or None."""
    if code is None:
        return None
    base = str(code).strip().replace("_", "-").split("-", 1)[0].lower()
    if not base or base in ("und", "un", "xx", "zxx", "unknown"):
        return None
    return _LEGACY_CODES.get(base, base)


def strip_reasoning_markup(text: str) -> str:
    """Remove ``<think>`` blocks (closed, unclosed-leading, or closed without an opener)."""
    if "think" not in text:
        return text
    text = _THINK_BLOCK.sub(" ", text)
    close = _THINK_CLOSE.search(text)
    if close:  # reasoning whose opening tag was eaten by the chat template
        text = text[close.end():]
    opened = _THINK_OPEN.search(text)
    if opened and not text[: opened.start()].strip():
        return ""  # an unclosed leading think block: no visible answer yet
    return text


def detect_language(text: str | None) -> str:
    """Return the ISO 639-1 code of ``text``'s main language, or ``"und"`` when unknown."""
    if not text:
        return UNDETERMINED
    text = strip_reasoning_markup(text)
    sample = text[: MAX_CHARS * 2]
    if "```" in sample:
        sample = _CODE_BLOCK.sub(" ", sample)
    if "http" in sample or "www." in sample:
        sample = _URL.sub(" ", sample)
    sample = sample[:MAX_CHARS]

    # Script ratios need only a short prefix; counting is the costly part.
    head = sample[:_SCRIPT_CHARS]
    letters = len(_LETTER.findall(head))
    if letters == 0:
        return UNDETERMINED
    if _CJK_ANY.search(head):
        han = len(_HAN.findall(head))
        kana = len(_KANA.findall(head))
        hangul = len(_HANGUL.findall(head))
    else:
        han = kana = hangul = 0
    cjk = han + kana + hangul
    # A CJK character carries about a word, so even a 25% share of letters
    # means CJK dominates the text.
    if cjk >= 2 and cjk >= 0.25 * letters:
        if hangul >= 0.3 * cjk:
            return "ko"
        if kana >= 2 and kana >= 0.05 * cjk:
            return "ja"
        if han >= 0.5 * cjk:
            return "zh"
    if letters < _MIN_LETTERS:
        return UNDETERMINED

    try:
        reliable, _, details = pycld2.detect(sample)
    except pycld2.error:
        try:
            reliable, _, details = pycld2.detect(_BAD_CODEPOINTS.sub(" ", sample).encode("utf-8", "ignore").decode("utf-8"))
        except pycld2.error:
            return UNDETERMINED
    name, code, percent, _score = details[0]
    if code == "un":
        # Short texts often come back unknown; best-effort mode still guesses well.
        try:
            reliable, _, details = pycld2.detect(sample, bestEffort=True)
        except pycld2.error:
            return UNDETERMINED
        name, code, percent, _score = details[0]
        if code == "un":
            return _script_guess(head, letters)
    lang = normalize_language(code)
    if lang is None:
        return UNDETERMINED
    if lang in _NOT_RUSSIAN_LETTERS and _NOT_RUSSIAN_LETTERS[lang].search(head) and not _SOUTH_SLAVIC_ONLY.search(head):
        lang = "ru"  # short Russian comes back as Serbian or Bulgarian; letters those lack settle it
    # cld2 marks short texts unreliable even when right; trust a clear majority.
    if not reliable and percent < 60:
        return UNDETERMINED
    return lang


# Letters Russian uses that Serbian/Macedonian Cyrillic lack (Bulgarian lacks only ы, э, ё),
# and letters only those use.
_NOT_RUSSIAN_LETTERS = {
    "sr": re.compile(r"[ыэёйщъЫЭЁЙЩЪ]"),
    "mk": re.compile(r"[ыэёйщъЫЭЁЙЩЪ]"),
    "bg": re.compile(r"[ыэёЫЭЁ]"),
}
_SOUTH_SLAVIC_ONLY = re.compile(r"[ђјљњћџЂЈЉЊЋЏѓќѕЃЌЅ]")

# Last resort when cld2 gives up: a script used (almost) by one major language.
_SCRIPT_FALLBACK = [
    (re.compile(r"[\u0400-\u04ff]"), "ru"),
    (re.compile(r"[\u0600-\u06ff]"), "ar"),
    (re.compile(r"[\u0590-\u05ff]"), "he"),
    (re.compile(r"[\u0370-\u03ff]"), "el"),
    (re.compile(r"[\u0e00-\u0e7f]"), "th"),
    (re.compile(r"[\u0900-\u097f]"), "hi"),
]


def _script_guess(head: str, letters: int) -> str:
    for pattern, lang in _SCRIPT_FALLBACK:
        if len(pattern.findall(head)) >= 0.6 * letters:
            return lang
    return UNDETERMINED


def language_match(prompt_language: str | None, response_language: str | None) -> bool | None:
    """True/False when both languages are known, None when either is missing or ``und``."""
    a = normalize_language(prompt_language)
    b = normalize_language(response_language)
    if a is None or b is None:
        return None
    return a == b
