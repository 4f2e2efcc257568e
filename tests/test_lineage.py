"""Issue 12 items 3 and 4: corrections and withdrawals reach every consumer that holds a record,
under the record id it holds, with a revision number; a correction that ends a consumer's
entitlement withdraws the record from it; an older revision never overwrites a newer one; a
retention purge tells each consumer. Embedded (feeds) and over RabbitMQ (queues)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.synthetic import SyntheticGenerator
from broker.demo import DemoEnvironment
from broker.pipeline.trail import trace_entries
from broker.policy.decision import record_id
from broker.service import Broker
from broker.stages.outcome import Rejected
from broker.stages.replay import ReplayState
from broker.stages.types import Inbound
from schemas import envelope
from schemas.errors import ContractError, Reason
from tests import test_broker_amqp
from tests.helpers import audit_entries
from tests.test_broker_amqp import Harness, Starter
from tests.test_reload import broker_on, bump_revision, own_copy

start_broker = test_broker_amqp.start_broker

ED = "uhdb-royal-derby-ed"
DERBY, CHESTERFIELD = "E06000015", "E07000034"
DERBY_CSP, COUNTY_CSP, VRU = "derby-csp-analysts", "derbyshire-csp-analysts", "derbyshire-vru"
ISTV = "dsa-istv-ae-2026"


def derby_assault(seed: int) -> dict[str, Any]:
    """An A&E attendance in Derby: released to the Derby CSP and the VRU (not the county CSP)."""
    data = SyntheticGenerator(seed=seed).ae_assault().data() | {"district": DERBY}
    data["assault_method"] = "blunt_object"
    data.pop("assault_method_other", None)
    return data


def sign(
    env: DemoEnvironment, data: dict[str, Any], key: str, revision: int = 1, withdrawn: str | None = None
) -> bytes:
    return env.signers[ED].sign_bytes("ae_assault", data, source_key=key, revision=revision, withdrawn=withdrawn)


def first_id(env: DemoEnvironment, key: str) -> str:
    return env.signers[ED].message_id(key)


def rid(env: DemoEnvironment, key: str, consumer: str) -> str:
    return record_id(ED, first_id(env, key), consumer, ISTV)


async def post(broker: Broker, body: bytes) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(broker.url + "/v1/events", data=body, headers={"Content-Type": "application/json"}) as resp,
    ):
        answer: dict[str, Any] = await resp.json()
        return answer


async def feed(broker: Broker, consumer: str, *, history: bool = False) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(record id, kind, revision, body) of a consumer's feed, in cursor order."""
    assert broker.store is not None
    rows = await broker.store.feed_page(consumer, after=0, limit=1000, history=history)
    return [(r.record_id, r.kind, r.revision, json.loads(r.body)) for r in rows]


