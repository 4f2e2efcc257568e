"""Declaring the topology on RabbitMQ: every exchange, queue and binding, from one spec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

from broker.registry import Registry


@dataclass(frozen=True, slots=True)
class Names:
    prefix: str

    @property
    def ingest_exchange(self) -> str:
        return f"{self.prefix}.ingest"

    @property
    def ingest_queue(self) -> str:
        return f"{self.prefix}.ingest"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def deliver_exchange(self) -> str:
        return f"{self.prefix}.deliver"

    def consumer_queue(self, consumer: str) -> str:
        return f"{self.prefix}.consumer.{consumer}"

    @property
    def quarantine_exchange(self) -> str:
        return f"{self.prefix}.quarantine"

    @property
    def quarantine_queue(self) -> str:
        return f"{self.prefix}.quarantine"

    @property
    def receipts_exchange(self) -> str:
        return f"{self.prefix}.receipts"

    def receipts_queue(self, partner: str) -> str:
        return f"{self.prefix}.receipts.{partner}"


@dataclass(frozen=True, slots=True)
class Topology:
    ingest: AbstractExchange
    deliver: AbstractExchange
    quarantine: AbstractExchange
    receipts: AbstractExchange


QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}


@dataclass(frozen=True, slots=True)
class TopologySpec:
    """Every exchange, queue and binding, as data: declared by the broker at start and written
    into the RabbitMQ definitions file (``sv-broker rabbitmq definitions``) from this one source."""

    exchanges: tuple[tuple[str, str], ...]  # (name, type)
    queues: tuple[tuple[str, dict[str, Any]], ...]  # (name, arguments); all durable
    bindings: tuple[tuple[str, str, str], ...]  # (exchange, queue, routing key)


def topology_spec(names: Names, registry: Registry, delivery_limit: int) -> TopologySpec:
    ingest_args: dict[str, Any] = {
        **QUORUM,
        # RabbitMQ 3.10 quorum queues have no default limit: without one, a message that makes the
        # broker fail is redelivered forever (a poison message stalls the queue).
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": names.dead_letter_exchange,
        # at-least-once dead-lettering: a dead-lettered message is not lost if the DLX target is
        # briefly unavailable; it requires overflow=reject-publish on the source queue.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    exchanges = [
        (names.dead_letter_exchange, "fanout"),
        (names.ingest_exchange, "topic"),
        (names.deliver_exchange, "direct"),
        (names.quarantine_exchange, "fanout"),
        (names.receipts_exchange, "direct"),
    ]
    queues: list[tuple[str, dict[str, Any]]] = [
        (names.dead_letter_queue, dict(QUORUM)),
        (names.ingest_queue, ingest_args),
        (names.quarantine_queue, dict(QUORUM)),
    ]
    bindings = [
        (names.dead_letter_exchange, names.dead_letter_queue, ""),
        (names.ingest_exchange, names.ingest_queue, "#"),
        (names.quarantine_exchange, names.quarantine_queue, ""),
    ]
    for consumer in sorted(registry.consumers):
        queues.append((names.consumer_queue(consumer), dict(QUORUM)))
        bindings.append((names.deliver_exchange, names.consumer_queue(consumer), consumer))
    for partner in sorted(registry.partners):
        queues.append((names.receipts_queue(partner), dict(QUORUM)))
        bindings.append((names.receipts_exchange, names.receipts_queue(partner), partner))
    return TopologySpec(tuple(exchanges), tuple(queues), tuple(bindings))


async def declare_topology(channel: AbstractChannel, names: Names, registry: Registry, delivery_limit: int) -> Topology:
    """Declare every exchange, queue and binding; idempotent (same arguments every time)."""
    spec = topology_spec(names, registry, delivery_limit)
    exchanges = {
        name: await channel.declare_exchange(name, aio_pika.ExchangeType(kind), durable=True)
        for name, kind in spec.exchanges
    }
    queues = {name: await channel.declare_queue(name, durable=True, arguments=args) for name, args in spec.queues}
    for exchange, queue, key in spec.bindings:
        await queues[queue].bind(exchanges[exchange], routing_key=key)
    return Topology(
        ingest=exchanges[names.ingest_exchange],
        deliver=exchanges[names.deliver_exchange],
        quarantine=exchanges[names.quarantine_exchange],
        receipts=exchanges[names.receipts_exchange],
    )
