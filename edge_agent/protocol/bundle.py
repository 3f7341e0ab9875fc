"""The USB bundle: what a stick carries to an air-gapped site, and its offline authorisation.

Layout of a stick (PATH is the folder the operator names, usually the stick's mount point):

    PATH/edge-bundle/authorisation.json          signed by the offline-bundle role (below)
    PATH/edge-bundle/repository/metadata/...     TUF metadata, as the hub's repository has it
    PATH/edge-bundle/repository/targets/...      the release index and the named manifests
    PATH/edge-bundle/repository/chunks/<aa>/<sha256>   content-addressed chunks, only those
                                                 the named devices lack
    PATH/edge-bundle/repository/receipts/<device-id>.json   message ids the hub has stored
                                                 (from an earlier stick): the device may drop them
    PATH/edge-bundle/repository/desired/<device-id>.json    the device's signed desired state
                                                 (director key) with its maintenance window
    PATH/edge-returns/devices/<device-id>/<export-id>.json  what a device writes back: state
                                                 reports and install events, signed by its key
    PATH/edge-returns/telemetry/<random>.json    its anonymous telemetry, unsigned and apart
                                                 (the VOPRF token in each report vouches for it)
    PATH/edge-enroll/requests/<device-id>.json   offline enrollment: CSR and token proof
    PATH/edge-enroll/responses/<device-id>.json  the hub's answer (certificate, CA, root...)

`repository/` is an ordinary release repository folder (edge_agent.protocol.layout): a
device that imported it holds the chunks in its store under the same names, so a LAN peer
can serve them by the same paths (`chunks/<aa>/<sha256>`) and every fetcher verifies them
against the signed manifest as usual.

The authorisation lists every file of `repository/` with its size and sha256: a device
copies only listed files, each at most its listed size, and checks each hash while copying,
so nothing else on the stick is ever read. It also pins the TUF timestamp by hash and says
when the hub issued it: the device checks the TUF metadata as of `issued_at` (when the hub
saw it fresh), and the authorisation's own validity (at most MAX_VALIDITY) against its
clock. Version floors and TUF's version rollback checks stay: an older release is refused.

Its key is the offline-bundle role, named in the signed root metadata under
OFFLINE_ROLE_FIELD, so it is trusted and rotated by the root keys like any TUF role.
No I/O here.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Signature, Signer, SSlibKey

from edge_agent.protocol.enrollment import EnrollmentResponse
from edge_agent.protocol.layout import MODEL_NAME, SHA256_HEX, VERSION_TEXT
from edge_agent.protocol.tokens import TokenRequest, TokenResponse

BUNDLE_DIR = "edge-bundle"
AUTHORISATION_FILE = "authorisation.json"
REPOSITORY_DIR = "repository"
RETURNS_DIR = "edge-returns"
DEVICE_RETURNS_DIR = "devices"
TELEMETRY_RETURNS_DIR = "telemetry"
RECEIPTS_DIR = "receipts"
DESIRED_DIR = "desired"
ENROLL_DIR = "edge-enroll"
MAX_ENROLL_FILE_BYTES = 4 * 1024 * 1024
MAX_RETURN_BYTES = 256 * 1024 * 1024
MAX_RETURN_MESSAGES = 200_000
MAX_STICK_TOKENS = 4
OFFLINE_ROLE_FIELD = "x-edge-offline-bundle"

MAX_VALIDITY = timedelta(days=90)
DEFAULT_VALIDITY = timedelta(days=30)
MAX_AUTHORISATION_BYTES = 64 * 1024 * 1024
MAX_FILES = 200_000
MAX_FILE_BYTES = 4 * 1024**3
MAX_DEVICES = 100_000

_COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")
_TOP_DIRS = ("metadata", "targets", "chunks", RECEIPTS_DIR, DESIRED_DIR)


def _relative_path(value: str) -> str:
    """A path inside repository/: known top folder, plain components, no '..' or '/'."""
    parts = value.split("/")
    if len(value) > 1024 or len(parts) > 8 or parts[0] not in _TOP_DIRS:
        raise ValueError(f"{value!r} is not a path inside the bundle's repository folder")
    for part in parts[1:]:
        if not _COMPONENT.fullmatch(part) or part in (".", ".."):
            raise ValueError(f"{value!r} has a component that is not a plain file name")
    return value


def _sha256(value: str) -> str:
    if not SHA256_HEX.fullmatch(value):
        raise ValueError(f"{value!r} is not a lowercase sha256 hex digest")
    return value


RelativePath = Annotated[str, AfterValidator(_relative_path)]
Sha256 = Annotated[str, AfterValidator(_sha256)]
DeviceId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
# A site peer's chunk server: https://host:port, nothing more (peers speak mutual TLS only).
PeerUrl = Annotated[
    str,
    Field(max_length=300, pattern=r"^https://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$"),
]
MAX_SITE_PEERS = 256


class BundleFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: RelativePath
    size: int = Field(ge=0, le=MAX_FILE_BYTES)
    sha256: Sha256


class BundleRelease(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Annotated[str, Field(pattern=MODEL_NAME.pattern)]
    version: Annotated[str, Field(pattern=VERSION_TEXT.pattern)]


class Authorisation(BaseModel):
    """The signed part of authorisation.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["edge-offline-authorisation"] = "edge-offline-authorisation"
    format: Literal[1] = 1
    bundle_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    site: Annotated[str, Field(min_length=1, max_length=128)]
    issued_at: datetime
    expires: datetime
    releases: Annotated[list[BundleRelease], Field(min_length=1, max_length=64)]
    devices: Annotated[list[DeviceId], Field(min_length=1, max_length=MAX_DEVICES)]
    groups: Annotated[list[str], Field(max_length=1024)] = []
    # The site's chunk peers: a device that imported this bundle asks them for chunks on
    # later updates (each chunk still checked against the signed manifest).
    peers: Annotated[list[PeerUrl], Field(max_length=MAX_SITE_PEERS)] = []
    timestamp_sha256: Sha256
    files: Annotated[list[BundleFile], Field(max_length=MAX_FILES)]

    @model_validator(mode="after")
    def _consistent(self) -> Authorisation:
        if self.issued_at.tzinfo is None or self.expires.tzinfo is None:
            raise ValueError("issued_at and expires must carry a time zone")
        if not self.issued_at < self.expires <= self.issued_at + MAX_VALIDITY:
            raise ValueError(
                f"expires must fall after issued_at and within {MAX_VALIDITY.days} days of it"
            )
        paths = [entry.path for entry in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("a file is listed twice")
        return self

    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)


