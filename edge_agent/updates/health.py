"""The health check after activation: the new version must load and generate (an
embeddings release: load and embed a text; a LoRA adapter: generate with it active on
its installed base)."""

from __future__ import annotations

from pathlib import Path

from edge_agent.runtime import LoadedModel, RuntimeSettings, SamplingParams
from edge_agent.runtime.adapters import AdapterRef, is_adapter_folder, read_adapter
from edge_agent.runtime.encoder import Encoder, is_encoder_folder
from edge_agent.runtime.errors import ModelFolderError
from edge_agent.store.store import release_of
from edge_agent.updates.errors import HealthCheckFailed

HEALTH_TOKENS = 4


def check_model(path: Path, settings: RuntimeSettings | None = None) -> None:
    """Load the model folder and greedily generate a few tokens; raise if anything fails."""
    if is_encoder_folder(path):
        _check_encoder(path)
        return
    model_path, adapter = path, None
    if is_adapter_folder(path):
        model_path, adapter = _adapter_base(path)
    try:
        model = LoadedModel.load("health-check", model_path, settings or RuntimeSettings())
        if adapter is not None:
            model.adapters.ensure(adapter)
        prompt = model.encode("Hello")
        params = SamplingParams(
            max_tokens=HEALTH_TOKENS, temperature=0, adapter=adapter.name if adapter else None
        )
        generator = model.new_generator([prompt], params, len(prompt) + HEALTH_TOKENS)
        produced = 0
        while produced < HEALTH_TOKENS and not generator.is_done():
            generator.generate_next_token()
            produced += 1
    except Exception as exc:
        raise HealthCheckFailed(f"{path} failed its health check: {exc}") from exc
    if produced == 0:
        raise HealthCheckFailed(f"{path} generated nothing")


def _adapter_base(path: Path) -> tuple[Path, AdapterRef]:
    """An installed adapter (MODELS/NAME/versions/VERSION) and its base's active folder."""
    try:
        adapter = read_adapter(path.parent.parent.name, path)
    except ModelFolderError as exc:
        raise HealthCheckFailed(f"{path} failed its health check: {exc}") from exc
    base = path.parents[2] / adapter.base_name / "active"
    if release_of(base.resolve()) != (adapter.base_name, adapter.base_version):
        raise HealthCheckFailed(
            f"{path} is an adapter for {adapter.base}, which is not the active base here"
        )
    return base, adapter


def _check_encoder(path: Path) -> None:
    try:
        encoder = Encoder("health-check", path)
        vector = encoder.embed(encoder.tokenize(["Hello"]))[0]
    except Exception as exc:
        raise HealthCheckFailed(f"{path} failed its health check: {exc}") from exc
    if len(vector) != encoder.config.dimensions:
        raise HealthCheckFailed(
            f"{path} gives {len(vector)}-dimensional vectors, not {encoder.config.dimensions}"
        )
