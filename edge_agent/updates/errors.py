"""Errors of the update client, split by who is at fault.

UpdateError
├── NotTrusted          no trusted root is pinned on this device: provision it first
├── RepositoryError     the repository sent something bad (signature, expiry,
│                       rollback, hashes, lengths): nothing was installed
├── DownloadFailed      the transfer failed; what arrived is kept, retry resumes
├── Refused             signed and fresh, but not allowed here (older than the
│   │                   floor, revoked, failed before, wrong model)
│   └── NoRoom          the disk lacks the space, or the file system the names, it
│                       needs: refused before anything is written
├── InstallFailed       the device could not write or activate the new version (an
│                       OS error, a damaged store); the previous version stays active
├── StateDamaged        the update state file is unreadable; moved aside, the update
│                       machine starts afresh
└── HealthCheckFailed   the new version did not load or generate; rolled back
"""

from __future__ import annotations


class UpdateError(Exception):
    pass


class NotTrusted(UpdateError):
    pass


class RepositoryError(UpdateError):
    pass


class DownloadFailed(UpdateError):
    pass


class AccessDenied(DownloadFailed):
    pass


class Refused(UpdateError):
    pass


class NoRoom(Refused):
    pass


class InstallFailed(UpdateError):
    pass


class StateDamaged(UpdateError):
    pass


class HealthCheckFailed(UpdateError):
    pass
