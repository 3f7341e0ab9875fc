"""The device's anonymous telemetry token: one per period, fetched blinded, kept in a wallet.

Each report the hub receives must carry the token of its pseudonym and period (promise 7:
one device counts once). The hub issues one token per authenticated device and period, so
a device can make one pseudonym a period valid and no more: reports under invented
pseudonyms are refused, and the hub counts devices by valid pseudonyms.

Privacy Pass issuance (RFC 9576-9578) over a VOPRF (RFC 9497, ristretto255-SHA512, the
`voprf` package): the device blinds `token_input(period, pseudonym)`, so the hub that
evaluates it learns neither the pseudonym nor the token; the DLEQ proof in the answer lets
the device check that the hub used the period's public key, which the wallet keeps and
`edge-agent telemetry show` prints, so devices can compare it (a hub that gave one device a
key of its own could pick its reports out). Why a VOPRF and not blind RSA: the hub both
issues and redeems, so a privately verifiable token suffices, and it is smaller and faster.

<data dir>/telemetry/tokens.json (0600): {period: {pseudonym, token, public_key}} for the
last WALLET_PERIODS periods. A token is asked for when the first window of a period is
published; until one is held, that period's windows wait (in memory) and are asked for again.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from voprf import ristretto

from edge_agent.atomic import write_atomic
from edge_agent.protocol.telemetry import token_input
from edge_agent.protocol.tokens import TOKEN_ISSUE_PATH, TokenRequest, TokenResponse
from edge_agent.telemetry.stick_tokens import StickTokens

log = logging.getLogger(__name__)

WALLET_PERIODS = 4
ISSUE_TIMEOUT_S = 30.0


class TokenUnavailable(Exception):
    """No token for the period now: the hub could not be asked, refused, or lied."""


class Issuer(Protocol):
    """Evaluates a blinded token request: the hub over HTTP (HubIssuer), or a test's key."""

    def issue(self, request: TokenRequest) -> TokenResponse: ...


@dataclass(frozen=True)
class HeldToken:
    pseudonym: str
    token: str  # hex of the VOPRF output
    public_key: str  # hex: the period key the hub proved it used


def obtain(issuer: Issuer, period: str, pseudonym: str) -> HeldToken:
    """Blind, have the issuer evaluate, check its proof, unblind."""
    client, blinded = ristretto.Client.blind(token_input(period, pseudonym))
    answer = issuer.issue(TokenRequest(period=period, blinded=blinded.serialize().hex()))
    if answer.period != period:
        raise TokenUnavailable(f"asked for a {period} token, the hub answered for {answer.period}")
    try:
        output = client.finalize(
            ristretto.VerifiableOutput.deserialize(bytes.fromhex(answer.evaluated)),
            ristretto.PublicKey.deserialize(bytes.fromhex(answer.public_key)),
        )
    except ValueError as exc:
        raise TokenUnavailable(
            f"the hub's {period} token does not verify against the key it named ({exc}): "
            "it is not the key it claims, so the token could mark this device"
        ) from None
    return HeldToken(pseudonym, output.hex(), answer.public_key)


class Wallet:
    """The tokens held, by period; asks `issuer` once for a period it has none for."""

    def __init__(self, path: Path, issuer: Issuer | None, stick: StickTokens | None = None) -> None:
        self.path = path
        self.issuer = issuer
        # Where the hub cannot be asked, a USB stick can carry the request (an air gap).
        self.stick = stick
        self._lock = threading.Lock()

    def held(self) -> dict[str, HeldToken]:
        try:
            data = json.loads(self.path.read_text())
            return {period: HeldToken(**entry) for period, entry in data.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError) as exc:
            log.warning("%s is unreadable (%s): tokens will be asked for again", self.path, exc)
            return {}

    def token_for(self, period: str, pseudonym: str) -> str | None:
        """The token of `pseudonym` in `period`, fetched if needed; None while there is none
        (no issuer, the hub unreachable or refusing: the reason is logged)."""
        with self._lock:
            held = self.held()
            found = held.get(period)
            if found is not None and found.pseudonym == pseudonym:
                return found.token
            if self.issuer is None:
                if self.stick is not None:
                    return self.stick.token_for(period, pseudonym, self._keep)
                log.warning("no telemetry token for %s: no hub to ask", period)
                return None
            try:
                found = obtain(self.issuer, period, pseudonym)
            except TokenUnavailable as exc:
                log.warning("no telemetry token for %s yet: %s", period, exc)
                if self.stick is not None:
                    return self.stick.token_for(period, pseudonym, self._keep)
                return None
            self._store(held, period, found)
            return found.token

    def _keep(self, period: str, pseudonym: str, token: str, public_key: str) -> None:
        """Store a token finalized elsewhere (from a USB stick); the lock is held."""
        self._store(self.held(), period, HeldToken(pseudonym, token, public_key))

    def _store(self, held: dict[str, HeldToken], period: str, found: HeldToken) -> None:
        held[period] = found
        kept = dict(sorted(held.items())[-WALLET_PERIODS:])
        text = json.dumps({p: asdict(t) for p, t in kept.items()}, indent=1)
        write_atomic(self.path, text.encode(), mode=0o600)


class HubIssuer:
    """Asks the hub's token route, authenticated by the device's download token, through the
    same HTTP client (base URL, TLS settings) the update fetcher uses."""

    def __init__(
        self, source: str, download_token: str | None, ca_file: Path | None = None
    ) -> None:
        self.source = source
        self.download_token = download_token
        self.ca_file = ca_file  # the hub CA the enrollment pinned (None: the system's)

    def issue(self, request: TokenRequest) -> TokenResponse:
        import httpx
        from pydantic import ValidationError

        from edge_agent.updates.fetchers import HttpFetcher, fetcher_for

        base, fetcher = fetcher_for(self.source, self.download_token, ca_file=self.ca_file)
        try:
            if not isinstance(fetcher, HttpFetcher):
                raise TokenUnavailable(f"updates come from {self.source}, not a hub to ask")
            url = base.rstrip("/") + TOKEN_ISSUE_PATH
            response = fetcher.client.post(
                url,
                content=request.model_dump_json(),
                headers={"Content-Type": "application/json"},
                timeout=ISSUE_TIMEOUT_S,
            )
            if response.status_code != 200:
                raise TokenUnavailable(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
            return TokenResponse.model_validate_json(response.content)
        except httpx.HTTPError as exc:
            raise TokenUnavailable(f"the hub at {self.source} cannot be reached: {exc}") from None
        except ValidationError as exc:
            raise TokenUnavailable(f"the hub's answer is not a token response: {exc}") from None
        finally:
            fetcher.close()


TokenSource = Callable[[str, str], str | None]
