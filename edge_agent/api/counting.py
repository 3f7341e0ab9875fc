"""Count every response the API gives, refusals included, for Prometheus.

Outermost of the API's middleware, so a request refused by the Host check, the API key,
the body limits or a full queue is counted like one that was answered. Each response is
counted by endpoint and status; a refusal also by its reason (the error's `code`) and
any other error by its class (`code`, else OpenAI's error `type`), read from the small
JSON error body every refusal carries.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge_agent.api.metrics import Metrics

# Refused before any work, or for overload: the client may retry, or must fix its setup.
REJECTION_STATUSES = frozenset({401, 403, 408, 413, 429, 503})
ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/models": "models",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/metrics": "metrics",
}
ERROR_BODY_LIMIT = 8192  # error bodies are a few hundred bytes; never buffer a stream


def endpoint_of(path: str) -> str:
    """A fixed set of labels: a client's made-up paths must not grow the metrics."""
    if path.startswith("/v1/models/"):
        return "models"
    return ENDPOINTS.get(path, "other")


class ResponseCounter:
    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = endpoint_of(scope["path"])
        status = 0
        body = bytearray()

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and status >= 400:
                if len(body) < ERROR_BODY_LIMIT:
                    body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    self._count(endpoint, status, _error_class(bytes(body), status))
            await send(message)
            if message["type"] == "http.response.start" and status < 400:
                self.metrics.responses.labels(endpoint, str(status)).inc()

        try:
            await self.app(scope, receive, counted)
        except Exception:
            if status == 0:  # an unhandled error: Starlette answers 500 outside us
                self._count(endpoint, 500, "internal_error")
            raise

    def _count(self, endpoint: str, status: int, error_class: str) -> None:
        self.metrics.responses.labels(endpoint, str(status)).inc()
        if status in REJECTION_STATUSES:
            self.metrics.rejections.labels(error_class).inc()
        else:
            self.metrics.errors.labels(error_class).inc()


def _error_class(body: bytes, status: int) -> str:
    try:
        error = json.loads(body)["error"]
        found = error.get("code") or error.get("type")
    except (ValueError, KeyError, TypeError, AttributeError):
        found = None
    return str(found) if found else f"http_{status}"
