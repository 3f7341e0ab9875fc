"""Check a Hugging Face model folder before the builder runs: a missing tokenizer or
tokenizer package otherwise ends minutes later in a long builder traceback."""

from __future__ import annotations

import importlib.util
from pathlib import Path

WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
# Tokenizer files, and the package that reads each format when tokenizer.json is absent.
FAST_TOKENIZER = "tokenizer.json"
SLOW_TOKENIZERS = {
    "tokenizer.model": "sentencepiece",  # Llama-2, Mistral, Gemma
    "*.tiktoken": "tiktoken",
}
BPE_FILES = ("vocab.json", "merges.txt")
FETCH_HINT = "download the model's tokenizer files with its weights"


def hf_folder_problem(folder: Path) -> str | None:
    """What keeps `folder` from converting, said before any slow work; None if nothing."""
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if not (folder / "config.json").is_file():
        return f"{folder} is not a Hugging Face model folder: no config.json"
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHTS):
        return (
            f"{folder} holds no weights (model.safetensors or pytorch_model.bin): "
            "download the model's weight files too"
        )
    if (folder / FAST_TOKENIZER).is_file():
        return None  # read by `tokenizers`, which the hub always has
    for pattern, package in SLOW_TOKENIZERS.items():
        found = next(folder.glob(pattern), None)
        if found is None:
            continue
        if importlib.util.find_spec(package) is None:
            return (
                f"{found.name} in {folder} is a {package} tokenizer and the {package} package "
                f"is not installed: pip install {package} (the hub extra, "
                "pip install 'edge-fleet[hub]', includes it)"
            )
        return None
    if all((folder / name).is_file() for name in BPE_FILES):
        return None
    return (
        f"{folder} has no tokenizer: it needs {FAST_TOKENIZER}, or tokenizer.model "
        f"(SentencePiece), or vocab.json and merges.txt; {FETCH_HINT}"
    )
