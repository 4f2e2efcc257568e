"""Confirmed delivery over RabbitMQ: records to consumers' queues, quarantine, receipts.

aio-pika defaults we override on purpose (DESIGN.md): messages are published PERSISTENT;
channels that publish use publisher confirms and ``on_return_raises`` (an unroutable message is
an error, not a silent drop); every publish is ``mandatory`` and under a deadline, and a
timeout counts as "not confirmed".
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import aiormq
from aio_pika.abc import AbstractChannel
from pamqp.commands import Basic

from broker.audit.checkpoints import checkpoint_line
from broker.errors import DeliveryFailed
from broker.ports.delivery import Deliverable, WithAudit
from broker.ports.rabbitmq.errors import bus_errors
from broker.ports.rabbitmq.fast_publish import (
    Pending,
    Publish,
    check_channel_internals,
    forget_publishes,
    publish_frames,
)
from broker.ports.rabbitmq.topology import Topology
from broker.ports.store import Checkpoint, StoredRecord
from broker.registry import Registry
from broker.stages.outcome import Accepted, Rejected, ReleasedRecord, Settled, receipt
from schemas.errors import Unavailable
from schemas.messages import Receipt, quarantine_headers, receipts_message


class AmqpDelivery:
    """Publishes records, quarantine and receipts with confirms; returns only when all are confirmed.

    A batch's publishes are written as one frame buffer on the aiormq channel under aio-pika
    (:func:`publish_frames`) and their confirms awaited together, under one deadline.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        topology: Topology,
        registry: Registry,
        timeout: float,
        open_channel: Callable[[], Awaitable[AbstractChannel]] | None = None,
    ) -> None:
        self.channel = channel
        # After a failed batch the next one goes out on a fresh channel (see ``publish_all``).
        self.open_channel = open_channel
        self._stale = False
        self.topology = topology
        self.registry = registry
        self.timeout = timeout
        # AMQP message ids of receipts and quarantine copies: unique among everything in flight
        # on the channel, because a basic.return is matched to its publish by message id alone.
        self._serial = itertools.count(1)

    def unique_id(self, kind: str) -> str:
        return f"{kind}:{next(self._serial)}"

    async def check(self) -> None:
        """At start-up: the aiormq underneath has what :func:`publish_frames` uses."""
        with bus_errors("opening the publishing channel"):
            check_channel_internals(await self.channel.get_underlay_channel())

    def with_audit(self, batch: Deliverable) -> WithAudit:
        """Nothing rides in the audit transaction: records are published after it, confirmed."""
        return WithAudit()

    async def _fresh_channel(self) -> None:
        """Replace the publishing channel after a failed batch.

        Measured against a real 3-node cluster (RabbitMQ 3.10.8, aio-pika 10): when the node the
        broker is connected to dies mid-stream, the robust channel that aio-pika reopens on the
        surviving node gets a nack for every later publish to a quorum queue, for as long as it
        lives, while a channel opened afresh on the same connection is confirmed at once
        (``tests/test_rabbitmq_failover.py``). A retry on the old channel would wait for ever;
        on a new one it goes through."""
        if self.open_channel is None:
            return
        with bus_errors("opening a fresh publishing channel"):
            fresh = await self.open_channel()
            check_channel_internals(await fresh.get_underlay_channel())
        old, self.channel = self.channel, fresh
        self._stale = False
        with contextlib.suppress(Exception):
            await old.close()

    async def publish_all(self, publishes: Sequence[Publish]) -> None:
        if not publishes:
            return
        if self._stale:
            await self._fresh_channel()
        try:
            await self._publish_all(publishes)
        except Unavailable:  # not confirmed, or the channel went: the next batch gets a new one
            self._stale = True
            raise

    async def _publish_all(self, publishes: Sequence[Publish]) -> None:
        if self.channel.is_closed:
            raise DeliveryFailed("the publishing channel is closed")
        with bus_errors("opening the publishing channel"):
            underlay = await self.channel.get_underlay_channel()
        if not isinstance(underlay, aiormq.Channel):
            raise DeliveryFailed(f"unexpected channel type {type(underlay).__name__}")
        if underlay.is_closed:
            raise DeliveryFailed("the publishing channel is closed")
        pending: list[Pending] = []
        try:
            # One deadline for the whole batch, sending included (the channel lock, a full write
            # queue); a timeout counts as "not confirmed".
            async with asyncio.timeout(self.timeout):
                with bus_errors("publishing"):
                    pending = await publish_frames(underlay, publishes)
                results = await asyncio.gather(*(future for _, _, future in pending), return_exceptions=True)
        except TimeoutError as exc:
            raise DeliveryFailed(f"publishes not confirmed within {self.timeout}s") from exc
        finally:
            forget_publishes(underlay, pending)
        errors = [r for r in results if not isinstance(r, Basic.Ack)]
        if errors:
            # A nack, a return or a lost channel: all mean "not confirmed".
            first = errors[0]
            raise DeliveryFailed(f"{len(errors)} of {len(results)} publishes not confirmed: {_why(first)}") from (
                first if isinstance(first, BaseException) else None
            )

    def receipts(self, outcomes: Sequence[Settled], at: datetime) -> list[Publish]:
        """One receipts message per partner per batch: ``{"receipts": [receipt, ...]}``.

        Batched because a receipt per message was a third of all publishes (each costs a frame,
        a confirm and ~100 us of client CPU); partners read them in bulk anyway.
        """
        by_partner: dict[str, list[Receipt]] = {}
        for outcome in outcomes:
            if outcome.receipt_to is not None and outcome.receipt_to in self.registry.partners:
                by_partner.setdefault(outcome.receipt_to, []).append(receipt(outcome, at))
        return [
            Publish(
                self.topology.receipts.name,
                partner,
                receipts_message(items),
                self.unique_id(f"receipts:{partner}"),
            )
            for partner, items in by_partner.items()
        ]

    def quarantine(self, outcome: Rejected) -> Publish:
        """The refused message, with its reason in headers; its body only when keeping it is lawful."""
        keep = outcome.body_kept
        return Publish(
            self.topology.quarantine.name,
            "",
            outcome.inbound.body if keep else b"",
            self.unique_id("quarantine"),
            dict(
                quarantine_headers(
                    reason=outcome.reason.value,
                    reason_message=outcome.message,
                    body_sha256=outcome.body_sha256,
                    source=outcome.source,
                    message_id=outcome.message_id,
                    verified=outcome.verified,
                    body_kept=keep,
                )
            ),
        )

    async def publish_checkpoint(self, checkpoint: Checkpoint) -> None:
        """One signed checkpoint to the checkpoints exchange: a copy in every party's checkpoints
        queue, confirmed by RabbitMQ (a nack or return raises: the flow signs it again later)."""
        body = checkpoint_line(checkpoint).encode("ascii")
        await self.publish_all(
            [Publish(self.topology.checkpoints.name, "", body, self.unique_id(f"checkpoint:{checkpoint.seq}"))]
        )

    async def deliver(self, batch: Deliverable) -> None:
        # Records carry no headers: everything a consumer needs is in the body, and every
        # property costs encoding time on the hot path.
        # Notices (``schemas.messages.ConsumerNotice``: a body with "notice", not "data") ride the
        # same queue, each message's records and notices in the order of the batch, so a
        # consumer sees a record's revisions and its withdrawal in the order they were applied.
        publishes: list[Publish] = []
        for outcome in batch.accepted:
            publishes.extend(
                Publish(self.topology.deliver.name, record.release.consumer, record.body, _amqp_id(outcome, record))
                for record in outcome.records
            )
            publishes.extend(
                Publish(
                    self.topology.deliver.name,
                    notice.holding.consumer,
                    notice.body,
                    f"{notice.holding.record_id}:w{notice.revision}",
                )
                for notice in outcome.notices
            )
        publishes.extend(
            Publish(self.topology.deliver.name, notice.consumer, notice.body, _stored_id(notice))
            for notice in batch.notices
        )
        publishes.extend(self.quarantine(outcome) for outcome in batch.rejected)
        publishes.extend(self.receipts(batch.receipts, batch.at))
        await self.publish_all(publishes)


def _amqp_id(outcome: Accepted, record: ReleasedRecord) -> str:
    """A record's AMQP message id: its record id (revision 1, as always), ``<record id>:r<n>`` for a
    later revision (each revision its own message, a redelivery the same)."""
    revision = outcome.validated.envelope.revision
    return record.release.record_id if revision == 1 else f"{record.release.record_id}:r{revision}"


def _stored_id(row: StoredRecord) -> str:
    """A deletion notice's AMQP id (``<record id>:deleted``), or a figures release's (its figures
    id, then ``<figures id>:r<n>`` for each recount, as a record's revisions)."""
    if row.kind == "figures":
        return row.record_id if row.revision == 1 else f"{row.record_id}:r{row.revision}"
    return f"{row.record_id}:deleted"


def _why(error: object) -> str:
    """RabbitMQ's own answer (a nack, or a return's code and text), for the log: never a body."""
    frame = getattr(error, "frame", None)
    if isinstance(frame, Basic.Return):
        return f"returned {frame.reply_code} {frame.reply_text} ({frame.exchange!r}, {frame.routing_key!r})"
    if frame is not None:
        return type(frame).__name__
    return type(error).__name__
