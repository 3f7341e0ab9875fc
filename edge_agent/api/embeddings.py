"""POST /v1/embeddings (OpenAI's shape): vectors from an installed encoder, for local RAG."""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from edge_agent.api.errors import ApiError
from edge_agent.api.schemas import _Strict
from edge_agent.runtime import InvalidRequest, ModelLoadError, NotReady
from edge_agent.runtime.encoder import Encoders

MAX_INPUTS = 2048  # OpenAI's own cap on one request's inputs


class EmbeddingRequest(_Strict):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else self.input
        if not texts:
            raise InvalidRequest("input", "input is empty: give a string or a list of strings")
        if len(texts) > MAX_INPUTS:
            raise InvalidRequest("input", f"at most {MAX_INPUTS} inputs per request")
        if any(not text for text in texts):
            raise InvalidRequest("input", "an input is the empty string; leave it out")
        return texts


def embeddings_router(encoders: Encoders) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.post("/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        texts = body.texts()
        try:
            encoder = await run_in_threadpool(encoders.get, body.model)
        except ModelLoadError as exc:
            raise NotReady(str(exc), 30) from None
        if encoder is None:
            available = ", ".join(encoders.known()) or "none"
            raise ApiError(
                404,
                f"no embeddings model named '{body.model}' here (available: {available})",
                param="model",
                code="model_not_found",
            )
        if body.dimensions is not None:
            encoder.check_dimensions(body.dimensions)
        ids = encoder.tokenize(texts)
        vectors = await run_in_threadpool(encoder.embed, ids, body.dimensions)
        tokens = sum(len(row) for row in ids)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding_format)}
                for i, v in enumerate(vectors)
            ],
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return router


def _encoded(vector: np.ndarray[Any, Any], encoding: str) -> list[float] | str:
    if encoding == "base64":  # little-endian float32, as OpenAI sends and its client reads
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]
