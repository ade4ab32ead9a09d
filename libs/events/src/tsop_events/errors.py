"""The platform's domain errors: raised by domain and command code, mapped once to HTTP by ``http.create_app``.

No I/O and no web framework here, so a pure domain module may raise them. Each
names the field it is about (when there is one) and the reason in words a
caller can act on; ``http`` renders them as RFC 9457 problem+json (or as TMF
``Error`` bodies under ``/tmf-api``).
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A refusal: nothing was changed. Subclasses set the HTTP status a caller sees."""

    status = 422
    title = "Invalid request"

    def __init__(self, reason: str, field: str | None = None, *, retry_after: float | None = None, **extra: Any):
        super().__init__(f"{field}: {reason}" if field else reason)
        self.reason, self.field, self.retry_after, self.extra = reason, field, retry_after, extra

    @property
    def errors(self) -> list[dict[str, str]]:
        return [{"field": self.field, "reason": self.reason}] if self.field else []


class Invalid(DomainError):
    """The input is well-formed but the domain refuses it (an unknown type, a score out of range)."""


class NotFound(DomainError):
    status, title = 404, "Not found"


class Forbidden(DomainError):
    """The caller is known but may not do this (another channel's ticket, another technician's work)."""

    status, title = 403, "Forbidden"


class Conflict(DomainError):
    """The thing's state refuses the change (a closed ticket rated again)."""

    status, title = 409, "Not allowed in this state"


class NotYet(DomainError):
    """Allowed soon, not now (an event this service has not heard yet): retry after ``retry_after`` seconds."""

    status, title = 409, "Not yet"


class TooMany(DomainError):
    """Over a limit: retry after ``retry_after`` seconds."""

    status, title = 429, "Too many requests"
