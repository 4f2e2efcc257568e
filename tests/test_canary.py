"""The canary test: unique values wherever a client can put one; none may surface where it must not.

The attack (issue 11): a hostile or careless client puts personal data, or a marker that stands
for it, in every string field of every event type (valid values and invalid ones), in request
headers (including ``Authorization``), in URL paths and query strings, in malformed HTTP, and
disconnects in the middle of an export and a stream. Afterwards no canary may appear in the
broker's log (every line of which must also be JSON), in its metrics, or in its audit trail; and a
canary may appear in a consumer's record only where that consumer's agreement keeps the field.

The broker runs as the real ``sv-broker serve`` process, its stderr captured to a file, so what is
checked is everything it wrote, aiohttp's own loggers included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import socket
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.synthetic import SyntheticGenerator
from broker.auth.broker_key import load_or_create_broker_key
from broker.auth.tokens import DEFAULT_AUDIENCE, DEFAULT_ISSUER, issue_token
from broker.demo import prepare_environment
from broker.policy.loader import load_policy
from broker.policy.model import Action
from broker.policy.secrets import load_secrets
from broker.registry import load_registry
from schemas.events import EVENT_MODELS
from tests.helpers import audit_entries, stored_records
from tests.streams import Host
from tests.test_broker_embedded import EVENT_PARTNERS


def string_fields(event_type: str) -> dict[str, str | None]:
    """Every free-form string field of an event type (not an enum, not a timestamp), with its pattern."""
    (model,) = [m for (t, _), m in EVENT_MODELS.items() if t == event_type]
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    out: dict[str, str | None] = {}
    for name, prop in schema["properties"].items():
        options = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
        for option in options:
            spec = defs[option["$ref"].rsplit("/", 1)[1]] if "$ref" in option else option
            if spec.get("type") == "string" and "enum" not in spec and "format" not in spec:
                out[name] = spec.get("pattern")
    return out


def canary_for(pattern: str | None) -> str:
    """A fresh value the field accepts, as unique as its pattern allows."""
    digits = "".join(secrets.choice("0123456789") for _ in range(6))
    year = 30 + secrets.randbelow(60)
    candidates = [
        f"Canary {secrets.token_hex(8)}",
        "CN" + secrets.token_hex(4).upper()[:7],
        f"E01{digits}",
        digits,
        digits[:3],
        f"20{year:02d}/{year + 1:02d}",
    ]
    for value in candidates:
        if pattern is None or re.fullmatch(pattern.strip("^$"), value):
            return value
    raise AssertionError(f"no canary template fits the pattern {pattern!r}: add one (a new kind of field)")


def appears(canary: str, text: str) -> bool:
    """Whether ``canary`` occurs in ``text``. A value too short to be unique by itself (a 3- or
    6-digit code) counts only as a whole quoted or assigned token, so a count or a port does not
    match by chance."""
    if len(canary) >= 9:
        return canary in text
    return any(form in text for form in (f'"{canary}"', f"'{canary}'", f"={canary}", f"/{canary}"))


async def raw_http(port: int, request: bytes, *, read: bool = True) -> None:
    """Send bytes as they are (malformed HTTP, over-long headers) and read what comes back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    if read:
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(reader.read(65536), timeout=5)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_no_canary_reaches_logs_metrics_audit_or_unentitled_records(tmp_path: Path) -> None:
    env = prepare_environment(tmp_path / "env")
    key_path = tmp_path / "broker-key.pem"
    kid, key = load_or_create_broker_key(key_path)
    host = Host(
        "canary",
        [
            sys.executable, "-m", "broker.cli", "serve",
            "--policy-dir", str(env.policy_dir), "--keys-dir", str(env.keys_dir),
            "--secrets", str(env.secrets_file), "--broker-key", str(key_path), "--port", "0",
            "--log-level", "DEBUG",
        ],
        tmp_path,
    )  # fmt: skip
    host.start()
    url = host.url
    port = int(url.rsplit(":", 1)[1])

    def bearer(role: str, consumer: str | None, sub: str) -> dict[str, str]:
        token = issue_token(
            key, kid, sub=sub, role=role, consumer=consumer, ttl=timedelta(minutes=10),
            issuer=DEFAULT_ISSUER, audience=DEFAULT_AUDIENCE,
        )  # fmt: skip
        return {"Authorization": f"Bearer {token}"}

    canaries: dict[str, str] = {}  # canary -> the field (or place) it was put in
    gen = SyntheticGenerator(seed=61)
    bodies: list[bytes] = []
    for event_type, partner in EVENT_PARTNERS:
        for name, pattern in string_fields(event_type).items():
            rec = gen.for_partner(partner, event_type)
            good = canary_for(pattern)  # a value the schema accepts: the event may be released
            bad = f"Canary-{secrets.token_hex(8)}\n<script>"  # one it refuses: the refusal must not echo it
            canaries[good] = f"{event_type}.{name}"
            canaries[bad] = f"{event_type}.{name} (invalid)"
            for value in (good, bad):
                data = rec.data() | {name: value}
                bodies.append(env.signers[partner].sign_bytes(event_type, data, source_key=f"{name}-{value}"))
        # an unknown field and an identifier-like field carrying canaries: refused, never echoed
        rec = gen.for_partner(partner, event_type)
        for name in (f"canary_{secrets.token_hex(4)}", "nhsnumber"):
            value = f"Canary-{secrets.token_hex(8)}"
            canaries[value] = f"{event_type}.{name} (not in the schema)"
            data = rec.data() | {name: value}
            bodies.append(env.signers[partner].sign_bytes(event_type, data, source_key=f"{name}-{value}"))

    def mark(place: str) -> str:
        value = f"Canary{secrets.token_hex(8)}"
        canaries[value] = place
        return value

    analyst = bearer("analyst", "derby-csp-analysts", "analyst@example.org")
    ig = bearer("ig", None, "ig@example.org")
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            async with session.post(f"{url}/v1/events", data=body, headers={"Content-Type": "application/json"}) as r:
                await r.read()
        # headers, paths and query strings of every kind of route
        hostile = {
            "User-Agent": mark("User-Agent"),
            "X-Canary": mark("X-Canary"),
            "Cookie": f"session={mark('Cookie')}",
            "Referer": f"https://example.org/{mark('Referer')}",
            "X-Forwarded-For": mark("X-Forwarded-For"),
        }
        probes = [
            ("GET", f"/v1/feeds/{mark('feed path')}/records", analyst),
            ("GET", f"/v1/feeds/derby-csp-analysts/records?since={mark('since')}&{mark('query key')}=1", analyst),
            ("GET", f"/v1/feeds/derby-csp-analysts/records?cursor={mark('cursor')}", analyst),
            ("GET", "/v1/feeds/derby-csp-analysts/records", {"Authorization": f"Bearer {mark('bearer')}"}),
            ("GET", "/v1/feeds/derby-csp-analysts/records", {"Authorization": f"Basic {mark('basic')}"}),
            ("GET", "/v1/feeds/derby-csp-analysts/records", {"Authorization": mark("bare authorization")}),
            ("GET", f"/v1/audit/trace/{mark('trace path')}", ig),
            ("GET", f"/v1/audit/entries?kind={mark('kind')}&consumer={mark('consumer')}", ig),
            ("GET", f"/v1/audit/export?format={mark('format')}", ig),
            ("GET", f"/{mark('unknown path')}", {}),
            ("GET", f"/v1/agreements?{mark('agreements query')}", ig),
            ("DELETE", f"/v1/events/{mark('method path')}", {}),
            ("POST", "/v1/events", {"Content-Type": mark("content type")}),
        ]
        for method, path, headers in probes:
            async with session.request(method, f"{url}{path}", headers=hostile | headers) as r:
                await r.read()
        async with session.get(f"{url}/metrics") as r:
            metrics = await r.text()

    # malformed HTTP, over-long headers, a request line with a canary, a disconnect mid-body
    await raw_http(port, f"GET /{mark('malformed request line')} HTTP/9.9\r\n\r\n".encode())
    await raw_http(port, f"GARBAGE {mark('garbage method')}\r\n\r\n".encode())
    await raw_http(port, f"GET / HTTP/1.1\r\nHost: x\r\nX-Long: {mark('long header')}{'a' * 20000}\r\n\r\n".encode())
    await raw_http(port, f"GET / HTTP/1.1\r\nHost: x\r\n{mark('header name')}\r\n\r\n".encode())
    await raw_http(
        port,
        f"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nX-C: {mark('cut body')}\r\n\r\n{{".encode(),
        read=False,
    )
    # disconnect in the middle of an export and of an event stream
    for path in ("/v1/audit/export?format=csv", "/v1/feeds/derby-csp-analysts/stream"):
        headers = ig if "audit" in path else analyst
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Canary: {mark('disconnect ' + path)}\r\n"
        request += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request.encode())
            sock.recv(512)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        await asyncio.sleep(0.2)

    assert host.stop() == 0
    log = host.log_path.read_text(encoding="utf-8")
    for number, line in enumerate(log.splitlines(), 1):
        try:
            json.loads(line)
        except ValueError:
            pytest.fail(f"log line {number} is not JSON: {line[:300]}")
    store = tmp_path / "canary" / "broker.db"
    audit = json.dumps(audit_entries(store))
    for canary, place in canaries.items():
        assert not appears(canary, log), f"the canary from {place} reached the log"
        assert not appears(canary, metrics), f"the canary from {place} reached the metrics"
        assert not appears(canary, audit), f"the canary from {place} reached the audit trail"

    # records: a canary only where the consumer's agreement keeps that field as it is
    registry = load_registry(env.policy_dir, env.keys_dir)
    policy = load_policy(env.policy_dir, registry, load_secrets(env.secrets_file, {}))
    kept: set[tuple[str, str, str, str]] = set()  # (agreement, consumer, event type, field)
    for flow in policy.flows:
        for rule in flow.rules:
            if rule.action is Action.KEEP:
                kept.update((flow.agreement.id, c, flow.event_type, rule.field) for c in flow.consumers)
    held = stored_records(store)
    assert held, "nothing was released: the test would prove nothing"
    released_canaries = 0
    for item in held:
        text = json.dumps(item.record["data"])
        agreement: dict[str, Any] = item.record["agreement"]
        for canary, place in canaries.items():
            if appears(canary, text):
                event_type, _, field = place.partition(".")
                assert (agreement["id"], item.consumer, item.event_type, field) in kept, (
                    f"{item.consumer} received the canary from {place} under {agreement['id']}, "
                    "which does not keep that field"
                )
                released_canaries += 1
    assert released_canaries > 0, "no kept field carried a canary: the positive side is untested"
