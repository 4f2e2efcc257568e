"""The embedded broker end to end over real HTTP on loopback, with the SQLite store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from adapters.synthetic import SyntheticGenerator
from broker.demo import DemoEnvironment
from broker.ports.sqlite_store import verify_audit_file
from broker.service import Broker
from schemas import envelope
from tests.helpers import audit_entries, expected_records, quarantined, stored_records

# HTTP ingest takes JSON only (415 otherwise).
JSON = {"Content-Type": "application/json"}

EVENT_PARTNERS = [
    ("ae_assault", "uhdb-royal-derby-ed"),
    ("ae_assault", "crh-chesterfield-ed"),
    ("school_exclusion", "derby-city-education"),
    ("school_exclusion", "derbyshire-cc-education"),
    ("nte_incident", "derby-pubwatch"),
    ("nte_incident", "chesterfield-pubwatch"),
    ("police_sv_offence", "derbyshire-police"),
]


async def post(broker: Broker, body: bytes) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{broker.url}/v1/events", data=body, headers=JSON) as resp,
    ):
        return resp.status, await resp.json()


def db(broker: Broker) -> Path:
    return broker.settings.data_dir / "broker.db"


async def test_each_event_type_reaches_exactly_its_consumers(broker: Broker, env: DemoEnvironment) -> None:
    gen = SyntheticGenerator(seed=7)
    assert broker.registry is not None
    assert broker.policy is not None
    for event_type, partner in EVENT_PARTNERS:
        for _ in range(15):
            rec = gen.for_partner(partner, event_type)
            body = env.signers[partner].sign_bytes(event_type, rec.data(), source_key=rec.source_key)
            expected = expected_records(body, broker.registry, broker.policy)
            status, receipt = await post(broker, body)
            assert status == 202, receipt
            assert receipt["status"] == "accepted"
            assert receipt["records"] == len(expected)
            message_id = json.loads(body)["id"]
            stored = {
                held.consumer: held.record for held in stored_records(db(broker)) if held.message_id == message_id
            }
            assert set(stored) == set(expected), (event_type, partner)
            for consumer, record in stored.items():
                assert record["data"] == expected[consumer]  # exactly the allowed fields, transformed
                assert record["consumer"] == consumer
            assert "derbyshire-fire-analysts" not in stored
    # every type reached at least one consumer overall, and the unentitled consumer nothing at all
    held = stored_records(db(broker))
    assert "derbyshire-fire-analysts" not in {h.consumer for h in held}
    types = {h.event_type for h in held}
    assert types == {"ae_assault", "school_exclusion", "nte_incident", "police_sv_offence"}
    assert verify_audit_file(db(broker)).ok


def _bad_inputs(env: DemoEnvironment) -> list[tuple[str, bytes, int]]:
    gen = SyntheticGenerator(seed=11)
    police = env.signers["derbyshire-police"]
    out: list[tuple[str, bytes, int]] = []
    rec = gen.police_sv_offence()
    doc = police.sign("police_sv_offence", rec.data(), source_key=rec.source_key)
    doc["data"]["knife_involved"] = not doc["data"]["knife_involved"]
    out.append(("bad_signature", envelope.encode(doc), 401))
    rec = gen.police_sv_offence()
    out.append(
        ("unknown_key", env.stranger.sign_bytes("police_sv_offence", rec.data(), source_key=rec.source_key), 401)
    )
    rec = gen.police_sv_offence()
    out.append(("key_revoked", env.revoked.sign_bytes("police_sv_offence", rec.data(), source_key=rec.source_key), 401))
    rec = gen.school_exclusion()
    out.append(
        ("type_not_registered", police.sign_bytes("school_exclusion", rec.data(), source_key=rec.source_key), 403)
    )
    rec = gen.police_sv_offence()
    out.append(
        (
            "schema_invalid",
            police.sign_bytes("police_sv_offence", rec.data() | {"district": "E99999999"}, source_key="x1"),
            422,
        )
    )
    rec = gen.ae_assault()
    out.append(
        (
            "direct_identifier",
            env.signers["uhdb-royal-derby-ed"].sign_bytes(
                "ae_assault", rec.data() | {"nhs_number": "9434765919"}, source_key=rec.source_key
            ),
            422,
        )
    )
    out.append(("body_too_large", b'{"pad": "' + b"x" * 70000 + b'"}', 413))
    out.append(("malformed_json", b'{"specversion": "1.0",', 400))
    out.append(("duplicate_key", b'{"id": "a", "id": "b"}', 400))
    return out


async def test_bad_inputs_are_refused_quarantined_and_audited(broker: Broker, env: DemoEnvironment) -> None:
    for reason, body, http_status in _bad_inputs(env):
        status, receipt = await post(broker, body)
        assert status == http_status, (reason, receipt)
        assert receipt["status"] == "rejected"
        assert receipt["reason"] == reason
        assert receipt["message"]
    rejected = audit_entries(db(broker), "rejected")
    assert [entry["reason"] for entry in rejected] == [reason for reason, _, _ in _bad_inputs(env)]
    held = quarantined(db(broker))
    assert [item.reason for item in held] == [reason for reason, _, _ in _bad_inputs(env)]
    # the body refused for a direct identifier is not kept, only its hash
    kept = {item.reason: item.body is not None for item in held}
    assert kept["direct_identifier"] is False
    assert kept["bad_signature"] is True
    assert stored_records(db(broker)) == []
    assert audit_entries(db(broker), "released") == []


async def test_replay_is_a_duplicate_and_reused_id_is_refused(broker: Broker, env: DemoEnvironment) -> None:
    gen = SyntheticGenerator(seed=12)
    police = env.signers["derbyshire-police"]
    rec = gen.police_sv_offence()
    body = police.sign_bytes("police_sv_offence", rec.data(), source_key=rec.source_key)
    first = await post(broker, body)
    assert first[0] == 202
    # the same bytes again, and the same record re-signed later (an adapter re-run): duplicates
    again = await post(broker, body)
    resent = await post(broker, police.sign_bytes("police_sv_offence", rec.data(), source_key=rec.source_key))
    for status, receipt in (again, resent):
        assert status == 200
        assert receipt["status"] == "duplicate"
    # the same id carrying different content: refused, not swallowed
    other = rec.data() | {"knife_involved": not rec.data()["knife_involved"]}
    status, receipt = await post(broker, police.sign_bytes("police_sv_offence", other, source_key=rec.source_key))
    assert status == 400
    assert receipt["reason"] == "replayed"
    message_id = json.loads(body)["id"]
    assert len(audit_entries(db(broker), "duplicate")) == 2
    releases = len(audit_entries(db(broker), "released", message_id=message_id))
    records = sum(1 for held in stored_records(db(broker)) if held.message_id == message_id)
    assert releases == records
    assert records >= 1


async def test_concurrent_copies_release_once(broker: Broker, env: DemoEnvironment) -> None:
    rec = SyntheticGenerator(seed=13).ae_assault()
    body = env.signers["uhdb-royal-derby-ed"].sign_bytes("ae_assault", rec.data(), source_key=rec.source_key)
    results = await asyncio.gather(*(post(broker, body) for _ in range(8)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 7 + [202]
    message_id = json.loads(body)["id"]
    released = [e["record_id"] for e in audit_entries(db(broker), "released", message_id=message_id)]
    assert len(set(released)) == len(released) >= 1


async def test_health_and_readiness(broker: Broker) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{broker.url}/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"{broker.url}/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["ready"] is True
        async with session.get(f"{broker.url}/nope") as resp:
            assert resp.status == 404
            assert (await resp.json())["reason"] == "not_found"


async def test_audit_entries_hold_no_payload(broker: Broker, env: DemoEnvironment) -> None:
    rec = SyntheticGenerator(seed=14).nte_incident()
    body = env.signers["derby-pubwatch"].sign_bytes("nte_incident", rec.data(), source_key=rec.source_key)
    assert (await post(broker, body))[0] == 202
    text = json.dumps(audit_entries(db(broker)))
    for value in (rec.data()["premises_name"], rec.data().get("police_reference") or "\x00", rec.data()["lsoa"]):
        assert value not in text


async def test_one_id_with_two_contents_in_one_batch_is_refused(broker: Broker, env: DemoEnvironment) -> None:
    from broker.stages.outcome import Inbound, Status

    police = env.signers["derbyshire-police"]
    rec = SyntheticGenerator(seed=15).police_sv_offence()
    first = police.sign_bytes("police_sv_offence", rec.data(), source_key=rec.source_key)
    other = rec.data() | {"knife_involved": not rec.data()["knife_involved"]}
    second = police.sign_bytes("police_sv_offence", other, source_key=rec.source_key)
    assert broker.pipeline is not None
    outcomes = await broker.pipeline.process([Inbound(first), Inbound(second), Inbound(first)])
    assert [o.status for o in outcomes] == [Status.ACCEPTED, Status.REJECTED, Status.DUPLICATE]
    assert outcomes[1].reason == "replayed"