class SignedAuthorisation(BaseModel):
    """authorisation.json: the envelope TUF metadata uses (signed + signatures)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    signed: dict[str, Any]
    signatures: Annotated[list[dict[str, str]], Field(min_length=1, max_length=16)]


class OfflineRole(BaseModel):
    """The offline-bundle role as the root metadata names it (OFFLINE_ROLE_FIELD)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: dict[str, dict[str, Any]]
    threshold: int = Field(ge=1)

    @model_validator(mode="after")
    def _enough_keys(self) -> OfflineRole:
        if self.threshold > len(self.keys):
            raise ValueError("the offline-bundle threshold exceeds its number of keys")
        return self


class AuthorisationRefused(Exception):
    """The authorisation is not one this device may act on; the message says why."""


def _canonical(signed: dict[str, Any]) -> bytes:
    text = encode_canonical(signed)
    assert text is not None  # returns None only when given an output function
    return text.encode()


def sign_authorisation(authorisation: Authorisation, signers: list[Signer]) -> bytes:
    """authorisation.json's bytes, signed by each of `signers` (offline-bundle keys)."""
    signed = authorisation.model_dump(mode="json")
    data = _canonical(signed)
    signatures = [signer.sign(data).to_dict() for signer in signers]
    envelope = SignedAuthorisation(signed=signed, signatures=signatures)
    return envelope.model_dump_json(indent=1).encode()


def offline_role(root_signed: dict[str, Any]) -> OfflineRole:
    """The offline-bundle role from a (verified) root's signed part."""
    field = root_signed.get(OFFLINE_ROLE_FIELD)
    if field is None:
        raise AuthorisationRefused(
            "this device's trusted root names no offline-bundle role, so it accepts no "
            "USB bundle; the fleet's root must be made by `edge-provision init-root` (or "
            "rotated by `edge-provision rotate-root`)"
        )
    try:
        return OfflineRole.model_validate(field)
    except ValidationError as exc:
        raise AuthorisationRefused(f"the root's offline-bundle role is malformed: {exc}") from exc


