"""What a data sharing agreement says, in the compiled form the engine runs.

An agreement file (``policies/agreements/<id>.toml``, read by ``loader.py``) becomes an
:class:`Agreement` and its :class:`Flow` s; every rule and row condition is compiled at load into a
small callable, and flows are indexed by (partner, event type, version) into :class:`Plan` s, so
``engine.decide`` does no parsing, no lookups by name and no type checks on the hot path.

Schema field *kinds* (``FieldKind``, ``FieldSpec``, ``SCHEMA_FIELDS``) come from the one
introspector in ``schemas/fields.py``, shared with the adapters' mappings, so the lint's "does
this transform fit this field" check can never drift from the wire contract (nor from how a
mapping reads the field).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from broker.policy.decision import Refusal
from schemas.errors import Reason
from schemas.events import EventModel
from schemas.fields import LSOA_PATTERN, SCHEMA_FIELDS, FieldKind, FieldSpec, schema_fields

__all__ = [  # the field kinds are re-exported: callers read the policy's view of the fields here
    "FORMS_FOR_KIND",
    "LONDON",
    "LSOA_PATTERN",
    "NEEDS_REASON",
    "PSEUDONYMISABLE",
    "SCHEMA_FIELDS",
    "Action",
    "Agreement",
    "Band",
    "CompiledCondition",
    "CompiledRule",
    "FieldKind",
    "FieldSpec",
    "FiguresSpec",
    "Flow",
    "Form",
    "HoldPolicy",
    "JsonValue",
    "Plan",
    "PlanKey",
    "PolicySet",
    "build_plan",
    "finish_flow",
    "local_midnight",
    "schema_fields",
]

LONDON = ZoneInfo("Europe/London")
"""Agreement dates and every time generalisation are read in UK local time: a "Friday night" or an
agreement that "ends on 31 March" means what the signatories meant, across BST changes."""

JsonValue = str | int | bool | list[str] | None
"""What a released field may hold: plain JSON scalars, or a list of code strings."""


class Action(StrEnum):
    KEEP = "keep"
    GENERALISE = "generalise"
    PSEUDONYMISE = "pseudonymise"


class Form(StrEnum):
    """The forms of ``generalise``."""

    BAND = "band"  # integer (age, sessions) -> a band label declared in the agreement
    WEEK = "week"  # date / date-time -> ISO week, "2026-W41"
    MONTH = "month"  # -> "2026-10"
    QUARTER = "quarter"  # -> "2026-Q4" (calendar quarter)
    DAY_OF_WEEK = "day_of_week"  # -> "Friday"
    HOUR = "hour"  # date-time -> local hour 0..23
    DAY_PART = "day_part"  # date-time -> night / morning / afternoon / evening
    NTE_PEAK = "nte_peak"  # date-time -> true in the strategy's Friday/Saturday 18:00-06:00 peak
    DISTRICT = "district"  # location -> district GSS code
    LSOA = "lsoa"  # location -> LSOA GSS code
    GROUP = "group"  # code (or list of codes) -> group label(s) declared in the agreement


FORMS_FOR_KIND: Mapping[FieldKind, frozenset[Form]] = {
    FieldKind.INT: frozenset({Form.BAND}),
    FieldKind.DATE: frozenset({Form.WEEK, Form.MONTH, Form.QUARTER, Form.DAY_OF_WEEK}),
    FieldKind.DATETIME: frozenset(
        {Form.WEEK, Form.MONTH, Form.QUARTER, Form.DAY_OF_WEEK, Form.HOUR, Form.DAY_PART, Form.NTE_PEAK}
    ),
    FieldKind.DISTRICT: frozenset({Form.DISTRICT}),
    FieldKind.LSOA: frozenset({Form.LSOA}),
    FieldKind.CODE: frozenset({Form.GROUP}),
    FieldKind.CODE_LIST: frozenset({Form.GROUP}),
}

PSEUDONYMISABLE: frozenset[FieldKind] = frozenset({FieldKind.STRING, FieldKind.TEXT, FieldKind.INT, FieldKind.LSOA})
"""Kinds a keyed pseudonym makes sense for: identifiers of things (a school, a premises) to link
records within one agreement without naming them. A pseudonym of a date or a 4-value code would
hide nothing useful and suggest a protection that is not there."""

NEEDS_REASON: frozenset[FieldKind] = frozenset({FieldKind.TEXT, FieldKind.LSOA})
"""Kinds that may leave as they are only if the rule names a reason: free text and small-area
location are quasi-identifiers (DOMAIN.md, ECDS: "must be coarsened or dropped ... unless an
agreement names a reason"; ICO Data Sharing Code: data minimisation)."""


# --- compiled agreements ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Band:
    label: str
    low: int
    high: int | None  # None: open-ended ("65+")

    def contains(self, value: int) -> bool:
        return value >= self.low and (self.high is None or value <= self.high)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: str
    field: str  # source field in the event
    output: str  # field name in the released record
    action: Action
    apply: Callable[[Any], JsonValue] = dc_field(repr=False, compare=False)
    form: Form | None = None
    detail: str | None = None  # band set / group set name
    reason: str | None = None

    def describe(self) -> str:
        if self.action is Action.KEEP:
            return "keep"
        if self.action is Action.PSEUDONYMISE:
            return "pseudonymise (keyed HMAC-SHA256, this agreement's secret)"
        suffix = f" ({self.detail})" if self.detail else ""
        return f"generalise to {self.form}{suffix}"


@dataclass(frozen=True, slots=True)
class CompiledCondition:
    field: str
    op: str
    text: str  # for people: "pupil_age between 11 and 17"
    test: Callable[[EventModel], bool] = dc_field(repr=False, compare=False)


HOLDABLE: frozenset[Reason] = frozenset({Reason.NOT_YET_VALID, Reason.REVIEW_OVERDUE, Reason.EXPIRED})
"""The refusals an agreement may say it holds events for: the agreement's own state, which a new
revision can change. A row condition or a missing flow is about the event, and a renewal that
changes it is a different agreement about different events: those are never held."""


@dataclass(frozen=True, slots=True)
class HoldPolicy:
    """An agreement's ``[hold]`` table: which of its not-in-force refusals keep the event (sealed,
    ``broker/stages/held.py``) for ``days``, to be decided again when a new revision is in force.

    ``expired_grace_days``: an ``expired`` event is held only within this many days after
    ``valid_to`` (a renewal that comes late still gets the events of its gap; an agreement that
    lapsed for good stops collecting events nobody will ever release)."""

    reasons: frozenset[Reason]
    days: int
    expired_grace_days: int = 0


@dataclass(frozen=True, slots=True)
class Agreement:
    id: str
    title: str
    revision: int
    parties: tuple[str, ...]
    purpose: str
    lawful_basis: tuple[str, ...]
    valid_from: date
    valid_to: date
    review_by: date
    retention_days: int
    path: str
    pseudonymises: bool = False
    # None: holds nothing (the default: no agreement starts keeping data it did not say it would)
    hold: HoldPolicy | None = None
    # The file's ``notes`` (its revision history, in the signatories' words), for the register
    # (``broker/dpia``); the engine never reads it.
    notes: str = ""

    # The window in absolute time, computed once: valid from the start of ``valid_from`` to the
    # end of ``valid_to`` (inclusive days, UK local time); review overdue from the day after.
    @property
    def starts(self) -> datetime:
        return local_midnight(self.valid_from)

    @property
    def ends(self) -> datetime:
        return local_midnight(self.valid_to + timedelta(days=1))

    @property
    def review_due(self) -> datetime:
        return local_midnight(self.review_by + timedelta(days=1))

    def state(self, now: datetime) -> Reason | None:
        """Why this agreement releases nothing at ``now``, or None when it is in force."""
        if now < self.starts:
            return Reason.NOT_YET_VALID
        if now >= self.ends:
            return Reason.EXPIRED
        if now >= self.review_due:
            # ICO Data Sharing Code: an agreement past its review date is not being governed;
            # fail closed until the partnership reviews it and bumps the revision.
            return Reason.REVIEW_OVERDUE
        return None

    def holds(self, reason: Reason, now: datetime) -> bool:
        """Whether an event this agreement refuses for ``reason`` at ``now`` is held (pure)."""
        hold = self.hold
        if hold is None or reason not in hold.reasons:
            return False
        if reason is Reason.EXPIRED:
            # Threat: an agreement that lapsed for good collecting events for ever, sealed but
            # kept: only the grace period after valid_to is held.
            return now < self.ends + timedelta(days=hold.expired_grace_days)
        return True


@dataclass(frozen=True, slots=True)
class FiguresSpec:
    """A flow's ``figures`` table: its consumers receive the quarter's count tables, computed by the
    broker from the flow's minimised events (``broker/pipeline/figures.py``), never the records.

    ``rules``: ``"source"`` (each source's own disclosure rule) or ``"partnership"``; ``round_to``:
    shown figures rounded to that base; a quarter is released ``release_after_days`` after it ends
    (late recording), and again, as a new revision, whenever a correction, withdrawal or late event
    changes what would be published."""

    rules: str = "source"
    round_to: int | None = None
    release_after_days: int = 14
    trend_quarters: int = 4


def local_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0, 0), tzinfo=LONDON)


