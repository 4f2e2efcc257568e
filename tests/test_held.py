"""Issue 12 item 1, "held, not lost": an event accepted while an agreement that would cover it is
not in force is kept, sealed, for that agreement (its ``[hold]``), and released once, exactly once,
when a renewed revision is put in force by a reload, without a restart.

Every date here is relative to today (the broker's retention job runs on the real clock).
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest

from adapters.synthetic import SyntheticGenerator
from broker.demo import DemoEnvironment
from broker.pipeline.retention import purge_held
from broker.policy.decision import Hold
from broker.policy.engine import decide
from broker.policy.loader import build_policy
from broker.ports.rabbitmq.topology import Names
from broker.service import Broker
from broker.settings import Settings
from broker.stages.held import HeldUnreadable, held_id, seal, unseal
from broker.stages.outcome import Status, withheld_of
from broker.stages.types import Inbound
from schemas.errors import Reason
from tests.helpers import audit_entries, read_store, stored_records
from tests.test_http_access import token
from tests.test_reload import bump_revision, own_copy, revoke

AGREEMENT = "dsa-police-sv-csp-2026"  # the only agreement for police_sv_offence: one release per event
PARTNER = "derbyshire-police"
HOLD = '\n[hold]\nreasons = ["review_overdue", "not_yet_valid"]\ndays = 30\n'
_DATE = re.compile(r"^(valid_from|valid_to|review_by) = [0-9-]+$", re.M)


def set_dates(path: Path, valid_from: date, valid_to: date, review_by: date) -> None:
    days = {"valid_from": valid_from, "valid_to": valid_to, "review_by": review_by}
    text = path.read_text(encoding="utf-8")
    path.write_text(_DATE.sub(lambda m: f"{m[1]} = {days[m[1]].isoformat()}", text), encoding="utf-8")


def past_review(env: DemoEnvironment, tmp_path: Path, hold: str = HOLD) -> tuple[Path, Path]:
    """A policy copy in which the police agreement is past its review date and holds events."""
    policy, keys = own_copy(env, tmp_path)
    path = policy / "agreements" / f"{AGREEMENT}.toml"
    today = datetime.now(UTC).date()
    set_dates(path, today - timedelta(days=60), today + timedelta(days=300), today - timedelta(days=1))
    path.write_text(path.read_text(encoding="utf-8") + hold, encoding="utf-8")
    # Only the held agreement covers the police events here: the Board's figures agreement would
    # count them (its minimised fields, in the clear, as any release in an embedded store).
    (policy / "agreements" / "dsa-sv-board-figures-2026.toml").unlink()
    return policy, keys


def renew(policy: Path) -> int:
    """Reviewed: a new revision, review date pushed out (as a partnership's renewal would)."""
    path = policy / "agreements" / f"{AGREEMENT}.toml"
    today = datetime.now(UTC).date()
    set_dates(path, today - timedelta(days=60), today + timedelta(days=300), today + timedelta(days=200))
    return bump_revision(policy, AGREEMENT)


def settings(env: DemoEnvironment, policy: Path, keys: Path, data: Path, **more: Any) -> Settings:
    return Settings(policy_dir=policy, keys_dir=keys, secrets_file=env.secrets_file, data_dir=data, http_port=0, **more)


def police(env: DemoEnvironment, n: int, seed: int = 0) -> list[bytes]:
    gen = SyntheticGenerator(seed=1000 + seed)
    out = []
    for i in range(n):
        record = gen.for_partner(PARTNER, "police_sv_offence")
        out.append(env.signers[PARTNER].sign_bytes("police_sv_offence", record.data(), source_key=f"H-{seed}-{i}"))
    return out


def held_count(db: Path) -> dict[str, int]:
    async def work(store: Any) -> dict[str, int]:
        counts: dict[str, int] = await store.held_agreements()
        return counts

    return read_store(db, work)


async def hold_twenty(broker: Broker, env: DemoEnvironment, n: int = 20) -> list[Any]:
    assert broker.pipeline is not None
    outcomes = await broker.pipeline.process([Inbound(b) for b in police(env, n)])
    assert [o.status for o in outcomes] == [Status.ACCEPTED] * n
    return outcomes


# -- the must-show, embedded -----------------------------------------------------------------
async def test_twenty_held_past_review_are_released_exactly_once_after_a_renewal_reload(
    env: DemoEnvironment, tmp_path: Path
) -> None:
    policy, keys = past_review(env, tmp_path)
    data = tmp_path / "data"
    db = data / "broker.db"
    broker = Broker(settings(env, policy, keys, data))
    await broker.start()
    try:
        outcomes = await hold_twenty(broker, env)
        assert sum(len(o.releases) for o in outcomes) == 0  # nothing released
        for outcome in outcomes:  # the receipt says why, and that it is held (until when)
            [withheld] = withheld_of(outcome.refusals, outcome.decision.holds)
            assert (withheld["reason"], withheld["agreement_id"]) == ("review_overdue", AGREEMENT)
            assert withheld["held_until"].endswith("Z")
        assert held_count(db) == {AGREEMENT: 20}
        assert stored_records(db) == []
        held = audit_entries(db, "held")
        assert len(held) == 20
        assert broker.policy is not None
        old = broker.policy.agreements[AGREEMENT].revision
        assert {(e["agreement_id"], e["agreement_revision"], e["reason"], e["source"]) for e in held} == {
            (AGREEMENT, old, "review_overdue", PARTNER)
        }
        assert {e["message_id"] for e in held} == {o.message_id for o in outcomes}

        new = renew(policy)
        report = await broker.reload()
        assert report.ok, report.problems
        records = stored_records(db)
        assert len(records) == 20  # exactly 20 released
        assert sorted(r.message_id for r in records) == sorted(o.message_id for o in outcomes)  # once each
        assert {r.record["agreement"]["revision"] for r in records} == {new}
        released = audit_entries(db, "held_released")
        assert len(released) == 20
        assert {(e["held_under_revision"], e["released_under_revision"]) for e in released} == {(old, new)}
        assert held_count(db) == {}

        again = await broker.reload()  # reload twice: nothing more
        assert again.ok
        assert len(stored_records(db)) == 20
        assert len(audit_entries(db, "held_released")) == 20
        assert len(audit_entries(db, "released")) == 20
    finally:
        await broker.stop()


async def test_a_held_event_withdrawn_meanwhile_is_discarded_not_released(env: DemoEnvironment, tmp_path: Path) -> None:
    """Held while the agreement was past review, then withdrawn by the partner (sent in error): when
    the agreement is renewed, the held copy is discarded (revision_superseded), never released."""
    policy, keys = past_review(env, tmp_path)
    data = tmp_path / "data"
    db = data / "broker.db"
    broker = Broker(settings(env, policy, keys, data))
    await broker.start()
    try:
        assert broker.pipeline is not None
        gen = SyntheticGenerator(seed=77)
        record = gen.for_partner(PARTNER, "police_sv_offence")
        signer = env.signers[PARTNER]
        first = signer.sign_bytes("police_sv_offence", record.data(), source_key="W-1")
        withdrawal = signer.sign_bytes("police_sv_offence", {}, source_key="W-1", revision=2, withdrawn="sent_in_error")
        [held] = await broker.pipeline.process([Inbound(first)])
        [gone] = await broker.pipeline.process([Inbound(withdrawal)])
        assert (held.status, gone.status) == (Status.ACCEPTED, Status.ACCEPTED)
        assert held_count(db) == {AGREEMENT: 1}
        renew(policy)
        assert (await broker.reload()).ok
        assert stored_records(db) == []
        assert held_count(db) == {}
        [discarded] = audit_entries(db, "held_discarded")
        assert discarded["reason"] == "revision_superseded"
        assert audit_entries(db, "released") == []
    finally:
        await broker.stop()


async def test_the_store_holds_no_plaintext_and_a_tampered_row_or_wrong_key_is_refused(
    env: DemoEnvironment, tmp_path: Path
) -> None:
    policy, keys = past_review(env, tmp_path)
    data = tmp_path / "data"
    db = data / "broker.db"
    broker = Broker(settings(env, policy, keys, data))
    await broker.start()
    try:
        outcomes = await hold_twenty(broker, env, 4)
    finally:
        await broker.stop()
    # No payload value is in the database's bytes (WAL checkpointed at close, but read both).
    values = [
        v
        for o in outcomes
        for v in json.loads(o.inbound.body)["data"].values()
        if isinstance(v, str) and len(v) >= 10 and not v[:4].isdigit()
    ]
    values += [o.inbound.body[:200] for o in outcomes]
    assert values
    raw = b"".join(p.read_bytes() for p in data.iterdir() if p.name.startswith("broker.db"))
    for value in values:
        needle = value if isinstance(value, bytes) else value.encode()
        assert needle not in raw
    # Tamper with one row's ciphertext (one bit), and give the broker the wrong key for the others.
    conn = sqlite3.connect(db)
    [(first, sealed)] = conn.execute("SELECT id, sealed FROM held ORDER BY pos LIMIT 1").fetchall()
    conn.execute("UPDATE held SET sealed = ? WHERE id = ?", (bytes([sealed[0] ^ 1]) + sealed[1:], first))
    conn.commit()
    conn.close()
    renew(policy)
    broker = Broker(settings(env, policy, keys, data))
    await broker.start()  # start-up decides held events again: the tampered one is refused
    try:
        assert len(stored_records(db)) == 3
        [unreadable] = audit_entries(db, "held_unreadable")
        assert (unreadable["held_id"], unreadable["reason"]) == (first, "held_unreadable")
        assert held_count(db) == {AGREEMENT: 1}  # kept: refused, never released, never dropped silently
    finally:
        await broker.stop()
    key_file = data / "hold-keys" / f"{AGREEMENT}.key"
    key_file.write_text("00" * 32 + "\n", encoding="utf-8")
    broker = Broker(settings(env, policy, keys, data))
    await broker.start()
    try:
        assert len(audit_entries(db, "held_unreadable")) == 2
        assert len(stored_records(db)) == 3
    finally:
        await broker.stop()


async def test_a_key_revoked_since_means_a_held_event_is_not_released(env: DemoEnvironment, tmp_path: Path) -> None:
    policy, keys = past_review(env, tmp_path)
    data = tmp_path / "data"
    broker = Broker(settings(env, policy, keys, data))
    await broker.start()
    try:
        await hold_twenty(broker, env, 3)
        revoke(keys, env.signers[PARTNER].kid)
        renew(policy)
        assert (await broker.reload()).ok
    finally:
        await broker.stop()
    db = data / "broker.db"
    assert stored_records(db) == []
    discarded = audit_entries(db, "held_discarded")
    assert [e["reason"] for e in discarded] == ["key_revoked"] * 3
    assert held_count(db) == {}


async def test_held_events_of_an_agreement_never_renewed_are_purged_at_their_time(
    env: DemoEnvironment, tmp_path: Path
) -> None:
    policy, keys = past_review(env, tmp_path)
    data = tmp_path / "data"
    broker = Broker(settings(env, policy, keys, data))
    await broker.start()
    try:
        outcomes = await hold_twenty(broker, env, 5)
        assert broker.store is not None
        until = max(h.expires_at for o in outcomes for h in o.decision.holds)
        assert await purge_held(broker.store, until - timedelta(seconds=1)) == 0  # not yet
        assert await purge_held(broker.store, until) == 5
    finally:
        await broker.stop()
    db = data / "broker.db"
    [purged] = audit_entries(db, "held_purged")
    assert (purged["agreement_id"], purged["count"], purged["reasons"]) == (AGREEMENT, 5, {"review_overdue": 5})
    assert "message_id" not in purged
    assert held_count(db) == {}


async def test_no_hold_table_holds_nothing(env: DemoEnvironment, tmp_path: Path) -> None:
    policy, keys = past_review(env, tmp_path, hold="")
    data = tmp_path / "data"
    broker = Broker(settings(env, policy, keys, data))
    await broker.start()
    try:
        outcomes = await hold_twenty(broker, env, 2)
        assert all(not o.decision.holds for o in outcomes)
    finally:
        await broker.stop()
    assert held_count(data / "broker.db") == {}
    assert audit_entries(data / "broker.db", "held") == []


# -- the IG lead's API -------------------------------------------------------------------------------
async def call(broker: Broker, method: str, path: str, tok: str, body: Any = None, **params: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {tok}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, broker.url + path, headers=headers, json=body, params=params) as resp,
    ):
        return resp.status, await resp.json()


async def test_an_ig_lead_lists_releases_and_discards_with_role_checks(env: DemoEnvironment, tmp_path: Path) -> None:
    policy, keys = past_review(env, tmp_path)
    data = tmp_path / "data"
    broker = Broker(settings(env, policy, keys, data))
    await broker.start()
    try:
        await hold_twenty(broker, env, 6)
        ig, analyst = token(broker, "ig", sub="ig-lead"), token(broker, "analyst", consumer="derby-csp-analysts")
        status, page = await call(broker, "GET", "/v1/held", analyst)
        assert (status, page["reason"]) == (403, "role_not_allowed")
        status, page = await call(broker, "POST", "/v1/held/release", analyst, {"agreement_id": AGREEMENT})
        assert status == 403
        status, page = await call(broker, "GET", "/v1/held", ig, agreement_id=AGREEMENT, limit="4")
        assert status == 200
        assert page["count"] == 4
        assert "sealed" not in page["held"][0]  # never the body
        assert "data" not in page["held"][0]
        status, rest = await call(broker, "GET", "/v1/held", ig, after=str(page["next_after"]))
        assert rest["count"] == 2
        ids = [h["id"] for h in page["held"]]
        # still past review: a release request releases nothing, they stay held
        status, answer = await call(broker, "POST", "/v1/held/release", ig, {"agreement_id": AGREEMENT})
        assert (status, answer["released"], answer["held"]) == (200, 0, 6)
        status, answer = await call(broker, "POST", "/v1/held/discard", ig, {"agreement_id": AGREEMENT, "ids": ids[:2]})
        assert (status, answer["reason"]) == (400, "bad_held_request")  # a discard needs a reason
        body = {"agreement_id": AGREEMENT, "ids": ids[:2], "reason": "duplicates of a corrected export"}
        status, answer = await call(broker, "POST", "/v1/held/discard", ig, body)
        assert (status, answer["discarded"]) == (200, 2)
        # renewed, and this process does not lead (the leader would release at reload): an IG request does
        renew(policy)
        broker.leading = False
        assert (await broker.reload()).ok
        status, answer = await call(broker, "POST", "/v1/held/release", ig, {"agreement_id": AGREEMENT})
        assert (status, answer["released"]) == (200, 4)
        status, page = await call(broker, "GET", "/v1/held", ig)
        assert page["count"] == 0
    finally:
        await broker.stop()
    db = data / "broker.db"
    discarded = audit_entries(db, "held_discarded")
    assert [(e["reason"], e["sub"]) for e in discarded] == [("discarded_by_ig", "ig-lead")] * 2
    assert "duplicates" not in json.dumps(discarded)  # the note is kept as a digest, never as typed
    assert len(stored_records(db)) == 4
    reads = [e["resource"] for e in audit_entries(db, "accessed")]
    assert {"held", "held_release", "held_discard"} <= set(reads)


