"""Errors of the model store.

StoreError
├── CorruptChunk     bytes do not match the hash the signed manifest names
└── VersionMissing   no such installed version (nothing to activate or roll back to)
"""

from __future__ import annotations


class StoreError(Exception):
    pass


class CorruptChunk(StoreError):
    pass


class VersionMissing(StoreError):
    pass
