"""Read-only HTTP access to a release repository, for devices holding a token.

    GET /healthz                        open: for load balancers and monitoring
    GET /metadata/<file>                TUF metadata
    GET /targets/<path>                 release index and manifests (hash-prefixed)
    GET /chunks/<aa>/<sha256>           chunks; Range requests resume a download

Nothing outside those three folders is reachable: each path is checked segment by
segment, resolved, and must still lie inside its folder. Folders are never listed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge_agent.protocol import METADATA_DIR, SERVED_DIRS
from hub.artifacts.tokens import TokenFileError, TokenStore

log = logging.getLogger(__name__)
Parsed = TypeVar("Parsed", bound=BaseModel)

# Everything but timestamp.json is named by version or hash, so it never changes.
IMMUTABLE = "public, max-age=31536000, immutable"
MUTABLE_FILES = frozenset({f"{METADATA_DIR}/timestamp.json"})


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


async def read_json_body(
    request: Request, model: type[Parsed], max_bytes: int, what: str
) -> Parsed | Response:
    """The request's JSON body as `model`, or the error response to send: 413 once more
    than `max_bytes` arrived (read no further), 400 naming each bad field."""
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > max_bytes:
            return error(413, "too_large", f"{what} is at most {max_bytes} bytes")
    try:
        return model.model_validate_json(bytes(body))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return error(400, "invalid_request", f"not {what}: {problems}")


def create_app(
    repository_root: Path, tokens: TokenStore, extra_routes: Sequence[BaseRoute] = ()
) -> Starlette:
    """The artifact server; `extra_routes` (enrollment) are matched first."""
    root = repository_root.resolve()

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def artifact(request: Request) -> Response:
        denied = _authenticate(request, tokens)
        if denied is not None:
            return denied
        area = request.path_params["area"]
        relative = request.path_params["path"]
        path = _inside(root, area, relative)
        if path is None:
            return error(404, "not_found", f"no such file: /{area}/{relative}")
        cache = "no-cache" if f"{area}/{relative}" in MUTABLE_FILES else IMMUTABLE
        return FileResponse(path, headers={"Cache-Control": cache})

    async def not_found(request: Request, _exc: Exception) -> Response:
        return error(404, "not_found", f"no such file: {request.url.path}")

    async def bad_method(request: Request, _exc: Exception) -> Response:
        return error(405, "method_not_allowed", f"{request.method} is not served here")

    app = Starlette(
        routes=[
            *extra_routes,
            Route("/healthz", healthz, methods=["GET"]),
            Route("/{area}/{path:path}", artifact, methods=["GET", "HEAD"]),
        ],
        exception_handlers={404: not_found, 405: bad_method},
    )
    app.router.redirect_slashes = False  # a wrong path is a 404, not a redirect to guess
    return app


def _authenticate(request: Request, tokens: TokenStore) -> Response | None:
    scheme, _sep, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _unauthorized(
            "this hub serves releases only to enrolled devices: send "
            "'Authorization: Bearer <token>'"
        )
    try:
        device = tokens.device_for(token.strip())
    except TokenFileError as exc:
        log.error("%s", exc)
        return error(
            503, "tokens_unavailable", "the hub cannot check tokens right now; retry later"
        )
    if device is None:
        return _unauthorized("the device token is not valid (unknown, or replaced by a newer one)")
    log.debug("%s: %s %s", device, request.method, request.url.path)
    return None


def _unauthorized(problem: str) -> Response:
    return error(
        401,
        "unauthorized",
        f"{problem}; issue one on the hub with `edge-hub device token DEVICE_ID` and set it "
        "as the device's update token",
        headers={"WWW-Authenticate": 'Bearer realm="edge-hub"'},
    )


def _inside(root: Path, area: str, relative: str) -> Path | None:
    """The file `area/relative` under `root`, or None when it is not a servable file."""
    if area not in SERVED_DIRS:
        return None
    parts = relative.split("/")
    if any(not p or p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
        return None  # '..', hidden and temporary files, empty segments
    base = root / area
    try:
        path = base.joinpath(*parts).resolve()
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(base.resolve()) or not path.is_file():
        return None
    return path
