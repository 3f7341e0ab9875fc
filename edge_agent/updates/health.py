"""The health check after activation: the new version must load and generate (an
embeddings release: load and embed a text)."""

from __future__ import annotations

from pathlib import Path

from edge_agent.runtime import LoadedModel, RuntimeSettings, SamplingParams
from edge_agent.runtime.encoder import Encoder, is_encoder_folder
from edge_agent.updates.errors import HealthCheckFailed

HEALTH_TOKENS = 4


def check_model(path: Path, settings: RuntimeSettings | None = None) -> None:
    """Load the model folder and greedily generate a few tokens; raise if anything fails."""
    if is_encoder_folder(path):
        _check_encoder(path)
        return
    try:
        model = LoadedModel.load("health-check", path, settings or RuntimeSettings())
        prompt = model.encode("Hello")
        params = SamplingParams(max_tokens=HEALTH_TOKENS, temperature=0)
        generator = model.new_generator([prompt], params, len(prompt) + HEALTH_TOKENS)
        produced = 0
        while produced < HEALTH_TOKENS and not generator.is_done():
            generator.generate_next_token()
            produced += 1
    except Exception as exc:
        raise HealthCheckFailed(f"{path} failed its health check: {exc}") from exc
    if produced == 0:
        raise HealthCheckFailed(f"{path} generated nothing")


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
