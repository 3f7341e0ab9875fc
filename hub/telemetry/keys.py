"""The hub's per-period keys for the anonymous telemetry token, and checking a report's token.

Why a VOPRF (RFC 9497, ristretto255-SHA512, through the maintained `voprf` package) and not
blind RSA (RFC 9474): the hub both issues and redeems the tokens, so a privately verifiable
token is enough, and it is smaller (a 32-byte request, a 64-byte token) and cheaper to make
and check than an RSA signature. The VOPRF's DLEQ proof lets every device check that the hub
evaluated with the one public key of the period, so the hub cannot mark a device by giving
it a key of its own (a device that compares keys with others would see it).

One key per ISO week (the pseudonym's period), derived from one 32-byte seed with RFC 9497's
DeriveKeyPair(seed, info=period): keys rotate with the pseudonyms, so tokens of two weeks
share nothing, and no per-period key needs storing. The seed stays on the hub (0600); who
holds it could mint tokens, that is make devices up.
"""

from __future__ import annotations

import hmac
import secrets
import stat
import threading
from collections import OrderedDict
from pathlib import Path

from voprf import ristretto

from edge_agent.atomic import write_atomic
from edge_agent.protocol.errors import MessageError
from edge_agent.protocol.telemetry import TelemetryReport, token_input

SEED_BYTES = 32
_KEY_INFO = b"edge-fleet telemetry token key v1\0"
# Verified (period, pseudonym, token): a device sends many reports a week with the same
# token, so the writer checks each token once, not once per report.
VERIFIED_CACHE = 65_536


class MissingToken(MessageError):
    """A telemetry report without the anonymous token of an enrolled device."""


class InvalidToken(MessageError):
    """A token that the period's key did not make for this pseudonym (forged, another
    period's, or shown beside a pseudonym it was not issued for)."""


class TokenKeyError(Exception):
    pass


def seed_file(identity_dir: Path) -> Path:
    """Where the hub keeps the seed: beside its CA, with the other online secrets."""
    return identity_dir / "telemetry-token.seed"


def load_or_create_seed(path: Path) -> bytes:
    """The token key seed at `path`, made (0600) if there is none yet."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, secrets.token_bytes(SEED_BYTES), mode=0o600)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o600)  # whoever reads it can invent devices
    seed = path.read_bytes()
    if len(seed) != SEED_BYTES:
        raise TokenKeyError(
            f"{path}: the telemetry token seed is {len(seed)} bytes, expected {SEED_BYTES}; "
            "restore it from backup, or delete it to make a new one (devices then need new "
            "tokens, which they fetch by themselves next period)"
        )
    return seed


class PeriodKeys:
    """The VOPRF key of each period, derived on first use and kept for a few periods."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise TokenKeyError(f"a token seed is {SEED_BYTES} bytes, not {len(seed)}")
        self._seed = seed
        self._evaluators: OrderedDict[str, ristretto.Evaluator] = OrderedDict()
        self._lock = threading.Lock()  # the HTTP server issues from several threads

    def evaluator(self, period: str) -> ristretto.Evaluator:
        with self._lock:
            found = self._evaluators.get(period)
            if found is None:
                found = ristretto.Evaluator.from_seed(self._seed, _KEY_INFO + period.encode())
                self._evaluators[period] = found
                if len(self._evaluators) > 8:
                    self._evaluators.popitem(last=False)
            return found

    def public_key(self, period: str) -> bytes:
        return self.evaluator(period).public_key.serialize()

    def evaluate(self, period: str, blinded: bytes) -> bytes:
        """BlindEvaluate with proof; ValueError when `blinded` is no valid element."""
        element = ristretto.BlindedInput.deserialize(blinded)
        return self.evaluator(period).evaluate(element).serialize()

    def token(self, period: str, pseudonym: str) -> bytes:
        """The token of `pseudonym` in `period`, computed directly (RFC 9497 Evaluate)."""
        return self.evaluator(period).evaluate_known_input(token_input(period, pseudonym))


class TokenVerifier:
    """Checks the token of each telemetry report before it is stored."""

    def __init__(self, keys: PeriodKeys, cache_size: int = VERIFIED_CACHE) -> None:
        self.keys = keys
        self._verified: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._cache_size = cache_size

    def check(self, report: TelemetryReport) -> None:
        """MissingToken or InvalidToken unless the report's token is valid for its
        pseudonym and period."""
        if report.token is None:
            raise MissingToken(
                "a telemetry report without a device token is refused (agents older than "
                "the token: upgrade them)"
            )
        key = (report.period, report.pseudonym, report.token)
        if key in self._verified:
            self._verified.move_to_end(key)
            return
        expected = self.keys.token(report.period, report.pseudonym)
        if not hmac.compare_digest(expected, bytes.fromhex(report.token)):
            raise InvalidToken(
                f"the token of a {report.period} report was not issued for its pseudonym in "
                "that period (forged, another period's, or another pseudonym's)"
            )
        self._verified[key] = None
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
