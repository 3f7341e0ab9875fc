"""`edge-hub model import`: a model folder in, a signed release out.

A Hugging Face folder (config.json) is converted to int4 ONNX by the onnxruntime-genai
builder; an onnxruntime-genai folder (genai_config.json) is taken as it is. Either way
the model must load and generate through the agent's runtime before it is published.
A Hugging Face sentence encoder (BERT-style, no language-model head) becomes an
embeddings release instead (manifest `kind: embeddings`): exported and int8-quantized by
optimum (hub.registry.encoder_export), and it must embed a text before it is published.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from edge_agent.protocol import ReleaseManifest, Requirements
from hub.registry.convert import QuantOptions, convert_hf_folder
from hub.registry.encoder_export import EMBEDDINGS_CONFIG, export_encoder, is_encoder_folder
from hub.registry.errors import ReleaseRefused
from hub.registry.repository import ReleaseRepository
from hub.registry.smoke import SmokeResult, smoke_generate

STAGING_DIR = ".staging"  # inside the repository root: same disk, never served


class SourceKind(StrEnum):
    HUGGING_FACE = "huggingface"
    GENAI = "onnxruntime-genai"
    ENCODER = "encoder"  # a Hugging Face sentence encoder: an embeddings release
    EMBEDDINGS = "embeddings"  # an encoder already exported (embeddings.json)


EMBEDDINGS_KIND = "embeddings"


def source_kind(source: Path) -> SourceKind:
    if not source.is_dir():
        raise ReleaseRefused(f"{source}: not a folder; pass a model folder to import")
    if (source / "genai_config.json").is_file():
        return SourceKind.GENAI
    if (source / EMBEDDINGS_CONFIG).is_file():
        return SourceKind.EMBEDDINGS
    if is_encoder_folder(source):
        return SourceKind.ENCODER
    if (source / "config.json").is_file():
        return SourceKind.HUGGING_FACE
    raise ReleaseRefused(
        f"{source}: neither a Hugging Face model folder (config.json) nor an "
        "onnxruntime-genai folder (genai_config.json)"
    )


def import_release(
    repo: ReleaseRepository,
    source: Path,
    name: str,
    version: str,
    options: QuantOptions | None = None,
    *,
    on_stage: Callable[[str], None] | None = None,
    on_line: Callable[[str], None] | None = None,
    on_smoke: Callable[[SmokeResult], None] | None = None,
    adapter_targets: tuple[str, ...] = (),
) -> ReleaseManifest:
    """Convert (when needed), smoke-test and publish; `options` and `adapter_targets` (a
    base that accepts LoRA adapters on those projections) only for HF sources."""
    stage = on_stage or (lambda _text: None)
    source = source.expanduser()
    kind = source_kind(source)
    if kind is not SourceKind.HUGGING_FACE and adapter_targets:
        raise ReleaseRefused(
            f"{source}: --adapter-targets applies when converting a Hugging Face folder; "
            "this one is not converted here"
        )
    if kind in (SourceKind.ENCODER, SourceKind.EMBEDDINGS):
        if options is not None:
            raise ReleaseRefused(
                f"{source} is a sentence encoder: it is quantized to int8 by optimum, and the "
                "generation quantization options do not apply; leave them out"
            )
        return _import_encoder(repo, source, name, version, kind, stage)
    if kind is SourceKind.GENAI and options is not None:
        raise ReleaseRefused(
            f"{source} is already converted: quantization options apply only to Hugging "
            "Face folders"
        )
    repo.check_new_release(name, version)  # before minutes of conversion, not after
    options = options or QuantOptions()
    staging_root = repo.root / STAGING_DIR
    staging_root.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{name}-{version}-", dir=staging_root))
    try:
        if kind is SourceKind.HUGGING_FACE:
            stage(f"converting {source} to {options.precision} ONNX")
            model_dir = convert_hf_folder(
                source, staging / "model", options, on_line=on_line, adapter_targets=adapter_targets
            )
            quantization: dict[str, Any] = options.as_record()
            if adapter_targets:
                quantization["adapter_targets"] = list(adapter_targets)
            providers: tuple[str, ...] = (options.execution_provider,)
        else:
            model_dir = source
            quantization = {"converted_by": "external"}
            providers = Requirements().execution_providers
        stage("loading the model and generating a few tokens")
        result = smoke_generate(model_dir)
        if on_smoke is not None:
            on_smoke(result)
        stage("chunking and signing the release")
        return repo.publish(
            model_dir,
            name,
            version,
            quantization=quantization,
            requirements=Requirements(execution_providers=providers),
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _import_encoder(
    repo: ReleaseRepository,
    source: Path,
    name: str,
    version: str,
    kind: SourceKind,
    stage: Callable[[str], None],
) -> ReleaseManifest:
    from edge_agent.runtime.encoder import Encoder, EncoderConfig

    repo.check_new_release(name, version)
    staging_root = repo.root / STAGING_DIR
    staging_root.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{name}-{version}-", dir=staging_root))
    try:
        model_dir = source
        if kind is SourceKind.ENCODER:
            stage(f"exporting {source} to int8 ONNX with optimum")
            model_dir = export_encoder(source, staging / "model")
        stage("loading the encoder and embedding a text")
        try:
            encoder = Encoder(name, model_dir)
            vector = encoder.embed(encoder.tokenize(["a smoke test"]))[0]
        except Exception as exc:  # whatever stops it embedding stops the release
            raise ReleaseRefused(f"{source}: the encoder does not embed: {exc}") from exc
        config = EncoderConfig.read(model_dir)
        if len(vector) != config.dimensions:
            raise ReleaseRefused(
                f"{source}: embeddings.json says {config.dimensions} dimensions, the model "
                f"gives {len(vector)}"
            )
        stage("chunking and signing the release")
        record = json.loads((model_dir / EMBEDDINGS_CONFIG).read_text())
        return repo.publish(
            model_dir,
            name,
            version,
            quantization={"precision": "int8", "converted_by": record.get("converted_by")},
            kind=EMBEDDINGS_KIND,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