# -- the contract -------------------------------------------------------------------------------------
def _doc(env: DemoEnvironment, **changes: Any) -> dict[str, Any]:
    doc = env.signers[ED].sign("ae_assault", derby_assault(1), source_key="L-1", revision=2)
    for name, value in changes.items():
        if value is None:
            doc.pop(name, None)
        else:
            doc[name] = value
    return doc


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"revision": None}, "revision"),
        ({"supersedes": None}, "supersedes"),
        ({"revision": 1}, "revision"),
        ({"revision": True}, "revision"),
        ({"revision": "2"}, "revision"),
        ({"revision": 10000}, "revision"),
        ({"revision": 3}, "id"),  # the id must be <supersedes>:r<revision>
        ({"supersedes": "not an id"}, "supersedes"),
        ({"withdrawn": "changed_my_mind"}, "withdrawn"),
        ({"withdrawn": "sent_in_error"}, "data"),  # a withdrawal carries no event
        # a first id that looks like a revision's, or leaves no room for one
        ({"revision": None, "supersedes": None, "id": "uhdb-royal-derby-ed:0123456789abcdef:r2"}, "id"),
        ({"revision": None, "supersedes": None, "id": "u" * 123}, "id"),
    ],
)
def test_a_malformed_revision_is_refused_naming_the_attribute(
    env: DemoEnvironment, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(ContractError) as caught:
        envelope.envelope_from_document(_doc(env, **changes))
    assert caught.value.reason is Reason.ENVELOPE_INVALID
    assert caught.value.field == field


def test_a_withdrawal_without_a_revision_is_refused(env: DemoEnvironment) -> None:
    doc = env.signers[ED].sign("ae_assault", {}, source_key="L-1") | {"withdrawn": "sent_in_error"}
    with pytest.raises(ContractError) as caught:
        envelope.envelope_from_document(doc)
    assert caught.value.field == "supersedes"


def test_revision_ids_follow_from_the_first() -> None:
    assert envelope.revision_message_id("p:abc", 2) == "p:abc:r2"
    with pytest.raises(ValueError, match="supersedes"):
        envelope.build_signed(
            private_key=envelope.Ed25519PrivateKey.generate(),
            partner_id="p",
            keyid="k",
            event_type="ae_assault",
            version=1,
            message_id="p:0123456789",
            data={},
            produced_at=datetime.now(UTC),
            revision=2,
        )


# -- embedded -------------------------------------------------------------------------------------------
async def test_a_correction_reaches_each_consumer_as_revision_2_under_the_same_record_id(
    broker: Broker, env: DemoEnvironment
) -> None:
    data = derby_assault(2)
    first = await post(broker, sign(env, data, "L-2"))
    assert first["records"] == 2
    corrected = data | {"assault_method": "knife_or_sharp"}  # one field changed
    answer = await post(broker, sign(env, corrected, "L-2", revision=2))
    assert answer["status"] == "accepted"
    assert answer["records"] == 2
    assert answer["message_id"] == first_id(env, "L-2") + ":r2"
    for consumer in (DERBY_CSP, VRU):
        [(record, kind, revision, body)] = await feed(broker, consumer)
        assert (record, kind, revision) == (rid(env, "L-2", consumer), "record", 2)
        assert body["revision"] == 2
        assert body["data"]["assault_method"] == "knife_or_sharp"
        history = await feed(broker, consumer, history=True)
        assert [(h[0], h[2]) for h in history] == [(record, 1), (record, 2)]
        assert history[0][3]["data"]["assault_method"] == "blunt_object"
    assert await feed(broker, COUNTY_CSP) == []
    db = broker.settings.data_dir / "broker.db"
    released = audit_entries(db, "released", message_id=first_id(env, "L-2") + ":r2")
    assert {(e["consumer"], e["revision"], e["supersedes"]) for e in released} == {
        (DERBY_CSP, 2, first_id(env, "L-2")),
        (VRU, 2, first_id(env, "L-2")),
    }
    # the same revision again: a duplicate, nothing released twice
    again = await post(broker, sign(env, corrected, "L-2", revision=2))
    assert again["status"] == "duplicate"
    assert len(await feed(broker, DERBY_CSP, history=True)) == 2


async def test_a_correction_that_ends_an_entitlement_withdraws_the_record_from_that_consumer(
    broker: Broker, env: DemoEnvironment
) -> None:
    data = derby_assault(3)
    await post(broker, sign(env, data, "L-3"))
    moved = data | {"district": CHESTERFIELD}  # now the county CSP's, no longer the Derby CSP's
    answer = await post(broker, sign(env, moved, "L-3", revision=2))
    assert (answer["records"], answer["withdrawn"]) == (2, 1)
    [(record, kind, revision, notice)] = await feed(broker, DERBY_CSP, history=True)
    assert (record, kind, revision) == (rid(env, "L-3", DERBY_CSP), "withdrawn", 2)
    assert notice == {
        "notice": "withdrawn",
        "record_id": record,
        "consumer": DERBY_CSP,
        "agreement_id": ISTV,
        "revision": 2,
        "reason": "no_longer_entitled",
        "at": notice["at"],
    }
    [(county, _, county_revision, _)] = await feed(broker, COUNTY_CSP)
    assert (county, county_revision) == (rid(env, "L-3", COUNTY_CSP), 2)  # its first copy is revision 2
    assert [r[2] for r in await feed(broker, VRU)] == [2]
    db = broker.settings.data_dir / "broker.db"
    [entry] = audit_entries(db, "withdrawn")
    assert (entry["consumer"], entry["reason"], entry["record_id"]) == (DERBY_CSP, "no_longer_entitled", record)


async def test_a_withdrawal_reaches_every_consumer_that_got_the_record(broker: Broker, env: DemoEnvironment) -> None:
    data = derby_assault(4)
    await post(broker, sign(env, data, "L-4"))
    await post(broker, sign(env, data | {"patient_sex": "female"}, "L-4", revision=2))
    answer = await post(broker, sign(env, {}, "L-4", revision=3, withdrawn="sent_in_error"))
    assert (answer["status"], answer["records"], answer["withdrawn"]) == ("accepted", 0, 2)
    assert "withheld" not in answer
    for consumer in (DERBY_CSP, VRU):
        # the data of every revision is gone from the feed; the notice stays
        [(record, kind, revision, notice)] = await feed(broker, consumer, history=True)
        assert (record, kind, revision) == (rid(env, "L-4", consumer), "withdrawn", 3)
        assert notice["reason"] == "sent_in_error"
    # an older revision after the withdrawal is refused; the withdrawal stands
    late = await post(broker, sign(env, data | {"patient_sex": "female"}, "L-4", revision=2))
    assert late["status"] == "duplicate"  # the very revision 2 already applied: a resend
    other = await post(broker, sign(env, data | {"patient_sex": "male"}, "L-4", revision=2))
    assert other["status"] == "rejected"
    assert other["reason"] == "replayed"  # revision 2 has one content
    # a later correction reinstates it
    back = await post(broker, sign(env, data, "L-4", revision=4))
    assert back["records"] == 2
    assert [r[1:3] for r in await feed(broker, DERBY_CSP)] == [("record", 4)]
    trace = audit_entries(broker.settings.data_dir / "broker.db", record_id=rid(env, "L-4", DERBY_CSP))
    assert [e["kind"] for e in trace] == ["released", "released", "withdrawn", "released"]
    # ``audit trace`` follows the record through every revision's message
    assert broker.store is not None
    whole = await trace_entries(broker.store, rid(env, "L-4", DERBY_CSP), first_id(env, "L-4"))
    life = [(e["kind"], e["message_id"]) for e in (json.loads(whole[seq]) for seq in sorted(whole))]
    first = first_id(env, "L-4")
    r2, r3, r4 = (f"{first}:r{n}" for n in (2, 3, 4))
    assert life == [
        ("received", first), ("released", first), ("received", r2), ("released", r2), ("received", r3),
        ("withdrawn", r3), ("received", r2), ("duplicate", r2), ("received", r2), ("rejected", r2),
        ("received", r4), ("released", r4),
    ]  # fmt: skip


async def test_an_older_revision_never_overwrites_a_newer_one(broker: Broker, env: DemoEnvironment) -> None:
    data = derby_assault(5)
    await post(broker, sign(env, data | {"patient_sex": "male"}, "L-5", revision=3))  # revision 1 never arrived
    late_first = await post(broker, sign(env, data, "L-5"))
    assert (late_first["status"], late_first["reason"]) == ("rejected", "revision_superseded")
    late_second = await post(broker, sign(env, data, "L-5", revision=2))
    assert late_second["reason"] == "revision_superseded"
    assert "later revision stands" in late_second["message"]
    [(_, _, revision, body)] = await feed(broker, DERBY_CSP, history=True)
    assert (revision, body["data"]["patient_sex"]) == (3, "male")
    # a withdrawal of a record the broker never had: accepted, nobody to tell
    nothing = await post(broker, sign(env, {}, "L-5b", revision=2, withdrawn="duplicate_record"))
    assert (nothing["status"], nothing["records"]) == ("accepted", 0)
    assert "withdrawn" not in nothing
    gone = await post(broker, sign(env, derby_assault(6), "L-5b"))
    assert gone["reason"] == "revision_superseded"


async def test_the_feed_api_shows_the_latest_by_default_and_the_history_on_request(
    broker: Broker, env: DemoEnvironment
) -> None:
    from tests.test_http_access import get, token

    data = derby_assault(7)
    await post(broker, sign(env, data, "L-7"))
    await post(broker, sign(env, data | {"patient_sex": "female"}, "L-7", revision=2))
    tok = token(broker, "analyst", DERBY_CSP)
    _, latest, _ = await get(broker, f"/v1/feeds/{DERBY_CSP}/records", tok)
    assert [r["revision"] for r in latest["records"]] == [2]
    _, history, _ = await get(broker, f"/v1/feeds/{DERBY_CSP}/records?history=true", tok)
    assert [r["revision"] for r in history["records"]] == [1, 2]
    status, problem, _ = await get(broker, f"/v1/feeds/{DERBY_CSP}/records?history=yes", tok)
    assert (status, problem["reason"]) == (400, "bad_history")
    await post(broker, sign(env, {}, "L-7", revision=3, withdrawn="duplicate_record"))
    status, text, _ = await get(broker, f"/v1/feeds/{DERBY_CSP}/records?history=true&format=csv", tok)
    assert status == 200
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["kind"], r["revision"], r["reason"]) for r in rows] == [("withdrawn", "3", "duplicate_record")]


