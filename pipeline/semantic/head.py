"""The semantic head: a multinomial logistic regression over pipeline.semantic.features,
stored as one JSON artifact (``head.json`` beside this file) whose content hash is part of
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
    """Standardise, linear layer, temperature-scaled softmax."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # classes x features
    intercept: np.ndarray
    temperature: float
    meta: dict[str, Any]
    digest: str

    @property
    def version(self) -> str:
        return f"head-{self.digest[:12]}"

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.scale
        logits = (z @ self.coef.T + self.intercept) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def to_artifact(self) -> dict[str, Any]:
        return {"params": self.params(), "sha256": self.digest, "meta": self.meta}

    def params(self) -> dict[str, Any]:
        return {"classes": list(CLASSES), "mean": [float(v) for v in self.mean],
                "scale": [float(v) for v in self.scale], "coef": [[float(v) for v in row] for row in self.coef],
                "intercept": [float(v) for v in self.intercept], "temperature": float(self.temperature),
                "n_features": int(self.mean.shape[0]), "feature_spec": self.meta.get("feature_spec", {})}


def from_params(params: dict[str, Any], meta: dict[str, Any]) -> Head:
    return Head(np.asarray(params["mean"], np.float32), np.asarray(params["scale"], np.float32),
                np.asarray(params["coef"], np.float32), np.asarray(params["intercept"], np.float32),
                float(params["temperature"]), meta, params_hash(params))


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