@dataclass(frozen=True, slots=True)
class Flow:
    agreement: Agreement
    id: str
    index: int  # position in the file, for messages
    partners: frozenset[str]
    event_type: str
    versions: frozenset[int]
    consumers: tuple[str, ...]
    conditions: tuple[CompiledCondition, ...]
    rules: tuple[CompiledRule, ...]  # sorted by output name
    # Precomputed so ``decide`` allocates nothing but the records themselves.
    fields: tuple[str, ...] = ()
    rule_ids: tuple[str, ...] = ()
    steps: tuple[tuple[str, str, Callable[[Any], JsonValue]], ...] = dc_field(default=(), repr=False, compare=False)
    starts: datetime = dc_field(default=datetime.min, repr=False, compare=False)
    ends: datetime = dc_field(default=datetime.max, repr=False, compare=False)
    review_due: datetime = dc_field(default=datetime.max, repr=False, compare=False)
    window_refusals: Mapping[Reason, tuple[Refusal, ...]] = dc_field(default_factory=dict, repr=False)
    condition_refusals: tuple[tuple[Refusal, ...], ...] = dc_field(default=(), repr=False)
    cadence_days: int | None = None  # the partners send at least this often (None: no schedule declared)
    figures: FiguresSpec | None = None  # set: the consumers receive figures only, never a record


