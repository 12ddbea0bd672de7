"""The request guard, the admin token and the redaction hook, without Ray."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serving.guards import BearerToken, GuardSettings, InFlightLimit, RequestGuard
from serving.redaction import RedactionError, load_redactor, mask_card_numbers_and_emails


def guarded_app(max_body_bytes: int = 100, max_in_flight: int = 4) -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestGuard)
    app.state.guard = GuardSettings(max_body_bytes, InFlightLimit(max_in_flight), retry_after_s=2, admin_token=BearerToken(None))

    @app.post("/v1/classify")
    async def echo(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    return app


def test_body_over_the_cap_gets_413_with_or_without_content_length():
    client = TestClient(guarded_app())
    assert client.post("/v1/classify", content=b"x" * 100).json() == {"bytes": 100}
    response = client.post("/v1/classify", content=b"x" * 101)
    assert response.status_code == 413 and "at most" not in response.json()["error"] and "100 bytes" in response.json()["error"]
    chunked = client.post("/v1/classify", content=iter([b"x" * 60, b"x" * 60]))  # no Content-Length
    assert chunked.status_code == 413


def test_invalid_utf8_gets_400_naming_the_byte():
    response = TestClient(guarded_app()).post("/v1/classify", content=b'{"inputs": "caf\xe9"}')
    assert response.status_code == 400 and response.json()["error"] == "request body: not valid UTF-8 at byte offset 15"


def test_requests_past_the_in_flight_bound_are_shed_with_retry_after():
    app = guarded_app(max_in_flight=0)
    response = TestClient(app).post("/v1/classify", content=b"{}")
    assert response.status_code == 429 and response.headers["retry-after"] == "2"
    assert "overloaded" in response.json()["error"]
    assert app.state.guard.in_flight.shed == 1


def test_in_flight_slots_are_given_back():
    app = guarded_app(max_in_flight=1)
    client = TestClient(app)
    assert [client.post("/v1/classify", content=b"{}").status_code for _ in range(3)] == [200] * 3
    assert app.state.guard.in_flight.in_flight == 0 and app.state.guard.in_flight.shed == 0


def test_admin_token():
    assert BearerToken(None).refusal("Bearer anything")[0] == 403
    assert "CASCADE_ADMIN_TOKEN" in BearerToken("").refusal(None)[1]
    token = BearerToken("s3cret")
    assert token.refusal(None)[0] == 401
    assert token.refusal("Basic s3cret")[0] == 401
    assert token.refusal("Bearer wrong")[0] == 401
    assert token.refusal("Bearer s3cret") is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("my card 4111 1111 1111 1111 was declined", "my card [CARD] was declined"),
        ("card 5555-5555-5555-4444", "card [CARD]"),
        ("number:4012888888881881.", "number:[CARD]."),
        ("write to ann.lee+bank@mail.example.co.uk today", "write to [EMAIL] today"),
        ("transfer 300 dollars on 12 05 2024", "transfer 300 dollars on 12 05 2024"),  # short digit runs stay
        ("call 555 1234", "call 555 1234"),
    ],
)
def test_default_redaction(text, expected):
    assert mask_card_numbers_and_emails(text) == expected


def test_redactor_specs():
    assert load_redactor("default") is mask_card_numbers_and_emails
    assert load_redactor("none") is None
    assert load_redactor("string:capwords")("a b") == "A B"
    for bad in ("nonsense", "no_such_module_xyz:f", "string:no_such_function", "string:ascii_letters"):
        with pytest.raises(RedactionError, match="log.redact"):
            load_redactor(bad)


def test_config_refuses_an_unusable_redaction_hook():
    from serving.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="log.redact"):
        load_config(log={"redact": "no_such_module_xyz:mask"})
    assert load_config(log={"redact": "none"}).log.redact == "none"


def test_config_keeps_the_shedding_bound_below_the_replica_capacity():
    from serving.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="max_in_flight"):
        load_config(ingress={"max_in_flight": 256, "max_ongoing_requests": 256})
