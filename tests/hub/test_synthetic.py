"""The test-model recipes: deterministic, cached by recipe hash, converted for real."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hub.registry import synthetic
from hub.registry.convert import ConversionError, QuantOptions, convert_hf_folder


def test_recipe_digest_is_stable_and_tracks_every_field() -> None:
    tiny = synthetic.RECIPES["tiny"]
    assert tiny.digest() == synthetic.RECIPES["tiny"].digest()
    assert dataclasses.replace(tiny, seed=tiny.seed + 1).digest() != tiny.digest()
    quant = dataclasses.replace(tiny.quant, block_size=32)
    assert dataclasses.replace(tiny, quant=quant).digest() != tiny.digest()


def test_cached_model_is_reused(tiny_model_dir: Path) -> None:
    assert synthetic.build(synthetic.RECIPES["tiny"]) == tiny_model_dir
    record = json.loads((tiny_model_dir / "test_model.json").read_text())
    assert record["digest"] == synthetic.RECIPES["tiny"].digest()
    assert record["quant"]["block_size"] == 128


def test_tiny_model_is_small_and_int4(tiny_model_dir: Path) -> None:
    size = sum(f.stat().st_size for f in tiny_model_dir.iterdir())
    assert size < 2_000_000
    graph = (tiny_model_dir / "model.onnx").read_bytes()
    assert b"MatMulNBits" in graph


def test_build_is_deterministic(tmp_path: Path) -> None:
    """Two fresh builds of one recipe give byte-identical weights and tokenizer."""
    tiny = dataclasses.replace(synthetic.RECIPES["tiny"], tokenizer_corpus_files=20)
    first = synthetic.build(tiny, tmp_path / "a")
    second = synthetic.build(tiny, tmp_path / "b")
    for name in ("model.onnx.data", "tokenizer.json", "chat_template.jinja"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_conversion_refuses_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"no config\.json"):
        convert_hf_folder(tmp_path, tmp_path / "out", QuantOptions())
    assert not (tmp_path / "out").exists()


def test_failed_conversion_leaves_nothing_behind(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "llama"}')
    # Past the folder check (weights and a tokenizer are present), so the builder runs and fails.
    (hf / "model.safetensors").write_bytes(b"not safetensors")
    (hf / "tokenizer.json").write_text("{}")
    with pytest.raises(ConversionError, match="model builder exited"):
        convert_hf_folder(hf, tmp_path / "out", QuantOptions())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_hub_cli_prints_the_cached_path(tiny_model_dir: Path) -> None:
    hub = Path(sys.executable).parent / "edge-hub"
    out = subprocess.run(
        [str(hub), "testmodel", "build", "tiny", "--print-path"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(tiny_model_dir)
    bad = subprocess.run([str(hub), "testmodel", "build", "huge"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "unknown shape 'huge'" in bad.stderr
