"""The key ceremony, run on an offline machine: the fleet's root of trust.

`init_root` makes

    <ceremony>/root-keys/root-<keyid>.pem        one file per root key, each encrypted with
                                                  its own passphrase (one per key holder)
    <ceremony>/offline-bundle-<keyid>.pem        the offline-bundle role's key (encrypted):
                                                  signs USB bundle authorisations
    <ceremony>/<N>.root.json                     every root version signed here
    <hub-package>/<N>.root.json                  what goes to the hub: the signed root ...
    <hub-package>/{targets,snapshot,timestamp}-<keyid>.pem   ... and its online keys alone

The hub package is the hub's keys folder (`edge-hub repo init --root-metadata
<hub-package>/1.root.json --keys <hub-package>`): it never holds a private root key or the
bundle key. Root metadata is built with python-tuf's Metadata API; the offline-bundle role
is a field of the signed root (edge_agent.protocol.bundle.OFFLINE_ROLE_FIELD), so it is
trusted, and replaced, by the root threshold like the other roles.

`rotate_root` signs root version N+1 with the old root's threshold and the new one's, so
a device that trusts version N walks to N+1 (python-tuf checks both thresholds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    load_pem_private_key,
)
from securesystemslib.signer import CryptoSigner, Key, SSlibKey
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization.json import JSONSerializer

from edge_agent.atomic import write_atomic
from edge_agent.protocol.bundle import OFFLINE_ROLE_FIELD, OfflineRole

ROOT_KEYS_DIR = "root-keys"
ONLINE_ROLES = ("targets", "snapshot", "timestamp")
BUNDLE_ROLE = "offline-bundle"
MIN_PASSPHRASE_BYTES = 8
PRIVATE_MODE = 0o600


class CeremonyError(Exception):
    """A ceremony step could not be done; the message says what to fix."""


@dataclass(frozen=True)
class RootResult:
    root_file: Path  # the signed root, in the ceremony folder
    hub_root_file: Path  # the same bytes in the hub package
    version: int


def _encrypted_pem(signer: CryptoSigner, passphrase: bytes) -> bytes:
    if len(passphrase) < MIN_PASSPHRASE_BYTES:
        raise CeremonyError(
            f"a passphrase is shorter than {MIN_PASSPHRASE_BYTES} bytes; choose a longer one"
        )
    private = signer._private_key
    pem: bytes = private.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(passphrase)
    )
    return pem


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, data, mode=PRIVATE_MODE)


def load_encrypted_signer(path: Path, passphrase: bytes, key: Key | None = None) -> CryptoSigner:
    """The signer in an encrypted key file; `key`: the public key it must match."""
    try:
        private = load_pem_private_key(path.read_bytes(), password=passphrase)
    except FileNotFoundError:
        raise CeremonyError(f"{path}: no such key file") from None
    except (ValueError, TypeError) as exc:
        raise CeremonyError(
            f"{path}: cannot decrypt the key (wrong passphrase, or not an encrypted PEM key): {exc}"
        ) from None
    public = key if key is not None else SSlibKey.from_crypto(private.public_key())
    try:
        return CryptoSigner(private, public)  # type: ignore[arg-type]
    except ValueError as exc:
        raise CeremonyError(f"{path}: does not match key {public.keyid}: {exc}") from None


def _sign_and_check(
    md: Metadata[Root], signers: Sequence[CryptoSigner], previous: Root | None
) -> None:
    for signer in signers:
        md.sign(signer, append=True)
    result = md.signed.get_root_verification_result(previous, md.signed_bytes, md.signatures)
    if not result.verified:
        raise CeremonyError(
            "the new root is not signed by enough root keys (of the previous root and of the "
            "new one): bring more key holders and their passphrases"
        )


def _save_root(md: Metadata[Root], ceremony: Path, hub_package: Path) -> RootResult:
    data = md.to_bytes(JSONSerializer(compact=False))
    name = f"{md.signed.version}.root.json"
    for folder in (ceremony, hub_package):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(folder / name, data)
    return RootResult(ceremony / name, hub_package / name, md.signed.version)


def init_root(
    ceremony: Path,
    hub_package: Path,
    root_passphrases: Sequence[bytes],
    threshold: int,
    bundle_passphrase: bytes,
    *,
    root_days: int = 365,
    now: datetime | None = None,
) -> RootResult:
    """Make root keys (one per passphrase), the online keys, the offline-bundle key and the
    first root metadata."""
    if not 1 <= threshold <= len(root_passphrases):
        raise CeremonyError(
            f"threshold {threshold} must be between 1 and the number of root keys "
            f"({len(root_passphrases)})"
        )
    if any(ceremony.glob("*.root.json")):
        raise CeremonyError(f"{ceremony} already holds a root; use rotate-root to change it")
    now = now or datetime.now(UTC)
    root = Root(expires=(now + timedelta(days=root_days)).replace(microsecond=0))
    root_signers = []
    for passphrase in root_passphrases:
        signer = CryptoSigner.generate_ed25519()
        pem = _encrypted_pem(signer, passphrase)
        _write_private(ceremony / ROOT_KEYS_DIR / f"root-{signer.public_key.keyid}.pem", pem)
        root.add_key(signer.public_key, "root")
        root_signers.append(signer)
    root.roles["root"].threshold = threshold
    for role in ONLINE_ROLES:
        signer = CryptoSigner.generate_ed25519()
        _write_private(hub_package / f"{role}-{signer.public_key.keyid}.pem", signer.private_bytes)
        root.add_key(signer.public_key, role)
    bundle = CryptoSigner.generate_ed25519()
    pem = _encrypted_pem(bundle, bundle_passphrase)
    _write_private(ceremony / f"{BUNDLE_ROLE}-{bundle.public_key.keyid}.pem", pem)
    bundle_role = OfflineRole(
        keys={bundle.public_key.keyid: bundle.public_key.to_dict()}, threshold=1
    )
    root.unrecognized_fields[OFFLINE_ROLE_FIELD] = bundle_role.model_dump(mode="json")
    md = Metadata(root)
    _sign_and_check(md, root_signers, None)
    return _save_root(md, ceremony, hub_package)


def current_root(ceremony: Path) -> Metadata[Root]:
    versions = sorted(
        int(path.name.split(".")[0])
        for path in ceremony.glob("*.root.json")
        if path.name.split(".")[0].isdigit()
    )
    if not versions:
        raise CeremonyError(f"{ceremony}: no root metadata here; run init-root first")
    return Metadata[Root].from_file(str(ceremony / f"{versions[-1]}.root.json"))


def root_signers(ceremony: Path, root: Root, passphrases: Sequence[bytes]) -> list[CryptoSigner]:
    """Unlock the root keys of `root` found in the ceremony folder: each passphrase is tried
    on each key file, so key holders need not say which file is theirs."""
    signers: dict[str, CryptoSigner] = {}
    for keyid in root.roles["root"].keyids:
        path = ceremony / ROOT_KEYS_DIR / f"root-{keyid}.pem"
        if not path.is_file():
            continue
        for passphrase in passphrases:
            try:
                signers[keyid] = load_encrypted_signer(path, passphrase, root.get_key(keyid))
                break
            except CeremonyError:
                continue
    return list(signers.values())


def rotate_root(
    ceremony: Path,
    hub_package: Path,
    passphrases: Sequence[bytes],
    *,
    new_root_passphrases: Sequence[bytes] = (),
    retire: Sequence[str] = (),
    threshold: int | None = None,
    root_days: int = 365,
    now: datetime | None = None,
) -> RootResult:
    """Root version N+1: add a key per new passphrase, drop the `retire`d key ids, and sign
    with the old threshold (unlocked by `passphrases`) and the new one."""
    previous_md = current_root(ceremony)
    previous = previous_md.signed
    md = Metadata[Root].from_bytes(previous_md.to_bytes())
    md.signatures.clear()
    root = md.signed
    new_signers = []
    for passphrase in new_root_passphrases:
        signer = CryptoSigner.generate_ed25519()
        pem = _encrypted_pem(signer, passphrase)
        _write_private(ceremony / ROOT_KEYS_DIR / f"root-{signer.public_key.keyid}.pem", pem)
        root.add_key(signer.public_key, "root")
        new_signers.append(signer)
    for keyid in retire:
        root.revoke_key(keyid, "root")
    if threshold is not None:
        root.roles["root"].threshold = threshold
    if root.roles["root"].threshold > len(root.roles["root"].keyids):
        raise CeremonyError("the new root's threshold exceeds its number of root keys")
    root.version += 1
    now = now or datetime.now(UTC)
    root.expires = (now + timedelta(days=root_days)).replace(microsecond=0)
    old = root_signers(ceremony, previous, passphrases)
    still = [s for s in root_signers(ceremony, root, passphrases) if s not in old]
    _sign_and_check(md, [*old, *still, *new_signers], previous)
    return _save_root(md, ceremony, hub_package)


def bundle_signer(key_file: Path, passphrase: bytes, root: Root) -> CryptoSigner:
    """The offline-bundle key, checked against the role the root names."""
    field = root.unrecognized_fields.get(OFFLINE_ROLE_FIELD)
    if field is None:
        raise CeremonyError("the repository's root names no offline-bundle role")
    role = OfflineRole.model_validate(field)
    signer = load_encrypted_signer(key_file, passphrase)
    if signer.public_key.keyid not in role.keys:
        raise CeremonyError(
            f"{key_file}: not the offline-bundle key the current root names "
            f"({', '.join(role.keys)})"
        )
    return signer


def passphrase_from(path: Path) -> bytes:
    """A passphrase from a file (its first line), for unattended ceremonies and tests."""
    try:
        return path.read_bytes().splitlines()[0] if path.stat().st_size else b""
    except OSError as exc:
        raise CeremonyError(f"{path}: cannot read the passphrase file: {exc.strerror}") from None


def private_key_files(folder: Path) -> list[Path]:
    """Every file under `folder` that holds a PEM private key (for audits and tests)."""
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as handle:
                if b"PRIVATE KEY-----" in handle.read(1 << 20):
                    found.append(path)
    return found
