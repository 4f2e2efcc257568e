"""The frozen value each stage hands to the next.

    Inbound ─parse─► Received ─verify─► Verified ─freshness─► Fresh ─validate─► Validated
            ─replay guard─► Admitted ─policy─► Decision[Validated] ─► Accepted (see ``outcome.py``)

Each stage accepts only the previous stage's type, so an unverified, stale or unvalidated message
cannot reach the policy engine, and a refused one cannot reach a consumer: mypy says so
(``tests/typing/test_outcome_types.py`` shows the errors it reports).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.envelope import Envelope
from schemas.events import EventModel


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message as a transport delivered it."""

    body: bytes
    publisher: str | None = None  # partner id the transport authenticated (AMQP user_id), if any
    route_partner: str | None = None  # partner named by the routing key, for receipts of unparseable input
    routing_key: str | None = None  # the AMQP routing key it was published under (None over HTTP)
    redelivered: bool = False
    transport: str = "http"


@dataclass(frozen=True, slots=True)
class Received:
    """Strictly parsed, structurally valid envelope; authenticity not yet known."""

    envelope: Envelope
    body_sha256: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Verified:
    """Signature checked under a key registered to ``envelope.source`` and valid at its time."""

    received: Received
    kid: str

    @property
    def envelope(self) -> Envelope:
        return self.received.envelope


@dataclass(frozen=True, slots=True)
class Fresh:
    """A verified envelope whose signed time lies inside the freshness window at ``checked_at``."""

    verified: Verified
    checked_at: datetime

    @property
    def envelope(self) -> Envelope:
        return self.verified.received.envelope


@dataclass(frozen=True, slots=True)
class Validated:
    """A fresh, verified envelope whose payload is a valid event of its declared type and version."""

    fresh: Fresh
    event: EventModel
    content_sha256: str  # type, version and payload: tells a resend from an id reused for other content

    @property
    def envelope(self) -> Envelope:
        return self.fresh.verified.received.envelope

    @property
    def verified(self) -> Verified:
        return self.fresh.verified


@dataclass(frozen=True, slots=True)
class Admitted:
    """A validated message the replay guard let through: new, or seen but never finished (a crash
    mid-way), so releasing it again is idempotent. Only an admitted message is decided."""

    validated: Validated

    @property
    def envelope(self) -> Envelope:
        return self.validated.envelope

    @property
    def event(self) -> EventModel:
        return self.validated.event
