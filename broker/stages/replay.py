"""Stage 5: what a message id already seen means (pure); the store that remembers ids is a port.

Validated + what the guard remembers ─► Admitted (decide it)  |  Repeat (a duplicate)
                                                               |  Reused (an id reused: refused)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from broker.stages.types import Admitted, Validated


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


@dataclass(frozen=True, slots=True)
class Repeat:
    """The same content under an id already finished: acknowledged, audited, not released again."""

    validated: Validated


@dataclass(frozen=True, slots=True)
class Reused:
    """An id already held for different content: refused as ``replayed``."""

    validated: Validated


REUSED_ID = "This message id was already used for different content; a new record needs a new id."


def admit(validated: Validated, state: ReplayState, seen_content: str | None) -> Admitted | Repeat | Reused:
    verdict = replay_verdict(state, seen_content, validated.content_sha256)
    if verdict is ReplayVerdict.CONFLICT:
        return Reused(validated)
    if verdict is ReplayVerdict.DUPLICATE:
        return Repeat(validated)
    return Admitted(validated)
