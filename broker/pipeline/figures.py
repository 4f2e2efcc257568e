"""The figures flow: each figures quarter whose inputs changed is counted, protected and released.

A flow with a ``figures`` table (``policy.model.FiguresSpec``) gives its consumers no records: each
event it covers is minimised under the flow's rules and kept as a *contribution* (``contributions``,
written in the commit that audits it as ``counted``). This flow, run by the leader every
``retention_interval`` (and by ``Broker.release_figures``), turns them into figures:

    1 read the pending quarters (a contribution added, corrected or withdrawn since the last release)
      ─► 2 skip those not yet due: the quarter ended ``release_after_days`` ago (late recording),
           and the agreement is in force
      ─► 3 count the quarter and its trend quarters from the contributions (``figures.board``:
           primary and secondary suppression, checked by the linear-programming attacker)
           once for the flow: every consumer of it receives the same tables
      ─► 4 per consumer: unchanged since its last release (same published tables): nothing new
      ─► 5 otherwise its revision n + 1: audited (``figures_released``, the body's SHA-256) and
           stored in one commit, then delivered (embedded: in that commit, the consumer's feed)
      ─► 6 clear the quarter, up to the mark read in step 1, once every consumer's is out

Audit before delivery, as for records (DESIGN.md invariant 3): a crash between 5 and 6 leaves the
quarter pending, and the next run finds it released already (same tables) and delivers the same
bytes again: a consumer keys figures by ``figures_id`` and ``revision``, so a repeat is harmless.

A quarter whose tables cannot be protected (``UnderProtected``) is not released: one
``figures_withheld`` entry per change, and the next change counts it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from broker.audit import entries
from broker.figures.specs import Quarter, quarter_end
from broker.logs import get_logger
from broker.policy.decision import figures_id, quarter_key
from broker.policy.documents import MAX_RETENTION_DAYS
from broker.policy.model import Flow, PolicySet, local_midnight
from broker.ports.delivery import Deliverable, Delivery
from broker.ports.store import CommitUnit, FiguresPending, FiguresRow, Store, StoredRecord
from schemas.canonical import canonicalize
from schemas.envelope import format_time
from schemas.errors import Reason, Unavailable
from schemas.messages import ConsumerFigures, consumer_figures

if TYPE_CHECKING:
    from broker.figures.board import Board

log = get_logger("sv_broker.figures")

MAX_PENDING = 10_000  # quarters x flows x consumers: tens in a partnership; a bound, not a page
SOURCE = "sv-broker"  # the feed row's source: the broker computed these figures


@dataclass(slots=True)
class FiguresRun:
    released: int = 0
    unchanged: int = 0
    withheld: int = 0
    failed: int = 0
    waiting: int = 0  # not yet due, agreement not in force, or flow gone


def due_at(spec_days: int, quarter: Quarter) -> datetime:
    """When a quarter's figures are first released: ``release_after_days`` after it ends (UK days)."""
    return local_midnight(quarter_end(quarter) + timedelta(days=1 + spec_days))


def trend_quarters(quarter: Quarter, count: int) -> list[Quarter]:
    out = [quarter]
    while len(out) < count:
        out.append(out[-1].previous())
    return out


def figures_document(board: Board, flow: Flow, consumer: str, fid: str, revision: int, at: datetime) -> ConsumerFigures:
    """One consumer's release body (pure): the board's protected tables under the flow's agreement."""
    ag = flow.agreement
    assert flow.figures is not None
    return {
        "figures_id": fid,
        "consumer": consumer,
        "period": str(board.quarter),
        "period_basis": "event date",
        "revision": revision,
        "released_at": format_time(at),
        "agreement": {
            "id": ag.id,
            "revision": ag.revision,
            "flow": flow.id,
            "purpose": ag.purpose,
            "lawful_basis": list(ag.lawful_basis),
            "retention_days": ag.retention_days,
        },
        "rules": "partnership" if flow.figures.rules == "partnership" else "source",
        # The events counted as the tables publish them (a total of 1..4 is a small cell too);
        # the exact count, and what was not counted, are in the audit entry only.
        "counted": _published(board),
        "sections": _sections(board),  # type: ignore[typeddict-item]  # built by the board, typed by the schema
        "disclosure_check": dict(board.report_doc()),
    }


