"""``schemas.topology``: the AMQP names, routing keys and queue arguments of the contract, as data."""

from __future__ import annotations

from broker.ports.rabbitmq import topology as amqp
from broker.registry import Registry
from schemas import topology
from schemas.topology import QUORUM, Names, ingest_routing_key, routing_key_partner, topology_spec


def test_names_under_a_prefix() -> None:
    names = Names("sv")
    assert (names.ingest_exchange, names.ingest_queue) == ("sv.ingest", "sv.ingest")
    assert (names.dead_letter_exchange, names.dead_letter_queue) == ("sv.dlx", "sv.dead")
    assert names.deliver_exchange == "sv.deliver"
    assert names.consumer_queue("derby-csp-analysts") == "sv.consumer.derby-csp-analysts"
    assert (names.quarantine_exchange, names.quarantine_queue) == ("sv.quarantine", "sv.quarantine")
    assert names.receipts_exchange == "sv.receipts"
    assert names.receipts_queue("derbyshire-police") == "sv.receipts.derbyshire-police"


def test_ingest_routing_key_names_the_partner() -> None:
    key = ingest_routing_key("uhdb-royal-derby-ed", "ae_assault")
    assert key == "uhdb-royal-derby-ed.ae_assault"
    assert routing_key_partner(key) == "uhdb-royal-derby-ed"
    assert routing_key_partner("") == ""


def test_the_topology_is_exactly_this() -> None:
    spec = topology_spec(Names("x"), partners=["p2", "p1"], consumers=["c1"], delivery_limit=9)
    assert spec.exchanges == (
        ("x.dlx", "fanout"),
        ("x.ingest", "topic"),
        ("x.deliver", "direct"),
        ("x.quarantine", "fanout"),
        ("x.receipts", "direct"),
        ("x.checkpoints", "fanout"),
    )
    assert spec.queues == (
        ("x.dead", {"x-queue-type": "quorum"}),
        (
            "x.ingest",
            {
                "x-queue-type": "quorum",
                "x-delivery-limit": 9,
                "x-dead-letter-exchange": "x.dlx",
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        ),
        ("x.quarantine", {"x-queue-type": "quorum"}),
        ("x.consumer.c1", {"x-queue-type": "quorum"}),
        ("x.receipts.p1", {"x-queue-type": "quorum"}),
        ("x.receipts.p2", {"x-queue-type": "quorum"}),
        *(
            (f"x.checkpoints.{party}", {"x-queue-type": "quorum", "x-max-length": 10_080, "x-overflow": "drop-head"})
            for party in ("c1", "p1", "p2")
        ),
    )
    assert spec.bindings == (
        ("x.dlx", "x.dead", ""),
        ("x.ingest", "x.ingest", "#"),
        ("x.quarantine", "x.quarantine", ""),
        ("x.deliver", "x.consumer.c1", "c1"),
        ("x.receipts", "x.receipts.p1", "p1"),
        ("x.receipts", "x.receipts.p2", "p2"),
        ("x.checkpoints", "x.checkpoints.c1", ""),
        ("x.checkpoints", "x.checkpoints.p1", ""),
        ("x.checkpoints", "x.checkpoints.p2", ""),
    )


def test_queue_arguments_are_not_shared() -> None:
    # Each queue gets its own dict: a caller changing one cannot change another, or QUORUM.
    spec = topology_spec(Names("x"), partners=["p"], consumers=["c"], delivery_limit=1)
    arguments = [args for _, args in spec.queues]
    assert len({id(a) for a in arguments}) == len(arguments)
    assert all(a is not QUORUM for a in arguments)


def test_the_broker_declares_the_contract_topology(registry: Registry) -> None:
    assert amqp.Names is topology.Names
    assert amqp.TopologySpec is topology.TopologySpec
    assert amqp.topology_spec(Names("sv"), registry, 5) == topology_spec(
        Names("sv"), partners=list(registry.partners), consumers=list(registry.consumers), delivery_limit=5
    )
