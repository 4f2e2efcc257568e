"""The OpenAPI document covers every route, and a bounded schemathesis run against the app on
loopback finds no 5xx and no response outside the document."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from broker.auth.broker_key import load_or_create_broker_key
from broker.auth.tokens import DEFAULT_AUDIENCE, DEFAULT_ISSUER, issue_token
from broker.demo import prepare_environment
from broker.service import Broker
from broker.settings import Settings
from broker.transports.openapi import document

SCHEMA = schemathesis.openapi.from_dict(document())


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx: object, value: object) -> bytes:
    """A checkpoint log (POST /v1/audit/verify): one JSON value per line."""
    items = value if isinstance(value, list) else [value]
    return "\n".join(json.dumps(item) for item in items).encode()


class RunningBroker:
    """An embedded broker on its own event loop in a thread, for synchronous HTTP clients."""

    def __init__(self, work: Path) -> None:
        env = prepare_environment(work / "env")
        self.settings = Settings(
            policy_dir=env.policy_dir,
            keys_dir=env.keys_dir,
            secrets_file=env.secrets_file,
            data_dir=work / "var",
            http_port=0,
        )
        self.broker = Broker(self.settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> RunningBroker:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.broker.start(), self.loop).result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.broker.stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    def token(self, role: str, consumer: str | None = None) -> str:
        kid, key = load_or_create_broker_key(self.settings.effective_broker_key)
        return issue_token(
            key, kid, sub="fuzz", role=role, consumer=consumer, ttl=timedelta(hours=1),
            issuer=DEFAULT_ISSUER, audience=DEFAULT_AUDIENCE,
        )  # fmt: skip


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    with RunningBroker(tmp_path_factory.mktemp("openapi")) as rb:
        yield rb


def test_every_route_is_documented(running: RunningBroker) -> None:
    from broker.transports.http_app import PIPELINE

    assert running.broker.runner is not None
    app = running.broker.runner.app
    assert PIPELINE in app
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD"
        and route.resource is not None
        # the IG console's HTML pages are not API (tests/test_console.py lists and tests them)
        and not route.resource.canonical.startswith("/console")
    }
    documented = {(method, path) for path, ops in document()["paths"].items() for method in ops}
    assert served == documented


@SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms(case: schemathesis.Case, running: RunningBroker) -> None:
    # An IG token: audit routes are exercised past authentication; feed routes answer 403 (and an
    # event stream, which never ends by design, is never opened).
    case.call_and_validate(
        base_url=running.broker.url,
        headers={"Authorization": f"Bearer {running.token('ig')}"},
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )
