"""`edge-hub`: repository, import (from Hugging Face and ONNX folders), list, revoke, keys."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hub import db
from hub.cli import app
from hub.fleet import registry
from hub.registry import synthetic
from hub.registry.repository import ReleaseRepository

runner = CliRunner()


def hub(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def import_model(
    repo_dir: Path, source: str, name: str, version: str, *extra: str
) -> tuple[int, str, str]:
    return hub(
        "model",
        "import",
        source,
        "--name",
        name,
        "--version",
        version,
        "--repo",
        str(repo_dir),
        *extra,
    )


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    code, out, err = hub("repo", "init", "--repo", str(tmp_path / "repo"))
    assert code == 0, err
    assert "devices pin this root" in out
    assert (tmp_path / "keys" / "root-keys").is_dir()  # beside the repository, not in it
    return tmp_path / "repo"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Hugging Face folder, as a user would bring one."""
    recipe = dataclasses.replace(synthetic.RECIPES["tiny"], tokenizer_corpus_files=20)
    folder = tmp_path_factory.mktemp("hf")
    synthetic.write_tokenizer(recipe, folder)
    synthetic.write_random_weights(recipe, folder)
    return folder


def test_import_a_converted_folder_then_list_and_revoke(
    repo_dir: Path, tiny_model_dir: Path
) -> None:
    code, out, err = import_model(repo_dir, str(tiny_model_dir), "tiny", "1.0.0")
    assert code == 0, err
    assert "smoke test passed: 8 tokens" in err
    assert out.startswith("published tiny 1.0.0: 7 files")

    code, out, _err = hub("model", "list", "--repo", str(repo_dir))
    assert code == 0
    row = next(line for line in out.splitlines() if "1.0.0" in line)
    cells = [cell.strip() for cell in row.strip("│┃ ").split("│")]
    assert cells[:3] == ["tiny", "1.0.0", "7"]
    assert cells[3].endswith("KB")

    code, _out, err = import_model(repo_dir, str(tiny_model_dir), "tiny", "1.0.0")
    assert code == 1
    assert "already published" in err

    code, out, err = hub("model", "revoke", "tiny", "1.0.0", "--repo", str(repo_dir))
    assert code == 0, err
    code, out, _err = hub("model", "list", "--repo", str(repo_dir))
    assert out.startswith("no releases in")


def test_import_converts_a_hugging_face_folder(repo_dir: Path, hf_dir: Path) -> None:
    code, out, err = import_model(repo_dir, str(hf_dir), "fresh", "0.1.0", "--block-size", "64")
    assert code == 0, err
    assert "converting" in err
    assert "published fresh 0.1.0" in out
    manifest = ReleaseRepository.open(repo_dir, repo_dir.parent / "keys").manifest("fresh", "0.1.0")
    assert manifest.quantization["block_size"] == 64
    assert manifest.quantization["precision"] == "int4"
    assert "model.onnx" in [f.path for f in manifest.files]
    assert not any((repo_dir / ".staging").iterdir())


def test_import_refuses_before_converting(repo_dir: Path, hf_dir: Path, tmp_path: Path) -> None:
    code, _out, err = import_model(repo_dir, str(hf_dir), "fresh", "latest")
    assert code == 1
    assert "versions look like 1.4.0" in err
    (tmp_path / "empty").mkdir()
    code, _out, err = import_model(repo_dir, str(tmp_path / "empty"), "x", "1.0.0")
    assert code == 1
    assert "neither a Hugging Face model folder" in err


def test_import_refuses_a_model_that_does_not_run(
    repo_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tiny_model_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    code, _out, err = import_model(repo_dir, str(broken), "tiny", "1.0.0")
    assert code == 1
    assert "the model does not load" in err
    assert ReleaseRepository.open(repo_dir, repo_dir.parent / "keys").index().models == {}


def test_quantization_options_need_a_hugging_face_source(
    repo_dir: Path, tiny_model_dir: Path
) -> None:
    code, _out, err = import_model(
        repo_dir, str(tiny_model_dir), "tiny", "1.0.0", "--block-size", "32"
    )
    assert code == 1
    assert "apply only to Hugging Face folders" in err


def test_keys_rotate(repo_dir: Path) -> None:
    code, out, err = hub("keys", "rotate", "snapshot", "--repo", str(repo_dir))
    assert code == 0, err
    assert "rotated the snapshot key" in out
    assert (repo_dir / "metadata" / "2.root.json").is_file()
    code, _out, err = hub("keys", "rotate", "root", "--repo", str(repo_dir))
    assert code == 1
    assert "key ceremony" in err


def test_commands_on_a_missing_repository(tmp_path: Path) -> None:
    code, _out, err = hub("model", "list", "--repo", str(tmp_path / "none"))
    assert code == 1
    assert "edge-hub repo init" in err
    code, _out, err = hub("repo", "init", "--repo", str(tmp_path / "r"))
    assert code == 0
    code, _out, err = hub("repo", "init", "--repo", str(tmp_path / "r"))
    assert code == 1
    assert "already holds a release repository" in err


def test_device_token_goes_to_the_configured_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    database = f"sqlite:///{tmp_path / 'hub.sqlite3'}"
    env = {"EDGE_HUB__ARTIFACTS__TOKENS_FILE": str(tokens), "EDGE_HUB__DATABASE__URL": database}
    db.migrate(database)
    registry.enroll(db.make_engine(database), "box-7")  # only an enrolled device gets one
    code, out, err = hub("device", "token", "box-7", env=env)
    assert code == 0, err
    token = out.strip()
    assert token.startswith("edt_")
    stored = json.loads(tokens.read_text())
    assert set(stored["devices"]) == {"box-7"}
    assert token not in tokens.read_text()
    code, _out, err = hub("device", "token", "../box", env=env)
    assert code == 1
    assert "no device '../box'" in err
