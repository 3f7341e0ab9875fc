"""The director key: the hub's Ed25519 key that signs each device's desired state.

Separate from the TUF keys on purpose: it says which release a device should run, never
what a release contains, so its loss cannot forge a release (every release a desired
state names must still be listed by TUF). Kept beside the repository keys:

    <keys>/director/director.key          private key, PKCS#8 PEM, 0600
    <keys>/director/director-keys.json    the public keys devices trust (a JSON list of PEM)
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.atomic import make_dirs, write_atomic

FOLDER = "director"
KEY_FILE = "director.key"
PUBLIC_FILE = "director-keys.json"


class DirectorKey:
    def __init__(self, keys_dir: Path) -> None:
        self.folder = keys_dir / FOLDER

    @property
    def public_keys_path(self) -> Path:
        return self.folder / PUBLIC_FILE

    def private_key(self) -> Ed25519PrivateKey:
        """The signing key, made on first use."""
        path = self.folder / KEY_FILE
        if not path.exists():
            make_dirs(self.folder)
            self.folder.chmod(0o700)
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_atomic(path, pem, mode=0o600)
            self._write_public([key])
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return loaded

    def public_pems(self) -> list[str]:
        """The public keys devices should trust (made with the key on first use)."""
        self.private_key()
        entries = json.loads(self.public_keys_path.read_bytes())
        return [str(entry) for entry in entries]

    def _write_public(self, keys: list[Ed25519PrivateKey]) -> None:
        pems = [
            k.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
            for k in keys
        ]
        write_atomic(self.public_keys_path, json.dumps(pems, indent=1).encode())