def _sections(board: Board) -> object:
    from broker.figures.board_render import sections_doc

    return sections_doc(board)


def _published(board: Board) -> int | Literal["[c]"]:
    totals = board.totals().values()
    return "[c]" if any(v is None for v in totals) else sum(v for v in totals if v is not None)


def content_sha256(doc: ConsumerFigures) -> str:
    """What the release publishes (tables, shares, the report, counts), not when or at which
    revision: an unchanged recount is not released again."""
    keys = ("period", "counted", "sections", "disclosure_check")
    published = {k: doc[k] for k in keys}  # type: ignore[literal-required]
    return hashlib.sha256(canonicalize(published)).hexdigest()


class FiguresFlow:
    def __init__(self, store: Store, delivery: Delivery) -> None:
        self.store = store
        self.delivery = delivery

    async def run(self, policy: PolicySet, now: datetime) -> FiguresRun:
        result = FiguresRun()
        for pending in await self.store.figures_pending(MAX_PENDING):
            try:
                await self._one(policy, pending, now, result)
            except Unavailable:
                raise  # the store or RabbitMQ: the whole run is retried at the next round
            except Exception as exc:  # a bug of ours in one quarter: the others still go out
                log.exception(
                    "figures_failed", flow_id=pending.flow_id, period=pending.period, error=type(exc).__name__
                )
                result.failed += 1
        return result

    async def _one(self, policy: PolicySet, p: FiguresPending, now: datetime, result: FiguresRun) -> None:
        flow = policy.flow(p.agreement_id, p.flow_id)
        spec = flow.figures if flow is not None else None
        done = CommitUnit(figures_done=[(p.figures_id, p.mark)])
        quarter = Quarter.parse(p.period)
        ends = local_midnight(quarter_end(quarter)) + timedelta(days=1)
        retention = timedelta(days=flow.agreement.retention_days if flow is not None else MAX_RETENTION_DAYS)
        if now >= ends + retention:
            # Its inputs are past retention (purged, or about to be): the last release stands. (A
            # flow since removed: kept pending until the longest retention, in case it returns.)
            await self.store.commit(done)
            return
        if flow is None or spec is None:
            result.waiting += 1  # the flow is gone or no longer releases figures: kept pending
            return
        state = flow.agreement.state(now)
        # A quarter that ended while the agreement was in force is still released after it
        # expires (its last quarter is due after valid_to); a review overdue releases nothing.
        ended_in_force = state is Reason.EXPIRED and ends <= flow.agreement.ends
        if now < due_at(spec.release_after_days, quarter) or (state is not None and not ended_in_force):
            result.waiting += 1
            return
        # Counted once for the flow: every consumer of it receives the same tables.
        keys = [quarter_key(p.agreement_id, p.flow_id, str(q)) for q in trend_quarters(quarter, spec.trend_quarters)]
        rows = await self.store.contributions(keys)
        records = [{"event_type": event_type, "data": json.loads(data)} for _, event_type, data in rows]
        from broker.figures.board import build_board  # numpy and scipy: loaded when a quarter is due
        from broker.figures.suppress import UnderProtected

        try:
            # Counting and the linear programmes are CPU work: off the event loop.
            board = await asyncio.to_thread(
                build_board,
                records,
                quarter,
                rules="partnership" if spec.rules == "partnership" else "source",
                trend_quarters=spec.trend_quarters,
                rounding_base=spec.round_to,
            )
        except UnderProtected:
            drafts = [
                entries.figures_withheld(
                    figures_id=figures_id(consumer, p.agreement_id, p.flow_id, p.period),
                    consumer=consumer,
                    agreement_id=p.agreement_id,
                    flow_id=p.flow_id,
                    period=p.period,
                    reason=Reason.FIGURES_UNPROTECTED.value,
                )
                for consumer in flow.consumers
            ]
            await self.store.commit(CommitUnit(drafts=drafts, figures_done=done.figures_done))
            log.warning("figures_withheld", agreement_id=p.agreement_id, flow_id=p.flow_id, period=p.period)
            result.withheld += 1
            return
        for consumer in flow.consumers:
            fid = figures_id(consumer, p.agreement_id, p.flow_id, p.period)
            latest = await self.store.latest_figures(fid)
            revision = latest.revision + 1 if latest is not None else 1
            doc = figures_document(board, flow, consumer, fid, revision, now)
            digest = content_sha256(doc)
            if latest is not None and latest.content_sha256 == digest:
                await self._redeliver(latest)
                result.unchanged += 1
                continue
            await self._release(flow, consumer, p.period, doc, digest, board, now)
            result.released += 1
        await self.store.commit(done)

    async def _release(
        self, flow: Flow, consumer: str, period: str, doc: ConsumerFigures, digest: str, board: Board, now: datetime
    ) -> None:
        body = consumer_figures(doc)
        sha = hashlib.sha256(body).hexdigest()
        ag = flow.agreement
        expires = now + timedelta(days=ag.retention_days)
        fid = doc["figures_id"]
        row = FiguresRow(
            fid,
            doc["revision"],
            consumer,
            ag.id,
            ag.revision,
            flow.id,
            period,
            board.included,
            now,
            expires,
            digest,
            body,
        )
        stored = _stored(row, flow.event_type)
        batch = Deliverable(now, notices=[stored])
        durable = self.delivery.with_audit(batch)
        draft = entries.figures_released(
            figures_id=fid,
            consumer=consumer,
            agreement_id=ag.id,
            agreement_revision=ag.revision,
            flow_id=flow.id,
            period=period,
            revision=row.revision,
            counted=board.included,
            suppressed=len(board.release.report.cells),
            body_sha256=sha,
            not_counted=dict(board.excluded),
            report=board.release.report.to_json(),
        )
        # Audited (and, embedded, in the feed) before it leaves; over RabbitMQ published after
        # the commit. The quarter stays pending until every consumer's release is out: a crash
        # in between releases nothing twice (the next run finds this revision and redelivers it).
        await self.store.commit(CommitUnit(drafts=[draft], figures=[row], records=list(durable.records)))
        log.info("figures_released", figures_id=fid, period=period, revision=row.revision)
        if not durable.complete:
            # The stored revision's bytes, not ours: if another run (a leadership handover) wrote
            # this revision first, its row and its audit entry are the ones that stand.
            stored_row = await self.store.latest_figures(fid)
            await self.delivery.deliver(Deliverable(now, notices=[_stored(stored_row or row, flow.event_type)]))

    async def _redeliver(self, latest: FiguresRow) -> None:
        """The last release again, byte for byte, where delivery is not the store (a crash may have
        come between its commit and its publication); embedded, it is in the feed already."""
        batch = Deliverable(latest.released_at, notices=[_stored(latest, "")])
        if not self.delivery.with_audit(batch).complete:
            await self.delivery.deliver(batch)


def _stored(row: FiguresRow, event_type: str) -> StoredRecord:
    return StoredRecord(
        record_id=row.figures_id,
        consumer=row.consumer,
        agreement_id=row.agreement_id,
        agreement_revision=row.agreement_revision,
        event_type=event_type or "figures",
        source=SOURCE,
        message_id="",
        released_at=row.released_at,
        expires_at=row.expires_at,
        body=row.body,
        revision=row.revision,
        kind="figures",
        period=row.period,
    )


async def purge_figures(store: Store, now: datetime) -> None:
    """Figures flows' contributions and released figures past their retention, deleted in one
    commit with a ``figures_purged`` entry (counts), when there is any."""
    stamp = format_time(now)
    contributions, figures = await store.figures_expiring(stamp)
    if contributions or figures:
        await store.commit(
            CommitUnit(
                drafts=[entries.figures_purged(contributions, figures, stamp)],
                purge_contributions_before=stamp,
                purge_figures_before=stamp,
            )
        )


__all__: Sequence[str] = ("FiguresFlow", "FiguresRun", "purge_figures")
