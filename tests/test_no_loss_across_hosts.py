"""No loss across hosts: three ``serve`` processes (own data dirs and ports) share PostgreSQL and
the RabbitMQ ingest queue; a publisher sends 3,000 signed events with confirms while processes
are SIGKILLed in turn (the current leader every other time) and restarted.

Afterwards, for each consumer its agreements entitle, every confirmed event is released exactly
once in the audit (or quarantined): 0 lost, 0 released twice; the one chain verifies end to end;
after every leader change another process took the role and checkpoints kept being signed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import aio_pika
import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.synthetic import SyntheticGenerator
from broker.auth.broker_key import load_or_create_broker_key
from broker.demo import prepare_environment
from broker.pipeline.trail import audit_pages, verify_store
from broker.policy.loader import load_policy
from broker.policy.secrets import load_secrets
from broker.ports.rabbitmq.topology import Names
from broker.ports.store import AuditQuery, Checkpoint
from broker.ports.stores import store_for
from broker.registry import load_registry
from broker.settings import REPO_POLICIES
from tests.helpers import expected_records

EVENTS = 3000
KILLS = 6  # in turn: the leader, then a follower, then the (new) leader, ...
pytestmark = pytest.mark.timeout(600)


class Host:
    """One ``sv-broker serve`` process with its own data dir, port and log."""

    def __init__(self, name: str, args: list[str], work: Path) -> None:
        self.name = name
        self.ready_file = work / f"{name}.ready"
        self.log_path = work / f"{name}.log"
        self.args = [*args, "--data-dir", str(work / name), "--ready-file", str(self.ready_file)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.starts = 0

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=log)
        self.starts += 1
        deadline = time.monotonic() + 60
        while not self.ready_file.exists() or not self.ready_file.read_text():
            assert self.proc.poll() is None, f"{self.name} exited: {self.log_path.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"{self.name} did not become ready"
            time.sleep(0.05)
        self.url = self.ready_file.read_text()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def leads(host: Host) -> bool:
    async def scrape() -> bool:
        async with aiohttp.ClientSession() as session, session.get(host.url + "/metrics", timeout=5) as resp:
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            if family.name == "sv_broker_leader":
                return family.samples[0].value == 1
        return False

    try:
        return asyncio.run(scrape())
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


def checkpoints(store_url: str) -> list[Checkpoint]:
    async def read() -> list[Checkpoint]:
        store = store_for(store_url, readonly=True)
        await store.open()
        try:
            return await store.checkpoints()
        finally:
            await store.close()

    return asyncio.run(read())


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_no_loss_across_hosts_under_sigkill(amqp_url: str, amqp_prefix: str, pg_store_url: str, tmp_path: Path) -> None:
    env = prepare_environment(tmp_path / "env")
    broker_key = tmp_path / "broker-key.pem"  # one key for every host (a mounted Secret)
    load_or_create_broker_key(broker_key)
    common = [
        sys.executable, "-m", "broker.cli", "serve",
        "--amqp-url", amqp_url, "--amqp-prefix", amqp_prefix, "--store", pg_store_url,
        "--keys-dir", str(env.keys_dir), "--secrets", str(env.secrets_file), "--broker-key", str(broker_key),
        "--port", "0", "--no-user-id-check", "--log-level", "WARNING",
        "--checkpoint-every", "50", "--checkpoint-interval", "1",
    ]  # fmt: skip
    hosts = [Host(name, common, tmp_path) for name in ("host-a", "host-b", "host-c")]
    gen = SyntheticGenerator(seed=41)
    bodies = []
    for rec in gen.mixed(EVENTS):
        body = env.signers[rec.partner].sign_bytes(rec.event.EVENT_TYPE, rec.data(), source_key=rec.source_key)
        bodies.append((f"{rec.partner}.{rec.event.EVENT_TYPE}", body))
    names = Names(amqp_prefix)
    confirmed: list[bytes] = []
    publish_errors: list[BaseException] = []
    publishing = threading.Event()

    async def publish_all() -> None:
        connection = await aio_pika.connect_robust(amqp_url)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(names.ingest_exchange)

        async def one(key: str, body: bytes) -> None:
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await exchange.publish(message, key, mandatory=True, timeout=30)
            confirmed.append(body)

        for i in range(0, len(bodies), 25):
            await asyncio.gather(*(one(k, b) for k, b in bodies[i : i + 25]))
            await asyncio.sleep(0.12)  # ~200 msg/s offered: the kills land mid-stream
        await connection.close()

    def publisher() -> None:
        publishing.set()
        try:
            asyncio.run(publish_all())
        except BaseException as exc:
            publish_errors.append(exc)

    for host in hosts:
        host.start()  # the first declares the topology; all share it
    wait_for(lambda: sum(leads(h) for h in hosts) == 1, 20, "no single leader at the start")
    thread = threading.Thread(target=publisher)
    thread.start()
    publishing.wait()
    leader_changes = 0
    for n in range(KILLS):
        time.sleep(0.8)
        leader = next(h for h in hosts if leads(h))
        victim = leader if n % 2 == 0 else next(h for h in hosts if h is not leader)
        signed_before = max((cp.seq for cp in checkpoints(pg_store_url)), default=0)
        victim.kill()
        if victim is leader:
            leader_changes += 1
            survivors = [h for h in hosts if h is not victim]
            wait_for(lambda: sum(leads(h) for h in survivors) == 1, 20, "no survivor took the role")  # noqa: B023
            # the new leader signs: a checkpoint beyond the last one of the killed leader
            wait_for(
                lambda: max((cp.seq for cp in checkpoints(pg_store_url)), default=0) > signed_before,  # noqa: B023
                20,
                "no checkpoint after the leader change",
            )
        victim.start()
    thread.join(timeout=300)
    assert not publish_errors, publish_errors
    assert len(confirmed) == EVENTS

    registry = load_registry(REPO_POLICIES, env.keys_dir)
    policy = load_policy(REPO_POLICIES, registry, load_secrets(env.secrets_file, os.environ))
    expected: set[tuple[str, str]] = set()  # (message id, consumer)
    ids = set()
    for body in confirmed:
        message_id = json.loads(body)["id"]
        ids.add(message_id)
        expected.update((message_id, consumer) for consumer in expected_records(body, registry, policy))

    async def audit() -> tuple[Counter[tuple[str, str]], set[str]]:
        store = store_for(pg_store_url, readonly=True)
        await store.open()
        try:
            released: Counter[tuple[str, str]] = Counter()
            async for page in audit_pages(store, AuditQuery(kind="released")):
                released.update((row.message_id or "", row.consumer or "") for row in page)
            rejected: set[str] = set()
            async for page in audit_pages(store, AuditQuery(kind="rejected")):
                rejected.update(row.message_id or "" for row in page)
            return released, rejected
        finally:
            await store.close()

    deadline = time.monotonic() + 180
    while True:
        counts, rejected = asyncio.run(audit())
        if all(counts[key] >= 1 or key[0] in rejected for key in expected) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for host in hosts:
        assert host.stop() == 0, host.log_path.read_text()[-2000:]

    async def final() -> tuple[Counter[tuple[str, str]], bool, int, list[Checkpoint]]:
        store = store_for(pg_store_url, readonly=True)
        await store.open()
        try:
            released: Counter[tuple[str, str]] = Counter()
            async for page in audit_pages(store, AuditQuery(kind="released")):
                released.update((row.message_id or "", row.consumer or "") for row in page)
            cps = await store.checkpoints()
            kid, key = load_or_create_broker_key(broker_key)
            # the chain end to end, and every checkpoint (whichever host signed it) against it
            report = await verify_store(store, cps, {kid: key.public_key()})
            assert report.ok, report.problem
            assert report.checkpoints is not None
            assert report.checkpoints.checked == len(cps)
            return released, report.ok, report.chain.entries, cps
        finally:
            await store.close()

    counts, chain_ok, entries, cps = asyncio.run(final())
    quarantined = {m for m in rejected if m in ids}
    exactly_once = sum(1 for key in expected if counts[key] == 1)
    twice_or_more = sum(1 for key in expected if counts[key] > 1)
    lost = sum(1 for key in expected if counts[key] == 0 and key[0] not in quarantined)
    unexpected = [key for key in counts if key not in expected]
    print(
        f"\n3 hosts, {sum(h.starts for h in hosts)} starts, {KILLS} SIGKILLs ({leader_changes} of the leader): "
        f"confirmed {len(confirmed)} events -> {len(expected)} entitled releases: exactly once {exactly_once}, "
        f"quarantined {len(quarantined)}, lost {lost}, double-released {twice_or_more}; "
        f"chain {entries} entries, {len(cps)} checkpoints"
    )
    assert sum(h.starts for h in hosts) == 3 + KILLS
    assert leader_changes >= 3
    assert lost == 0
    assert twice_or_more == 0
    assert unexpected == []
    assert len(quarantined) == 0  # every event was valid
    assert exactly_once == len(expected)
    assert chain_ok
    assert len(cps) >= leader_changes + 1
