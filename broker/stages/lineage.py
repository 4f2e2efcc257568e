"""Stage 5b: where a message stands in its record's life (pure); the store that remembers it is a port.

A record's *lineage* is its first message id (``Envelope.lineage``) and every later revision a
partner sends under it: corrections (the whole corrected event) and withdrawals. The store keeps,
per lineage, the latest revision applied and, per consumer, what that consumer holds (a
:class:`Holding`: which record id, under which agreement, at which revision, withdrawn or not).

    Admitted + Lineage ─► follows() ─► None (decide it)  |  a sentence (refused: revision_superseded)
    decision + Lineage ─► withdrawals() ─► the holders that must be told "withdrawn"

Why revisions, not "last write wins": corrections arrive over RabbitMQ with redelivery, from
several broker processes, and an adapter may resend an old revision. A revision number makes
every message about a record ordered and idempotent: a consumer keeps the highest revision it has
seen, so the order in which two notices reach it cannot matter, and the broker refuses a revision
older than one already applied (it would otherwise overwrite a correction with what it corrected).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from schemas.envelope import Envelope
from schemas.errors import Reason

NO_LONGER_ENTITLED = "no_longer_entitled"  # a correction leaves a consumer's flow refusing the record


@dataclass(frozen=True, slots=True)
class Holding:
    """What one consumer holds of a record: its record id under one agreement, at a revision."""

    record_id: str
    consumer: str
    agreement_id: str
    revision: int
    withdrawn: bool
    expires_at: datetime  # when its retention ends (from its first release: a correction does not extend it)
    # Its retention ended and the broker purged it: kept as a tombstone, so a later revision is never
    # released to this consumer again (that would restart a retention the agreement ended).
    purged: bool = False


@dataclass(frozen=True, slots=True)
class Lineage:
    """What the store knows of a record's life. ``revision`` 0: nothing yet."""

    revision: int = 0
    message_id: str = ""  # the message that applied ``revision``
    withdrawn: bool = False
    holdings: tuple[Holding, ...] = ()
    event_type: str = ""  # the record's type ("" when not known)

    def holding(self, record_id: str) -> Holding | None:
        for held in self.holdings:
            if held.record_id == record_id:
                return held
        return None


NO_LINEAGE = Lineage()


def follows(env: Envelope, lineage: Lineage) -> tuple[Reason, str] | None:
    """None when ``env`` may be applied to its record; otherwise the refusal (reason, sentence).

    A revision the broker has not seen the first of is applied as the record's first appearance
    (its revision 1 may have been refused and this correction fixes it). The same message again
    (``message_id`` equal: redelivered after a crash mid-way) is applied again, idempotently."""
    if lineage.event_type and env.type != lineage.event_type:
        # Threat: a "correction" of another type would be decided under other agreements, reach
        # other consumers under other record ids, and leave the first type's copies in place.
        return (
            Reason.REVISION_TYPE_MISMATCH,
            f"This record is a {lineage.event_type}; a revision cannot make it a {env.type} "
            "(withdraw it and send a new record).",
        )
    if lineage.revision == 0 or env.revision > lineage.revision:
        return None
    if env.revision == lineage.revision and env.id == lineage.message_id:
        return None
    return (
        Reason.REVISION_SUPERSEDED,
        f"Revision {env.revision} of this record arrived after revision {lineage.revision}; "
        "the later revision stands (send a higher revision to correct it again).",
    )


def holders_to_tell(lineage: Lineage) -> tuple[Holding, ...]:
    """Every consumer that holds, or held, the record and whose retention has not ended: each hears
    of every revision (the record, or a notice). A consumer withdrawn at an earlier revision is told
    again: a notice is idempotent, and a notice lost in a crash before it was published is repaired
    by the next revision."""
    return tuple(h for h in lineage.holdings if not h.purged)


def applied(lineage: Lineage, env: Envelope, changed: tuple[Holding, ...]) -> Lineage:
    """The lineage after ``env`` changed the ``changed`` holdings (released or withdrawn): what a
    later message of the same record in the same batch reads."""
    by_id = {h.record_id: h for h in changed}
    kept = tuple(by_id.pop(h.record_id, h) for h in lineage.holdings)
    return replace(
        lineage,
        revision=env.revision,
        message_id=env.id,
        withdrawn=env.withdrawn is not None,
        holdings=kept + tuple(by_id.values()),
        event_type=env.type,
    )
