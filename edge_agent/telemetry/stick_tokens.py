"""Anonymous telemetry tokens for a device with no link: asked for and answered by USB stick.

The same VOPRF issuance as online (edge_agent.telemetry.tokens), only slower: the running
service blinds a request, `edge-agent export` carries it to the hub inside the signed device
export, `edge-hub import` evaluates it (once per device and week, as online), the answer
comes back in the next stick's signed receipt, `edge-agent import` leaves it here, and the
service finalizes it (checking the hub's proof) into the wallet. The windows it held for
that week then go into the outbox, and out on the following export.

voprf 0.2.0 cannot save a blinding state (its Client has no serialisation), so the service
keeps it in memory and the files carry only what is public:

    <data dir>/telemetry/stick-tokens/<period>.request.json   TokenRequest (blinded element)
    <data dir>/telemetry/stick-tokens/<period>.answer.json    TokenResponse from the hub

If the service restarted between export and import, the answer cannot be unblinded; the hub
gives one token per device and week, so that week's reports stay held (logged) and the next
week is asked for anew.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import ValidationError
from voprf import ristretto

from edge_agent.atomic import write_atomic
from edge_agent.protocol.telemetry import token_input
from edge_agent.protocol.tokens import TokenRequest, TokenResponse

log = logging.getLogger(__name__)

SPOOL_DIR = "stick-tokens"
_REQUEST = ".request.json"
_ANSWER = ".answer.json"
MAX_SPOOL_BYTES = 64 * 1024


def spool_dir(telemetry_dir: Path) -> Path:
    return telemetry_dir / SPOOL_DIR


def pending_requests(telemetry_dir: Path) -> list[TokenRequest]:
    """The blinded requests waiting for a stick (for `edge-agent export`)."""
    found: list[TokenRequest] = []
    for path in sorted(spool_dir(telemetry_dir).glob(f"*{_REQUEST}")):
        try:
            found.append(TokenRequest.model_validate_json(path.read_bytes()[:MAX_SPOOL_BYTES]))
        except (OSError, ValidationError) as exc:
            log.warning("%s is unreadable (%s): left out of the export", path, exc)
    return found


def leave_answers(telemetry_dir: Path, answers: Iterable[TokenResponse]) -> int:
    """The hub's answers from a stick's receipt, for the service to finalize."""
    folder = spool_dir(telemetry_dir)
    count = 0
    for answer in answers:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(folder / f"{answer.period}{_ANSWER}", answer.model_dump_json().encode())
        count += 1
    return count


Keep = Callable[[str, str, str, str], None]  # (period, pseudonym, token hex, public key hex)


class StickTokens:
    """The service's side: blinds requests, keeps their state, finalizes answers."""

    def __init__(self, telemetry_dir: Path) -> None:
        self.folder = spool_dir(telemetry_dir)
        self._clients: dict[str, tuple[str, str, ristretto.Client]] = {}  # period -> state
        self._lock = threading.Lock()

    def token_for(self, period: str, pseudonym: str, keep: Keep) -> str | None:
        """The token if the stick brought its answer now (stored through `keep`); else a
        request is left for the next export and None is returned."""
        with self._lock:
            token = self._finalize(period, pseudonym, keep)
            if token is None:
                self._request(period, pseudonym)
            return token

    def _request(self, period: str, pseudonym: str) -> None:
        held = self._clients.get(period)
        if held is not None and held[0] == pseudonym:
            return  # asked already; the answer comes on a later stick
        client, blinded = ristretto.Client.blind(token_input(period, pseudonym))
        request = TokenRequest(period=period, blinded=blinded.serialize().hex())
        self._clients[period] = (pseudonym, request.blinded, client)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.folder / f"{period}{_REQUEST}", request.model_dump_json().encode())
        log.info("telemetry token for %s requested for the next USB stick", period)

    def _finalize(self, period: str, pseudonym: str, keep: Keep) -> str | None:
        path = self.folder / f"{period}{_ANSWER}"
        try:
            answer = TokenResponse.model_validate_json(path.read_bytes()[:MAX_SPOOL_BYTES])
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            log.warning("%s is unreadable (%s): dropped", path, exc)
            path.unlink(missing_ok=True)
            return None
        held = self._clients.get(period)
        path.unlink(missing_ok=True)
        if held is None or held[0] != pseudonym or answer.period != period:
            log.warning(
                "the stick brought a %s telemetry token answer, but this service no longer "
                "holds the request it answers (restarted since the export): that week's "
                "reports stay on this device",
                period,
            )
            return None
        try:
            output = held[2].finalize(
                ristretto.VerifiableOutput.deserialize(bytes.fromhex(answer.evaluated)),
                ristretto.PublicKey.deserialize(bytes.fromhex(answer.public_key)),
            )
        except ValueError as exc:
            log.warning(
                "the stick's %s token answer does not verify against the key it names (%s): "
                "it was not made for this request; dropped",
                period,
                exc,
            )
            return None
        del self._clients[period]
        (self.folder / f"{period}{_REQUEST}").unlink(missing_ok=True)
        keep(period, pseudonym, output.hex(), answer.public_key)
        log.info("telemetry token for %s finalized from a USB stick", period)
        return output.hex()
