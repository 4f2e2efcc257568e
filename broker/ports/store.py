"""The storage port: replay guard, audit trail, records and quarantine, behind one interface.

One port rather than three because the invariants tie them together: the audit entries of a
message, its stored records and its replay state must become durable in the same transaction
(or the audit could say "released" for a record that does not exist, or the other way round).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from broker.audit.chain import ChainReport, Draft
from broker.stages.replay import ReplayState

ReplayKey = tuple[str, str]  # (source partner, message id)


@dataclass(frozen=True, slots=True)
class Seen:
    """What the replay guard remembers of a message id: how far it got, and a hash of its
    content (type, version and payload) to tell a resend from an id reused for other content."""

    state: ReplayState
    content_sha256: str | None = None


NOT_SEEN = Seen(ReplayState.NEW)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    record_id: str
    consumer: str
    agreement_id: str
    agreement_revision: int
    event_type: str
    source: str
    message_id: str
    released_at: datetime
    expires_at: datetime
    body: bytes  # canonical JSON of the minimised record envelope


@dataclass(frozen=True, slots=True)
class QuarantineItem:
    at: datetime
    reason: str
    message: str
    source: str | None
    message_id: str | None
    body_sha256: str
    body: bytes | None  # None when keeping the body would itself hold personal data


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement of the chain head: (sequence, head hash, time), Ed25519 by the broker."""

    seq: int
    head_hash: str
    at: str
    kid: str
    signature: str


@dataclass(slots=True)
class CommitUnit:
    """Everything one batch makes durable, in one transaction.

    ``RELEASED`` drafts carry a ``record_id``; the store writes each record id's release entry
    at most once ever, so a redelivered message is never audited as released twice.
    """

    drafts: list[Draft] = field(default_factory=list)
    records: list[StoredRecord] = field(default_factory=list)
    seen: list[tuple[ReplayKey, Seen]] = field(default_factory=list)
    quarantine: list[QuarantineItem] = field(default_factory=list)
    purge: list[str] = field(default_factory=list)  # record ids to delete (retention)
    checkpoints: list[Checkpoint] = field(default_factory=list)

    def extend(self, other: CommitUnit) -> None:
        self.drafts.extend(other.drafts)
        self.records.extend(other.records)
        self.seen.extend(other.seen)
        self.quarantine.extend(other.quarantine)
        self.purge.extend(other.purge)
        self.checkpoints.extend(other.checkpoints)


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def replay_states(self, keys: Sequence[ReplayKey]) -> dict[ReplayKey, Seen]: ...

    async def commit(self, unit: CommitUnit) -> frozenset[ReplayKey]:
        """Durable on return (group commit: concurrent callers share one transaction).

        Returns the message ids this unit lost a claim on: another writer (a broker process
        sharing the store) already holds the id for *different* content. For those, the unit's
        replay state, records and entries other than ``received`` were not written; the caller
        must not release them (see ``Pipeline``)."""
        ...

    async def ping(self) -> bool: ...

    async def verify_audit(self) -> ChainReport: ...