# -- pure parts ----------------------------------------------------------------------------------------
def test_sealing_binds_the_ciphertext_to_agreement_source_and_message() -> None:
    from broker.ports.store import HeldItem

    key = bytes(range(32))
    body = b'{"id":"p:0123"}'
    now = datetime.now(UTC)
    sealed = seal(key, "dsa-a", "p", "p:0123", body)
    assert body not in sealed

    def item(agreement: str, source: str, message: str, blob: bytes) -> HeldItem:
        return HeldItem(
            held_id(agreement, source, message), agreement, 1, "review_overdue", source, message, "t", now, now, blob
        )

    assert unseal(key, item("dsa-a", "p", "p:0123", sealed)) == body
    for moved in (item("dsa-b", "p", "p:0123", sealed), item("dsa-a", "q", "p:0123", sealed)):
        with pytest.raises(HeldUnreadable):
            unseal(key, moved)
    with pytest.raises(HeldUnreadable):
        unseal(bytes(32), item("dsa-a", "p", "p:0123", sealed))


def test_the_engine_holds_only_what_the_hold_table_names(env: DemoEnvironment, signers: Any, registry: Any) -> None:
    import tomllib

    from broker.stages.parse import parse
    from broker.stages.types import Admitted, Fresh
    from broker.stages.validate import validate
    from broker.stages.verify import verify

    path = env.policy_dir / "agreements" / f"{AGREEMENT}.toml"
    text = path.read_text(encoding="utf-8")
    secrets = {}
    now = datetime.now(UTC)
    record = SyntheticGenerator(seed=5).for_partner(PARTNER, "police_sv_offence")
    body = signers[PARTNER].sign_bytes("police_sv_offence", record.data(), source_key="E-1")
    admitted = Admitted(validate(Fresh(verify(parse(body, max_bytes=65536, now=now), registry), now)))

    def decision_for(hold: str, valid_from: date, valid_to: date, review_by: date) -> tuple[Hold, ...]:
        doc = tomllib.loads(text + hold)
        doc.update(valid_from=valid_from, valid_to=valid_to, review_by=review_by)
        policy = build_policy([(str(path), doc)], registry, secrets)
        return decide(admitted, policy, now).holds

    today = now.date()
    overdue = (today - timedelta(days=60), today + timedelta(days=300), today - timedelta(days=1))
    assert decision_for("", *overdue) == ()
    [hold] = decision_for(HOLD, *overdue)
    assert (hold.agreement_id, hold.reason) == (AGREEMENT, Reason.REVIEW_OVERDUE.value)
    assert hold.expires_at == now + timedelta(days=30)
    expired = (today - timedelta(days=400), today - timedelta(days=5), today - timedelta(days=30))
    grace = '\n[hold]\nreasons = ["expired"]\ndays = 30\nexpired_grace_days = {}\n'
    assert [h.reason for h in decision_for(grace.format(10), *expired)] == ["expired"]
    assert decision_for(grace.format(3), *expired) == ()  # lapsed longer ago than its grace
    assert decision_for(HOLD, *expired) == ()  # "expired" not named