async def test_retention_tells_each_consumer_and_skips_those_already_told(broker: Broker, env: DemoEnvironment) -> None:
    await post(broker, sign(env, derby_assault(8), "L-8"))
    moved = derby_assault(8) | {"district": CHESTERFIELD}
    await post(broker, sign(env, moved, "L-8", revision=2))  # the Derby CSP was told (withdrawn)
    purged = await broker.purge_expired(broker.clock() + timedelta(days=4000))
    assert purged == 3  # its three holdings: Derby CSP (withdrawn), county CSP, VRU
    # told once already (withdrawn): no deletion notice; its withdrawal notice stays for 90 days
    assert [r[1] for r in await feed(broker, DERBY_CSP, history=True)] == ["withdrawn"]
    for consumer in (COUNTY_CSP, VRU):
        [(record, kind, revision, notice)] = await feed(broker, consumer, history=True)
        assert (record, kind, revision, notice["reason"]) == (
            rid(env, "L-8", consumer),
            "deleted",
            2,
            "retention_expired",
        )
    entries = audit_entries(broker.settings.data_dir / "broker.db", "purged")
    assert sum(e["count"] for e in entries) == 3
    assert sum(e["notified"] for e in entries) == 2


# -- over RabbitMQ --------------------------------------------------------------------------------------
async def consumer_bodies(harness: Harness, consumer: str) -> list[dict[str, Any]]:
    return [json.loads(m.body) for m in await harness.drain(harness.names.consumer_queue(consumer))]


