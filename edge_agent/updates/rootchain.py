"""Which TUF root a device may keep after enrolling with a hub.

A fresh device pins the root the (TLS-verified) hub hands it. A device that already trusts
a root keeps it: the hub must serve that very root at its version, and every later root it
serves must be signed by the threshold of the root before it and by its own (the TUF root
rotation rule, checked with python-tuf's Metadata API). A hub of another fleet, or one
whose newer root the trusted keys never signed, is refused.
"""

from __future__ import annotations

from collections.abc import Callable

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root

from edge_agent.updates.errors import NotTrusted

MAX_ROOT_ROTATIONS = 32


def parse_root(data: bytes, where: str) -> Metadata[Root]:
    """Root metadata signed by its own threshold; NotTrusted naming `where` otherwise."""
    try:
        root = Metadata[Root].from_bytes(data)
    except Exception as exc:  # the Metadata API raises several kinds for bad input
        raise NotTrusted(f"{where} is not TUF root metadata: {exc}") from None
    try:
        root.verify_delegate(Root.type, root)
    except UnsignedMetadataError as exc:
        raise NotTrusted(f"{where} is not signed by its own root keys: {exc}") from None
    return root


def check_hub_root_chain(
    trusted: bytes, fetch_root: Callable[[int], bytes | None], *, where: str
) -> int:
    """Prove the hub at `where` serves the chain of the trusted root: version N equal to it,
    each later version signed by the previous root's threshold. `fetch_root(v)` gives the
    hub's `v.root.json`, None when it has none. The newest version; NotTrusted if not."""
    current = parse_root(trusted, "the trusted root")
    version = current.signed.version
    served = fetch_root(version)
    if served is None or parse_root(served, f"{where}'s root v{version}").signed != current.signed:
        raise NotTrusted(
            f"{where} does not serve the root (v{version}) this device trusts: it belongs to "
            "another fleet; this device keeps its root and its enrollment"
        )
    for _ in range(MAX_ROOT_ROTATIONS):
        data = fetch_root(version + 1)
        if data is None:
            return version
        following = parse_root(data, f"{where}'s root v{version + 1}")
        if following.signed.version != version + 1:
            raise NotTrusted(
                f"{where}'s {version + 1}.root.json holds version {following.signed.version}"
            )
        try:
            current.verify_delegate(Root.type, following)
        except UnsignedMetadataError as exc:
            raise NotTrusted(
                f"{where}'s root v{version + 1} is not signed by the threshold of the root "
                f"this device trusts (v{version}): {exc}; this device keeps its root"
            ) from None
        current, version = following, version + 1
    raise NotTrusted(f"{where} serves more than {MAX_ROOT_ROTATIONS} root versions past ours")
