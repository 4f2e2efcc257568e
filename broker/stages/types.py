"""The frozen value each stage hands to the next.

received -> verified -> validated -> decided: each stage accepts only the previous stage's type,
so an unverified message cannot reach the policy engine or a consumer by mistake (mypy says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.envelope import Envelope
from schemas.events import EventModel


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
class Validated:
    """A verified envelope whose payload is a valid event of its declared type and version."""

    verified: Verified
    event: EventModel

    @property
    def envelope(self) -> Envelope:
        return self.verified.received.envelope
