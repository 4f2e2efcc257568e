"""Stage 3: is the signed time inside the window? (pure)"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.stages.types import Fresh, Verified
from schemas.errors import ContractError, Reason


@dataclass(frozen=True, slots=True)
class FreshnessWindow:
    """How far the signed ``time`` may lie from the broker's clock.

    ``max_age`` is generous by default because education data arrives termly and a broker may be
    down for a weekend with its ingest queue filling; the durable replay guard, not this window,
    is what stops replays.  The window bounds how long ids must be remembered and stops a leaked
    old message being replayed after its id has been purged.
    """

    max_age: timedelta = timedelta(days=7)
    max_future: timedelta = timedelta(minutes=5)


def check_freshness(verified: Verified, now: datetime, window: FreshnessWindow) -> Fresh:
    produced = verified.envelope.time
    if produced > now + window.max_future:
        raise ContractError(
            Reason.FROM_THE_FUTURE,
            f"The message time is more than {window.max_future} ahead of the broker's clock.",
            field="time",
        )
    if produced < now - window.max_age:
        raise ContractError(
            Reason.STALE, f"The message is older than the {window.max_age} freshness window.", field="time"
        )
    return Fresh(verified, now)
