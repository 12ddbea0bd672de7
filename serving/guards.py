"""What stands between the network and the cascade: a bound on classify requests in progress
(past it 429 with ``Retry-After``), a request-body byte cap and a UTF-8 check (before any
parsing), the one reader of JSON bodies (``parse_json``: strict, and safe against nesting), and
the bearer token of the admin operations. Plain classes, testable without Ray."""

from __future__ import annotations

import hmac
import json
import os
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

from pydantic import BaseModel, ValidationError

ADMIN_TOKEN_ENV = "CASCADE_ADMIN_TOKEN"
FEEDBACK_TOKEN_ENV = "CASCADE_FEEDBACK_TOKEN"
# the Open Inference Protocol's binary tensor data extension (``serving.kserve.HEADER_LENGTH``):
# a request that carries it has raw tensor bytes after its JSON, not text
BINARY_TENSOR_HEADER = b"inference-header-content-length"
JSON_MEDIA_TYPE = "application/json"

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
    400 to a body that is not UTF-8, unless it carries binary tensor data (the V2 extension,
    whose JSON header and BYTES elements ``serving.kserve`` checks itself). The body, once read
    here, is replayed to the app."""

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
            binary = any(name.lower() == BINARY_TENSOR_HEADER for name, _ in scope.get("headers", ()))
            try:
                if not binary:
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


Model = TypeVar("Model", bound=BaseModel)


class InvalidJson(ValueError):
    """A request body that is not JSON, or too deeply nested to read; ``str`` names the problem."""


def parse_json(model: type[Model], raw: bytes) -> Model:
    """A request body validated as ``model``, strictly (a number where a text belongs is
    refused, and so is a text or a bool where a number belongs), by pydantic-core straight from
    its bytes: on the hot path this skips decoding into Python objects. JSON that pydantic-core
    refuses but Python's parser takes (a lone surrogate escape) is validated from Python objects,
    so that the service's own checks can name the item. pydantic-core refuses JSON nested more
    than a couple of hundred levels deep, and such a body never reaches Python's recursive parser.

    Raises ``InvalidJson`` for a body that is empty or not JSON, and pydantic's
    ``ValidationError`` for JSON that is not a ``model``."""
    if not raw or raw.isspace():  # isspace stops at the first other byte; strip would copy the body
        raise InvalidJson("body: empty; expected a JSON object")
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as err:
        first = err.errors()[0]
        if first["type"] != "json_invalid":
            raise
        problem = first.get("ctx", {}).get("error", first["msg"])
    if "recursion limit" in problem:
        raise InvalidJson(f"body: not valid JSON: nested too deeply ({problem})")
    try:
        value = json.loads(raw)
    except RecursionError:  # deeper than Python's parser goes: pydantic-core stopped earlier at something else
        raise InvalidJson("body: not valid JSON: nested too deeply") from None
    except ValueError:
        raise InvalidJson(f"body: not valid JSON: {problem}") from None
    return model.model_validate(value, strict=True)


def content_type_refusal(header: str | None, also: tuple[str, ...] = ()) -> str | None:
    """None when a body declared as ``header`` may be read as JSON (``application/json``, a
    ``+json`` type, any of ``also``, or no declared type: JSON is assumed), else the problem."""
    if header is None:
        return None
    media, *parameters = (part.strip() for part in header.split(";"))
    media = media.lower()
    if media != JSON_MEDIA_TYPE and not (media.startswith("application/") and media.endswith("+json")) and media not in also:
        expected = " or ".join((JSON_MEDIA_TYPE, *also))
        return f"content-type: expected {expected}, got {header!r}"
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            return f"content-type: charset {value.strip()!r}; JSON bodies are read as UTF-8"
    return None


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
