"""What a flow releases, field by field, and what state an agreement is in at a moment.

One reading for the map, the register and the console, taken from the compiled rules (not the
TOML): the rule's own ``describe()`` is the wording ``policy explain`` prints, and a field no rule
names is "dropped", as the engine drops it (DESIGN.md invariant 1: default deny).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

from broker.monitor.alerts import Alert, AlertCode, agreement_alerts
from broker.policy.model import LONDON, SCHEMA_FIELDS, Action, Agreement, CompiledRule, FieldSpec, Flow, PolicySet
from schemas.errors import Reason

DROPPED = "drop (default: not named by this flow)"
"""``policy explain``'s words for a field no rule names."""


class How(StrEnum):
    KEPT = "kept"
    GENERALISED = "generalised"
    PSEUDONYMISED = "pseudonymised"
    DROPPED = "dropped"


HOW_OF_ACTION = {Action.KEEP: How.KEPT, Action.GENERALISE: How.GENERALISED, Action.PSEUDONYMISE: How.PSEUDONYMISED}


@dataclass(frozen=True, slots=True)
class Output:
    """One field of a released record and the rule that makes it."""

    field: str  # the event's field
    output: str  # the released record's field
    how: How
    form: str | None  # generalise: "week", "band", ...
    detail: str | None  # the band or group set
    rule_id: str
    describe: str  # CompiledRule.describe(): what `policy explain` says
    reason: str | None

    @property
    def short(self) -> str:
        """For a picture: ``arrival_week (week)``, ``site_code``, ``school_pseudonym (pseudonym)``."""
        if self.how is How.GENERALISED:
            return f"{self.output} ({self.form})"
        if self.how is How.PSEUDONYMISED:
            return f"{self.output} (pseudonym)"
        return self.output if self.output == self.field else f"{self.output} (= {self.field})"


def output_of(rule: CompiledRule) -> Output:
    return Output(
        field=rule.field,
        output=rule.output,
        how=HOW_OF_ACTION[rule.action],
        form=None if rule.form is None else rule.form.value,
        detail=rule.detail,
        rule_id=rule.id,
        describe=rule.describe(),
        reason=rule.reason,
    )


@dataclass(frozen=True, slots=True)
class FieldEntry:
    """One schema field of the flow's event type: released as which outputs, or not at all."""

    name: str
    kind: str
    optional: bool
    outputs: tuple[Output, ...]  # empty: not released

    @property
    def released(self) -> bool:
        return bool(self.outputs)

    @property
    def treatment(self) -> str:
        if not self.outputs:
            return DROPPED
        return "; ".join(f"{o.output}: {o.describe}" for o in self.outputs)


@dataclass(frozen=True, slots=True)
class FlowFacts:
    agreement_id: str
    flow_id: str
    event_type: str
    versions: tuple[int, ...]
    partners: tuple[str, ...]
    consumers: tuple[str, ...]
    conditions: tuple[str, ...]  # CompiledCondition.text, e.g. "pupil_age between 11 and 17"
    cadence_days: int | None
    outputs: tuple[Output, ...]  # by output name, as the engine orders them
    fields: tuple[FieldEntry, ...]  # every schema field of the event type (all its versions in the flow)
    figures: str | None = None  # a figures-only flow: what its consumers receive instead of records

    @property
    def mode(self) -> str:
        """A suffix for the flow's heading: "" for records, "  ·  FIGURES ONLY" otherwise."""
        return "  ·  FIGURES ONLY" if self.figures else ""

    @property
    def ref(self) -> str:
        return f"{self.agreement_id}/{self.flow_id}"

    @property
    def event(self) -> str:
        return f"{self.event_type} v{', v'.join(map(str, self.versions))}"

    @property
    def dropped(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if not f.released)

    def by_how(self, how: How) -> tuple[Output, ...]:
        return tuple(o for o in self.outputs if o.how is how)

    @property
    def cadence(self) -> str:
        # explain's words (broker/policy/explain.py render_text)
        if self.cadence_days is None:
            return "no schedule declared"
        return f"the partners send at least every {self.cadence_days} days"

    @property
    def rows(self) -> str:
        return "only when " + " and ".join(self.conditions) if self.conditions else "every event of the type"


def schema_fields_of(event_type: str, versions: Iterable[int]) -> list[FieldSpec]:
    """Every field of the event type in any of ``versions``, first version's order first."""
    seen: dict[str, FieldSpec] = {}
    for version in sorted(versions):
        for name, spec in SCHEMA_FIELDS.get((event_type, version), {}).items():
            seen[name] = spec  # a later version's reading of a field wins: it is the one sent now
    return list(seen.values())