def verify_authorisation(data: bytes, role: OfflineRole) -> Authorisation:
    """The authorisation, once `role`'s threshold of keys has signed exactly these bytes.
    Scope and time are the caller's to check (they need the device's identity and clock)."""
    try:
        envelope = SignedAuthorisation.model_validate_json(data)
    except ValidationError as exc:
        raise AuthorisationRefused(f"authorisation.json is malformed: {exc}") from exc
    signed_bytes = _canonical(envelope.signed)
    good: set[str] = set()
    for raw in envelope.signatures:
        keyid = raw.get("keyid", "")
        key_dict = role.keys.get(keyid)
        if key_dict is None or keyid in good:
            continue
        try:
            key = SSlibKey.from_dict(keyid, dict(key_dict))
            key.verify_signature(Signature.from_dict(dict(raw)), signed_bytes)
        except Exception:  # noqa: S112 - any failure means this signature does not count
            continue
        good.add(keyid)
    if len(good) < role.threshold:
        raise AuthorisationRefused(
            f"the bundle's authorisation carries {len(good)} valid signatures of the "
            f"offline-bundle role, {role.threshold} are needed: the stick was not made by "
            "this fleet's hub, or it was altered; nothing was copied or installed"
        )
    try:
        return Authorisation.model_validate(envelope.signed)
    except ValidationError as exc:
        raise AuthorisationRefused(f"the signed authorisation is malformed: {exc}") from exc


class ReturnedMessage(BaseModel):
    """One outbox message, as the link would have published it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message_id: Annotated[str, Field(min_length=1, max_length=128)]
    topic: Annotated[str, Field(min_length=1, max_length=512)]
    payload: Annotated[str, Field(max_length=2 * 1024 * 1024)]  # base64


class DeviceExport(BaseModel):
    """The signed part of edge-returns/devices/<id>/<export-id>.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["edge-device-export"] = "edge-device-export"
    device_id: DeviceId
    export_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    created_at: datetime
    messages: Annotated[list[ReturnedMessage], Field(max_length=MAX_RETURN_MESSAGES)]
    # Blinded telemetry token requests (this week and the last at most): the hub evaluates
    # each once per device and week, and the answer comes back in the next stick's receipt.
    token_requests: Annotated[list[TokenRequest], Field(max_length=MAX_STICK_TOKENS)] = []


class SignedDeviceExport(BaseModel):
    """The file: the export's canonical JSON signed (ECDSA P-256, SHA-256, base64) by the
    device key, and the device certificate that the hub checks against its device CA."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    signed: dict[str, Any]
    signature: Annotated[str, Field(max_length=512)]
    certificate: Annotated[str, Field(max_length=16 * 1024)]


class TelemetryReturn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["edge-telemetry-return"] = "edge-telemetry-return"
    messages: Annotated[list[ReturnedMessage], Field(max_length=MAX_RETURN_MESSAGES)]


class Receipt(BaseModel):
    """receipts/<device-id>.json: messages of that device the hub has stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: DeviceId
    message_ids: Annotated[list[str], Field(max_length=10 * MAX_RETURN_MESSAGES)]
    # The hub's evaluations of the device's blinded token requests (see DeviceExport).
    tokens: Annotated[list[TokenResponse], Field(max_length=MAX_STICK_TOKENS)] = []


def export_signing_bytes(signed: dict[str, Any]) -> bytes:
    """What a device signs and the hub verifies: canonical JSON, as for authorisations."""
    return _canonical(signed)


class OfflineEnrollmentRequest(BaseModel):
    """A device's enrollment by stick. `proof` shows the one-time token without carrying
    it: HMAC-SHA256 keyed by the token's SHA-256 (what the hub stores) over the device id
    and the CSR, so a copy of the stick cannot enroll another key with it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: DeviceId
    csr_pem: Annotated[str, Field(min_length=1, max_length=16 * 1024)]
    proof: Sha256


class OfflineEnrollmentResponse(BaseModel):
    """The online answer, plus the hub's address for a later link and every root version
    (a device that already trusts a root walks the chain to the hub's, offline)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    answer: EnrollmentResponse
    hub_url: Annotated[str, Field(max_length=512)]
    roots: Annotated[list[str], Field(min_length=1, max_length=64)]


def enrollment_proof(token_sha256_hex: str, device_id: str, csr_pem: str) -> str:
    message = f"{device_id}\n{csr_pem}".encode()
    return hmac.new(token_sha256_hex.encode(), message, hashlib.sha256).hexdigest()


def token_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
