"""A Hugging Face folder is checked before the builder runs: what is missing is named at
once instead of in a builder traceback minutes later."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hub.registry.convert import ConversionError, QuantOptions, convert_hf_folder
from hub.registry.hf_folder import hf_folder_problem


def hf_folder(tmp_path: Path, *files: str) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    for name in files:
        (folder / name).write_bytes(b"x")
    return folder


def test_a_folder_without_a_tokenizer_is_refused_before_converting(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path, "model.safetensors")
    started = time.monotonic()
    with pytest.raises(ConversionError, match=r"has no tokenizer: it needs tokenizer\.json"):
        convert_hf_folder(folder, tmp_path / "out", QuantOptions())
    assert time.monotonic() - started < 2  # the builder never started
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no staging left either


def test_a_folder_without_weights_is_refused(tmp_path: Path) -> None:
    problem = hf_folder_problem(hf_folder(tmp_path, "tokenizer.json"))
    assert problem is not None and "holds no weights" in problem


@pytest.mark.parametrize(
    "files",
    [
        ("model.safetensors", "tokenizer.json"),
        ("model-00001-of-00002.safetensors", "tokenizer.model"),  # SentencePiece: installed
        ("pytorch_model.bin", "vocab.json", "merges.txt"),
        ("model.safetensors", "qwen.tiktoken"),  # tiktoken: installed with the hub extra
    ],
)
def test_folders_that_convert_pass(tmp_path: Path, files: tuple[str, ...]) -> None:
    assert hf_folder_problem(hf_folder(tmp_path, *files)) is None
