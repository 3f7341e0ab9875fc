"""Issuance of the anonymous telemetry token: the HTTP exchange between device and hub.

Privacy Pass issuance (RFC 9576-9578) with a VOPRF (RFC 9497, ristretto255-SHA512): the
device blinds `token_input(period, pseudonym)` and sends only the blinded element; the hub
evaluates it with its key for that period, at most once per authenticated device and period,
and proves (DLEQ proof in `evaluated`) that it used the key `public_key`; the device checks
the proof and unblinds the output into its token. The hub sees a uniformly random element
at issuance and the unblinded output at redemption: nothing links the two.

    POST TOKEN_ISSUE_PATH   Authorization: Bearer <download token>
        TokenRequest  -> 200 TokenResponse
                      -> 409 token_already_issued (this device, this period)
                      -> 400 (malformed, or a period not open for issuance)
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from edge_agent.protocol.telemetry import Closed, IsoWeek

TOKEN_ISSUE_PATH = "/v1/telemetry/tokens"
MAX_TOKEN_REQUEST_BYTES = 1024
# Serialized sizes of ristretto255 elements, scalars and the voprf package's outputs.
BLINDED_BYTES = 32
PUBLIC_KEY_BYTES = 32
EVALUATED_BYTES = 96  # the evaluated element and its DLEQ proof (two scalars)


def _hex_of(size: int) -> AfterValidator:
    pattern = re.compile(rf"[0-9a-f]{{{2 * size}}}")

    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"must be {2 * size} lowercase hex digits ({size} bytes)")
        return value

    return AfterValidator(check)


class TokenRequest(Closed):
    period: IsoWeek
    blinded: Annotated[str, _hex_of(BLINDED_BYTES)]


class TokenResponse(Closed):
    period: IsoWeek
    public_key: Annotated[str, _hex_of(PUBLIC_KEY_BYTES)]
    evaluated: Annotated[str, _hex_of(EVALUATED_BYTES)]
