"""The broker's periodic jobs: when each flow runs, never what it does (``broker/pipeline/``).

A job's failure is logged and retried at its next round; it never stops the broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

from broker.logs import get_logger
from broker.pipeline.checkpoints import CheckpointFlow
from broker.ports.store import Leadership

log = get_logger("sv_broker.jobs")


async def lead(
    leadership: Leadership,
    on_change: Callable[[bool], Awaitable[None]],
    interval_seconds: float = 1.0,
    held: bool = False,
) -> None:
    """Hold the singleton role while this process can: check every ``interval_seconds``, and
    tell ``on_change`` when the role is gained or lost (a lost database connection loses it).
    ``held``: what the caller's own first check found (and already acted on)."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            now = await leadership.check()
        except Exception as exc:  # a bug in the check: lead nothing rather than run twice
            log.warning("leadership_check_failed", error=type(exc).__name__)
            now = False
        if now != held:
            held = now
            log.info("leadership_gained" if held else "leadership_lost")
            try:
                await on_change(held)
            except Exception as exc:
                log.warning("leadership_change_failed", error=type(exc).__name__)


async def checkpoint_every(
    flow: CheckpointFlow,
    clock: Callable[[], datetime],
    every_entries: int,
    interval_seconds: float,
    leading: Callable[[], bool] = lambda: True,
) -> None:
    """Sign the head after ``every_entries`` new entries, or after ``interval_seconds`` if it moved
    (only while this process leads: one signer at a time for the whole chain)."""
    loop = asyncio.get_running_loop()
    last_at = 0.0
    while True:
        await asyncio.sleep(min(1.0, interval_seconds))
        if not leading():
            continue
        try:
            seq = (await flow.store.current_head()).seq
            due = seq - flow.last_seq >= every_entries
            stale = seq > flow.last_seq and loop.time() - last_at >= interval_seconds
            if (due or stale) and await flow.sign_head(clock()) is not None:
                last_at = loop.time()
        except Exception as exc:  # retried next round; never kill the broker
            log.warning("checkpoint_failed", error=type(exc).__name__)


async def retention_every(
    purge: Callable[[datetime], Awaitable[object]],
    warn: Callable[[], None],
    clock: Callable[[], datetime],
    interval_seconds: float,
    leading: Callable[[], bool] = lambda: True,
) -> None:
    """Purge expired records (while this process leads) and re-check the agreements' dates,
    every ``interval_seconds``."""
    while True:
        try:
            if leading():
                await purge(clock())
            warn()
        except Exception as exc:
            log.warning("retention_failed", error=type(exc).__name__)
        await asyncio.sleep(interval_seconds)


async def alerts_every(refresh: Callable[[], Awaitable[object]], interval_seconds: float) -> None:
    """Recompute the alerts and their gauges every ``interval_seconds`` (every process serving
    ``/metrics`` does, leader or not: they read one store and say the same)."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            await refresh()
        except Exception as exc:  # retried next round; never kill the broker
            log.warning("alerts_refresh_failed", error=type(exc).__name__)
