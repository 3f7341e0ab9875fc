"""Every error leaves the API in OpenAI's shape: {"error": {message, type, param, code}}."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from edge_agent.runtime import InvalidRequest, NotReady, Overloaded


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    async def send(self, send: Send, *, close: bool = False) -> None:
        """Answer from ASGI middleware, before the application sees the request. `close`
        ends the connection: for a body left unread, which cannot be skipped."""
        body = json.dumps(self.body()).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()),
        ]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def from_runtime(exc: Exception) -> ApiError:
    """Map the runtime's errors to the status an OpenAI client expects."""
    if isinstance(exc, InvalidRequest):
        return ApiError(400, exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, Overloaded):
        return ApiError(
            429,
            str(exc),
            type_="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": str(exc.retry_after_seconds)},
        )
    if isinstance(exc, NotReady):
        return ApiError(
            503,
            str(exc),
            type_="server_error",
            code="not_ready",
            headers={"Retry-After": str(exc.retry_after_seconds)},
        )
    return ApiError(500, f"internal error: {exc}", type_="server_error")


def sse_error(error: ApiError) -> bytes:
    return f"data: {json.dumps(error.body())}\n\n".encode()


def _validation_message(exc: RequestValidationError) -> ApiError:
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    kind = first.get("type", "")
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return ApiError(400, f"the request body is not valid JSON: {detail}".rstrip(": "))
    # pydantic reports a union's failures per branch; the field is what matters.
    field = ".".join(p for p in loc if not _is_branch(p)) or None
    if kind == "extra_forbidden":
        return ApiError(400, f"unknown field '{field}'", param=field)
    if kind == "missing":
        return ApiError(400, f"'{field}' is required", param=field)
    if kind == "lone_surrogate":  # found by walking the body: the path is in the context
        param = first.get("ctx", {}).get("param")
        return ApiError(400, first.get("msg", "invalid text"), param=param)
    if kind == "model_attributes_type":
        return ApiError(400, "the request body must be a JSON object")
    return ApiError(400, f"'{field}': {first.get('msg', 'invalid value')}", param=field)


def _is_branch(part: str) -> bool:
    return part in {"str", "int", "list[str]", "list[int]", "list[TextPart]"} or part.startswith(
        "function-"
    )


def install_handlers(app: FastAPI, on_runtime_error: Callable[[Exception], None]) -> None:
    """`on_runtime_error` sees every runtime error answered here (telemetry counts them)."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_message(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return ApiError(exc.status_code, str(exc.detail), code=code).response()

    for kind in (InvalidRequest, Overloaded, NotReady):

        @app.exception_handler(kind)
        async def _runtime(_request: Request, exc: Exception) -> JSONResponse:
            on_runtime_error(exc)
            return from_runtime(exc).response()