async def test_over_rabbitmq_corrections_withdrawals_and_deletions_reach_the_queues(
    start_broker: Starter, env: DemoEnvironment
) -> None:
    harness = await start_broker(user_map={"guest": ED})
    key = f"{ED}.ae_assault"
    data = derby_assault(9)
    await harness.publish(sign(env, data, "Q-1"), key, user_id="guest")
    await harness.wait_processed(1)
    await harness.publish(
        sign(env, data | {"assault_method": "knife_or_sharp"}, "Q-1", revision=2), key, user_id="guest"
    )
    await harness.wait_processed(2)
    await harness.publish(sign(env, data | {"district": CHESTERFIELD}, "Q-1", revision=3), key, user_id="guest")
    await harness.wait_processed(3)
    derby = await consumer_bodies(harness, DERBY_CSP)
    record = rid(env, "Q-1", DERBY_CSP)
    assert [(b["record_id"], b["revision"], b.get("notice")) for b in derby] == [
        (record, 1, None),
        (record, 2, None),
        (record, 3, "withdrawn"),
    ]
    assert derby[1]["data"]["assault_method"] == "knife_or_sharp"
    assert derby[2]["reason"] == "no_longer_entitled"
    assert [(b["revision"], b.get("notice")) for b in await consumer_bodies(harness, COUNTY_CSP)] == [(3, None)]
    assert [b["revision"] for b in await consumer_bodies(harness, VRU)] == [1, 2, 3]
    await harness.publish(sign(env, {}, "Q-1", revision=4, withdrawn="not_serious_violence"), key, user_id="guest")
    await harness.wait_processed(4)
    # every consumer that ever held it hears of revision 4, the Derby CSP (withdrawn at 3) again:
    # a notice is idempotent, and a repeat repairs one a crash may have lost
    for consumer in (COUNTY_CSP, VRU, DERBY_CSP):
        [notice] = await consumer_bodies(harness, consumer)
        assert (notice["notice"], notice["revision"], notice["reason"]) == ("withdrawn", 4, "not_serious_violence")
    receipts = [
        r for m in await harness.drain(harness.names.receipts_queue(ED)) for r in json.loads(m.body)["receipts"]
    ]
    assert [(r["records"], r.get("withdrawn", 0)) for r in receipts] == [(2, 0), (2, 0), (2, 1), (0, 3)]
    # a second record, purged at the end of its retention: each consumer's queue gets a notice
    await harness.publish(sign(env, derby_assault(10), "Q-2"), key, user_id="guest")
    await harness.wait_processed(5)
    assert len(await consumer_bodies(harness, DERBY_CSP)) == 1
    assert len(await consumer_bodies(harness, VRU)) == 1
    await harness.broker.purge_expired(harness.broker.clock() + timedelta(days=4000))
    for consumer in (DERBY_CSP, VRU):
        [notice] = await consumer_bodies(harness, consumer)
        assert (notice["notice"], notice["record_id"]) == ("deleted", rid(env, "Q-2", consumer))


