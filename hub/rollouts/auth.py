"""Who calls the API, and what their role lets them do.

For now an operator presents a bearer token from the hub's operator token file (only the
tokens' SHA-256 is stored, with the operator's name and role). `Authenticator` is the
plug-in point: console sessions can be added as another one, and roles stay the same.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from edge_agent.atomic import write_atomic

TOKEN_PREFIX = "eop_"


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    APPROVER = "approver"
    ADMIN = "admin"


class Permission(StrEnum):
    READ = "read"
    OPERATE = "operate"  # create, pause, resume, abort, rollback
    APPROVE = "approve"


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.OPERATOR: frozenset({Permission.READ, Permission.OPERATE}),
    Role.APPROVER: frozenset({Permission.READ, Permission.OPERATE, Permission.APPROVE}),
    Role.ADMIN: frozenset(Permission),
}


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role

    def may(self, permission: Permission) -> bool:
        return permission in GRANTS[self.role]


class Authenticator(Protocol):
    def authenticate(self, bearer: str) -> Principal | None: ...


class OperatorTokenError(ValueError):
    pass


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class OperatorTokens:
    """A JSON file: token SHA-256 -> {"name", "role"}, read at each request, so a token
    issued or removed by the CLI counts at once."""

    path: Path

    def authenticate(self, bearer: str) -> Principal | None:
        entry = self._load().get(_digest(bearer))
        return None if entry is None else Principal(entry["name"], Role(entry["role"]))

    def issue(self, name: str, role: Role) -> str:
        """A new token for `name` (replacing theirs); shown once, only its hash is kept."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        entries = {k: v for k, v in self._load().items() if v["name"] != name}
        entries[_digest(token)] = {"name": name, "role": str(role)}
        write_atomic(self.path, json.dumps(entries, indent=2).encode(), mode=0o600)
        return token

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise OperatorTokenError(f"{self.path} cannot be read: {exc}") from exc
        return {str(k): {"name": str(v["name"]), "role": str(v["role"])} for k, v in data.items()}


def authenticate(authenticators: Sequence[Authenticator], header: str) -> Principal | None:
    scheme, _sep, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    for authenticator in authenticators:
        principal = authenticator.authenticate(token.strip())
        if principal is not None:
            return principal
    return None
