"""The RabbitMQ side of the wire contract: exchange and queue names, routing keys, queue arguments,
and the whole topology as data.

Defined once, here, because three parties depend on the same names: the broker declares the
topology at start (``broker.ports.rabbitmq.topology.declare_topology``), the deployment's definitions file is
generated from it (``sv-broker rabbitmq definitions``), and a partner's adapter publishes to the
ingest exchange and reads its receipts queue by name (``adapters/``). The topology is built from
plain lists of partner and consumer ids, not from the broker's registry, so an adapter (or a
partner's own program) can use this module without the service.

Every name is ``<prefix>.<something>`` (the prefix is ``sv`` unless a deployment chooses another):

* ``<p>.ingest``: topic exchange partners publish to, routing key ``<partner>.<event_type>``, and
  the quorum queue the broker consumes (binding ``#``); dead-letters to ``<p>.dlx`` (fanout) and
  ``<p>.dead`` after ``x-delivery-limit`` failed attempts;
* ``<p>.deliver``: direct exchange of released records, routing key = consumer id, one queue
  ``<p>.consumer.<consumer>`` each;
* ``<p>.quarantine``: fanout exchange and queue of refused messages, for the operators;
* ``<p>.receipts``: direct exchange of receipts, routing key = partner id, one queue
  ``<p>.receipts.<partner>`` each;
* ``<p>.checkpoints``: fanout exchange of the broker's signed audit checkpoints, one queue
  ``<p>.checkpoints.<party>`` for every partner and consumer (the latest week's, at one a minute),
  so copies of every checkpoint live outside the broker's store, with the parties it answers to.

The messages on these queues are defined in :mod:`schemas.messages`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

DEFAULT_PREFIX = "sv"


@dataclass(frozen=True, slots=True)
class Names:
    """Exchange and queue names under one prefix."""

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

    @property
    def checkpoints_exchange(self) -> str:
        return f"{self.prefix}.checkpoints"

    def checkpoints_queue(self, party: str) -> str:
        return f"{self.prefix}.checkpoints.{party}"


def ingest_routing_key(partner: str, event_type: str) -> str:
    """The routing key a partner publishes an event with: ``<partner>.<event_type>``.

    RabbitMQ's topic permission lets a partner's account write only keys starting ``<partner>.``
    (``sv-broker rabbitmq definitions``), so the key names its publisher; ids contain no ".".
    """
    return f"{partner}.{event_type}"


def routing_key_partner(routing_key: str) -> str:
    """The partner part of an ingest routing key (everything before the first ".")."""
    return routing_key.split(".", 1)[0]


# Every queue is a quorum queue: replicated, and durable by construction.
QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}
# A party's checkpoints queue keeps the latest 10,080 (a week at one a minute; each ~300 bytes):
# a party that never reads it costs the node a bounded few MiB, never an ever-growing queue.
CHECKPOINTS_KEPT = 10_080
CHECKPOINTS_QUEUE: dict[str, Any] = {**QUORUM, "x-max-length": CHECKPOINTS_KEPT, "x-overflow": "drop-head"}


def ingest_queue_arguments(names: Names, delivery_limit: int) -> dict[str, Any]:
    return {
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


@dataclass(frozen=True, slots=True)
class TopologySpec:
    """Every exchange, queue and binding, as data: declared by the broker at start and written
    into the RabbitMQ definitions file (``sv-broker rabbitmq definitions``) from this one source."""

    exchanges: tuple[tuple[str, str], ...]  # (name, type)
    queues: tuple[tuple[str, dict[str, Any]], ...]  # (name, arguments); all durable
    bindings: tuple[tuple[str, str, str], ...]  # (exchange, queue, routing key)


def topology_spec(
    names: Names, *, partners: Iterable[str], consumers: Iterable[str], delivery_limit: int
) -> TopologySpec:
    """The topology for these partner and consumer ids (in sorted order, so it is deterministic)."""
    partners, consumers = list(partners), list(consumers)
    exchanges = [
        (names.dead_letter_exchange, "fanout"),
        (names.ingest_exchange, "topic"),
        (names.deliver_exchange, "direct"),
        (names.quarantine_exchange, "fanout"),
        (names.receipts_exchange, "direct"),
        (names.checkpoints_exchange, "fanout"),
    ]
    queues: list[tuple[str, dict[str, Any]]] = [
        (names.dead_letter_queue, dict(QUORUM)),
        (names.ingest_queue, ingest_queue_arguments(names, delivery_limit)),
        (names.quarantine_queue, dict(QUORUM)),
    ]
    bindings = [
        (names.dead_letter_exchange, names.dead_letter_queue, ""),
        (names.ingest_exchange, names.ingest_queue, "#"),
        (names.quarantine_exchange, names.quarantine_queue, ""),
    ]
    for consumer in sorted(consumers):
        queues.append((names.consumer_queue(consumer), dict(QUORUM)))
        bindings.append((names.deliver_exchange, names.consumer_queue(consumer), consumer))
    for partner in sorted(partners):
        queues.append((names.receipts_queue(partner), dict(QUORUM)))
        bindings.append((names.receipts_exchange, names.receipts_queue(partner), partner))
    for party in sorted(set(partners) | set(consumers)):
        queues.append((names.checkpoints_queue(party), dict(CHECKPOINTS_QUEUE)))
        bindings.append((names.checkpoints_exchange, names.checkpoints_queue(party), ""))
    return TopologySpec(tuple(exchanges), tuple(queues), tuple(bindings))
