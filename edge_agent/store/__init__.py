"""The model store: content-addressed chunks, assembled versions, atomic activation."""

from edge_agent.store.errors import CorruptChunk, StoreError, VersionMissing
from edge_agent.store.store import InstalledVersion, ModelStore, release_of

__all__ = [
    "CorruptChunk",
    "InstalledVersion",
    "ModelStore",
    "StoreError",
    "VersionMissing",
    "release_of",
]
