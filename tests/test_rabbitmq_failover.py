"""A RabbitMQ node lost mid-stream: a real 3-node cluster (``deploy/rabbitmq-cluster.sh``), the
broker given all three nodes (``--amqp-url a,b,c``) and connected to the first; that node is
stopped (and, separately, SIGKILLed) while events stream in. The broker carries on through
another node: every confirmed event is released exactly once in the audit, none lost, none
dead-lettered. This also pins ``FailoverConnection``'s hook into aio-pika (see its docstring).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

from adapters.synthetic import SyntheticGenerator
from broker.demo import prepare_environment
from broker.policy.loader import load_policy
from broker.policy.secrets import load_secrets
from broker.ports.rabbitmq.topology import Names
from broker.registry import load_registry
from broker.settings import REPO_POLICIES
from tests.helpers import audit_counts, audit_entries, expected_records
from tests.rabbitmq_cluster import Cluster, started_cluster
from tests.test_no_loss_across_hosts import Host

EVENTS = 1500
pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    yield from started_cluster()


@pytest.mark.parametrize("loss", ["stop", "kill"])
def test_the_broker_carries_on_when_its_node_is_lost(cluster: Cluster, tmp_path: Path, loss: str) -> None:
    env = prepare_environment(tmp_path / "env")
    prefix = "sv-failover"
    host = Host(
        "host",
        [
            sys.executable, "-m", "broker.cli", "serve",
            "--amqp-url", ",".join(cluster.urls), "--amqp-prefix", prefix,
            "--keys-dir", str(env.keys_dir), "--secrets", str(env.secrets_file),
            "--port", "0", "--no-user-id-check", "--log-level", "INFO",
        ],
        tmp_path,
    )  # fmt: skip
    gen = SyntheticGenerator(seed=47)
    bodies = []
    for rec in gen.mixed(EVENTS):
        body = env.signers[rec.partner].sign_bytes(rec.event.EVENT_TYPE, rec.data(), source_key=rec.source_key)
        bodies.append((f"{rec.partner}.{rec.event.EVENT_TYPE}", body))
    names = Names(prefix)
    confirmed: list[bytes] = []
    errors: list[BaseException] = []
    publisher_node = cluster.urls[2]  # node 3 stays up: the publisher is not what is tested here

    async def publish_all() -> None:
        connection = await aio_pika.connect_robust(publisher_node)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(names.ingest_exchange)
        for i in range(0, len(bodies), 25):
            chunk = bodies[i : i + 25]
            await asyncio.gather(
                *(
                    exchange.publish(aio_pika.Message(b, delivery_mode=2), k, mandatory=True, timeout=60)
                    for k, b in chunk
                )
            )
            confirmed.extend(b for _, b in chunk)
            await asyncio.sleep(0.1)
        await connection.close()

    def publisher() -> None:
        try:
            asyncio.run(publish_all())
        except BaseException as exc:
            errors.append(exc)

    host.start()  # connects to node 1 (the first URL) and declares the quorum queues
    thread = threading.Thread(target=publisher)
    thread.start()
    time.sleep(2.0)
    (cluster.stop_node if loss == "stop" else cluster.kill_node)(1)
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
    db = tmp_path / "host" / "broker.db"
    deadline = time.monotonic() + 180
    while True:
        released = Counter((e["message_id"], e["consumer"]) for e in audit_entries(db, "released"))
        if all(released[key] >= 1 for key in expected) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert host.stop() == 0, host.log_path.read_text()[-3000:]
    released = Counter((e["message_id"], e["consumer"]) for e in audit_entries(db, "released"))
    kinds = audit_counts(db)
    lost = [key for key in expected if released[key] == 0]
    doubled = [key for key in expected if released[key] > 1]
    print(
        f"\nnode 1 {'stopped' if loss == 'stop' else 'killed'} mid-stream: {len(confirmed)} confirmed events, "
        f"{len(expected)} entitled "
        f"releases, lost {len(lost)}, double-released {len(doubled)}; audit {kinds}"
    )
    assert "Reconnecting" in host.log_path.read_text()  # the broker lost its node ...
    assert lost == []  # ... and carried on through another, losing nothing
    assert doubled == []
    assert kinds.get("dead_lettered", 0) == 0
    assert kinds.get("rejected", 0) == 0
