"""Alerts before things break: agreements about to lapse, partners gone quiet, refusals rising,
held events near their end (pure: no I/O, no clock; ``now`` is an argument).

The broker fails closed (DESIGN.md invariant 1): an agreement past its dates releases nothing, a
partner whose export broke sends nothing or only refused messages. Nothing is *lost* then, but the
partnership's picture quietly goes stale. These alerts say so while there is still time to act.
Every alert names ids and codes only, never a payload value (invariant 5): they go to logs,
``/metrics`` labels and an API any role may read.

Codes (stable: dashboards and rules key on them; the README's "Alerts and status" lists them):

=========================== ======================== ==============================================
code                        severity                 when
=========================== ======================== ==============================================
``agreement_expired``       critical                 past ``valid_to``: the agreement releases nothing
``agreement_review_overdue`` critical                past ``review_by``: it releases nothing
``agreement_expiring``      warning                  ``valid_to`` ends within 30 days
``agreement_review_due``    warning                  ``review_by`` falls within 30 days
``partner_silent``          warning; critical at 2x  no authenticated message for longer than the
                                                     cadence its flows declare
``rejections_rising``       warning; critical ≥ 50%  last 7 days' rejected share ≥ 2x the previous
                                                     28 days' and ≥ 5 points above it, ≥ 10 rejected
``withheld_rising``         warning; critical ≥ 50%  the same for accepted messages that released
                                                     nothing
``held_expiring``           warning; critical ≤ 1 d  events held for a lapsed agreement expire
                                                     within 7 days
``events_held``             info                     events are held for a lapsed agreement
=========================== ======================== ==============================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from broker.policy.model import Agreement, PolicySet
from broker.ports.store import DayCount, HeldSummary
from broker.registry import Registry
from schemas.envelope import format_time
from schemas.errors import Reason

# -- thresholds, each with its reason ---------------------------------------------------------------

AGREEMENT_WARN = timedelta(days=30)
"""Agreements: 30 days ahead, as ``policy check`` warns (``broker/policy/lint.WARN_DAYS``) and
``GET /v1/agreements`` has always said. A renewal needs every party's signature, and partnership
boards meet monthly: a month is the least notice that lets one meeting act."""

RECENT_DAYS = 7
"""The window a rise is measured in: one week holds a whole weekly cycle (the Friday/Saturday
night-time peaks, weekday-only school returns), so a week is compared with weeks, not a quiet
Tuesday with a Saturday."""

BASELINE_DAYS = 28
"""What "normal" is: the four weeks before the recent one. Long enough that one bad day does not
become normal, short enough to follow a partner's volume as it changes over a year."""

MIN_COUNT = 10
"""No rise alert below 10 refused (or withheld) messages in the recent week. Counts this small are
noise (1 -> 2 doubles a rate and means nothing); at 10 a doubling is unlikely to be chance
(a Poisson count expected at 5 reaches 10 about 3% of the time)."""

RISE_NUMERATOR, RISE_DENOMINATOR = 2, 1
"""A rise is a doubling of the share (rates, not counts: a partner sending twice as much is not a
rise in refusals). Doubling is the change a person should look at; smaller drifts are normal."""

MIN_RISE_NUMERATOR, MIN_RISE_DENOMINATOR = 5, 100
"""... and at least 5 percentage points above the baseline: at high volume 0.1% -> 0.3% is a
tripling that nobody needs to be woken for."""

CRITICAL_SHARE = 0.5
"""Half or more of a partner's messages refused (or withheld) in a week: its export or its
agreement is broken, not drifting."""

SILENT_CRITICAL_FACTOR = 2
"""A partner silent for twice its cadence has missed two submissions: critical."""

HELD_WARN = timedelta(days=7)
"""Held events: a week before the first expires, time to renew the agreement (a revision with new
dates) so they are released rather than purged unreleased."""

HELD_CRITICAL = timedelta(days=1)

ALL_SOURCES = "*"
"""The subject of the rates of every source together (partners and unregistered senders)."""


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


SEVERITY_ORDER = (Severity.CRITICAL, Severity.WARNING, Severity.INFO)


