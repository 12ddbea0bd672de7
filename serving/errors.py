"""The one exception family of ``serving``: each error carries its HTTP status (and headers);
only the HTTP edge (``serving.http``) turns them into responses, as ``{"error": message}``."""

from __future__ import annotations


class ServingError(Exception):
    """A request the service cannot answer as asked; ``status`` is its HTTP status."""

    status = 400
    headers: dict[str, str] = {}

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidInput(ServingError):
    status = 422


class NotFound(ServingError):
    status = 404


class TooLarge(ServingError):
    status = 413


class Conflict(ServingError):
    status = 409


class Unavailable(ServingError):
    """Not ready, or a model every request needs is gone: the client may retry shortly."""

    status = 503
    headers = {"Retry-After": "1"}
