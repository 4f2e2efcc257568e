"""The broker over the real RabbitMQ: routing, quarantine, receipts, poison messages, user_id."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from adapters.synthetic import SyntheticGenerator
from broker.demo import DemoEnvironment
from broker.errors import StoreUnavailable
from broker.policy.decision import Decision
from broker.policy.engine import decide
from broker.policy.loader import PolicySet
from broker.ports.rabbitmq.topology import Names
from broker.ports.sqlite_store import verify_audit_file
from broker.service import Broker
from broker.settings import Settings
from broker.stages.types import Validated
from schemas import envelope
from tests.helpers import audit_entries, expected_records
from tests.test_broker_embedded import EVENT_PARTNERS


@dataclass
class Harness:
    broker: Broker
    names: Names
    connection: aio_pika.abc.AbstractRobustConnection
    channel: aio_pika.abc.AbstractChannel

    @property
    def db(self) -> Path:
        return self.broker.settings.data_dir / "broker.db"

    async def publish(self, body: bytes, routing_key: str, *, user_id: str | None = None) -> None:
        exchange = await self.channel.get_exchange(self.names.ingest_exchange)
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, user_id=user_id)
        await exchange.publish(message, routing_key, mandatory=True, timeout=10)

    async def wait_processed(self, count: int, timeout: float = 60) -> None:
        assert self.broker.pipeline is not None
        for _ in range(int(timeout * 20)):
            if self.broker.pipeline.stats.processed >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"only {self.broker.pipeline.stats.processed} of {count} processed")

    async def drain(self, queue_name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
        queue = await self.channel.get_queue(queue_name, ensure=True)
        out = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            out.append(message)
        return out


Starter = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def start_broker(amqp_url: str, amqp_prefix: str, env: DemoEnvironment, tmp_path: Path) -> AsyncIterator[Starter]:
    harnesses: list[Harness] = []

    async def start(**overrides: Any) -> Harness:
        decide_fn = overrides.pop("decide_fn", decide)
        user_map = overrides.pop("user_map", {})
        settings = Settings(
            policy_dir=env.policy_dir,
            keys_dir=env.keys_dir,
            secrets_file=env.secrets_file,
            data_dir=tmp_path,
            http_port=0,
            amqp_url=amqp_url,
            amqp_prefix=amqp_prefix,
            **overrides,
        )
        broker = Broker(settings, user_map=user_map, decide_fn=decide_fn)
        await broker.start()
        connection = await aio_pika.connect_robust(amqp_url)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        harness = Harness(broker, Names(amqp_prefix), connection, channel)
        harnesses.append(harness)
        return harness

    yield start
    for harness in harnesses:
        await harness.broker.stop()
        await harness.connection.close()


async def test_each_event_type_reaches_exactly_its_consumers(start_broker: Starter, env: DemoEnvironment) -> None:
    h = await start_broker(check_user_id=False)
    assert h.broker.registry is not None
    assert h.broker.policy is not None
    gen = SyntheticGenerator(seed=21)
    expected: dict[str, dict[str, dict[str, Any]]] = {}  # consumer -> record data by message id
    sent = 0
    for event_type, partner in EVENT_PARTNERS:
        for _ in range(10):
            rec = gen.for_partner(partner, event_type)
            body = env.signers[partner].sign_bytes(event_type, rec.data(), source_key=rec.source_key)
            for consumer, data in expected_records(body, h.broker.registry, h.broker.policy).items():
                expected.setdefault(consumer, {})[json.loads(body)["id"]] = data
            await h.publish(body, f"{partner}.{event_type}")
            sent += 1
    await h.wait_processed(sent)
    assert h.broker.pipeline is not None
    assert h.broker.pipeline.stats.accepted == sent
    for consumer in sorted(h.broker.registry.consumers):
        messages = await h.drain(h.names.consumer_queue(consumer))
        got = {}
        for message in messages:
            record = json.loads(message.body)
            assert record["consumer"] == consumer
            assert message.message_id == record["record_id"]
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            got[record["record_id"]] = record["data"]
        want = expected.get(consumer, {})
        assert len(got) == len(want), consumer
        assert sorted(map(json.dumps, got.values())) == sorted(map(json.dumps, want.values())), consumer
    assert await h.drain(h.names.consumer_queue("derbyshire-fire-analysts")) == []
    receipts = [
        r for m in await h.drain(h.names.receipts_queue("derbyshire-police")) for r in json.loads(m.body)["receipts"]
    ]
    assert len(receipts) == 10
    assert all(r["status"] == "accepted" for r in receipts)
    assert verify_audit_file(h.db).ok


async def test_bad_inputs_go_to_quarantine_with_receipts(start_broker: Starter, env: DemoEnvironment) -> None:
    # The tests publish as RabbitMQ's guest user; map it to the police partner's account.
    h = await start_broker(user_map={"guest": "derbyshire-police"})
    gen = SyntheticGenerator(seed=22)
    police = env.signers["derbyshire-police"]
    cases: list[tuple[str, bytes]] = []
    rec = gen.police_sv_offence()
    doc = police.sign("police_sv_offence", rec.data(), source_key=rec.source_key)
    doc["data"]["district"] = "E07000035" if doc["data"]["district"] != "E07000035" else "E07000036"
    cases.append(("bad_signature", envelope.encode(doc)))
    rec = gen.police_sv_offence()
    cases.append(("unknown_key", env.stranger.sign_bytes("police_sv_offence", rec.data(), source_key=rec.source_key)))
    rec = gen.police_sv_offence()
    cases.append(("key_revoked", env.revoked.sign_bytes("police_sv_offence", rec.data(), source_key=rec.source_key)))
    rec = gen.nte_incident()
    cases.append(
        (
            "publisher_mismatch",
            env.signers["derby-pubwatch"].sign_bytes("nte_incident", rec.data(), source_key=rec.source_key),
        )
    )
    rec = gen.school_exclusion()
    cases.append(("type_not_registered", police.sign_bytes("school_exclusion", rec.data(), source_key=rec.source_key)))
    rec = gen.police_sv_offence()
    cases.append(
        ("schema_invalid", police.sign_bytes("police_sv_offence", rec.data() | {"victim_sex": "x"}, source_key="s1"))
    )
    rec = gen.police_sv_offence()
    cases.append(
        (
            "direct_identifier",
            police.sign_bytes("police_sv_offence", rec.data() | {"suspect_name": "A Person"}, source_key="s2"),
        )
    )
    cases.append(("body_too_large", b'{"pad": "' + b"x" * 70000 + b'"}'))
    cases.append(("malformed_json", b"{not json"))
    rec = gen.police_sv_offence()
    first = police.sign_bytes("police_sv_offence", rec.data(), source_key=rec.source_key)
    reused = police.sign_bytes(
        "police_sv_offence",
        rec.data() | {"knife_involved": not rec.data()["knife_involved"]},
        source_key=rec.source_key,
    )
    await h.publish(first, "derbyshire-police.police_sv_offence", user_id="guest")
    await h.wait_processed(1)
    assert h.broker.pipeline is not None
    cases.append(("replayed", reused))
    for _, body in cases:
        await h.publish(body, own_routing_key(body), user_id="guest")
    await h.publish(first, "derbyshire-police.police_sv_offence", user_id="guest")  # an exact resend
    await h.wait_processed(len(cases) + 2)

    quarantined = await h.drain(h.names.quarantine_queue)
    assert [(m.headers or {}).get("reason") for m in quarantined] == [reason for reason, _ in cases]
    for message in quarantined:
        headers = message.headers or {}
        assert headers.get("reason_message")
        if headers.get("reason") == "direct_identifier":
            assert message.body == b""  # the identifier is not kept
    receipts = [
        r for m in await h.drain(h.names.receipts_queue("derbyshire-police")) for r in json.loads(m.body)["receipts"]
    ]
    assert [r["status"] for r in receipts] == ["accepted"] + ["rejected"] * len(cases) + ["duplicate"]
    assert [r.get("reason") for r in receipts[1:-1]] == [reason for reason, _ in cases]
    rejected = audit_entries(h.db, "rejected")
    assert [e["reason"] for e in rejected] == [reason for reason, _ in cases]
    assert len(audit_entries(h.db, "duplicate")) == 1
    # nothing released for any bad input: only the first, good message's records exist
    released = audit_entries(h.db, "released")
    assert {e["message_id"] for e in released} == {json.loads(first)["id"]}


def own_routing_key(body: bytes) -> str:
    """The routing key the envelope's own source and type name (as an adapter publishes it)."""
    try:
        doc = json.loads(body)
        return f"{doc['source']}.{doc['type']}"
    except (ValueError, KeyError, TypeError):
        return "derbyshire-police.police_sv_offence"