# -- what the review found: concurrency, forgotten ids, lapsed agreements, types ------------------
async def test_the_replay_guard_forgets_only_messages_that_left_nothing_behind(
    broker: Broker, env: DemoEnvironment
) -> None:
    """Retention purges the records; the replay guard forgets the message every agreement refused
    but keeps the one that released records (its holdings are tombstones): the adapter's resend of
    it, signed anew so its time is fresh, is still a duplicate, and a later correction is not
    released to a consumer whose retention ended (that would restart it)."""
    data = derby_assault(11)
    await post(broker, sign(env, data, "G-1"))
    young = SyntheticGenerator(seed=11).school_exclusion().data() | {"pupil_age": 8}  # no flow's condition
    school = env.signers["derby-city-education"]
    refused = await post(broker, school.sign_bytes("school_exclusion", young, source_key="G-2"))
    assert (refused["status"], refused["records"]) == ("accepted", 0)
    await broker.purge_expired(broker.clock() + timedelta(days=4000))
    assert broker.store is not None
    kept, forgotten = (ED, first_id(env, "G-1")), ("derby-city-education", school.message_id("G-2"))
    states = await broker.store.replay_states([kept, forgotten])
    assert (states[kept].state, states[forgotten].state) == (ReplayState.DONE, ReplayState.NEW)
    again = await post(broker, sign(env, data, "G-1"))
    assert again["status"] == "duplicate"
    corrected = await post(broker, sign(env, data | {"patient_sex": "female"}, "G-1", revision=2))
    assert (corrected["status"], corrected["records"]) == ("accepted", 0)
    assert ("retention_expired", ISTV) in {(w["reason"], w["agreement_id"]) for w in corrected["withheld"]}
    for consumer in (DERBY_CSP, VRU):
        assert [r[1] for r in await feed(broker, consumer, history=True)] == ["deleted"]
    db = broker.settings.data_dir / "broker.db"
    assert len(audit_entries(db, "released")) == 2  # the first release, never a second
    assert audit_entries(db, "replay_guard_purged")[0]["count"] == 1


