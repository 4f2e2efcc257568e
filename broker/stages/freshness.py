"""Freshness and replay, as pure decisions; the store that remembers ids is a port."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from broker.stages.types import Verified
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


def check_freshness(verified: Verified, now: datetime, window: FreshnessWindow) -> None:
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


class ReplayState(StrEnum):
    NEW = "new"  # never seen: process it
    IN_PROGRESS = "in_progress"  # seen, releases not all done (crash mid-way): process again, idempotently
    DONE = "done"  # seen and completed: a duplicate


def is_duplicate(state: ReplayState) -> bool:
    """A message whose releases are all done is a duplicate: acknowledged, recorded, not released again."""
    return state is ReplayState.DONE


class ReplayVerdict(StrEnum):
    PROCESS = "process"  # new, or seen but not finished (crash mid-way): release, idempotently
    DUPLICATE = "duplicate"  # same id, same content, finished: acknowledge, do not release again
    CONFLICT = "conflict"  # same id, different content: refuse (``replayed``)


def replay_verdict(state: ReplayState, seen_content: str | None, content: str) -> ReplayVerdict:
    """Decide what a message id already in the replay guard means.

    Threat: an id reused for different content would otherwise be silently swallowed as a
    "duplicate" (the new content lost) or, worse, released under the old id's record ids,
    overwriting what consumers hold. A resend of the same content (an adapter re-run with a new
    ``time`` and signature) is a harmless duplicate.
    """
    if state is ReplayState.NEW:
        return ReplayVerdict.PROCESS
    if seen_content is not None and seen_content != content:
        return ReplayVerdict.CONFLICT
    return ReplayVerdict.DUPLICATE if is_duplicate(state) else ReplayVerdict.PROCESS
