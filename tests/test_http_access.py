"""Analysts' feeds and the IG audit API over real HTTP on loopback: tokens, rights, paging,
CSV, event streams, traces, retention, agreements; every read and refusal audited."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import timedelta
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
            async with session.post(broker.url + "/v1/events", data=body) as resp:
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


async def test_token_attack_matrix_is_401_and_audited(broker: Broker) -> None:
    kid, key = load_or_create_broker_key(broker.settings.effective_broker_key)
    cases = attack_tokens(key, kid, issuer=DEFAULT_ISSUER, audience=DEFAULT_AUDIENCE)
    assert len(cases) >= 18
    audited = []
    for name, tok, expected in cases:
        status, body, _ = await get(broker, "/v1/feeds/derby-csp-analysts/records", tok)
        if len(tok) > 8000:
            # aiohttp's HTTP parser refuses a header line over 8 KiB before any handler runs.
            assert status == 400, name
            continue
        assert status == 401, name
        assert body["reason"] == expected, name
        audited.append(expected)
    denied = audit_entries(db(broker), "access_denied")
    assert [d["reason"] for d in denied] == audited
    text = json.dumps(denied)
    assert all(tok not in text for _, tok, _ in cases if len(tok) > 20)  # tokens are never stored


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
    assert (await get(broker, "/v1/feeds/derbyshire-police-licensing/records", tok))[1]["count"] == 0
    entries = audit_entries(db(broker), "purged")
    assert sum(e["count"] for e in entries) == 6
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
