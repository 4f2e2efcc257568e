"""Declaring the topology on RabbitMQ: every exchange, queue and binding, from one spec."""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

from broker.registry import Registry

# The names and the topology are the contract's (schemas/topology.py); re-exported here in the
# "X as X" form that mypy --strict counts as an export.
from schemas.topology import QUORUM as QUORUM  # noqa: PLC0414
from schemas.topology import Names as Names  # noqa: PLC0414
from schemas.topology import TopologySpec as TopologySpec  # noqa: PLC0414
from schemas.topology import topology_spec as contract_topology_spec


@dataclass(frozen=True, slots=True)
class Topology:
    ingest: AbstractExchange
    deliver: AbstractExchange
    quarantine: AbstractExchange
    receipts: AbstractExchange
    checkpoints: AbstractExchange


def topology_spec(names: Names, registry: Registry, delivery_limit: int) -> TopologySpec:
    """The contract's topology (``schemas.topology``) for this registry's partners and consumers."""
    return contract_topology_spec(
        names, partners=registry.partners, consumers=registry.consumers, delivery_limit=delivery_limit
    )


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
        checkpoints=exchanges[names.checkpoints_exchange],
    )