class AlertCode(StrEnum):
    AGREEMENT_EXPIRED = "agreement_expired"
    AGREEMENT_REVIEW_OVERDUE = "agreement_review_overdue"
    AGREEMENT_EXPIRING = "agreement_expiring"
    AGREEMENT_REVIEW_DUE = "agreement_review_due"
    PARTNER_SILENT = "partner_silent"
    REJECTIONS_RISING = "rejections_rising"
    WITHHELD_RISING = "withheld_rising"
    HELD_EXPIRING = "held_expiring"
    EVENTS_HELD = "events_held"


AGREEMENT_CODES = frozenset(
    {
        AlertCode.AGREEMENT_EXPIRED,
        AlertCode.AGREEMENT_REVIEW_OVERDUE,
        AlertCode.AGREEMENT_EXPIRING,
        AlertCode.AGREEMENT_REVIEW_DUE,
    }
)
"""The codes whose subject is an agreement (what an analyst, party to it, may be shown)."""


@dataclass(frozen=True, slots=True)
class Alert:
    code: AlertCode
    severity: Severity
    subject: str  # an agreement id, a partner id, or ALL_SOURCES
    message: str  # for a person: ids, dates, counts and rates only
    due: datetime | None = None  # when it bites (or bit): the end, the review date, the next message due

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code.value,
            "severity": self.severity.value,
            "subject": self.subject,
            "message": self.message,
            "due": None if self.due is None else format_time(self.due),
        }


@dataclass(frozen=True, slots=True)
class Observations:
    """What the store says (``broker/pipeline/status.observe`` reads it)."""

    last_seen: Mapping[str, datetime]  # partner -> latest authenticated message (Store.last_seen)
    days: Sequence[DayCount]  # Store.outcome_days(counts_since(now))
    held: Sequence[HeldSummary] = ()
    since: datetime | None = None  # the first audit entry: when monitoring began (None: empty store)


# -- agreements -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgreementStatus:
    id: str
    revision: int
    state: str  # "in_force" or the refusal reason (not_yet_valid, expired, review_overdue)
    ends: datetime
    review_due: datetime

    def as_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "revision": self.revision,
            "state": self.state,
            "ends": format_time(self.ends),
            "days_to_end": _days(self.ends - now),
            "review_due": format_time(self.review_due),
            "days_to_review": _days(self.review_due - now),
        }


def agreement_statuses(policy: PolicySet, now: datetime) -> list[AgreementStatus]:
    return [
        AgreementStatus(ag.id, ag.revision, _state(ag, now), ag.ends, ag.review_due)
        for ag in sorted(policy.agreements.values(), key=lambda a: a.id)
    ]


def _state(agreement: Agreement, now: datetime) -> str:
    state = agreement.state(now)
    return "in_force" if state is None else state.value


def agreement_alerts(policy: PolicySet, now: datetime) -> Iterable[Alert]:
    """The date alerts of every agreement (also the register's warnings, ``broker/dpia``: one
    wording for ``status``, ``GET /v1/agreements`` and the DPIA pack)."""
    for ag in sorted(policy.agreements.values(), key=lambda a: a.id):
        state = ag.state(now)
        name = f"{ag.id} r{ag.revision}"
        if state is Reason.EXPIRED:
            yield Alert(
                AlertCode.AGREEMENT_EXPIRED,
                Severity.CRITICAL,
                ag.id,
                f"{name} expired at the end of {ag.valid_to} ({_ago(now - ag.ends)}); it releases nothing. "
                "Renew it (a new revision with new dates) or retire it.",
                ag.ends,
            )
        elif state is Reason.REVIEW_OVERDUE:
            yield Alert(
                AlertCode.AGREEMENT_REVIEW_OVERDUE,
                Severity.CRITICAL,
                ag.id,
                f"{name} was due for review by {ag.review_by} ({_ago(now - ag.review_due)}); it releases nothing "
                "until it is reviewed (a new revision with a new review_by).",
                ag.review_due,
            )
        elif state is None:
            # Inclusive: exactly 30 days ahead is an alert (as ``agreement_summaries`` warns).
            if ag.ends - now <= AGREEMENT_WARN:
                yield Alert(
                    AlertCode.AGREEMENT_EXPIRING,
                    Severity.WARNING,
                    ag.id,
                    f"{name} ends at the end of {ag.valid_to} ({_within(ag.ends - now)}); renew it or let it "
                    "lapse on purpose.",
                    ag.ends,
                )
            if ag.review_due - now <= AGREEMENT_WARN:
                yield Alert(
                    AlertCode.AGREEMENT_REVIEW_DUE,
                    Severity.WARNING,
                    ag.id,
                    f"{name} is due for review by {ag.review_by} ({_within(ag.review_due - now)}); after that it "
                    "releases nothing.",
                    ag.review_due,
                )