async def test_an_envelope_under_a_routing_key_not_its_own_is_refused(
    start_broker: Starter, env: DemoEnvironment
) -> None:
    # The attack: RabbitMQ's topic permissions misconfigured (here: the test's guest account may
    # write any key), so the police's signed envelopes travel under another partner's routing key,
    # a made-up one, their own partner with another type, or a key with extra parts.  Each is
    # refused as `routing_key_mismatch`, quarantined, told to the source, and releases nothing.
    h = await start_broker(user_map={"guest": "derbyshire-police"})
    gen = SyntheticGenerator(seed=29)
    police = env.signers["derbyshire-police"]
    keys = [
        "derby-pubwatch.police_sv_offence",
        "uhdb-royal-derby-ed.ae_assault",
        "derbyshire-police.ae_assault",
        "derbyshire-police.police_sv_offence.extra",
        "made-up.thing",
        "derbyshire-police",
        "DERBYSHIRE-POLICE.police_sv_offence",
    ]
    bodies = []
    for key in keys:
        rec = gen.police_sv_offence()
        body = police.sign_bytes("police_sv_offence", rec.data(), source_key=rec.source_key)
        bodies.append(body)
        await h.publish(body, key, user_id="guest")
    rec = gen.police_sv_offence()
    good = police.sign_bytes("police_sv_offence", rec.data(), source_key=rec.source_key)
    await h.publish(good, "derbyshire-police.police_sv_offence", user_id="guest")
    await h.wait_processed(len(keys) + 1)

    rejected = audit_entries(h.db, "rejected")
    assert [e["reason"] for e in rejected] == ["routing_key_mismatch"] * len(keys)
    assert {e["message_id"] for e in rejected} == {json.loads(b)["id"] for b in bodies}
    quarantined = await h.drain(h.names.quarantine_queue)
    assert [(m.headers or {}).get("reason") for m in quarantined] == ["routing_key_mismatch"] * len(keys)
    released = audit_entries(h.db, "released")
    assert {e["message_id"] for e in released} == {json.loads(good)["id"]}
    receipts = [
        r for m in await h.drain(h.names.receipts_queue("derbyshire-police")) for r in json.loads(m.body)["receipts"]
    ]
    assert sorted(r.get("reason", r["status"]) for r in receipts) == sorted(
        ["routing_key_mismatch"] * len(keys) + ["accepted"]
    )


