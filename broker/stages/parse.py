"""Stage 1: strict parse of the raw body into a structurally valid envelope (pure)."""

from __future__ import annotations

import hashlib
from datetime import datetime

from broker.stages.types import Received
from schemas.envelope import envelope_from_document
from schemas.strictjson import parse_document


def parse(body: bytes, *, max_bytes: int, now: datetime) -> Received:
    """Raise :class:`schemas.errors.ContractError` with a stable reason on any refusal."""
    document, plain = parse_document(body, max_bytes=max_bytes)
    return Received(
        envelope=envelope_from_document(document, plain=plain),
        body_sha256=hashlib.sha256(body).hexdigest(),
        received_at=now,
    )
