"""The policy engine: one validated event in, one :class:`Decision` out.

Pure (no I/O, no await, no clock of its own: ``now`` is passed in) and fast: everything was
parsed, type-checked and indexed at load (``loader.py``), so a decision is a dictionary lookup, a
few comparisons and one small dictionary per entitled flow.

Default deny throughout (DESIGN.md invariant 1): a consumer gets a record only from a flow that
names it, for this partner, event type and version, of an agreement in force at ``now`` whose row
conditions hold; the record holds only the fields that flow's rules name, transformed as declared.
Every agreement considered and not applied says why (:class:`Refusal`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypeVar

from broker.policy.decision import Decision, Hold, Refusal, Release, Subject, record_id
from broker.policy.model import Flow, PolicySet
from schemas.errors import Reason

__all__ = ["decide"]

S = TypeVar("S", bound=Subject)


def decide(subject: S, policy: PolicySet, now: datetime) -> Decision[S]:
    if now.tzinfo is None:
        raise ValueError("decide needs a timezone-aware now")
    env = subject.envelope
    event = subject.event
    plan = policy.plan(env.source, env.type, env.version)
    releases: list[Release] = []
    counted: list[Release] = []
    refusals: list[Refusal] = list(plan.refusals)
    holds: dict[str, Hold] = {}
    for flow in plan.flows:
        # Fail closed outside the agreement's window or past its review date (ICO Data Sharing
        # Code: an agreement is reviewed regularly; an unreviewed one is not a basis to share).
        # Nothing is released; the event is held only where the agreement's [hold] says so.
        if now < flow.starts:
            refusals.extend(flow.window_refusals[Reason.NOT_YET_VALID])
            _hold(flow, Reason.NOT_YET_VALID, now, holds)
            continue
        if now >= flow.ends:
            refusals.extend(flow.window_refusals[Reason.EXPIRED])
            _hold(flow, Reason.EXPIRED, now, holds)
            continue
        if now >= flow.review_due:
            refusals.extend(flow.window_refusals[Reason.REVIEW_OVERDUE])
            _hold(flow, Reason.REVIEW_OVERDUE, now, holds)
            continue
        failed = -1
        for i, condition in enumerate(flow.conditions):
            if not condition.test(event):
                failed = i
                break
        if failed >= 0:
            refusals.extend(flow.condition_refusals[failed])
            continue
        record = {output: apply(getattr(event, source)) for source, output, apply in flow.steps}
        ag = flow.agreement
        figures = flow.figures is not None
        into = counted if figures else releases
        for consumer in flow.consumers:
            into.append(
                Release(
                    consumer=consumer,
                    agreement_id=ag.id,
                    agreement_revision=ag.revision,
                    flow_id=flow.id,
                    record_id=record_id(env.source, env.lineage, consumer, ag.id),
                    record=dict(record),  # one dict per consumer: no aliasing between releases
                    fields=flow.fields,
                    rules=flow.rule_ids,
                    purpose=ag.purpose,
                    lawful_basis=ag.lawful_basis,
                    retention_days=ag.retention_days,
                    figures=figures,
                )
            )
    if not releases and not counted and not refusals:  # pragma: no cover - a plan always has flows or a refusal
        refusals.append(Refusal(Reason.NO_AGREEMENT.value, "No agreement covers this event."))
    return Decision(
        subject=subject,
        releases=tuple(releases),
        refusals=tuple(refusals),
        holds=tuple(holds[agreement_id] for agreement_id in sorted(holds)),
        counted=tuple(counted),
    )


def _hold(flow: Flow, reason: Reason, now: datetime, holds: dict[str, Hold]) -> None:
    """Held once per agreement (its flows share its state), when its ``[hold]`` names ``reason``."""
    ag = flow.agreement
    if ag.hold is not None and ag.id not in holds and ag.holds(reason, now):
        holds[ag.id] = Hold(ag.id, ag.revision, reason.value, now + timedelta(days=ag.hold.days))