async def test_poison_message_is_dead_lettered_and_the_rest_flow(start_broker: Starter, env: DemoEnvironment) -> None:
    gen = SyntheticGenerator(seed=23)
    police = env.signers["derbyshire-police"]
    poison_rec = gen.police_sv_offence()
    poison = police.sign_bytes("police_sv_offence", poison_rec.data(), source_key=poison_rec.source_key)
    poison_id = json.loads(poison)["id"]

    def faulty(validated: Validated, policy: PolicySet, now: datetime) -> Decision:
        if validated.envelope.id == poison_id:
            raise RuntimeError("simulated defect in our code")
        return decide(validated, policy, now)

    h = await start_broker(check_user_id=False, delivery_limit=3, decide_fn=faulty)
    await h.publish(poison, "derbyshire-police.police_sv_offence")
    good = []
    for _ in range(20):
        rec = gen.police_sv_offence()
        good.append(police.sign_bytes("police_sv_offence", rec.data(), source_key=rec.source_key))
    for body in good:
        await h.publish(body, "derbyshire-police.police_sv_offence")
    assert h.broker.pipeline is not None
    for _ in range(400):
        if audit_entries(h.db, "dead_lettered") and h.broker.pipeline.stats.accepted >= 20:
            break
        await asyncio.sleep(0.05)
    dead = audit_entries(h.db, "dead_lettered")
    assert len(dead) == 1
    assert dead[0]["body_sha256"] == hashlib.sha256(poison).hexdigest()
    assert h.broker.pipeline is not None
    assert h.broker.pipeline.stats.accepted == 20  # the others kept flowing
    quarantined = await h.drain(h.names.quarantine_queue)
    assert [(m.headers or {}).get("reason") for m in quarantined] == ["dead_lettered"]
    assert quarantined[0].body == poison
    released_ids = {e["message_id"] for e in audit_entries(h.db, "released")}
    assert poison_id not in released_ids
    assert len(released_ids) == 20


