"""The 3-node RabbitMQ cluster of ``deploy/rabbitmq-cluster.sh``: real nodes, quorum queues on all.

Each test starts a cluster of its own (about 13 s on two cores) and stops it afterwards.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest
from aio_pika.exceptions import DeliveryError

from tests.rabbitmq_cluster import Cluster, started_cluster

pytestmark = pytest.mark.timeout(300)

QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}  # as schemas/topology.py declares every queue


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    yield from started_cluster()


def test_three_nodes_run_and_stop_cleanly(cluster: Cluster) -> None:
    assert len(set(cluster.urls)) == 3
    assert all(url.startswith("amqp://guest:guest@127.0.0.1:") for url in cluster.urls)
    assert ":5672/" not in " ".join(cluster.urls)
    for i in (1, 2, 3):
        assert cluster.running_nodes(via=i) == sorted(cluster.node_names)  # the machine's node is not among them

    cluster.stop()
    assert cluster.leftovers() == []
    cluster.stop()  # a second stop is harmless


async def publish(url: str, queue: str, body: bytes, deadline: float = 30.0) -> int:
    """Publish with publisher confirms, until the quorum queue confirms; returns the nacks before.

    RabbitMQ 3.10: a channel whose first publish to a quorum queue finds its leader dead (just
    killed, no new leader known yet) gets every later publish nacked too, for good; a new channel
    after the election is fine. So each attempt takes a new channel.
    """
    until = time.monotonic() + deadline
    nacks = 0
    async with await aio_pika.connect(url, timeout=30) as connection:
        while True:
            async with connection.channel(publisher_confirms=True) as channel:
                try:
                    await channel.default_exchange.publish(
                        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key=queue,
                        timeout=30,
                    )
                    return nacks
                except DeliveryError:
                    nacks += 1
                    if time.monotonic() > until:
                        raise
            await asyncio.sleep(0.2)


async def get_one(url: str, queue: str, deadline: float = 30.0) -> bytes:
    """One message from the queue through this node, acknowledged; waits out a leader election."""
    until = time.monotonic() + deadline
    async with await aio_pika.connect(url, timeout=30) as connection:
        while True:
            async with connection.channel() as channel:
                declared = await channel.declare_queue(queue, passive=True)
                message = await declared.get(no_ack=False, fail=False, timeout=10)
                if message is not None:
                    await message.ack()
                    return message.body
            if time.monotonic() > until:
                raise AssertionError(f"nothing in {queue} via {url} within {deadline:.0f}s")
            await asyncio.sleep(0.2)


async def test_quorum_queue_is_on_all_nodes_and_survives_losing_one(cluster: Cluster) -> None:
    queue = f"sv-cluster-test-{uuid.uuid4().hex[:8]}"
    async with await aio_pika.connect(cluster.url(1), timeout=30) as connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True, arguments=QUORUM)
    info = await asyncio.to_thread(cluster.queue_info, queue)
    assert info["type"] == "quorum"
    assert sorted(info["members"]) == sorted(cluster.node_names)

    # Confirmed through node 1, then node 1 leaves: node 3 still has the message.
    assert await publish(cluster.url(1), queue, b"one") == 0
    await asyncio.to_thread(cluster.stop_node, 1)
    assert await get_one(cluster.url(3), queue) == b"one"

    # Node 1 back, then the queue's leader crashes: with 2 of 3 it still takes and gives messages.
    await asyncio.to_thread(cluster.start_node, 1)
    leader = cluster.node_names.index((await asyncio.to_thread(cluster.queue_info, queue, 3))["leader"]) + 1
    first, second = (i for i in (1, 2, 3) if i != leader)
    await asyncio.to_thread(cluster.kill_node, leader)
    await publish(cluster.url(first), queue, b"two")
    assert await get_one(cluster.url(second), queue) == b"two"
    info = await asyncio.to_thread(cluster.queue_info, queue, first)
    assert sorted(info["members"]) == sorted(cluster.node_names)
    assert sorted(info["online"]) == sorted([cluster.node_name(first), cluster.node_name(second)])
    assert info["leader"] != cluster.node_name(leader)
