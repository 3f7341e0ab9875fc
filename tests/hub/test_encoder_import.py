"""`edge-hub model import` of a sentence encoder: exported and int8-quantized by optimum
(in its own virtual environment), smoke-embedded, published as an embeddings release."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.registry.convert import QuantOptions
from hub.registry.errors import ReleaseRefused
from hub.registry.importer import SourceKind, import_release, source_kind
from hub.registry.repository import ReleaseRepository
from hub.registry.synthetic_encoder import EncoderRecipe, build_hf_encoder


@pytest.fixture(scope="module")
def hf_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_hf_encoder(EncoderRecipe(), tmp_path_factory.mktemp("encoder") / "hf")


def test_an_encoder_folder_becomes_a_signed_embeddings_release(
    repo: ReleaseRepository, hf_encoder: Path
) -> None:
    assert source_kind(hf_encoder) is SourceKind.ENCODER
    manifest = import_release(repo, hf_encoder, "minilm", "1.0.0")
    assert manifest.model_extra is not None and manifest.model_extra["kind"] == "embeddings"
    assert {f.path for f in manifest.files} == {"model.onnx", "tokenizer.json", "embeddings.json"}
    assert manifest.quantization["precision"] == "int8"
    # optimum did the export here; the torch fallback would say so instead.
    assert str(manifest.quantization["converted_by"]).startswith("optimum ")


def test_generation_quantization_options_are_refused_for_an_encoder(
    repo: ReleaseRepository, hf_encoder: Path
) -> None:
    with pytest.raises(ReleaseRefused, match="sentence encoder"):
        import_release(repo, hf_encoder, "minilm", "1.0.0", QuantOptions())


def test_a_masked_lm_head_is_not_taken_for_an_encoder(tmp_path: Path, hf_encoder: Path) -> None:
    folder = tmp_path / "mlm"
    folder.mkdir()
    config = json.loads((hf_encoder / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]
    (folder / "config.json").write_text(json.dumps(config))
    assert source_kind(folder) is SourceKind.HUGGING_FACE