def flow_facts(flow: Flow) -> FlowFacts:
    outputs = tuple(output_of(rule) for rule in flow.rules)
    by_field: dict[str, list[Output]] = defaultdict(list)
    for out in outputs:
        by_field[out.field].append(out)
    fields = tuple(
        FieldEntry(spec.name, spec.kind.value, spec.optional, tuple(by_field.get(spec.name, ())))
        for spec in schema_fields_of(flow.event_type, flow.versions)
    )
    return FlowFacts(
        agreement_id=flow.agreement.id,
        flow_id=flow.id,
        event_type=flow.event_type,
        versions=tuple(sorted(flow.versions)),
        partners=tuple(sorted(flow.partners)),
        consumers=flow.consumers,
        conditions=tuple(c.text for c in flow.conditions),
        cadence_days=flow.cadence_days,
        outputs=outputs,
        fields=fields,
        figures=_figures(flow),
    )


def _figures(flow: Flow) -> str | None:
    spec = flow.figures
    if spec is None:
        return None
    rules = "each source's own disclosure rule" if spec.rules == "source" else "the partnership's disclosure rule"
    rounding = f", rounded to {spec.round_to}" if spec.round_to else ""
    return (
        f"releases quarterly figures only (counts by event date, {rules}, small cells suppressed [c]{rounding}, "
        f"{spec.release_after_days} days after the quarter): the fields below are counted, never sent"
    )


def flows_of(policy: PolicySet, agreement_id: str) -> tuple[FlowFacts, ...]:
    return tuple(flow_facts(f) for f in policy.flows if f.agreement.id == agreement_id)


# --- an agreement's state at a moment ------------------------------------------------------------


class State(StrEnum):
    IN_FORCE = "in_force"
    REVIEW_DUE = "review_due"  # in force; review_by within 30 days (alerts.AGREEMENT_WARN)
    EXPIRING = "expiring"  # in force; valid_to within 30 days
    REVIEW_OVERDUE = "review_overdue"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"


TAG = {
    State.IN_FORCE: "in force",
    State.REVIEW_DUE: "review due",
    State.EXPIRING: "ends soon",
    State.REVIEW_OVERDUE: "lapsed",
    State.EXPIRED: "lapsed",
    State.NOT_YET_VALID: "not yet in force",
}
"""A word for each state: a map or register printed in black and white, or read by a screen
reader, says the state in text, never by colour alone (WCAG 2.2, 1.4.1 Use of Color)."""


@dataclass(frozen=True, slots=True)
class AgreementState:
    state: State
    label: str  # "lapsed: review overdue (due by 2027-03-31)"
    warnings: tuple[str, ...]  # the date alerts' messages (`sv-broker status`, GET /v1/agreements)

    @property
    def releases(self) -> bool:
        return self.state in (State.IN_FORCE, State.REVIEW_DUE, State.EXPIRING)

    @property
    def lapsed(self) -> bool:
        """Past its review date or its end: the engine releases nothing under it (README: lapsed)."""
        return self.state in (State.REVIEW_OVERDUE, State.EXPIRED)

    @property
    def tag(self) -> str:
        return TAG[self.state]


def _state(ag: Agreement, now: datetime, alerts: Iterable[Alert]) -> AgreementState:
    codes = {a.code for a in alerts}
    messages = tuple(a.message for a in alerts)
    refusal = ag.state(now)  # the engine's own answer: the map cannot disagree with a release
    if refusal is Reason.NOT_YET_VALID:
        # No alert exists for this (nothing is late); lint's words (broker/policy/lint.py).
        message = f"{ag.id} is not valid until {ag.valid_from}; it releases nothing yet"
        return AgreementState(State.NOT_YET_VALID, f"not yet in force (from {ag.valid_from})", (message,))
    if refusal is Reason.EXPIRED:
        return AgreementState(State.EXPIRED, f"lapsed: expired at the end of {ag.valid_to}", messages)
    if refusal is Reason.REVIEW_OVERDUE:
        return AgreementState(State.REVIEW_OVERDUE, f"lapsed: review overdue (due by {ag.review_by})", messages)
    if AlertCode.AGREEMENT_REVIEW_DUE in codes:
        return AgreementState(State.REVIEW_DUE, f"in force; review due by {ag.review_by}", messages)
    if AlertCode.AGREEMENT_EXPIRING in codes:
        return AgreementState(State.EXPIRING, f"in force; ends at the end of {ag.valid_to}", messages)
    return AgreementState(State.IN_FORCE, f"in force (review by {ag.review_by})", messages)


def agreement_states(policy: PolicySet, now: datetime) -> Mapping[str, AgreementState]:
    alerts: dict[str, list[Alert]] = defaultdict(list)
    for alert in agreement_alerts(policy, now):
        alerts[alert.subject].append(alert)
    return {ag_id: _state(ag, now, alerts[ag_id]) for ag_id, ag in sorted(policy.agreements.items())}


def local_day(now: datetime) -> date:
    """The UK date at ``now``: agreement dates are UK local days (broker/policy/model.py LONDON)."""
    return now.astimezone(LONDON).date()
