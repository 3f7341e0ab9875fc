"""Errors of the model registry, split by who is at fault.

RegistryError (base)
├── RepositoryStateError   the repository folder is missing, already exists, or is damaged
├── SigningKeyError        a signing key is missing, unreadable, too open, or not the one
│                          the root metadata names
├── ReleaseNotFound        no such model version is listed
└── ReleaseRefused         the release itself is wrong: name, version, model folder, files
    └── SmokeTestFailed    the model did not load or generate

The model builder's own failures are ConversionError (hub.registry.convert).
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of every error this package raises on purpose."""


class RepositoryStateError(RegistryError):
    pass


class SigningKeyError(RegistryError):
    pass


class ReleaseNotFound(RegistryError):
    pass


class ReleaseRefused(RegistryError):
    pass


class SmokeTestFailed(ReleaseRefused):
    pass