def finish_flow(flow: Flow) -> Flow:
    """Fill in a flow's precomputed parts (sorted fields, steps, refusals)."""
    ag = flow.agreement
    rules = tuple(sorted(flow.rules, key=lambda r: r.output))

    def refusals(reason: Reason, message: str) -> tuple[Refusal, ...]:
        return tuple(Refusal(reason.value, message, ag.id, consumer) for consumer in flow.consumers)

    windows = {
        Reason.NOT_YET_VALID: refusals(
            Reason.NOT_YET_VALID, f"Agreement {ag.id} r{ag.revision} is not valid until {ag.valid_from}."
        ),
        Reason.EXPIRED: refusals(
            Reason.EXPIRED, f"Agreement {ag.id} r{ag.revision} expired at the end of {ag.valid_to}."
        ),
        Reason.REVIEW_OVERDUE: refusals(
            Reason.REVIEW_OVERDUE,
            f"Agreement {ag.id} r{ag.revision} was due for review by {ag.review_by}; nothing is released "
            "until it is reviewed.",
        ),
    }
    conditions = tuple(
        refusals(
            Reason.ROW_CONDITION_FALSE,
            f"Flow {flow.id!r} of agreement {ag.id} releases only when {cond.text}; this event does not match.",
        )
        for cond in flow.conditions
    )
    return Flow(
        agreement=ag,
        id=flow.id,
        index=flow.index,
        partners=flow.partners,
        event_type=flow.event_type,
        versions=flow.versions,
        consumers=flow.consumers,
        conditions=flow.conditions,
        rules=rules,
        fields=tuple(r.output for r in rules),
        rule_ids=tuple(r.id for r in rules),
        steps=tuple((r.field, r.output, r.apply) for r in rules),
        starts=ag.starts,
        ends=ag.ends,
        review_due=ag.review_due,
        window_refusals=windows,
        condition_refusals=conditions,
        cadence_days=flow.cadence_days,
        figures=flow.figures,
    )


PlanKey = tuple[str, str, int]  # (partner, event type, version)


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything ``decide`` needs for one (partner, event type, version)."""

    flows: tuple[Flow, ...]
    refusals: tuple[Refusal, ...]  # static: agreements that cover the type but not this partner/version


def build_plan(flows: tuple[Flow, ...], key: PlanKey) -> Plan:
    partner, event_type, version = key
    matching: list[Flow] = []
    refusals: list[Refusal] = []
    by_agreement: dict[str, list[Flow]] = {}
    for flow in flows:
        if flow.event_type == event_type:
            by_agreement.setdefault(flow.agreement.id, []).append(flow)
    for agreement_id in sorted(by_agreement):
        ag_flows = by_agreement[agreement_id]
        hits = [f for f in ag_flows if partner in f.partners and version in f.versions]
        if hits:
            matching.extend(hits)
        elif any(partner in f.partners for f in ag_flows):
            versions = sorted({v for f in ag_flows if partner in f.partners for v in f.versions})
            refusals.append(
                Refusal(
                    Reason.VERSION_NOT_IN_FLOW.value,
                    f"Agreement {agreement_id} covers {event_type} from {partner} only in version(s) "
                    f"{', '.join(map(str, versions))}, not v{version}.",
                    agreement_id,
                )
            )
        else:
            refusals.append(
                Refusal(
                    Reason.PARTNER_NOT_IN_FLOW.value,
                    f"Agreement {agreement_id} covers {event_type} but not from {partner}.",
                    agreement_id,
                )
            )
    if not by_agreement:
        refusals.append(
            Refusal(
                Reason.NO_AGREEMENT.value,
                f"No agreement has a flow for {event_type} v{version} from {partner}; nothing is released.",
            )
        )
    return Plan(tuple(matching), tuple(refusals))


@dataclass(frozen=True, slots=True)
class PolicySet:
    """The loaded, compiled agreements: immutable, shared by every pipeline worker."""

    agreements: Mapping[str, Agreement]
    flows: tuple[Flow, ...]
    plans: Mapping[PlanKey, Plan]
    consumers_in_flows: frozenset[str]

    def plan(self, partner: str, event_type: str, version: int) -> Plan:
        key = (partner, event_type, version)
        plan = self.plans.get(key)
        # Keys not precomputed (a partner not registered for the type cannot get past verify, but
        # the engine does not rely on that) are planned on the fly, same rules.
        return plan if plan is not None else build_plan(self.flows, key)

    def flow(self, agreement_id: str, flow_id: str) -> Flow | None:
        for flow in self.flows:
            if flow.agreement.id == agreement_id and flow.id == flow_id:
                return flow
        return None
