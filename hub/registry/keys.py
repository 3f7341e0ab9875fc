"""Signing keys of the release repository: Ed25519, one PEM file per role key.

    <keys_dir>/targets-<keyid>.pem        online keys, used by every publish and refresh
    <keys_dir>/snapshot-<keyid>.pem
    <keys_dir>/timestamp-<keyid>.pem
    <keys_dir>/root-keys/root-<keyid>.pem root keys: only a root change needs them, so the
                                          folder can live offline between key ceremonies
    <keys_dir>/retired/                   keys replaced by a rotation

Keys live outside the repository folder, which is served and copied to USB sticks.
Private key files are mode 0600 and refused when others could read them.
"""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

from edge_agent.atomic import write_atomic
from hub.registry.errors import SigningKeyError

ROOT_KEYS_DIR = "root-keys"
RETIRED_DIR = "retired"
ONLINE_ROLES = ("targets", "snapshot", "timestamp")
ROLES = ("root", *ONLINE_ROLES)
PRIVATE_MODE = 0o600


class KeyStore:
    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir

    def path_for(self, role: str, keyid: str) -> Path:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
        folder = self.keys_dir / ROOT_KEYS_DIR if role == "root" else self.keys_dir
        return folder / f"{role}-{keyid}.pem"

    def generate(self, role: str) -> CryptoSigner:
        """Make a new key for `role` and store its private half; returns its signer."""
        signer = CryptoSigner.generate_ed25519()
        path = self.path_for(role, signer.public_key.keyid)
        for folder in (self.keys_dir, path.parent):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, signer.private_bytes, mode=PRIVATE_MODE)
        return signer

    def load(self, role: str, key: Key) -> CryptoSigner:
        """The signer for `key`, which the root metadata names for `role`."""
        path = self.path_for(role, key.keyid)
        try:
            info = path.stat()
            pem = path.read_bytes()
        except FileNotFoundError:
            raise SigningKeyError(f"{path}: {self._missing_hint(role)}") from None
        except OSError as exc:
            raise SigningKeyError(
                f"{path}: cannot read the {role} signing key: {exc.strerror}"
            ) from None
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise SigningKeyError(
                f"{path}: the {role} signing key can be read by other users; "
                f"restrict it with `chmod 600 {path}`"
            )
        if not isinstance(key, SSlibKey):
            raise SigningKeyError(f"{path}: key type {key.keytype} is not supported here")
        try:
            private = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise SigningKeyError(f"{path}: not an unencrypted PEM private key: {exc}") from None
        try:
            return CryptoSigner(private, key)
        except ValueError as exc:  # KeyMismatchError is a ValueError too
            raise SigningKeyError(
                f"{path}: does not match key {key.keyid} that the root metadata names "
                f"for the {role} role: {exc}"
            ) from None

    def available(self, role: str, key: Key) -> bool:
        return self.path_for(role, key.keyid).is_file()

    def discard(self, role: str, keyid: str) -> None:
        """Delete a key that was made but never trusted (its root change failed)."""
        self.path_for(role, keyid).unlink(missing_ok=True)

    def retire(self, role: str, keyid: str) -> None:
        """Move a replaced key aside: the root no longer trusts it."""
        path = self.path_for(role, keyid)
        if not path.exists():
            return
        retired = self.keys_dir / RETIRED_DIR
        retired.mkdir(mode=0o700, exist_ok=True)
        path.replace(retired / path.name)

    def _missing_hint(self, role: str) -> str:
        if role == "root":
            return (
                "root signing key not found; root keys are kept offline: copy the "
                f"{ROOT_KEYS_DIR}/ folder back into {self.keys_dir} for this operation"
            )
        return (
            f"the {role} signing key is missing; restore it from backup, or rotate the "
            f"role to a new key with `edge-hub keys rotate {role}` (needs the root keys)"
        )
