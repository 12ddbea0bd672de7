"""What stands between the network and the cascade: a bound on classify requests in progress
(past it 429 with ``Retry-After``), a request-body byte cap and a UTF-8 check (before any
parsing), and the bearer token of the admin operations. Plain classes, testable without Ray."""

from __future__ import annotations

import hmac
import json
import os
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

ADMIN_TOKEN_ENV = "CASCADE_ADMIN_TOKEN"
FEEDBACK_TOKEN_ENV = "CASCADE_FEEDBACK_TOKEN"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def send_json_error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """Answer a raw ASGI request with ``{"error": message}``."""
    body = json.dumps({"error": message}).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


@dataclass
class GuardSettings:
    """What ``RequestGuard`` enforces; the ingress puts one in its FastAPI app's ``state.guard``."""

    max_body_bytes: int
    in_flight: "InFlightLimit"
    retry_after_s: int
    admin_token: "BearerToken"
    feedback_token: "BearerToken | None" = None  # None: feedback is off
    shed_paths: tuple[str, ...] = ("/v1/classify",)  # admin, health and stats are never shed


class RequestGuard:
    """ASGI middleware in front of the routes: (1) sheds requests to ``shed_paths`` past the
    in-flight bound with 429 and ``Retry-After``; (2) answers 413 to a body over
    ``max_bytes``, before anything parses it, with or without a ``Content-Length``; (3) answers
    400 to a body that is not UTF-8. The body, once read here, is replayed to the app."""

    def __init__(self, app: Callable):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings: GuardSettings | None = getattr(scope["app"].state, "guard", None) if "app" in scope else None
        if scope["type"] != "http" or settings is None:
            return await self.app(scope, receive, send)
        shed = scope["path"] in settings.shed_paths
        if shed and not settings.in_flight.try_enter():
            retry = {"retry-after": str(settings.retry_after_s)}
            return await send_json_error(send, 429, "overloaded: too many requests in progress; retry later", retry)
        try:
            body = await self._read_body(receive, send, settings.max_body_bytes)
            if body is None:
                return
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as err:
                return await send_json_error(send, 400, f"request body: not valid UTF-8 at byte offset {err.start}")
            await self.app(scope, _replay(body, receive), send)
        finally:
            if shed:
                settings.in_flight.leave()

    @staticmethod
    async def _read_body(receive: Receive, send: Send, max_bytes: int) -> bytes | None:
        """The whole body, or None after answering 413 (or when the client went away)."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_bytes:
                await send_json_error(send, 413, f"request body: more than {max_bytes} bytes")
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` once, then defers to the server's (for the disconnect)."""
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


class InFlightLimit:
    """A bound on requests in progress in one process; past it callers should shed the request.

    >>> limit = InFlightLimit(1)
    >>> limit.try_enter(), limit.try_enter()
    (True, False)
    >>> limit.leave(); limit.shed
    1
    """

    def __init__(self, max_in_flight: int, on_shed: Callable[[], None] | None = None):
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.shed = 0  # requests turned away since start
        self.on_shed = on_shed  # told of each shed request (the ingress counts it in its metrics)

    def try_enter(self) -> bool:
        """Take a slot, or count the request as shed and return False."""
        if self.in_flight >= self.max_in_flight:
            self.shed += 1
            if self.on_shed is not None:
                self.on_shed()
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        """Give a slot back."""
        self.in_flight -= 1


class BearerToken:
    """A bearer token taken from an environment variable (``$CASCADE_ADMIN_TOKEN`` for admin
    operations, ``$CASCADE_FEEDBACK_TOKEN`` for feedback); with none set, what it guards is off."""

    def __init__(self, token: str | None, env: str = ADMIN_TOKEN_ENV, guards: str = "admin operations"):
        self.token = token or None
        self.env, self.guards = env, guards

    @classmethod
    def from_environment(cls, env: str = ADMIN_TOKEN_ENV, guards: str = "admin operations") -> "BearerToken":
        return cls(os.environ.get(env), env, guards)

    @classmethod
    def feedback(cls) -> "BearerToken":
        return cls.from_environment(FEEDBACK_TOKEN_ENV, "feedback")

    def refusal(self, authorization: str | None) -> tuple[int, str] | None:
        """None when ``authorization`` carries the token; else the status and message to answer."""
        if self.token is None:
            return 403, f"{self.guards}: turned off; set {self.env} in the serving environment to turn on"
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return 401, f"{self.guards}: send the header 'Authorization: Bearer <token>'"
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return 401, f"{self.guards}: token not accepted"
        return None
