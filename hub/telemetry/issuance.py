"""Issuing the anonymous telemetry token: once per authenticated device and period.

The device authenticates with its download token (the same bearer token that fetches
releases) and sends one blinded element for a period; the hub records (device, period),
evaluates the element with that period's key, and answers with the proof. A second request
for the same period is refused: one token a period is what makes one device count once.
The record holds no blinded element and no output (see hub.telemetry.models).

Periods open for issuance: the current ISO week and the one before (a device that was
offline across the week's end still has reports of last week to send).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge_agent.protocol.telemetry import iso_week
from edge_agent.protocol.tokens import (
    MAX_TOKEN_REQUEST_BYTES,
    TOKEN_ISSUE_PATH,
    TokenRequest,
    TokenResponse,
)
from hub.artifacts.server import error, read_json_body
from hub.artifacts.tokens import TokenFileError, TokenStore
from hub.telemetry.keys import PeriodKeys
from hub.telemetry.models import TOKEN_ISSUANCE

log = logging.getLogger(__name__)


class IssuanceRefused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def open_periods(now: datetime) -> tuple[str, str]:
    """The periods a device may ask a token for at `now`: this ISO week and the last."""
    return iso_week(now), iso_week(now - timedelta(weeks=1))


class TokenIssuer:
    def __init__(
        self, engine: Engine, keys: PeriodKeys, clock: Callable[[], float] = time.time
    ) -> None:
        self.engine = engine
        self.keys = keys
        self._clock = clock

    def issue(self, device_id: str, request: TokenRequest) -> TokenResponse:
        now = datetime.fromtimestamp(self._clock(), UTC)
        if request.period not in open_periods(now):
            raise IssuanceRefused(
                400,
                "period_not_open",
                f"tokens are issued for this week and the last ({', '.join(open_periods(now))}),"
                f" not {request.period}; check the device's clock",
            )
        try:
            # One transaction: the record and the evaluation stand or fall together.
            with self.engine.begin() as connection:
                connection.execute(
                    insert(TOKEN_ISSUANCE).values(
                        device_id=device_id, period=request.period, issued_at=now
                    )
                )
                evaluated = self.keys.evaluate(request.period, bytes.fromhex(request.blinded))
        except IntegrityError:
            raise IssuanceRefused(
                409,
                "token_already_issued",
                f"{device_id} was issued its telemetry token for {request.period} already; "
                "a device gets one a period (it sends telemetry again next period)",
            ) from None
        except ValueError:
            raise IssuanceRefused(
                400, "invalid_blinded_element", "`blinded` is not a valid ristretto255 element"
            ) from None
        log.info("telemetry token for %s issued to %s", request.period, device_id)
        return TokenResponse(
            period=request.period,
            public_key=self.keys.public_key(request.period).hex(),
            evaluated=evaluated.hex(),
        )


def token_route(issuer: TokenIssuer, downloads: TokenStore) -> Route:
    """POST TOKEN_ISSUE_PATH for the hub's HTTP server (`create_app`'s extra routes)."""

    async def post(request: Request) -> Response:
        scheme, _sep, bearer = request.headers.get("authorization", "").partition(" ")
        try:
            device = downloads.device_for(bearer.strip()) if scheme.lower() == "bearer" else None
        except TokenFileError as exc:
            log.error("%s", exc)
            return error(503, "tokens_unavailable", "the hub cannot check tokens now; retry later")
        if device is None:
            return error(
                401,
                "unauthorized",
                "telemetry tokens are issued to enrolled devices only: send the device's "
                "download token as 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": 'Bearer realm="edge-hub"'},
            )
        parsed = await read_json_body(
            request, TokenRequest, MAX_TOKEN_REQUEST_BYTES, "a token request"
        )
        if isinstance(parsed, Response):
            return parsed
        try:
            answer = await run_in_threadpool(issuer.issue, device, parsed)
        except IssuanceRefused as exc:
            log.warning("telemetry token for %s refused: %s", device, exc)
            return error(exc.status, exc.code, str(exc))
        return Response(answer.model_dump_json(), media_type="application/json")

    return Route(TOKEN_ISSUE_PATH, post, methods=["POST"])
