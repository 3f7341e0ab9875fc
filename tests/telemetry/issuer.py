"""An issuer in this process: the hub's real period keys, without HTTP or a database.
For tests and benchmarks of the device side (the route itself is tested in hub_telemetry)."""

from __future__ import annotations

from edge_agent.protocol.tokens import TokenRequest, TokenResponse
from hub.telemetry.keys import PeriodKeys

SEED = b"edge-fleet device-side test seed"


class KeyIssuer:
    def __init__(self, seed: bytes = SEED) -> None:
        self.keys = PeriodKeys(seed)
        self.requests: list[TokenRequest] = []

    def issue(self, request: TokenRequest) -> TokenResponse:
        self.requests.append(request)
        return TokenResponse(
            period=request.period,
            public_key=self.keys.public_key(request.period).hex(),
            evaluated=self.keys.evaluate(request.period, bytes.fromhex(request.blinded)).hex(),
        )
