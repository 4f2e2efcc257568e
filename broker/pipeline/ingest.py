"""The ingest flow: the one place that runs the pure stages in order and awaits the I/O ports.

    inbound ─► 1 parse ─► 2 verify ─► 3 freshness ─► 4 validate      (pure, per message)
            ─► 5 replay guard and the record's lineage (store reads; pure verdicts)
            ─► 6 policy (pure; a withdrawal is not decided: it goes to the record's holders)
            ─► 7 audit entries + records + replay state: durable in one group commit
            ─► 8 deliver (confirmed) ─► 9 mark done (with the next commit)

Each step takes the previous step's type (``stages/types.py``) and a refusal at any step is a
``Rejected`` outcome, not an exception. The transport (RabbitMQ consumer or HTTP handler)
acknowledges / answers only after :meth:`Pipeline.process` returns, so a message is never
acknowledged before every release it causes is confirmed and its audit entries are durable
(DESIGN.md invariants 2 and 3).

Errors: an ``Unavailable`` port (store, RabbitMQ) propagates, and the transport retries the
whole batch (releases are idempotent and audited once, so a retry doubles nothing). Any other
exception is a bug of ours: the messages it touched come back ``Failed`` (not acknowledged,
redelivered, dead-lettered at the delivery limit), never blamed on the sender.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from broker.audit import entries
from broker.audit.chain import Draft
from broker.logs import get_logger
from broker.policy.decision import Decision
from broker.policy.engine import decide
from broker.policy.loader import PolicySet
from broker.ports.delivery import Deliverable, Delivery
from broker.ports.store import CommitUnit, HeldItem, ReplayKey, Seen, Store
from broker.registry import Registry
from broker.settings import Settings
from broker.stages.freshness import check_freshness
from broker.stages.held import HoldKeyring, NoHoldKeys, held_items
from broker.stages.lineage import NO_LINEAGE, Lineage, applied, follows
from broker.stages.outcome import Accepted, Duplicate, Failed, Outcome, Rejected, Settled
from broker.stages.parse import parse
from broker.stages.records import accept, contribution_change, lineage_update, sha256_hex
from broker.stages.replay import REUSED_ID, Repeat, ReplayState, Reused, admit
from broker.stages.types import Admitted, Inbound, Received, Validated
from broker.stages.validate import validate
from broker.stages.verify import verify
from schemas.errors import ContractError, Reason, Unavailable

DecideFn = Callable[[Admitted, PolicySet, datetime], Decision[Admitted]]

log = get_logger("sv_broker.pipeline")


@dataclass(slots=True)
class PipelineStats:
    processed: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    failed: int = 0
    releases: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class Observer(Protocol):
    """What the pipeline tells the metrics (``broker/metrics.py``): ids and codes, never values."""

    def settled(self, outcomes: Sequence[Outcome]) -> None: ...

    def committed(self, seconds: float) -> None: ...

    def delivered(self, seconds: float) -> None: ...


class Unobserved:
    def settled(self, outcomes: Sequence[Outcome]) -> None:
        return None

    def committed(self, seconds: float) -> None:
        return None

    def delivered(self, seconds: float) -> None:
        return None


def key_of(validated: Validated) -> ReplayKey:
    env = validated.envelope
    return (env.source, env.id)


def lineage_of(validated: Validated) -> ReplayKey:
    """The record a message is about: (source, its first message id)."""
    env = validated.envelope
    return (env.source, env.lineage)


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
        observer: Observer | None = None,
        hold_keys: HoldKeyring | None = None,
    ) -> None:
        self.settings = settings
        self.hold_keys: HoldKeyring = hold_keys if hold_keys is not None else NoHoldKeys()
        self.observer: Observer = observer if observer is not None else Unobserved()
        # One pair, swapped whole by ``reconfigure`` and read once per batch: a batch is verified
        # and decided under one registry and one set of agreements, never half of each.
        self.config: tuple[Registry, PolicySet] = (registry, policy)
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

    @property
    def registry(self) -> Registry:
        return self.config[0]

    @property
    def policy(self) -> PolicySet:
        return self.config[1]

    def reconfigure(self, registry: Registry, policy: PolicySet) -> None:
        """The registry and agreements for every batch that starts from now on (a batch already
        running finishes under the set it started with)."""
        self.config = (registry, policy)

    async def process(self, batch: Sequence[Inbound]) -> list[Outcome]:
        now = self.clock()
        registry, policy = self.config
        # Steps 1-4: pure stages, one message at a time.
        staged = [self._stage(inbound, now, registry) for inbound in batch]

        # Step 5 (first half): wait for any in-flight message with the same id (concurrent posts
        # of one message), so the replay guard below sees its result.
        keys = [key_of(item) for item in staged if isinstance(item, Validated)]
        # A later revision also waits for (and holds) its record's first message id: two batches
        # never apply revisions of one record at once (each reads what the other wrote).
        held_keys = keys + [lineage_of(item) for item in staged if isinstance(item, Validated)]
        # Until none is held: when a batch finishes, every batch waiting on it wakes, and the first
        # to run takes the keys again; the others must wait for that one too (or two would apply
        # revisions of one record from the same stale read).
        while waits := [self._inflight[key] for key in set(held_keys) if key in self._inflight]:
            await asyncio.gather(*waits, return_exceptions=True)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        owned = [key for key in dict.fromkeys(held_keys) if key not in self._inflight]
        for key in owned:
            self._inflight[key] = mine
        try:
            outcomes = await self._process_guarded(batch, staged, keys, now, policy)
        finally:
            for key in owned:
                self._inflight.pop(key, None)
            mine.set_result(None)
        self._count(outcomes)
        return outcomes

    async def _process_guarded(
        self,
        batch: Sequence[Inbound],
        staged: list[Validated | Rejected | Failed],
        keys: list[ReplayKey],
        now: datetime,
        policy: PolicySet,
    ) -> list[Outcome]:
        # Step 5 (second half): what the replay guard remembers; the verdict is pure.
        states = await self.store.replay_states(keys)
        lineages = await self.store.lineages([lineage_of(item) for item in staged if isinstance(item, Validated)])
        # Records changed earlier in this batch: the lineage before and the outcome that changed it,
        # resolved only if a later message of the same record reads it (the common batch has none,
        # and its holdings are computed once, for the commit).
        changed: dict[ReplayKey, tuple[Lineage, Accepted]] = {}
        outcomes: list[Outcome] = []
        seen_in_batch: dict[ReplayKey, str] = {}  # key -> content hash of its first copy here
        for inbound, item in zip(batch, staged, strict=True):
            if not isinstance(item, Validated):
                outcomes.append(item)
                continue
            key = key_of(item)
            seen = states[key]
            if key in self._done_recently:
                seen = Seen(ReplayState.DONE, self._done_recently[key])
            if key in seen_in_batch:
                # A second copy in this very batch: judged against the first copy's content.
                seen = Seen(ReplayState.DONE, seen_in_batch[key])
            verdict = admit(item, seen.state, seen.content_sha256)
            if isinstance(verdict, Reused):
                outcomes.append(self._reused(inbound, item))
            elif isinstance(verdict, Repeat):
                outcomes.append(Duplicate(inbound, item))
            else:
                seen_in_batch[key] = item.content_sha256
                record = lineage_of(item)
                if record in changed:
                    before, earlier = changed[record]
                    lineage = applied(before, earlier.validated.envelope, lineage_update(earlier, now).holdings)
                else:
                    lineage = lineages.get(record, NO_LINEAGE)
                refusal = follows(item.envelope, lineage)
                if refusal is not None:
                    outcomes.append(self._refused(inbound, item, *refusal))
                    continue
                # Step 6: the policy decision (pure).
                decided = self._decide(inbound, verdict, now, policy, lineage)
                if isinstance(decided, Accepted):
                    changed[record] = (lineage, decided)
                outcomes.append(decided)

        try:
            # Step 7: audit entries, records and replay state: durable in one group commit.
            deliverable = self._deliverable(outcomes, now)
            done_now, lost = await self._commit(outcomes, deliverable, now)
            if lost:  # some accepted ones became refusals: deliver what they are now
                deliverable = self._deliverable(outcomes, now)
            # Step 8: deliver releases, quarantine and receipts; returns when all are confirmed.
            started = time.perf_counter()
            await self.delivery.deliver(deliverable)
            self.observer.delivered(time.perf_counter() - started)
        except Unavailable:
            raise  # the transport retries the batch (nothing acknowledged, nothing doubled)
        except Exception as exc:  # a bug of ours: poison handling, never the sender's fault
            log.exception("batch_failed_internally", size=len(batch), error=type(exc).__name__)
            return [_failed(inbound, outcome) for inbound, outcome in zip(batch, outcomes, strict=True)]

        # Step 9: the releases are confirmed; record "done" with the next commit (a crash before
        # then only means a redelivery re-publishes the same record ids, audited once).
        self._pending_done.extend(done_now)
        for outcome in outcomes:
            if isinstance(outcome, Accepted):
                key = key_of(outcome.validated)
                if key in done_now:
                    self._done_recently[key] = outcome.validated.content_sha256
        return outcomes

    async def _commit(
        self, outcomes: list[Outcome], deliverable: Deliverable, now: datetime
    ) -> tuple[set[ReplayKey], frozenset[ReplayKey]]:
        """Step 7. Returns the keys to mark done once delivered (none when the delivery is
        complete at commit), and the keys whose claim another process holds (now refused)."""
        unit = CommitUnit()
        for outcome in deliverable.receipts:  # every settled outcome, in order
            unit.drafts.extend(entries.for_outcome(outcome))
        durable = self.delivery.with_audit(deliverable)
        unit.records.extend(durable.records)
        unit.quarantine.extend(durable.quarantine)
        # Held for an agreement not in force (its [hold]): sealed, in the commit of its ``held`` entry.
        unit.held.extend(held_items(deliverable.accepted, now, self.hold_keys))
        state = ReplayState.DONE if durable.complete else ReplayState.IN_PROGRESS
        accepted = deliverable.accepted
        unit.seen.extend((key_of(o.validated), Seen(state, o.validated.content_sha256)) for o in accepted)
        unit.lineages.extend(lineage_update(o, now) for o in accepted)
        unit.contributions.extend(c for o in accepted if (c := contribution_change(o, now)) is not None)
        flushing, self._pending_done = self._pending_done, []
        unit.seen.extend((key, Seen(ReplayState.DONE)) for key in flushing)
        started = time.perf_counter()
        try:
            lost = await self.store.commit(unit)
        except BaseException:
            self._pending_done.extend(flushing)
            raise
        self.observer.committed(time.perf_counter() - started)
        self._forget_done(flushing)
        if lost:
            await self._lost_claims(outcomes, lost, now)
        if durable.complete:
            return set(), lost
        return {key_of(o.validated) for o in accepted if key_of(o.validated) not in lost}, lost

    async def _lost_claims(self, outcomes: list[Outcome], lost: frozenset[ReplayKey], now: datetime) -> None:
        """Messages whose id another broker process holds for different content (see
        ``Store.commit``): rejected as ``replayed``, audited, nothing released."""
        refused: list[Rejected] = []
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, Accepted) and key_of(outcome.validated) in lost:
                outcomes[i] = rejected = self._reused(outcome.inbound, outcome.validated)
                refused.append(rejected)
                log.warning("message_id_reused", partner=rejected.source, message_id=rejected.message_id)
        durable = self.delivery.with_audit(Deliverable(now, rejected=refused))
        # "received" is written already: only the verdict now.
        drafts = [draft for outcome in refused for draft in entries.verdict(outcome)]
        await self.store.commit(CommitUnit(drafts=drafts, quarantine=list(durable.quarantine)))

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

    # -- the steps' pure parts -----------------------------------------------------------------------
    def _stage(self, inbound: Inbound, now: datetime, registry: Registry) -> Validated | Rejected | Failed:
        """Steps 1-4; a refusal is a ``Rejected`` outcome naming what the envelope claimed."""
        received: Received | None = None
        try:
            received = parse(inbound.body, max_bytes=self.settings.max_body_bytes, now=now)
            verified = verify(received, registry, publisher=inbound.publisher, routing_key=inbound.routing_key)
            fresh = check_freshness(verified, now, self.settings.freshness)
            return validate(fresh)
        except ContractError as exc:
            env = received.envelope if received is not None else None
            return Rejected(
                inbound,
                received.body_sha256 if received is not None else sha256_hex(inbound.body),
                exc.reason,
                exc.message,
                verified=False,  # a validated message is never rejected by steps 1-4
                source=env.source if env else None,
                message_id=env.id if env else None,
                event_type=env.type if env else None,
                receipt_to=inbound.publisher or inbound.route_partner,
            )
        except Exception as exc:  # our fault, not the sender's: never crash, never ack
            log.exception("stage_failed", error=type(exc).__name__)
            return Failed(inbound, sha256_hex(inbound.body))

    def _decide(
        self, inbound: Inbound, admitted: Admitted, now: datetime, policy: PolicySet, lineage: Lineage
    ) -> Accepted | Failed:
        try:
            if admitted.envelope.withdrawn is not None:
                # A withdrawal releases nothing and needs no agreement: it tells every consumer
                # that holds the record (``accept``), whatever the agreements say now.
                return accept(inbound, Decision(admitted, (), ()), lineage)
            return accept(inbound, self.decide(admitted, policy, now), lineage)
        except Exception as exc:  # a fault of ours: leave it unacknowledged (poison handling)
            env = admitted.envelope
            log.exception("policy_failed", message_id=env.id, partner=env.source, error=type(exc).__name__)
            return Failed(inbound, admitted.validated.fresh.verified.received.body_sha256, env.source, env.id)

    @staticmethod
    def _reused(inbound: Inbound, validated: Validated) -> Rejected:
        return Pipeline._refused(inbound, validated, Reason.REPLAYED, REUSED_ID)

    @staticmethod
    def _refused(inbound: Inbound, validated: Validated, reason: Reason, message: str) -> Rejected:
        """A verified, validated message refused for what the store knows (its id, its record)."""
        env = validated.envelope
        return Rejected(
            inbound,
            validated.fresh.verified.received.body_sha256,
            reason,
            message,
            verified=True,
            source=env.source,
            message_id=env.id,
            event_type=env.type,
            receipt_to=env.source,
        )

    @staticmethod
    def _deliverable(outcomes: Sequence[Outcome], now: datetime) -> Deliverable:
        settled: list[Settled] = [o for o in outcomes if not isinstance(o, Failed)]
        return Deliverable(
            now,
            accepted=[o for o in settled if isinstance(o, Accepted)],
            rejected=[o for o in settled if isinstance(o, Rejected)],
            receipts=settled,
        )

    def _count(self, outcomes: Sequence[Outcome]) -> None:
        self.observer.settled(outcomes)
        stats = self.stats
        for outcome in outcomes:
            stats.processed += 1
            if isinstance(outcome, Accepted):
                stats.accepted += 1
                stats.releases += len(outcome.releases)
            elif isinstance(outcome, Duplicate):
                stats.duplicates += 1
            elif isinstance(outcome, Rejected):
                stats.rejected += 1
                stats.by_reason[outcome.reason] = stats.by_reason.get(outcome.reason, 0) + 1
            else:
                stats.failed += 1

    # -- held events released under a later revision (``broker/pipeline/held.py``) ----------------
    async def release_held(
        self,
        releases: Sequence[tuple[HeldItem, Accepted]],
        drafts: Sequence[Draft] = (),
        unhold: Sequence[str] = (),
    ) -> None:
        """Steps 7-8 for held events decided again: their releases' audit entries and records,
        ``held_released`` (both revisions) and the verdicts on the others (``drafts``), durable in
        one commit, then delivered like live records (consumers' queues, or the embedded feeds).

        The held row goes in the same commit when delivery completes at commit (embedded); over
        RabbitMQ only once the releases are confirmed, so a crash in between leaves it held and
        the next run releases it again: the same record ids, audited as released once (the
        store's release-once rule), the copy on the queue a redelivery consumers already expect."""
        now = self.clock()
        accepted = [outcome for _, outcome in releases]
        deliverable = Deliverable(now, accepted=accepted)
        durable = self.delivery.with_audit(deliverable)
        unit = CommitUnit(records=list(durable.records), unhold=list(unhold))
        unit.lineages.extend(lineage_update(outcome, now) for outcome in accepted)  # what consumers now hold
        # A held event released under one agreement changes only what that agreement counted.
        unit.contributions.extend(
            c for item, o in releases if (c := contribution_change(o, now, only=item.agreement_id)) is not None
        )
        for item, outcome in releases:
            unit.drafts.extend(entries.verdict(outcome))
            revision = (outcome.releases or outcome.decision.counted)[0].agreement_revision
            ids = [r.record_id for r in (*outcome.releases, *outcome.decision.counted)]
            unit.drafts.append(entries.held_released(item, revision, ids))
        unit.drafts.extend(drafts)
        released_ids = [item.id for item, _ in releases]
        if durable.complete:
            unit.unhold.extend(released_ids)
        await self.store.commit(unit)
        if not accepted:
            return
        await self.delivery.deliver(deliverable)
        if not durable.complete:
            await self.store.commit(CommitUnit(unhold=released_ids))
        self.stats.releases += sum(len(o.releases) for o in accepted)


def _failed(inbound: Inbound, outcome: Outcome) -> Failed:
    if isinstance(outcome, Failed):
        return outcome
    return Failed(inbound, outcome.body_sha256, outcome.source, outcome.message_id)
