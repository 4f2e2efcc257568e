"""The orchestrator: the one place that runs the pure stages in order and awaits the I/O ports.

    partner ─► 1 parse ─► 2 verify ─► 3 freshness ─► 4 validate ─► 5 replay guard ─► 6 policy
           ─► 7 audit + records durable (one group commit) ─► 8 deliver (confirmed) ─► 9 mark done

The transport (RabbitMQ consumer or HTTP handler) acknowledges / responds only after
:meth:`Pipeline.process` returns, so a message is never acknowledged before every release it
causes is confirmed and its audit entries are durable (DESIGN.md invariants 2 and 3).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from broker.logs import get_logger
from broker.policy.decision import Decision, Refusal, Release
from broker.policy.engine import decide
from broker.policy.loader import PolicySet
from broker.ports.delivery import Delivered, Delivery
from broker.ports.store import CommitUnit, ReplayKey, Seen, Store
from broker.registry import Registry
from broker.settings import Settings
from broker.stages.freshness import ReplayState, ReplayVerdict, check_freshness, replay_verdict
from broker.stages.outcome import (
    Inbound,
    Outcome,
    Status,
    drafts_for,
    quarantine_item,
    record_body,
    sha256_hex,
    stored_records,
)
from broker.stages.parse import parse
from broker.stages.types import Received, Validated
from broker.stages.validate import validate
from broker.stages.verify import verify
from schemas.errors import ContractError, Reason

DecideFn = Callable[[Validated, PolicySet, datetime], Decision]

log = get_logger("sv_broker.pipeline")

_REUSED_ID = "This message id was already used for different content; a new record needs a new id."


@dataclass(slots=True)
class _Item:
    inbound: Inbound
    body_sha256: str
    received: Received | None = None
    validated: Validated | None = None
    content_sha256: str = ""
    outcome: Outcome | None = None
    bodies: dict[str, bytes] = field(default_factory=dict)  # record id -> the consumer's record bytes


@dataclass(slots=True)
class PipelineStats:
    processed: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    failed: int = 0
    releases: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        policy: PolicySet,
        store: Store,
        delivery: Delivery,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        decide_fn: DecideFn = decide,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.policy = policy
        self.store = store
        self.delivery = delivery
        self.clock = clock
        self.decide = decide_fn
        self.stats = PipelineStats()
        self._inflight: dict[ReplayKey, asyncio.Future[None]] = {}
        self._pending_done: list[ReplayKey] = []
        # Finished here but their "done" not yet durable: the replay guard must see them as done
        # already (a resend arriving meanwhile is a duplicate, not a second processing).
        self._done_recently: dict[ReplayKey, str] = {}

    async def process(self, batch: Sequence[Inbound]) -> list[Outcome]:
        now = self.clock()
        items = [_Item(inbound, sha256_hex(inbound.body)) for inbound in batch]

        # Steps 1-4: pure stages, one message at a time; a refusal is an outcome, not an error.
        for item in items:
            self._stage(item, now)

        # Step 5: replay guard. Wait for any in-flight message with the same id (concurrent HTTP
        # posts of one message), then ask the store what it has seen.
        keys = [self._key(item.validated) for item in items if item.validated is not None]
        waits = [self._inflight[key] for key in set(keys) if key in self._inflight]
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        owned = [key for key in dict.fromkeys(keys) if key not in self._inflight]
        for key in owned:
            self._inflight[key] = mine
        try:
            return await self._process_guarded(items, keys, now)
        finally:
            for key in owned:
                self._inflight.pop(key, None)
            mine.set_result(None)

    async def _process_guarded(self, items: list[_Item], keys: list[ReplayKey], now: datetime) -> list[Outcome]:
        states = await self.store.replay_states(keys)
        seen_in_batch: dict[ReplayKey, str] = {}  # key -> content hash of its first copy here

        # Step 6: policy decisions (pure) for messages not already done.
        for item in items:
            if item.validated is None:
                continue
            key = self._key(item.validated)
            seen = states[key]
            if key in self._done_recently:
                seen = Seen(ReplayState.DONE, self._done_recently[key])
            verdict = replay_verdict(seen.state, seen.content_sha256, item.content_sha256)
            if key in seen_in_batch and verdict is ReplayVerdict.PROCESS:
                # A second copy in this very batch: judged against the first copy's content.
                verdict = replay_verdict(ReplayState.DONE, seen_in_batch[key], item.content_sha256)
            if verdict is ReplayVerdict.CONFLICT:
                item.outcome = self._outcome(item, Status.REJECTED, reason=Reason.REPLAYED.value, message=_REUSED_ID)
                continue
            if verdict is ReplayVerdict.DUPLICATE:
                item.outcome = self._outcome(item, Status.DUPLICATE)
                continue
            seen_in_batch[key] = item.content_sha256
            try:
                decision = self.decide(item.validated, self.policy, now)
            except Exception as exc:  # a fault of ours: leave it unacknowledged (poison handling)
                log.exception("policy_failed", message_id=key[1], partner=key[0], error=type(exc).__name__)
                item.outcome = Outcome(Status.FAILED, item.body_sha256, source=key[0], message_id=key[1])
                continue
            item.outcome = self._outcome(item, Status.ACCEPTED, releases=decision.releases, refusals=decision.refusals)

        # Step 7: audit entries, stored records and replay state: durable in one group commit.
        unit = CommitUnit()
        done_now: list[ReplayKey] = []
        for item in items:
            outcome = item.outcome
            assert outcome is not None
            if outcome.status is Status.FAILED:
                continue
            bodies = item.bodies = {r.record_id: record_body(outcome, r) for r in outcome.releases}
            hashes = {rid: sha256_hex(body) for rid, body in bodies.items()}
            unit.drafts.extend(drafts_for(outcome, item.inbound, hashes))
            if outcome.status is Status.ACCEPTED and item.validated is not None:
                key = self._key(item.validated)
                if self.delivery.stores_records:
                    unit.records.extend(stored_records(outcome, bodies, now))
                    unit.seen.append((key, Seen(ReplayState.DONE, item.content_sha256)))
                else:
                    unit.seen.append((key, Seen(ReplayState.IN_PROGRESS, item.content_sha256)))
                    done_now.append(key)
            if outcome.status is Status.REJECTED and self.delivery.stores_records:
                unit.quarantine.append(quarantine_item(outcome, item.inbound, now))
        flushing, self._pending_done = self._pending_done, []
        unit.seen.extend((key, Seen(ReplayState.DONE)) for key in flushing)
        try:
            lost = await self.store.commit(unit)
        except BaseException:
            self._pending_done.extend(flushing)
            raise
        self._forget_done(flushing)
        if lost:
            await self._lost_claims(items, lost, now)
            done_now = [key for key in done_now if key not in lost]

        # Step 8: deliver releases, quarantine and receipts; returns when all are confirmed.
        await self.delivery.deliver(
            [
                Delivered(item.outcome, item.inbound, item.bodies, now)
                for item in items
                if item.outcome is not None and item.outcome.status is not Status.FAILED
            ]
        )

        # Step 9: the releases are confirmed; record "done" with the next commit (a crash before
        # then only means a redelivery re-publishes the same record ids, audited once).
        self._pending_done.extend(done_now)
        done_set = set(done_now)
        for item in items:
            if item.validated is not None and self._key(item.validated) in done_set:
                self._done_recently[self._key(item.validated)] = item.content_sha256
        outcomes = [item.outcome for item in items if item.outcome is not None]
        self._count(outcomes)
        return outcomes

    async def _lost_claims(self, items: list[_Item], lost: frozenset[ReplayKey], now: datetime) -> None:
        """Messages whose id another broker process holds for different content (see
        ``Store.commit``): rejected as ``replayed``, audited, nothing released."""
        unit = CommitUnit()
        for item in items:
            if item.validated is None or item.outcome is None or item.outcome.status is not Status.ACCEPTED:
                continue
            if self._key(item.validated) not in lost:
                continue
            item.outcome = self._outcome(item, Status.REJECTED, reason=Reason.REPLAYED.value, message=_REUSED_ID)
            unit.drafts.extend(drafts_for(item.outcome, item.inbound, {})[1:])  # "received" is written
            if self.delivery.stores_records:
                unit.quarantine.append(quarantine_item(item.outcome, item.inbound, now))
            log.warning("message_id_reused", partner=item.outcome.source, message_id=item.outcome.message_id)
        await self.store.commit(unit)

    async def flush(self) -> None:
        """Make pending "done" replay states durable (on idle and at shutdown)."""
        if self._pending_done:
            flushing, self._pending_done = self._pending_done, []
            try:
                await self.store.commit(CommitUnit(seen=[(key, Seen(ReplayState.DONE)) for key in flushing]))
            except BaseException:
                self._pending_done.extend(flushing)
                raise
            self._forget_done(flushing)

    def _forget_done(self, keys: list[ReplayKey]) -> None:
        for key in keys:
            self._done_recently.pop(key, None)

    # -- helpers -----------------------------------------------------------------------------------
    def _stage(self, item: _Item, now: datetime) -> None:
        inbound = item.inbound
        try:
            item.received = parse(inbound.body, max_bytes=self.settings.max_body_bytes, now=now)
            verified = verify(item.received, self.registry, publisher=inbound.publisher)
            check_freshness(verified, now, self.settings.freshness)
            item.validated = validate(verified)
            valid_env = item.validated.envelope
            item.content_sha256 = sha256_hex(
                json.dumps(
                    [valid_env.type, valid_env.version, valid_env.data], sort_keys=True, separators=(",", ":")
                ).encode()
            )
        except ContractError as exc:
            env = item.received.envelope if item.received is not None else None
            is_verified = item.validated is not None
            item.outcome = Outcome(
                Status.REJECTED,
                item.body_sha256,
                source=env.source if env else None,
                verified=is_verified,
                message_id=env.id if env else None,
                event_type=env.type if env else None,
                reason=exc.reason.value,
                message=exc.message,
                # Receipts go to the authenticated publisher when there is one, never to a
                # partner named only by an unverified envelope (no reflection to third parties).
                receipt_to=inbound.publisher or inbound.route_partner,
            )
        except Exception as exc:  # our fault, not the sender's: never crash, never ack
            log.exception("stage_failed", error=type(exc).__name__)
            item.outcome = Outcome(Status.FAILED, item.body_sha256)

    @staticmethod
    def _key(validated: Validated) -> ReplayKey:
        env = validated.envelope
        return (env.source, env.id)

    @staticmethod
    def _outcome(
        item: _Item,
        status: Status,
        *,
        releases: tuple[Release, ...] = (),
        refusals: tuple[Refusal, ...] = (),
        reason: str | None = None,
        message: str | None = None,
    ) -> Outcome:
        assert item.validated is not None
        env = item.validated.envelope
        return Outcome(
            status,
            item.body_sha256,
            source=env.source,
            verified=True,
            message_id=env.id,
            event_type=env.type,
            reason=reason,
            message=message,
            releases=releases,
            refusals=refusals,
            receipt_to=env.source,
            produced_at=env.time,
        )

    def _count(self, outcomes: Sequence[Outcome]) -> None:
        stats = self.stats
        for outcome in outcomes:
            stats.processed += 1
            if outcome.status is Status.ACCEPTED:
                stats.accepted += 1
                stats.releases += len(outcome.releases)
            elif outcome.status is Status.DUPLICATE:
                stats.duplicates += 1
            elif outcome.status is Status.REJECTED:
                stats.rejected += 1
                reason = outcome.reason or "unknown"
                stats.by_reason[reason] = stats.by_reason.get(reason, 0) + 1
            else:
                stats.failed += 1
