"""The dead-letter flow: a message the broker failed on ``x-delivery-limit`` times.

    dead letter ─► 1 audit ``dead_lettered`` (durable) ─► 2 quarantine it (reason ``dead_lettered``)
                ─► 3 receipt to its publisher ─► (the consumer acknowledges it)

Its content was never judged (the broker failed before a verdict), so nothing is released and
the publisher is told to ask the operators rather than to fix the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from broker.audit import entries
from broker.ports.delivery import Deliverable, Delivery
from broker.ports.store import CommitUnit, Store
from broker.stages.outcome import Rejected
from broker.stages.records import sha256_hex
from broker.stages.types import Inbound
from schemas.errors import Reason


@dataclass(frozen=True, slots=True)
class DeadLetter:
    body: bytes
    publisher: str | None  # the AMQP user it was published under (mapped to a partner), if any
    amqp_message_id: str | None
    routing_key: str
    delivery_count: int | None


class DeadLetterFlow:
    def __init__(self, store: Store, delivery: Delivery) -> None:
        self.store = store
        self.delivery = delivery

    async def handle(self, letter: DeadLetter, now: datetime | None = None) -> None:
        """Returns once audited, quarantined and receipted; raises (to be retried) otherwise."""
        body_hash = sha256_hex(letter.body)
        times = str(letter.delivery_count) if letter.delivery_count is not None else "several"
        outcome = Rejected(
            Inbound(letter.body, publisher=letter.publisher, transport="amqp"),
            body_hash,
            Reason.DEAD_LETTERED,
            f"The broker failed to process this message {times} times; "
            "it was set aside for the operators and no record was released.",
            verified=False,
            source=letter.publisher,
            message_id=letter.amqp_message_id,
            receipt_to=letter.publisher,
        )
        # 1. Audited first: a dead letter that reached quarantine unaudited would be a silent drop.
        draft = entries.dead_lettered(
            body_hash, letter.publisher, letter.amqp_message_id, letter.routing_key, letter.delivery_count
        )
        batch = Deliverable(now or datetime.now(UTC), rejected=[outcome], receipts=[outcome])
        durable = self.delivery.with_audit(batch)
        await self.store.commit(CommitUnit(drafts=[draft], quarantine=list(durable.quarantine)))
        # 2 and 3. Quarantine and receipt, confirmed.
        await self.delivery.deliver(batch)
