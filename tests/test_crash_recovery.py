"""No loss and no double release while the broker is SIGKILLed and restarted (real RabbitMQ).

A publisher sends >= 2,000 signed events with publisher confirms while the broker process is
killed with SIGKILL three times and restarted: once as a single process, once with an ingest
worker beside it (the orphaned worker must finish its in-flight work and exit by itself).
Afterwards every confirmed event must be, for each consumer its agreements entitle, released
exactly once in the audit (consumer queues may hold redelivered copies with the same record
id), or quarantined; none lost.

Then corrections (issue 12): 300 of the records are corrected (their district moved, so some
consumers stop being entitled and others start) while the broker is killed once more. Each
correction must be released as revision 2 exactly once to each consumer it now entitles, under
the record id that consumer already holds, and withdrawn exactly once from each it no longer does.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import aio_pika
import pytest

from adapters.synthetic import SyntheticGenerator
from broker.demo import prepare_environment
from broker.policy.loader import load_policy
from broker.policy.secrets import load_secrets
from broker.ports.rabbitmq.topology import Names
from broker.ports.sqlite_store import verify_audit_file
from broker.registry import load_registry
from broker.settings import REPO_POLICIES
from tests.helpers import audit_entries, expected_records

EVENTS = 2400
KILLS = 3
CORRECTIONS = 300
CORRECTION_KILLS = 1
DERBY, CHESTERFIELD = "E06000015", "E07000034"


class BrokerProcess:
    def __init__(self, args: list[str], ready_file: Path, log_path: Path) -> None:
        self.args, self.ready_file, self.log_path = args, ready_file, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=log)
        self.starts += 1
        deadline = time.monotonic() + 60
        while not self.ready_file.exists():
            assert self.proc.poll() is None, f"broker exited: {self.log_path.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "broker did not become ready"
            time.sleep(0.05)

    def children(self) -> list[int]:
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited (its parent was killed)


@pytest.mark.parametrize("workers", [1, 2])
def test_no_loss_no_double_release_under_sigkill(amqp_url: str, amqp_prefix: str, tmp_path: Path, workers: int) -> None:
    env = prepare_environment(tmp_path / "env")
    data_dir = tmp_path / "var"
    broker = BrokerProcess(
        [
            sys.executable, "-m", "broker.cli", "serve",
            "--amqp-url", amqp_url, "--amqp-prefix", amqp_prefix,
            "--data-dir", str(data_dir), "--policy-dir", str(env.policy_dir),
            "--keys-dir", str(env.keys_dir), "--secrets", str(env.secrets_file),
            "--port", "0", "--no-user-id-check", "--ready-file", str(tmp_path / "ready"), "--log-level", "WARNING",
            "--workers", str(workers),
        ],
        tmp_path / "ready",
        tmp_path / "broker.log",
    )  # fmt: skip
    gen = SyntheticGenerator(seed=31)
    bodies = []
    corrections: list[tuple[str, bytes]] = []  # revision 2 of records with a district, moved
    for rec in gen.mixed(EVENTS):
        signer, event_type = env.signers[rec.partner], rec.event.EVENT_TYPE
        body = signer.sign_bytes(event_type, rec.data(), source_key=rec.source_key)
        bodies.append((f"{rec.partner}.{event_type}", body))
        data = rec.data()
        if len(corrections) < CORRECTIONS and data.get("district") and len(bodies) % 5 == 0:
            moved = data | {"district": CHESTERFIELD if data["district"] == DERBY else DERBY}
            revised = signer.sign_bytes(event_type, moved, source_key=rec.source_key, revision=2)
            corrections.append((f"{rec.partner}.{event_type}", revised))
    assert len(corrections) == CORRECTIONS
    names = Names(amqp_prefix)
    confirmed: list[bytes] = []
    publish_errors: list[BaseException] = []

    async def publish_all(items: list[tuple[str, bytes]], sent: list[bytes]) -> None:
        connection = await aio_pika.connect_robust(amqp_url)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(names.ingest_exchange)

        async def one(key: str, body: bytes) -> None:
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await exchange.publish(message, key, mandatory=True, timeout=30)
            sent.append(body)

        for i in range(0, len(items), 50):
            await asyncio.gather(*(one(k, b) for k, b in items[i : i + 50]))
            await asyncio.sleep(0.04)  # ~1,000 msg/s offered: the kills land mid-stream
        await connection.close()

    def publisher(items: list[tuple[str, bytes]], sent: list[bytes]) -> None:
        try:
            asyncio.run(publish_all(items, sent))
        except BaseException as exc:
            publish_errors.append(exc)

    broker.start()  # declares the topology
    thread = threading.Thread(target=publisher, args=(bodies, confirmed))
    thread.start()
    rng = random.Random(5)
    worker_pids: list[int] = []
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.6, 1.2))
        children = broker.children()
        assert len(children) == workers - 1
        worker_pids += children
        broker.kill()
        broker.start()
    thread.join(timeout=300)
    assert not publish_errors, publish_errors
    assert len(confirmed) >= 2000

    registry = load_registry(REPO_POLICIES, env.keys_dir)
    policy = load_policy(env.policy_dir, registry, load_secrets(env.secrets_file, os.environ))
    expected: dict[tuple[str, str], str] = {}  # (message id, consumer) -> expected record data
    ids = []
    for body in confirmed:
        message_id = json.loads(body)["id"]
        ids.append(message_id)
        for consumer, data in expected_records(body, registry, policy).items():
            expected[(message_id, consumer)] = json.dumps(data, sort_keys=True)
    db = data_dir / "broker.db"

    def released() -> Counter[tuple[str, str]]:
        """Releases of revision 1 (the corrections are counted on their own below)."""
        return Counter((e["message_id"], e["consumer"]) for e in audit_entries(db, "released") if "revision" not in e)

    def rejected_ids() -> set[str]:
        return {e["message_id"] for e in audit_entries(db, "rejected")}

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        done = released()
        if all(done[key] >= 1 or key[0] in rejected_ids() for key in expected):
            break
        time.sleep(0.5)

    # Phase 2: the corrections, with a kill mid-stream (after every first revision is in: an older
    # revision arriving after a newer one is refused, by design, and that is not what this tests).
    corrected: list[bytes] = []
    thread = threading.Thread(target=publisher, args=(corrections, corrected))
    thread.start()
    for _ in range(CORRECTION_KILLS):
        time.sleep(rng.uniform(0.1, 0.3))
        worker_pids += broker.children()
        broker.kill()
        broker.start()
    thread.join(timeout=300)
    assert not publish_errors, publish_errors
    assert len(corrected) == CORRECTIONS
    want_released: dict[tuple[str, str], str] = {}  # (correction id, consumer) -> record data
    want_withdrawn: set[tuple[str, str]] = set()
    first_of: dict[str, str] = {}
    for body in corrected:
        doc = json.loads(body)
        first_of[doc["id"]] = doc["supersedes"]
        now_entitled = expected_records(body, registry, policy)
        for consumer, data in now_entitled.items():
            want_released[(doc["id"], consumer)] = json.dumps(data, sort_keys=True)
        for message_id, consumer in expected:
            if message_id == doc["supersedes"] and consumer not in now_entitled:
                want_withdrawn.add((doc["id"], consumer))
    assert want_withdrawn  # the district moves do end some entitlements

    def revised() -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
        rel = Counter((e["message_id"], e["consumer"]) for e in audit_entries(db, "released") if "revision" in e)
        wd = Counter((e["message_id"], e["consumer"]) for e in audit_entries(db, "withdrawn"))
        return rel, wd

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        rel, wd = revised()
        if all(rel[k] for k in want_released) and all(wd[k] for k in want_withdrawn):
            break
        time.sleep(0.5)
    worker_pids += broker.children()
    assert broker.stop() == 0, broker.log_path.read_text()[-2000:]
    # No worker outlives its primary: stopped by it, or (after a SIGKILL) by noticing it is gone.
    orphan_deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in worker_pids) and time.monotonic() < orphan_deadline:
        time.sleep(0.2)
    assert [pid for pid in worker_pids if not gone(pid)] == []
    starts = KILLS + CORRECTION_KILLS + 1
    assert len(set(worker_pids)) == (workers - 1) * starts
    workers_started = [e for e in audit_entries(db, "started") if e.get("role") == "ingest-worker"]
    assert len(workers_started) == (workers - 1) * starts

    counts = released()
    quarantined = {m for m in rejected_ids() if m in set(ids)}
    exactly_once = sum(1 for key in expected if counts[key] == 1)
    twice_or_more = sum(1 for key in expected if counts[key] > 1)
    lost = sum(1 for key in expected if counts[key] == 0 and key[0] not in quarantined)
    unexpected = [key for key in counts if key not in expected]
    print(
        f"\nconfirmed {len(confirmed)} events -> {len(expected)} entitled releases: "
        f"released exactly once {exactly_once}, quarantined {len(quarantined)}, lost {lost}, "
        f"double-released {twice_or_more}; broker started {broker.starts} times"
    )
    assert broker.starts == starts
    assert lost == 0
    assert twice_or_more == 0
    assert unexpected == []
    assert exactly_once + sum(1 for key in expected if key[0] in quarantined) == len(expected)
    assert len(quarantined) == 0  # every event was valid: none should have been refused
    assert verify_audit_file(db).ok

    # Each correction: revision 2 released exactly once to each consumer it entitles, under the
    # record id that consumer got revision 1 under (if it had one), withdrawn once from the others.
    rel, wd = revised()
    print(
        f"corrections {len(corrected)} -> {len(want_released)} revision-2 releases "
        f"(exactly once: {sum(1 for k in want_released if rel[k] == 1)}), "
        f"{len(want_withdrawn)} withdrawals (exactly once: {sum(1 for k in want_withdrawn if wd[k] == 1)})"
    )
    assert {k: n for k, n in rel.items() if n != 1 or k not in want_released} == {}
    assert set(rel) == set(want_released)
    assert {k: n for k, n in wd.items() if n != 1 or k not in want_withdrawn} == {}
    assert set(wd) == want_withdrawn
    first_ids = {(e["message_id"], e["consumer"]): e["record_id"] for e in audit_entries(db, "released")}
    for (message_id, consumer), record in first_ids.items():
        first = first_of.get(message_id)
        if first is not None and (first, consumer) in first_ids:
            assert record == first_ids[(first, consumer)]  # the same record id, a new revision
    for entry in audit_entries(db, "released"):
        if "revision" in entry:
            assert entry["revision"] == 2

    # The consumer queues hold every entitled record, possibly more than once, never another's.
    async def drain() -> Counter[tuple[str, str]]:
        connection = await aio_pika.connect(amqp_url)
        channel = await connection.channel()
        got: Counter[tuple[str, str]] = Counter()
        for consumer in registry.consumers:
            queue = await channel.get_queue(names.consumer_queue(consumer))
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                record = json.loads(message.body)  # a record, or a withdrawal notice (issue 12)
                assert record["consumer"] == consumer
                got[(record["record_id"], consumer)] += 1
        await connection.close()
        return got

    delivered = asyncio.run(drain())
    record_ids = {(e["message_id"], e["consumer"]): e["record_id"] for e in audit_entries(db, "released")}
    missing = [key for key in expected if delivered[(record_ids[key], key[1])] == 0]
    assert missing == []
    redelivered_copies = sum(delivered.values()) - len(expected)
    print(f"consumer queues: {sum(delivered.values())} messages, {redelivered_copies} redelivered copies")