# -- partners and their cadence ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cadence:
    """The tightest cadence a partner's flows in force declare, and which flow declares it."""

    days: int
    agreement_id: str
    flow_id: str
    starts: datetime  # that agreement's start: a partner cannot be overdue before it

    @property
    def period(self) -> timedelta:
        return timedelta(days=self.days)


def partner_cadences(policy: PolicySet, now: datetime) -> dict[str, Cadence]:
    """Partner -> the shortest ``cadence_days`` among the flows naming it, of agreements in force.

    Only agreements in force: a partner of a lapsed agreement may rightly stop sending, and the
    lapse is its own (critical) alert."""
    out: dict[str, Cadence] = {}
    for flow in policy.flows:  # sorted by agreement id, then position: ties go to the first
        if flow.cadence_days is None or flow.agreement.state(now) is not None:
            continue
        for partner in sorted(flow.partners):
            known = out.get(partner)
            if known is None or flow.cadence_days < known.days:
                out[partner] = Cadence(flow.cadence_days, flow.agreement.id, flow.id, flow.agreement.starts)
    return out


@dataclass(frozen=True, slots=True)
class PartnerStatus:
    id: str
    last_seen: datetime | None
    cadence: Cadence | None
    silent_for: timedelta | None  # since the last message, or since monitoring could expect one

    @property
    def overdue(self) -> bool:
        # Strictly longer than the cadence: a weekly partner seen exactly 7 days ago is on time.
        return self.cadence is not None and self.silent_for is not None and self.silent_for > self.cadence.period

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "last_seen": None if self.last_seen is None else format_time(self.last_seen),
            "silent_seconds": None if self.silent_for is None else int(self.silent_for.total_seconds()),
            "cadence_days": None if self.cadence is None else self.cadence.days,
            "cadence_from": None if self.cadence is None else f"{self.cadence.agreement_id}/{self.cadence.flow_id}",
            "overdue": self.overdue,
        }


def partner_statuses(
    policy: PolicySet, registry: Registry, now: datetime, observations: Observations
) -> list[PartnerStatus]:
    cadences = partner_cadences(policy, now)
    out = []
    for partner in sorted(registry.partners):
        last = observations.last_seen.get(partner)
        cadence = cadences.get(partner)
        silent_for: timedelta | None = None
        if last is not None:
            silent_for = max(timedelta(0), now - last)
        elif cadence is not None and observations.since is not None:
            # Never heard from: overdue only once a whole cadence has passed since both the
            # agreement started and this store began recording (a new deployment is not "silent").
            silent_for = max(timedelta(0), now - max(cadence.starts, observations.since))
        out.append(PartnerStatus(partner, last, cadence, silent_for))
    return out


def _silence_alerts(partners: Sequence[PartnerStatus], now: datetime) -> Iterable[Alert]:
    for status in partners:
        if not status.overdue:
            continue
        assert status.cadence is not None
        assert status.silent_for is not None
        cadence = status.cadence
        critical = status.silent_for > cadence.period * SILENT_CRITICAL_FACTOR
        since = (
            f"last authenticated message {_ago(status.silent_for)} ({format_time(status.last_seen)})"
            if status.last_seen is not None
            else f"no authenticated message since monitoring began ({_ago(status.silent_for)})"
        )
        yield Alert(
            AlertCode.PARTNER_SILENT,
            Severity.CRITICAL if critical else Severity.WARNING,
            status.id,
            f"{status.id}: {since}; flow {cadence.flow_id} of {cadence.agreement_id} expects one at least every "
            f"{cadence.days} days.",
            now - status.silent_for + cadence.period,
        )


