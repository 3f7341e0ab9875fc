"""Errors of the wire protocol, split by what went wrong.

MessageError                the bytes that arrived are not a message we may act on
├── MalformedMessage        not JSON, not an object, a field missing or out of bounds
├── OversizedMessage        over MAX_MESSAGE_BYTES, refused before parsing (and before sending)
├── UnsupportedVersion      a newer major schema version than this side understands
└── WrongTopic              not one of our topics, or a message on a topic that is not its
                            own (a device speaking for another)

DesiredStateRefused         a desired state that was delivered intact but must not be acted on
├── UnknownKey              signed by a key this device does not trust
├── BadSignature            the signature does not match the signed part (forged or altered)
├── MalformedDesired        signed correctly, but not a desired state this agent can read
├── WrongDevice             addressed to another device
├── Expired                 past its expiry time
└── Replayed                sequence not newer than the last one accepted
"""

from __future__ import annotations

from pydantic import ValidationError

# Several problems are listed, but never all of them: the message stays log-sized.
_MAX_PROBLEMS = 5


class MessageError(Exception):
    pass


class MalformedMessage(MessageError):
    pass


class OversizedMessage(MessageError):
    pass


class UnsupportedVersion(MessageError):
    pass


class WrongTopic(MessageError):
    pass


class DesiredStateRefused(Exception):
    pass


class UnknownKey(DesiredStateRefused):
    pass


class BadSignature(DesiredStateRefused):
    pass


class MalformedDesired(DesiredStateRefused):
    pass


class WrongDevice(DesiredStateRefused):
    pass


class Expired(DesiredStateRefused):
    pass


class Replayed(DesiredStateRefused):
    """Carries both numbers: an equal sequence is usually the retained message seen again
    after a reconnect, an older one is an attempt to roll the device back."""

    def __init__(self, message: str, *, sequence: int, last_sequence: int) -> None:
        super().__init__(message)
        self.sequence = sequence
        self.last_sequence = last_sequence


def describe(exc: ValidationError) -> str:
    """Field paths and problems of a validation error, without echoing the input."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False)[:_MAX_PROBLEMS]:
        where = ".".join(str(part) for part in error["loc"]) or "message"
        problems.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(problems)
    if more > 0:
        problems.append(f"and {more} more")
    return "; ".join(problems)


def shown(text: str, limit: int = 80) -> str:
    """A received string, quoted and cut short, so that logs stay readable."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."
