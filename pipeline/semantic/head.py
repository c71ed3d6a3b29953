"""The semantic head: a one-hidden-layer network (ReLU, softmax over the three labels) over
pipeline.semantic.features, fitted by scikit-learn and stored as one JSON artifact (``head.json`` beside this file) whose content hash is part of
the classifier version. Inference is numpy only."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HEAD_PATH = Path(__file__).resolve().parent / "head.json"
CONFUSION_PATH = Path(__file__).resolve().parent / "confusion.json"
CLASSES = ("complied", "refused", "evasive")


class ArtifactError(ValueError):
    """The head artifact is missing, unreadable or does not match this code."""


def params_hash(params: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of the artifact's parameters (its identity)."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


@dataclass
class Head:
    """Standardise, a ReLU hidden layer (if any), a linear layer, temperature-scaled softmax."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # classes x inputs of the last layer
    intercept: np.ndarray
    temperature: float
    meta: dict[str, Any]
    digest: str
    hidden_w: np.ndarray | None = None  # features x hidden
    hidden_b: np.ndarray | None = None

    @property
    def version(self) -> str:
        return f"head-{self.digest[:12]}"

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.scale
        if self.hidden_w is not None:
            z = np.maximum(0.0, z @ self.hidden_w + self.hidden_b)
        logits = (z @ self.coef.T + self.intercept) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)



def from_params(params: dict[str, Any], meta: dict[str, Any]) -> Head:
    hidden = params.get("hidden")
    return Head(np.asarray(params["mean"], np.float32), np.asarray(params["scale"], np.float32),
                np.asarray(params["coef"], np.float32), np.asarray(params["intercept"], np.float32),
                float(params["temperature"]), meta, params_hash(params),
                None if not hidden else np.asarray(hidden["w"], np.float32),
                None if not hidden else np.asarray(hidden["b"], np.float32))


def load_head(path: str | Path = HEAD_PATH) -> Head:
    """The head artifact at ``path``; a clear ArtifactError naming the file if it is unusable."""
    from pipeline.semantic.features import N_FEATURES

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: semantic head artifact not found; run `refusals train-classifier` "
                            "or set classifier: rules in the study")
    try:
        art = json.loads(path.read_text(encoding="utf-8"))
        params, digest, meta = art["params"], art["sha256"], art.get("meta", {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: semantic head artifact is corrupt ({type(exc).__name__}: {exc}); "
                            "run `refusals train-classifier` to rebuild it") from None
    try:
        actual = params_hash(params)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: semantic head artifact is corrupt ({exc})") from None
    if actual != digest:
        raise ArtifactError(f"{path}: semantic head artifact is corrupt (sha256 {actual[:12]} does not match "
                            f"the recorded {str(digest)[:12]}); run `refusals train-classifier` to rebuild it")
    if params.get("n_features") != N_FEATURES or list(params.get("classes", [])) != list(CLASSES):
        raise ArtifactError(f"{path}: semantic head artifact was trained for {params.get('n_features')} features, "
                            f"this code makes {N_FEATURES}; run `refusals train-classifier`")
    try:
        return from_params(params, meta)
    except (KeyError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{path}: semantic head artifact is corrupt ({exc})") from None
