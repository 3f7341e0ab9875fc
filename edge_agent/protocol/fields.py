"""Field types every wire schema shares: model names, release versions, hashes.

Validated with `fullmatch`: `re.match` with `$` would let a trailing newline through.
"""

from __future__ import annotations

import functools
from typing import Annotated

from packaging.version import InvalidVersion, Version
from pydantic import AfterValidator

from edge_agent.protocol.errors import shown
from edge_agent.protocol.layout import MODEL_NAME, SHA256_HEX, VERSION_TEXT


@functools.lru_cache(maxsize=4096)  # a fleet reports few distinct versions, very often
def _version(value: str) -> str:
    if not VERSION_TEXT.fullmatch(value):
        raise ValueError("versions are 1-64 of 0-9 A-Z a-z . + _ -")
    try:
        Version(value)
    except InvalidVersion:
        raise ValueError(f"{shown(value)} is not a release version (e.g. 1.4.0)") from None
    return value


def _model_name(value: str) -> str:
    if not MODEL_NAME.fullmatch(value):
        raise ValueError("model names are 1-64 of a-z 0-9 . _ -, starting alphanumeric")
    return value


def _sha256_hex(value: str) -> str:
    if not SHA256_HEX.fullmatch(value):
        raise ValueError("must be 64 lowercase hex digits")
    return value


ReleaseVersion = Annotated[str, AfterValidator(_version)]
ModelName = Annotated[str, AfterValidator(_model_name)]
Sha256Hex = Annotated[str, AfterValidator(_sha256_hex)]
