"""A RabbitMQ node lost mid-stream: a real 3-node cluster (``deploy/rabbitmq-cluster.sh``), the
broker given all three nodes (``--amqp-url a,b,c``) and connected to the first; that node is
stopped (and, separately, SIGKILLed) while events stream in. The broker carries on through
another node: every confirmed event is released exactly once in the audit, none lost, none
dead-lettered. This also pins ``FailoverConnection``'s hook into aio-pika (see its docstring).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.demo import prepare_environment
from broker.ports.rabbitmq.topology import Names
from tests.helpers import audit_counts
from tests.rabbitmq_cluster import Cluster, started_cluster
from tests.streams import Host, PacedPublisher, entitled, released_counts, signed_bodies, wait_released

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
            "--policy-dir", str(env.policy_dir), "--keys-dir", str(env.keys_dir), "--secrets", str(env.secrets_file),
            "--port", "0", "--no-user-id-check", "--log-level", "INFO",
        ],
        tmp_path,
    )  # fmt: skip
    # node 3 stays up: the publisher is not what is tested here
    publisher = PacedPublisher(
        cluster.urls[2], Names(prefix).ingest_exchange, signed_bodies(env, EVENTS, 47), pause=0.1
    )
    host.start()  # connects to node 1 (the first URL) and declares the quorum queues
    publisher.start()
    time.sleep(2.0)
    (cluster.stop_node if loss == "stop" else cluster.kill_node)(1)
    confirmed = publisher.join()
    assert len(confirmed) == EVENTS

    expected = entitled(env, confirmed)
    db = tmp_path / "host" / "broker.db"
    wait_released(db, expected)
    assert host.stop() == 0, host.log_path.read_text()[-3000:]
    released = released_counts(db)
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