async def test_rabbitmq_refuses_a_forged_user_id(amqp_url: str) -> None:
    """The user_id check rests on RabbitMQ refusing a user_id other than the connection's login."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue("", exclusive=True)
        with pytest.raises(Exception):
            await channel.default_exchange.publish(
                aio_pika.Message(b"{}", user_id="derbyshire-police"), queue.name, timeout=5
            )
            await channel.declare_queue("", exclusive=True)  # the channel is gone
    finally:
        await connection.close()


async def test_connection_loss_loses_nothing_and_releases_once(start_broker: Starter, env: DemoEnvironment) -> None:
    """RabbitMQ drops the broker's connection while batches are in flight; the broker reconnects,
    unacknowledged deliveries come back, and each entitled release is audited exactly once."""
    import subprocess

    h = await start_broker(check_user_id=False)
    assert h.broker.registry is not None
    assert h.broker.policy is not None
    assert h.broker.store is not None
    # Hold the first batches at their audit commit, so deliveries are surely unacknowledged when
    # the connection goes.
    gate = asyncio.Event()
    store = h.broker.store
    real_commit = store.commit

    async def gated(unit: Any) -> frozenset[Any]:
        await gate.wait()
        return await real_commit(unit)

    store.commit = gated  # type: ignore[method-assign]
    gen = SyntheticGenerator(seed=24)
    expected: set[tuple[str, str]] = set()
    bodies = []
    for rec in gen.mixed(600):
        body = env.signers[rec.partner].sign_bytes(rec.event.EVENT_TYPE, rec.data(), source_key=rec.source_key)
        bodies.append((f"{rec.partner}.{rec.event.EVENT_TYPE}", body))
        message_id = json.loads(body)["id"]
        expected |= {(message_id, c) for c in expected_records(body, h.broker.registry, h.broker.policy)}
    for i in range(0, len(bodies), 200):
        await asyncio.gather(*(h.publish(body, key) for key, body in bodies[i : i + 200]))
    await asyncio.sleep(0.3)
    # Close only this broker's connection (others may share the RabbitMQ), from the server side.
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
    )
    pids = [line.split("\t", 1)[0] for line in listing.stdout.splitlines() if f"sv-broker {h.names.prefix}" in line]
    assert pids, listing.stdout
    for pid in pids:
        closed = subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "sv-broker test: connection loss"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert closed.returncode == 0, closed.stderr
    gate.set()
    for _ in range(1200):
        released = {(e["message_id"], e["consumer"]) for e in audit_entries(h.db, "released")}
        came_back = any(e.get("redelivered") for e in audit_entries(h.db, "received"))
        if released >= expected and came_back:
            break
        await asyncio.sleep(0.05)
    entries = audit_entries(h.db, "released")
    pairs = [(e["message_id"], e["consumer"]) for e in entries]
    assert set(pairs) == expected  # none lost, none to anyone not entitled
    assert len(pairs) == len(set(pairs))  # none released twice
    redelivered = [e for e in audit_entries(h.db, "received") if e.get("redelivered")]
    assert redelivered, "the connection loss should have sent unacknowledged deliveries back"
    assert verify_audit_file(h.db).ok


async def test_a_store_outage_holds_messages_and_dead_letters_none(start_broker: Starter, env: DemoEnvironment) -> None:
    """A store (or RabbitMQ) outage longer than delivery_limit retries must not dead-letter valid
    messages: the broker retries holding them unacknowledged, then releases each once."""
    h = await start_broker(check_user_id=False, delivery_limit=2)
    assert h.broker.store is not None
    store = h.broker.store
    real_commit = store.commit
    outage_until = asyncio.get_running_loop().time() + 2.5

    async def failing_commit(unit: Any) -> frozenset[Any]:
        if asyncio.get_running_loop().time() < outage_until:
            # What the SQLite port raises for a disk or lock failure (its sqlite3/OSError translated).
            raise StoreUnavailable("simulated disk outage")
        return await real_commit(unit)

    store.commit = failing_commit  # type: ignore[method-assign]
    gen = SyntheticGenerator(seed=25)
    police = env.signers["derbyshire-police"]
    for _ in range(10):
        rec = gen.police_sv_offence()
        await h.publish(
            police.sign_bytes("police_sv_offence", rec.data(), source_key=rec.source_key),
            "derbyshire-police.police_sv_offence",
        )
    await h.wait_processed(10, timeout=30)
    assert h.broker.pipeline is not None
    assert h.broker.pipeline.stats.accepted == 10
    assert audit_entries(h.db, "dead_lettered") == []
    assert await h.drain(h.names.quarantine_queue) == []
    released = [(e["message_id"], e["consumer"]) for e in audit_entries(h.db, "released")]
    assert len(released) == len(set(released)) > 0
