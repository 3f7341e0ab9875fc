"""`POST /v1/enroll`: a device with a one-time token becomes a member of the fleet, and
`GET /v1/hub-ca`: the CA the device checks against its token before it sends anything.

The token (made by `edge-hub device enroll`) names the device; the CSR's common name must be
that device id. On success the token is spent, the device is recorded as enrolled, and the
answer carries its certificate and everything else it needs (see
edge_agent.protocol.enrollment). A refused request changes nothing: the token stays usable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge_agent.protocol.enrollment import (
    ENROLL_PATH,
    HUB_CA_PATH,
    MAX_ENROLL_BYTES,
    EnrollmentRequest,
    EnrollmentResponse,
)
from hub.artifacts.server import error, read_json_body
from hub.artifacts.tokens import TokenStore
from hub.fleet import registry
from hub.fleet.identity import DeviceCA, EnrollmentTokens, IdentityError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnrollmentDesk:
    ca: DeviceCA
    tokens: EnrollmentTokens
    downloads: TokenStore
    engine: Engine
    broker_url: str
    director_keys: Callable[[], list[str]]
    tuf_root: Path

    def handle(self, request: EnrollmentRequest) -> EnrollmentResponse:
        """Issue the certificate and the download token; IdentityError if refused."""
        with self.tokens.redeem(request.token) as device_id:
            if device_id != request.device_id:
                raise IdentityError(
                    f"this token was made for another device, not {request.device_id}"
                )
            certificate = self.ca.issue_device_certificate(request.csr_pem.encode(), device_id)
            registry.enroll(self.engine, device_id)
            download_token = self.downloads.issue(device_id)
        log.info("enrolled device %s", device_id)
        return EnrollmentResponse(
            device_id=device_id,
            certificate_pem=certificate.decode(),
            ca_pem=self.ca.ca_cert_path.read_text(),
            broker_url=self.broker_url,
            director_keys=self.director_keys(),
            tuf_root=self.tuf_root.read_text(),
            download_token=download_token,
        )


def enrollment_route(desk: EnrollmentDesk) -> Route:
    async def post(request: Request) -> Response:
        parsed = await read_json_body(
            request, EnrollmentRequest, MAX_ENROLL_BYTES, "an enrollment request"
        )
        if isinstance(parsed, Response):
            return parsed
        try:
            answer = await run_in_threadpool(desk.handle, parsed)
        except IdentityError as exc:
            log.warning("enrollment of %s refused: %s", parsed.device_id, exc)
            return error(403, "enrollment_refused", f"{exc}; ask the operator for a new token")
        return Response(answer.model_dump_json(), media_type="application/json")

    return Route(ENROLL_PATH, post, methods=["POST"])


def hub_ca_route(ca: DeviceCA) -> Route:
    """`GET /v1/hub-ca`: the CA, public. A device believes it only when it hashes to the
    fingerprint in its enrollment token, then trusts the hub's TLS through it."""

    async def get(_request: Request) -> Response:
        return Response(ca.ca_cert_path.read_bytes(), media_type="application/x-pem-file")

    return Route(HUB_CA_PATH, get, methods=["GET"])