# -- over RabbitMQ ---------------------------------------------------------------------------------------
async def test_over_rabbitmq_twenty_held_reach_the_consumer_queues_once_after_the_reload(
    amqp_url: str, amqp_prefix: str, env: DemoEnvironment, tmp_path: Path
) -> None:
    policy, keys = past_review(env, tmp_path)
    data = tmp_path / "data"
    broker = Broker(settings(env, policy, keys, data, amqp_url=amqp_url, amqp_prefix=amqp_prefix),
                    user_map={"guest": PARTNER})  # fmt: skip
    await broker.start()
    names = Names(amqp_prefix)
    connection = await aio_pika.connect(amqp_url)
    queues = [names.consumer_queue(c) for c in ("derby-csp-analysts", "derbyshire-csp-analysts")]

    async def on_queues() -> list[bytes]:
        channel = await connection.channel()
        out = []
        for name in queues:
            queue = await channel.get_queue(name, ensure=False)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                out.append(message.body)
        await channel.close()
        return out

    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(names.ingest_exchange)
        for payload in police(env, 20, seed=7):
            message = aio_pika.Message(payload, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, user_id="guest")
            await exchange.publish(message, f"{PARTNER}.police_sv_offence", mandatory=True, timeout=10)
        assert broker.pipeline is not None
        for _ in range(600):
            if broker.pipeline.stats.processed >= 20:
                break
            await asyncio.sleep(0.05)
        assert broker.pipeline.stats.accepted == 20
        assert await on_queues() == []  # 0 released
        assert held_count(data / "broker.db") == {AGREEMENT: 20}
        renew(policy)
        assert (await broker.reload()).ok
        delivered = await on_queues()
        assert len(delivered) == 20
        assert len({json.loads(b)["record_id"] for b in delivered}) == 20  # once each
        assert (await broker.reload()).ok
        assert await on_queues() == []  # the second reload releases nothing
    finally:
        await broker.stop()
        await connection.close()
    assert held_count(data / "broker.db") == {}
    assert len(audit_entries(data / "broker.db", "held_released")) == 20