async def test_concurrent_batches_apply_revisions_of_one_record_in_turn(broker: Broker, env: DemoEnvironment) -> None:
    """Revision 1 in flight while revisions 2 (moved to Chesterfield) and 3 (back to Derby) arrive in
    two more batches at once: each is decided on what the one before wrote."""
    assert broker.pipeline is not None
    data = derby_assault(12)
    batches = [
        [Inbound(sign(env, data, "C-1"))],
        [Inbound(sign(env, data | {"district": CHESTERFIELD}, "C-1", revision=2))],
        [Inbound(sign(env, data, "C-1", revision=3))],
    ]
    results = await asyncio.gather(*(broker.pipeline.process(b) for b in batches))
    assert [r[0].status.value for r in results] == ["accepted"] * 3
    assert [r[1:3] for r in await feed(broker, DERBY_CSP)] == [("record", 3)]
    assert [r[1:3] for r in await feed(broker, COUNTY_CSP)] == [("withdrawn", 3)]  # given at 2, withdrawn at 3
    assert [r[1:3] for r in await feed(broker, VRU)] == [("record", 3)]


async def test_a_revision_cannot_change_the_records_type(broker: Broker, env: DemoEnvironment) -> None:
    await post(broker, sign(env, derby_assault(13), "T-1"))
    nte = SyntheticGenerator(seed=13).nte_incident("derby-pubwatch").data()
    signer = env.signers[ED]
    body = envelope.encode(
        envelope.build_signed(
            private_key=signer.private_key,
            partner_id=ED,
            keyid=signer.kid,
            event_type="nte_incident",
            version=1,
            message_id="",
            data=nte,
            produced_at=datetime.now(UTC),
            supersedes=first_id(env, "T-1"),
            revision=2,
        )
    )
    assert broker.pipeline is not None
    [outcome] = await broker.pipeline.process([Inbound(body)])
    assert isinstance(outcome, Rejected)
    # refused before anything: the A&E partner may not send nte_incident at all, and even when a
    # partner may, the lineage check refuses the change of type
    assert outcome.reason in (Reason.TYPE_NOT_REGISTERED, Reason.REVISION_TYPE_MISMATCH)
    from broker.stages.lineage import Lineage, follows

    env_doc = envelope.envelope_from_document(json.loads(body))
    assert follows(env_doc, Lineage(1, first_id(env, "T-1"), False, (), "ae_assault")) is not None
    assert follows(env_doc, Lineage(1, first_id(env, "T-1"), False, (), "ae_assault"))[0] is (  # type: ignore[index]
        Reason.REVISION_TYPE_MISMATCH
    )


async def test_a_correction_while_the_agreement_is_lapsed_withdraws_nothing(
    env: DemoEnvironment, tmp_path: Path
) -> None:
    """Only the agreement's dates refuse the correction: the record is not withdrawn from anyone
    (the partnership has not reviewed the agreement; the record itself did not change scope)."""
    policy, keys = own_copy(env, tmp_path)
    broker = broker_on(env, policy, keys, tmp_path / "data")
    await broker.start()
    try:
        data = derby_assault(14)
        await post(broker, sign(env, data, "A-1"))
        path = policy / "agreements" / f"{ISTV}.toml"
        text = path.read_text(encoding="utf-8")
        start = re.search(r"^valid_from = (\S+)$", text, re.M)
        assert start is not None
        path.write_text(re.sub(r"^review_by = \S+$", f"review_by = {start.group(1)}", text, flags=re.M), "utf-8")
        bump_revision(policy, ISTV)
        assert (await broker.reload()).ok
        answer = await post(broker, sign(env, data | {"patient_sex": "female"}, "A-1", revision=2))
        assert (answer["records"], answer.get("withdrawn", 0)) == (0, 0)
        assert {w["reason"] for w in answer["withheld"]} == {"review_overdue"}
        for consumer in (DERBY_CSP, VRU):
            assert [r[1:3] for r in await feed(broker, consumer)] == [("record", 1)]
    finally:
        await broker.stop()