# -- refusal rates ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """Outcome counts over a window (from ``DayCount`` rows)."""

    received: int = 0
    rejected: int = 0
    withheld: int = 0
    duplicate: int = 0

    @property
    def accepted(self) -> int:
        # Every settled message is one ``received`` plus one verdict; the accepted ones are those
        # neither rejected nor duplicates (``broker/audit/entries.py``).
        return max(0, self.received - self.rejected - self.duplicate)

    @property
    def rejected_share(self) -> float | None:
        return self.rejected / self.received if self.received else None

    @property
    def withheld_share(self) -> float | None:
        return self.withheld / self.accepted if self.accepted else None

    def add(self, kind: str, count: int) -> Window:
        if kind not in ("received", "rejected", "withheld", "duplicate"):
            return self
        values = {
            "received": self.received,
            "rejected": self.rejected,
            "withheld": self.withheld,
            "duplicate": self.duplicate,
        }
        values[kind] += count
        return Window(**values)

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "withheld": self.withheld,
            "duplicate": self.duplicate,
            "rejected_share": _share(self.rejected_share),
            "withheld_share": _share(self.withheld_share),
        }


@dataclass(frozen=True, slots=True)
class Rates:
    subject: str  # a partner id, or ALL_SOURCES
    recent: Window = field(default_factory=Window)  # the last RECENT_DAYS UTC days, today included
    baseline: Window = field(default_factory=Window)  # the BASELINE_DAYS before those

    def as_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "recent": self.recent.as_dict(), "baseline": self.baseline.as_dict()}


def counts_since(now: datetime) -> datetime:
    """The start of the first UTC day the rates need (``Store.outcome_days(since)``)."""
    first = now.astimezone(UTC).date() - timedelta(days=RECENT_DAYS + BASELINE_DAYS - 1)
    return datetime.combine(first, time(0, 0), tzinfo=UTC)


def outcome_rates(registry: Registry, now: datetime, days: Sequence[DayCount]) -> list[Rates]:
    """Per registered partner (each, even with no traffic) and for every source together. A source
    the registry does not know counts only in the whole (its id was only claimed: never a subject)."""
    today = now.astimezone(UTC).date()
    recent_from = today - timedelta(days=RECENT_DAYS - 1)
    baseline_from = recent_from - timedelta(days=BASELINE_DAYS)
    windows: dict[str, list[Window]] = {p: [Window(), Window()] for p in sorted(registry.partners)}
    windows[ALL_SOURCES] = [Window(), Window()]
    for row in days:
        slot = _slot(row.day, recent_from, baseline_from, today)
        if slot is None:
            continue
        subjects = [ALL_SOURCES]
        if row.source is not None and row.source in registry.partners:
            subjects.append(row.source)
        for subject in subjects:
            windows[subject][slot] = windows[subject][slot].add(row.kind, row.count)
    return [Rates(subject, recent, baseline) for subject, (recent, baseline) in windows.items()]


def _slot(day: date, recent_from: date, baseline_from: date, today: date) -> int | None:
    if recent_from <= day <= today:
        return 0
    if baseline_from <= day < recent_from:
        return 1
    return None


def rising(recent: int, recent_total: int, baseline: int, baseline_total: int) -> float | None:
    """The recent share when it is a rise (see the thresholds above), else None. A baseline with
    no traffic counts as a share of 0 (a new partner whose first week is mostly refused is a rise)."""
    if recent < MIN_COUNT or recent_total <= 0:
        return None
    if baseline_total <= 0:
        baseline, baseline_total = 0, 1
    # In whole numbers (cross-multiplied), so a boundary (exactly double, exactly 5 points) is
    # decided exactly, not by floating-point rounding.
    recent_x, before_x, scale = recent * baseline_total, baseline * recent_total, recent_total * baseline_total
    doubled = recent_x * RISE_DENOMINATOR >= before_x * RISE_NUMERATOR
    risen = (recent_x - before_x) * MIN_RISE_DENOMINATOR >= scale * MIN_RISE_NUMERATOR
    return recent / recent_total if doubled and risen else None


