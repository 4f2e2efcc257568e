"""The batched publisher against the real RabbitMQ: every publish of a batch confirmed or the batch
fails; returns, a closed channel and a missed deadline all count as "not confirmed"; nothing is
left behind in the channel's bookkeeping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aio_pika
import aiormq
import pytest
from pamqp.commands import Basic

from broker.errors import DeliveryFailed
from broker.ports.rabbitmq.fast_publish import Publish, forget_publishes, publish_frames
from broker.ports.rabbitmq.publisher import AmqpDelivery
from broker.ports.rabbitmq.topology import Names, declare_topology
from broker.registry import Registry, load_registry
from broker.settings import REPO_POLICIES

CONSUMERS = ("derbyshire-vru", "derby-csp-analysts")


@dataclass
class Harness:
    connection: aio_pika.abc.AbstractConnection
    channel: aio_pika.abc.AbstractChannel
    delivery: AmqpDelivery
    names: Names

    async def underlay(self) -> aiormq.Channel:
        channel = await self.channel.get_underlay_channel()
        assert isinstance(channel, aiormq.Channel)
        return channel

    async def drain(self, consumer: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
        reader = await self.connection.channel()
        queue = await reader.get_queue(self.names.consumer_queue(consumer))
        out = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            out.append(message)
        await reader.close()
        return out


@pytest.fixture
async def harness(amqp_url: str, amqp_prefix: str) -> AsyncIterator[Harness]:
    registry: Registry = load_registry(REPO_POLICIES, None)
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    names = Names(amqp_prefix)
    topology = await declare_topology(channel, names, registry, delivery_limit=5)
    yield Harness(connection, channel, AmqpDelivery(channel, topology, registry, timeout=10.0), names)
    await connection.close()


def records(names: Names, count: int, *, tag: str = "r", size: int = 600) -> list[Publish]:
    return [
        Publish(names.deliver_exchange, CONSUMERS[i % 2], f"{tag}-{i}:".encode() + b"x" * size, f"{tag}-{i}")
        for i in range(count)
    ]


async def test_a_batch_is_confirmed_and_delivered_in_order_with_its_properties(harness: Harness) -> None:
    batch = records(harness.names, 600)
    await harness.delivery.publish_all(batch)
    for n, consumer in enumerate(CONSUMERS):
        got = await harness.drain(consumer)
        assert [m.message_id for m in got] == [p.message_id for p in batch[n::2]]
        assert all(m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for m in got)
        assert all(m.content_type == "application/json" for m in got)
        assert [m.body for m in got] == [p.body for p in batch[n::2]]
    underlay = await harness.underlay()
    assert underlay.message_id_delivery_tag == {}
    assert underlay.confirmations == {}


async def test_a_body_larger_than_a_frame_arrives_whole(harness: Harness) -> None:
    underlay = await harness.underlay()
    size = underlay.max_content_size * 2 + 17
    await harness.delivery.publish_all(records(harness.names, 3, size=size))
    got = await harness.drain(CONSUMERS[0]) + await harness.drain(CONSUMERS[1])
    assert sorted(len(m.body) for m in got) == sorted(len(f"r-{i}:") + size for i in range(3))


async def test_an_unroutable_publish_fails_the_batch_and_the_rest_still_arrive(harness: Harness) -> None:
    batch = records(harness.names, 10)
    batch.insert(5, Publish(harness.names.deliver_exchange, "no-such-consumer", b"{}", "lost-1"))
    with pytest.raises(DeliveryFailed, match="1 of 11 publishes not confirmed"):
        await harness.delivery.publish_all(batch)
    got = await harness.drain(CONSUMERS[0]) + await harness.drain(CONSUMERS[1])
    assert sorted(m.message_id or "" for m in got) == sorted(p.message_id for p in batch if p.message_id != "lost-1")
    # The channel stays usable, and the return's trailing ack found its bookkeeping.
    await harness.delivery.publish_all(records(harness.names, 4, tag="after"))
    await asyncio.sleep(0.1)
    underlay = await harness.underlay()
    assert underlay.message_id_delivery_tag == {}
    assert underlay.confirmations == {}


async def test_concurrent_batches_on_one_channel_are_each_confirmed(harness: Harness) -> None:
    batches = [records(harness.names, 200, tag=f"b{n}") for n in range(4)]
    await asyncio.gather(*(harness.delivery.publish_all(batch) for batch in batches))
    got = await harness.drain(CONSUMERS[0]) + await harness.drain(CONSUMERS[1])
    assert len(got) == 800
    assert len({m.message_id for m in got}) == 800


async def test_a_missed_deadline_is_not_confirmed_and_leaves_nothing_behind(harness: Harness) -> None:
    harness.delivery.timeout = 0.0  # every confirm arrives after it
    with pytest.raises(DeliveryFailed, match="not confirmed within"):
        await harness.delivery.publish_all(records(harness.names, 50))
    await asyncio.sleep(0.3)  # the late confirms arrive and are ignored
    underlay = await harness.underlay()
    assert underlay.message_id_delivery_tag == {}
    assert underlay.confirmations == {}
    harness.delivery.timeout = 10.0
    await harness.delivery.publish_all(records(harness.names, 5, tag="later"))


async def test_a_closed_channel_is_not_confirmed(harness: Harness) -> None:
    await harness.channel.close()
    with pytest.raises(DeliveryFailed, match="closed"):
        await harness.delivery.publish_all(records(harness.names, 3))


async def test_abandoning_a_later_batch_does_not_unconfirm_an_earlier_one(harness: Harness) -> None:
    """aiormq drops a ``multiple`` ack whose top tag it no longer knows, and with it the acks of
    every lower tag: an abandoned batch must leave its tags for the confirms to settle."""
    underlay = await harness.underlay()
    earlier = await publish_frames(underlay, records(harness.names, 50, tag="a"))
    later = await publish_frames(underlay, records(harness.names, 50, tag="b"))
    forget_publishes(underlay, later)  # e.g. its task was cancelled at shutdown
    async with asyncio.timeout(10):
        confirms = await asyncio.gather(*(future for _, _, future in earlier))
    assert all(isinstance(c, Basic.Ack) for c in confirms)
    forget_publishes(underlay, earlier)
    await asyncio.sleep(0.2)
    assert underlay.confirmations == {}
    assert underlay.message_id_delivery_tag == {}


async def test_receipt_and_quarantine_ids_are_unique_in_flight(harness: Harness) -> None:
    """A basic.return finds its publish by AMQP message id alone."""
    ids = {harness.delivery.unique_id("receipts:p") for _ in range(1000)}
    ids |= {harness.delivery.unique_id("quarantine") for _ in range(1000)}
    assert len(ids) == 2000