async def test_sv_broker_held_lists_and_discards_through_the_api(env: DemoEnvironment, tmp_path: Path) -> None:
    import os
    import sys

    policy, keys = past_review(env, tmp_path)
    data = tmp_path / "data"
    broker = Broker(settings(env, policy, keys, data))
    await broker.start()

    async def cli(*args: str, tok: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broker.cli", "held", *args, "--url", broker.url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "SV_BROKER_TOKEN": tok},
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    try:
        await hold_twenty(broker, env, 3)
        ig = token(broker, "ig", sub="ig-cli")
        code, out, _ = await cli("list", "--agreement-id", AGREEMENT, "--json", tok=ig)
        assert code == 0
        listed = json.loads(out)
        assert listed["count"] == 3
        code, _, err = await cli("list", tok=token(broker, "analyst", consumer="derby-csp-analysts"))
        assert (code, "role_not_allowed" in err) == (1, True)
        first = listed["held"][0]["id"]
        code, out, _ = await cli("discard", "--agreement-id", AGREEMENT, "--reason", "test run", first, tok=ig)
        assert (code, out.strip()) == (0, f"agreement_id: {AGREEMENT}, discarded: 1")
        code, out, _ = await cli("release", "--agreement-id", AGREEMENT, tok=ig)
        assert code == 0
        assert "released: 0, held: 2" in out  # still past review: nothing released, nothing lost
    finally:
        await broker.stop()
    assert [e["sub"] for e in audit_entries(data / "broker.db", "held_discarded")] == ["ig-cli"]
