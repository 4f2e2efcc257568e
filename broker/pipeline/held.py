"""The held-events flow: events kept for an agreement not in force, decided again when it is.

An agreement's ``[hold]`` table keeps, sealed (``broker/stages/held.py``), the events it refused
only because it was not in force (``not_yet_valid``, ``review_overdue``, ``expired`` within its
grace). After a reload that puts a revision in force (and at start-up, on gaining leadership, and
when an IG lead asks), each held event of that agreement is decided again:

    1 open the sealed body (AES-256-GCM under the agreement's key; a tampered row or a wrong key
      is refused: audited ``held_unreadable``, kept, never released)
    2 parse and verify it again against the registry now in force (a key revoked since releases
      nothing: the event is discarded, audited with the reason)
    3 freshness is NOT checked again: the event was fresh when it was received, and that verdict
      is in its ``received`` entry; the ``Fresh`` is built with the time it was received
    4 validate, 5 decide under the agreements now in force, keep ONLY the releases of the agreement
      it was held for (its other agreements decided it when it arrived)
    6 released: through ``Pipeline.release_held`` (audit, records, ``held_released`` naming both
      revisions, the row deleted; delivered like a live release); still not in force: held; the
      agreement refuses it for another reason (a row condition, no flow any more): discarded,
      audited with that reason

The replay guard is not asked again: it admitted the message when it arrived (its id is claimed,
its content hash kept). A re-run releases nothing twice: record ids are deterministic
(``policy/decision.record_id``) and the store audits a record id as released once, ever.

Several processes: only the leader of the singleton jobs runs the automatic re-decision
(``Broker``). An IG lead's request runs on the process that answered it, possibly at the same
time: the release-once rule keeps each record released (and its ``released`` entry written) once;
at worst a ``held_released`` entry and a consumer's copy are repeated, the copy with the same
record id, as after any redelivery.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.audit import entries
from broker.audit.chain import Draft
from broker.logs import get_logger
from broker.pipeline.ingest import Pipeline
from broker.policy.decision import Decision
from broker.policy.model import PolicySet
from broker.ports.store import HeldItem, ReplayKey, Store
from broker.stages.held import HeldUnreadable, HoldKeyring, key_of, unseal
from broker.stages.lineage import NO_LINEAGE, Lineage, follows
from broker.stages.outcome import Accepted
from broker.stages.parse import parse
from broker.stages.records import accept
from broker.stages.types import Admitted, Fresh, Inbound
from broker.stages.validate import validate
from broker.stages.verify import verify
from schemas.envelope import first_message_id
from schemas.errors import ContractError, Reason

log = get_logger("sv_broker.held")

PAGE = 200


@dataclass(slots=True)
class Redecided:
    """What one re-decision did, by count (the API's answer, the log's)."""

    released: int = 0
    held: int = 0
    discarded: int = 0
    unreadable: int = 0

    def add(self, other: Redecided) -> None:
        self.released += other.released
        self.held += other.held
        self.discarded += other.discarded
        self.unreadable += other.unreadable

    def as_dict(self) -> dict[str, int]:
        return {
            "released": self.released,
            "held": self.held,
            "discarded": self.discarded,
            "unreadable": self.unreadable,
        }


@dataclass(slots=True)
class _Batch:
    releases: list[tuple[HeldItem, Accepted]] = field(default_factory=list)
    drafts: list[Draft] = field(default_factory=list)
    unhold: list[str] = field(default_factory=list)
    counts: Redecided = field(default_factory=Redecided)


class HeldFlow:
    def __init__(self, store: Store, pipeline: Pipeline, keys: HoldKeyring) -> None:
        self.store = store
        self.pipeline = pipeline
        self.keys = keys

    async def redecide_all(self) -> Redecided:
        """Every agreement in force now that has held events (after a reload, at start-up)."""
        total = Redecided()
        now = self.pipeline.clock()
        _, policy = self.pipeline.config
        for agreement_id in sorted(await self.store.held_agreements()):
            agreement = policy.agreements.get(agreement_id)
            if agreement is not None and agreement.state(now) is None:
                total.add(await self.redecide(agreement_id))
        return total

    async def redecide(self, agreement_id: str, ids: Sequence[str] | None = None) -> Redecided:
        """Steps 1-6 for the held events of ``agreement_id`` (``ids``: only these)."""
        total = Redecided()
        after = 0
        while True:
            items = await self.store.held_items(agreement_id, ids, after=after, limit=PAGE)
            if not items:
                break
            after = items[-1].pos
            lineages = await self.store.lineages([(i.source, first_message_id(i.message_id)) for i in items])
            batch = self._decide_page(items, lineages)
            await self.pipeline.release_held(batch.releases, batch.drafts, batch.unhold)
            total.add(batch.counts)
        if total.released or total.discarded or total.unreadable:
            log.info("held_redecided", agreement_id=agreement_id, **total.as_dict())
        return total

    def _decide_page(self, items: Sequence[HeldItem], lineages: Mapping[ReplayKey, Lineage]) -> _Batch:
        registry, policy = self.pipeline.config
        now = self.pipeline.clock()
        batch = _Batch()
        for item in items:
            # Step 1: open the sealed body.
            try:
                body = unseal(key_of(self.keys, item.agreement_id), item)
            except HeldUnreadable:
                log.error("held_unreadable", agreement_id=item.agreement_id, held_id=item.id)
                batch.drafts.append(entries.held_unreadable(item))
                batch.counts.unreadable += 1
                continue
            try:
                # Step 2: parse and verify again (the registry now in force: a revoked key refuses).
                received = parse(body, max_bytes=self.pipeline.settings.max_body_bytes, now=item.held_at)
                env = received.envelope
                if (env.source, env.id, env.type) != (item.source, item.message_id, item.event_type):
                    # The associated data binds the ids already; this is belt and braces.
                    raise HeldUnreadable("the sealed envelope is not the held message")
                verified = verify(received, registry)
                # Step 3: no freshness check (fresh when received, audited then): the original time.
                fresh = Fresh(verified, item.held_at)
                # Step 4: validate.
                validated = validate(fresh)
            except HeldUnreadable:
                batch.drafts.append(entries.held_unreadable(item))
                batch.counts.unreadable += 1
                continue
            except ContractError as exc:
                log.warning("held_refused", agreement_id=item.agreement_id, held_id=item.id, reason=exc.reason.value)
                batch.drafts.append(entries.held_discarded(item, exc.reason.value))
                batch.unhold.append(item.id)
                batch.counts.discarded += 1
                continue
            # Step 5: where the record stands now: a withdrawal or a later correction since it was
            # held means this revision is not the record any more (never release what was withdrawn).
            lineage = lineages.get((env.source, env.lineage), NO_LINEAGE)
            refusal = follows(env, lineage)
            if refusal is not None:
                batch.drafts.append(entries.held_discarded(item, refusal[0].value))
                batch.unhold.append(item.id)
                batch.counts.discarded += 1
                continue
            # Step 6: decide under the agreements now in force; only this agreement's releases.
            admitted = Admitted(validated)
            decision = self.pipeline.decide(admitted, policy, now)
            mine = tuple(r for r in decision.releases if r.agreement_id == item.agreement_id)
            counted = tuple(r for r in decision.counted if r.agreement_id == item.agreement_id)
            if mine or counted:
                only = Decision(subject=admitted, releases=mine, refusals=(), counted=counted)
                inbound = Inbound(body, publisher=item.source, transport="held")
                # no notices: a release under one agreement says nothing about the others' holders
                batch.releases.append((item, accept(inbound, only, lineage, notify=False)))
                batch.counts.released += 1
                continue
            refusals = [r for r in decision.refusals if r.agreement_id == item.agreement_id]
            if any(h.agreement_id == item.agreement_id for h in decision.holds) or not refusals:
                batch.counts.held += 1  # still not in force (or not decided at all): stays held
                continue
            # Step 7: the agreement now refuses it for another reason: no longer covered.
            batch.drafts.append(entries.held_discarded(item, refusals[0].reason))
            batch.unhold.append(item.id)
            batch.counts.discarded += 1
        return batch

    async def discard(self, agreement_id: str, ids: Sequence[str] | None, details: Mapping[str, Any]) -> int:
        """An IG lead's decision: delete held events unreleased, each audited with who and why."""
        count = 0
        while True:
            items = await self.store.held_items(agreement_id, ids, after=0, limit=PAGE)
            if not items:
                return count
            drafts = [entries.held_discarded(item, Reason.DISCARDED_BY_IG.value, details) for item in items]
            await self.pipeline.release_held((), drafts, [item.id for item in items])
            count += len(items)


def holding_agreements(policy: PolicySet) -> list[str]:
    """The agreements whose ``[hold]`` may keep events (their keys are prepared at start and reload)."""
    return sorted(a.id for a in policy.agreements.values() if a.hold is not None)
