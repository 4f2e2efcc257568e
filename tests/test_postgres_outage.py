"""PostgreSQL restarted mid-stream (``pg_ctlcluster … restart``, the real server): the broker
waits, retries and carries on. Nothing acknowledged is lost, nothing is released twice, and
nothing is dead-lettered because of the outage (a retry holds the deliveries unacknowledged
instead of requeueing them, which would count toward the quorum queue's delivery limit)."""

from __future__ import annotations

import asyncio
import json
import os
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
from broker.pipeline.trail import audit_pages, verify_store
from broker.policy.loader import load_policy
from broker.policy.secrets import load_secrets
from broker.ports.rabbitmq.topology import Names
from broker.ports.store import AuditQuery
from broker.ports.stores import store_for
from broker.registry import load_registry
from broker.settings import REPO_POLICIES
from tests.helpers import expected_records
from tests.test_no_loss_across_hosts import Host

EVENTS = 1500
pytestmark = pytest.mark.timeout(600)


def restart_postgres() -> float:
    versions = sorted(os.listdir("/etc/postgresql"))
    started = time.monotonic()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return time.monotonic() - started


def test_postgres_restarted_mid_stream_loses_nothing(
    amqp_url: str, amqp_prefix: str, pg_store_url: str, tmp_path: Path
) -> None:
    if not Path("/etc/postgresql").is_dir():
        pytest.skip("no local PostgreSQL cluster to restart (pg_ctlcluster)")
    env = prepare_environment(tmp_path / "env")
    host = Host(
        "host",
        [
            sys.executable, "-m", "broker.cli", "serve",
            "--amqp-url", amqp_url, "--amqp-prefix", amqp_prefix, "--store", pg_store_url,
            "--keys-dir", str(env.keys_dir), "--secrets", str(env.secrets_file),
            "--port", "0", "--no-user-id-check", "--log-level", "WARNING",
        ],
        tmp_path,
    )  # fmt: skip
    gen = SyntheticGenerator(seed=43)
    bodies = []
    for rec in gen.mixed(EVENTS):
        body = env.signers[rec.partner].sign_bytes(rec.event.EVENT_TYPE, rec.data(), source_key=rec.source_key)
        bodies.append((f"{rec.partner}.{rec.event.EVENT_TYPE}", body))
    names = Names(amqp_prefix)
    confirmed: list[bytes] = []
    errors: list[BaseException] = []

    async def publish_all() -> None:
        connection = await aio_pika.connect_robust(amqp_url)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(names.ingest_exchange)
        for i in range(0, len(bodies), 25):
            chunk = bodies[i : i + 25]
            await asyncio.gather(
                *(exchange.publish(aio_pika.Message(b, delivery_mode=2), k, mandatory=True) for k, b in chunk)
            )
            confirmed.extend(b for _, b in chunk)
            await asyncio.sleep(0.08)
        await connection.close()

    def publisher() -> None:
        try:
            asyncio.run(publish_all())
        except BaseException as exc:
            errors.append(exc)

    host.start()
    thread = threading.Thread(target=publisher)
    thread.start()
    time.sleep(1.5)
    outage = restart_postgres()  # mid-stream: every connection of the broker is cut
    thread.join(timeout=300)
    assert not errors, errors
    assert len(confirmed) == EVENTS

    registry = load_registry(REPO_POLICIES, env.keys_dir)
    policy = load_policy(REPO_POLICIES, registry, load_secrets(env.secrets_file, os.environ))
    expected = {
        (json.loads(body)["id"], consumer)
        for body in confirmed
        for consumer in expected_records(body, registry, policy)
    }

    async def audit() -> tuple[Counter[tuple[str, str]], Counter[str], bool]:
        store = store_for(pg_store_url, readonly=True)
        await store.open()
        try:
            released: Counter[tuple[str, str]] = Counter()
            async for page in audit_pages(store, AuditQuery(kind="released")):
                released.update((row.message_id or "", row.consumer or "") for row in page)
            return released, Counter((await store.counts()).audit_by_kind), (await verify_store(store)).ok
        finally:
            await store.close()

    deadline = time.monotonic() + 180
    while True:
        released, kinds, _ = asyncio.run(audit())
        if all(released[key] >= 1 for key in expected) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert host.stop() == 0, host.log_path.read_text()[-2000:]
    released, kinds, chain_ok = asyncio.run(audit())
    lost = [key for key in expected if released[key] == 0]
    doubled = [key for key in expected if released[key] > 1]
    print(
        f"\nPostgreSQL restart took {outage:.1f} s mid-stream: {len(confirmed)} confirmed events, "
        f"{len(expected)} entitled releases, lost {len(lost)}, double-released {len(doubled)}; audit {dict(kinds)}"
    )
    log = host.log_path.read_text()
    assert "StoreUnavailable" in log  # the outage was felt (a batch waited and was retried) ...
    assert lost == []  # ... and cost nothing
    assert doubled == []
    assert kinds["dead_lettered"] == 0
    assert kinds["rejected"] == 0
    assert kinds["received"] >= EVENTS
    assert chain_ok
