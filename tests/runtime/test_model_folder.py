"""A broken model folder is refused with the file and the problem named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_agent.runtime import ModelFolderError, inspect_model_folder


@pytest.fixture
def folder(tiny_model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    return copy


def edit_config(folder: Path, change) -> None:  # type: ignore[no-untyped-def]
    path = folder / "genai_config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def test_valid_folder_reports_what_the_runtime_needs(folder: Path) -> None:
    info = inspect_model_folder(folder)
    assert info.context_length == 2048
    assert info.vocab_size == 1024
    assert info.has_chat_template
    assert info.weight_bytes > 100_000


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="no such folder"):
        inspect_model_folder(tmp_path / "nope")


def test_file_instead_of_folder(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ModelFolderError, match="not a folder"):
        inspect_model_folder(tmp_path / "model.onnx")


def test_missing_config(folder: Path) -> None:
    (folder / "genai_config.json").unlink()
    with pytest.raises(ModelFolderError, match=r"genai_config\.json: missing"):
        inspect_model_folder(folder)


def test_malformed_json_names_the_file(folder: Path) -> None:
    (folder / "genai_config.json").write_text('{"model": ')
    with pytest.raises(ModelFolderError, match=r"genai_config\.json: malformed JSON"):
        inspect_model_folder(folder)


def test_missing_key_is_named(folder: Path) -> None:
    edit_config(folder, lambda c: c["model"].pop("context_length"))
    with pytest.raises(ModelFolderError, match=r"'model\.context_length' is missing"):
        inspect_model_folder(folder)


def test_wrong_type_is_named(folder: Path) -> None:
    edit_config(folder, lambda c: c["model"].update(vocab_size="big"))
    with pytest.raises(ModelFolderError, match=r"'model\.vocab_size' must be int, not str"):
        inspect_model_folder(folder)


def test_missing_onnx_file(folder: Path) -> None:
    (folder / "model.onnx").unlink()
    with pytest.raises(ModelFolderError, match=r"model\.onnx: missing"):
        inspect_model_folder(folder)


def test_onnx_path_outside_the_folder_is_refused(folder: Path) -> None:
    edit_config(folder, lambda c: c["model"]["decoder"].update(filename="../../etc/passwd"))
    with pytest.raises(ModelFolderError, match="outside the model folder"):
        inspect_model_folder(folder)


def test_missing_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelFolderError, match="no tokenizer"):
        inspect_model_folder(folder)