def _rate_alerts(rates: Sequence[Rates]) -> Iterable[Alert]:
    for r in rates:
        who = "all sources" if r.subject == ALL_SOURCES else r.subject
        checks = (
            (
                AlertCode.REJECTIONS_RISING,
                "rejected",
                (r.recent.rejected, r.recent.received, r.baseline.rejected, r.baseline.received),
                "messages",
            ),
            (
                AlertCode.WITHHELD_RISING,
                "accepted but released nothing",
                (r.recent.withheld, r.recent.accepted, r.baseline.withheld, r.baseline.accepted),
                "accepted messages",
            ),
        )
        for code, what, (n, total, base_n, base_total), of in checks:
            share = rising(n, total, base_n, base_total)
            if share is None:
                continue
            before = f"{base_n / base_total:.0%} of {base_total}" if base_total else "no messages"
            yield Alert(
                code,
                Severity.CRITICAL if share >= CRITICAL_SHARE else Severity.WARNING,
                r.subject,
                f"{who}: {n} of {total} {of} {what} in the last {RECENT_DAYS} days ({share:.0%}), against "
                f"{before} in the {BASELINE_DAYS} days before.",
            )


# -- held events ------------------------------------------------------------------------------------


def _held_alerts(held: Sequence[HeldSummary], now: datetime) -> Iterable[Alert]:
    for h in sorted(held, key=lambda x: (x.earliest_expiry, x.agreement_id)):
        if h.count <= 0:
            continue
        left = h.earliest_expiry - now
        events = f"{h.count} event{'s' if h.count != 1 else ''} held for {h.agreement_id}"
        if left <= HELD_WARN:
            yield Alert(
                AlertCode.HELD_EXPIRING,
                Severity.CRITICAL if left <= HELD_CRITICAL else Severity.WARNING,
                h.agreement_id,
                f"{events}; the first expires {_when(left)} ({format_time(h.earliest_expiry)}) and is then purged "
                "unreleased. Renew the agreement to release them.",
                h.earliest_expiry,
            )
        else:
            yield Alert(
                AlertCode.EVENTS_HELD,
                Severity.INFO,
                h.agreement_id,
                f"{events} until it is renewed; the first expires {format_time(h.earliest_expiry)}.",
                h.earliest_expiry,
            )


# -- all of them ------------------------------------------------------------------------------------


def compute_alerts(policy: PolicySet, registry: Registry, now: datetime, observations: Observations) -> list[Alert]:
    """Every alert at ``now``, most severe first (then by code and subject: a stable order)."""
    partners = partner_statuses(policy, registry, now, observations)
    alerts = [
        *agreement_alerts(policy, now),
        *_silence_alerts(partners, now),
        *_rate_alerts(outcome_rates(registry, now, observations.days)),
        *_held_alerts(observations.held, now),
    ]
    return sorted(alerts, key=lambda a: (SEVERITY_ORDER.index(a.severity), a.code.value, a.subject))


# -- wording ----------------------------------------------------------------------------------------


def _days(delta: timedelta) -> int:
    """Whole days (rounded towards zero: 29 days 23 hours is 29)."""
    seconds = delta.total_seconds()
    return int(seconds // 86400) if seconds >= 0 else -int(-seconds // 86400)


def _within(delta: timedelta) -> str:
    days = _days(delta)
    return "within a day" if days < 1 else f"in {days} day{'s' if days != 1 else ''}"


def _ago(delta: timedelta) -> str:
    days = _days(delta)
    return "less than a day ago" if days < 1 else f"{days} day{'s' if days != 1 else ''} ago"


def _when(delta: timedelta) -> str:
    return "already" if delta <= timedelta(0) else _within(delta)


def _share(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
