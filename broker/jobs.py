"""The broker's periodic jobs: when each flow runs, never what it does (``broker/pipeline/``).

A job's failure is logged and retried at its next round; it never stops the broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

from broker.logs import get_logger
from broker.pipeline.checkpoints import CheckpointFlow

log = get_logger("sv_broker.jobs")


async def checkpoint_every(
    flow: CheckpointFlow,
    clock: Callable[[], datetime],
    every_entries: int,
    interval_seconds: float,
) -> None:
    """Sign the head after ``every_entries`` new entries, or after ``interval_seconds`` if it moved."""
    loop = asyncio.get_running_loop()
    last_at = 0.0
    while True:
        await asyncio.sleep(min(1.0, interval_seconds))
        try:
            seq = (await flow.store.current_head()).seq
            due = seq - flow.last_seq >= every_entries
            stale = seq > flow.last_seq and loop.time() - last_at >= interval_seconds
            if (due or stale) and await flow.sign_head(clock()) is not None:
                last_at = loop.time()
        except Exception as exc:  # retried next round; never kill the broker
            log.warning("checkpoint_failed", error=type(exc).__name__)


async def retention_every(
    purge: Callable[[datetime], Awaitable[int]],
    warn: Callable[[], None],
    clock: Callable[[], datetime],
    interval_seconds: float,
) -> None:
    """Purge expired records and re-check the agreements' dates, every ``interval_seconds``."""
    while True:
        try:
            await purge(clock())
            warn()
        except Exception as exc:
            log.warning("retention_failed", error=type(exc).__name__)
        await asyncio.sleep(interval_seconds)
