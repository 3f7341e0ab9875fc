"""Telemetry of a simulated device, made by the agent's own code.

The requests a device "served" in a window are recorded in the agent's `Collector`, the
window is turned into reports by `to_report` (coarsening included), the pseudonym comes
from `pseudonym()` with a per-device secret, and the anonymous VOPRF token is obtained by
`obtain()` (blind, evaluate, verify the proof, unblind) against an issuer the caller gives:
for simulated devices the hub's `TokenIssuer.issue` called in-process, instead of over
HTTPS with a download token.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from edge_agent.protocol import Envelope, HardwareClass, TelemetryReport
from edge_agent.protocol.telemetry import Accelerator, CoresBucket, ErrorClass, MemoryBucket
from edge_agent.protocol.tokens import TokenRequest, TokenResponse
from edge_agent.telemetry.aggregate import to_report
from edge_agent.telemetry.collector import Collector
from edge_agent.telemetry.pseudonym import pseudonym
from edge_agent.telemetry.tokens import TokenUnavailable, obtain
from hub.simulate.runtime import StubRuntime

# The hub's issuance, in-process: (device id, blinded request) -> evaluated response.
IssueToken = Callable[[str, TokenRequest], TokenResponse]

TOKENS_PER_REQUEST = (64, 128)  # tokens in, tokens out of each simulated request
SIMULATED_HARDWARE = HardwareClass(
    cores=CoresBucket.C2, memory=MemoryBucket.GIB_8_16, accelerator=Accelerator.CPU
)


class _DeviceIssuer:
    """The agent's Issuer protocol, answered by the hub's issuance for one device."""

    def __init__(self, issue: IssueToken, device_id: str) -> None:
        self._issue, self._device_id = issue, device_id

    def issue(self, request: TokenRequest) -> TokenResponse:
        try:
            return self._issue(self._device_id, request)
        except Exception as exc:  # the hub's refusal, as the HTTP issuer would report it
            raise TokenUnavailable(f"the hub refused a token: {exc}") from None


class DeviceTelemetry:
    """One device's telemetry secret and tokens (one per period, like the agent's wallet)."""

    def __init__(self, device_id: str, issue: IssueToken | None) -> None:
        self.device_id = device_id
        self._secret = secrets.token_bytes(32)
        self._issuer = None if issue is None else _DeviceIssuer(issue, device_id)
        self._tokens: dict[str, str] = {}

    def _token(self, period: str, name: str) -> str | None:
        if period not in self._tokens:
            if self._issuer is None:
                return None
            self._tokens[period] = obtain(self._issuer, period, name).token
        return self._tokens[period]

    def reports(
        self,
        runtime: StubRuntime,
        *,
        window_start: datetime,
        window_seconds: int,
        requests: int,
        agent_version: str,
    ) -> list[Envelope]:
        """The envelopes of one window in which the device served `requests` requests of
        each active model, failing and crashing at its profile's rates."""
        start_s = window_start.timestamp()
        collector = Collector(window_seconds, clock=lambda: start_s)
        for model, version in sorted(runtime.active.items()):
            behaviour = runtime.behaviour(model)
            for _ in range(requests):
                if runtime.request_failed(model):
                    collector.record_error(ErrorClass.GENERATION, model, version)
                    continue
                tokens_in, tokens_out = TOKENS_PER_REQUEST
                collector.record_request(
                    model,
                    version,
                    ttft_s=behaviour.ttft_s,
                    per_token_s=behaviour.per_token_s,
                    tokens_in=tokens_in,
                    tokens_out=tokens_out,
                )
        crashed = any(
            runtime.rng.random() < runtime.behaviour(model).crash_rate for model in runtime.active
        )
        collector.record_restart(crashed=crashed)
        envelopes: list[Envelope] = []
        sent_at = window_start + timedelta(seconds=window_seconds)
        for window in collector.close_all():
            name = pseudonym(self._secret, window.period)
            token = self._token(window.period, name)
            for release, tally in sorted(window.tallies.items(), key=lambda i: i[0] or ()):
                report: TelemetryReport = to_report(
                    window,
                    release,
                    tally,
                    pseudonym=name,
                    agent_version=agent_version,
                    hardware=SIMULATED_HARDWARE,
                    token=token,
                )
                envelopes.append(Envelope.of(report, sent_at=sent_at))
        return envelopes


def last_closed_window(now: datetime, window_seconds: int) -> datetime:
    """The start of the newest window that has ended at `now`."""
    start = int(now.timestamp()) // window_seconds * window_seconds - window_seconds
    return datetime.fromtimestamp(start, UTC)
