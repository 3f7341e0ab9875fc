"""Whether a release may be rolled out: listed by the TUF repository and not revoked."""

from __future__ import annotations

from collections.abc import Callable

from hub.registry.repo_settings import load_settings
from hub.registry.repository import ReleaseRepository

# None: the release may be rolled out; otherwise why not, for the operator.
ReleaseCheck = Callable[[str, str], str | None]


def repository_check(repository: ReleaseRepository) -> ReleaseCheck:
    def check(model: str, version: str) -> str | None:
        if version in repository.index().versions(model):
            return None
        if version in load_settings(repository.root).revoked.get(model, []):
            return f"{model} {version} is revoked: no device may install it; publish a new release"
        return (
            f"{model} {version} is not a published release: import it with `edge-hub model "
            "import` (`edge-hub model list` shows what is published)"
        )

    return check
