"""The policy engine's output types: what the pipeline releases, and why anything was not.

Defined first, as the contract between the engine (``broker/policy/engine.py``) and the
orchestrator (``broker/pipeline/ingest.py``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from schemas.envelope import Envelope
from schemas.events import EventModel


def record_id(source: str, message_id: str, consumer: str, agreement_id: str) -> str:
    """Deterministic record id: the same message released to the same consumer under the same
    agreement always has the same id, so redelivery after a crash is recognisably the same
    release (idempotency, DESIGN.md invariant 2).  The agreement *revision* is deliberately not
    part of it: a revision bump between a crash and its redelivery must not double-release.
    ``message_id`` is the record's first message id (``Envelope.lineage``), so each correction of
    a record reaches a consumer under the record id it already holds.
    """
    digest = hashlib.sha256(f"{source}\x00{message_id}\x00{consumer}\x00{agreement_id}".encode()).hexdigest()
    return f"rec-{digest[:32]}"


def contribution_id(source: str, message_id: str, agreement_id: str, flow_id: str) -> str:
    """Deterministic id of one record's contribution to a figures flow (once for all its consumers:
    they receive the same figures); ``message_id`` is the record's first message id."""
    digest = hashlib.sha256(f"{source}\x00{message_id}\x00{agreement_id}\x00{flow_id}".encode()).hexdigest()
    return f"cnt-{digest[:32]}"


def quarter_key(agreement_id: str, flow_id: str, period: str) -> str:
    """One figures flow's quarter (what is counted and recounted); each consumer's release of it
    has its own ``figures_id``."""
    digest = hashlib.sha256(f"{agreement_id}\x00{flow_id}\x00{period}".encode()).hexdigest()
    return f"fq-{digest[:32]}"


def figures_id(consumer: str, agreement_id: str, flow_id: str, period: str) -> str:
    """Deterministic id of one figures release (a flow's quarter for one consumer): each revision
    of the quarter's figures reaches the consumer under the id it already holds."""
    digest = hashlib.sha256(f"{consumer}\x00{agreement_id}\x00{flow_id}\x00{period}".encode()).hexdigest()
    return f"fig-{digest[:32]}"


@dataclass(frozen=True, slots=True)
class Release:
    """One minimised record for one consumer under one agreement flow."""

    consumer: str
    agreement_id: str
    agreement_revision: int
    flow_id: str
    record_id: str
    record: dict[str, Any]  # JSON-ready: only the released fields, transformed as declared
    fields: tuple[str, ...]  # output field names released, sorted
    rules: tuple[str, ...]  # rule ids that produced them, aligned with ``fields``
    purpose: str
    lawful_basis: tuple[str, ...]
    retention_days: int
    # A figures flow's release: counted in the consumer's quarterly figures, never sent itself.
    figures: bool = False


@dataclass(frozen=True, slots=True)
class Hold:
    """An agreement that refused the message only because it is not in force, and whose ``[hold]``
    table says such events are kept, sealed, until ``expires_at`` to be decided again under a
    later revision (``broker/pipeline/held.py``)."""

    agreement_id: str
    agreement_revision: int
    reason: str  # not_yet_valid, review_overdue or expired
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an agreement (or the absence of one) released nothing for a consumer."""

    reason: str  # stable code: no_agreement, not_yet_valid, expired, review_overdue, ...
    message: str
    agreement_id: str | None = None
    consumer: str | None = None


class Subject(Protocol):
    """What the engine reads of a message: its envelope and its validated event. The pipeline
    decides an ``Admitted`` message; ``policy explain`` a ``WhatIf`` (never deliverable)."""

    @property
    def envelope(self) -> Envelope: ...

    @property
    def event(self) -> EventModel: ...


S_co = TypeVar("S_co", bound=Subject, covariant=True)


@dataclass(frozen=True, slots=True)
class Decision(Generic[S_co]):
    """The engine's verdict on one message, carrying the message it was made for: a decision on
    an admitted message is the only thing a record can be released from (``stages/outcome.py``)."""

    subject: S_co
    releases: tuple[Release, ...]
    refusals: tuple[Refusal, ...]
    holds: tuple[Hold, ...] = ()  # agreements this message is held for (at most one each)
    # Figures flows' releases (``Release.figures``): counted in the consumer's quarterly figures,
    # never sent as a record; kept apart so that ``releases`` is only what consumers receive.
    counted: tuple[Release, ...] = ()

    @property
    def source(self) -> str:
        return self.subject.envelope.source

    @property
    def message_id(self) -> str:
        return self.subject.envelope.id

    @property
    def event_type(self) -> str:
        return self.subject.envelope.type
