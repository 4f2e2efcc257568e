"""The alerts (``broker/monitor/alerts.py``), from hand-built inputs at a fixed ``now``: every code,
and each threshold on both sides of its boundary. Pure: no store, no event loop, no clock."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from broker.monitor.alerts import (
    ALL_SOURCES,
    Alert,
    AlertCode,
    Observations,
    Severity,
    compute_alerts,
    counts_since,
    outcome_rates,
    partner_cadences,
    partner_statuses,
    rising,
)
from broker.policy.model import PolicySet, local_midnight
from broker.ports.store import DayCount, HeldSummary
from broker.registry import Registry
from tests.test_policy_engine import agreement, build
from tests.test_policy_support import shipped_policy

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TODAY = NOW.date()
ED = "uhdb-royal-derby-ed"
POLICE = "derbyshire-police"
NOTHING = Observations(last_seen={}, days=())


def with_cadence(doc: dict[str, Any], days: int | None) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    if days is not None:
        doc["flows"][0]["cadence_days"] = days
    return doc


def policy(registry: Registry, *docs: dict[str, Any]) -> PolicySet:
    return build(*docs, registry=registry)


def codes(alerts: Sequence[Alert]) -> list[tuple[str, str, str]]:
    return [(a.code.value, a.severity.value, a.subject) for a in alerts]


# -- agreements ---------------------------------------------------------------------------------------


def test_agreements_in_force_far_from_their_dates_raise_nothing(registry: Registry) -> None:
    assert compute_alerts(policy(registry, agreement()), registry, NOW, NOTHING) == []


def test_lapsed_agreements_are_critical(registry: Registry) -> None:
    expired = agreement("dsa-gone", valid_to=date(2026, 11, 1), review_by=date(2026, 10, 1))
    overdue = agreement("dsa-unreviewed", review_by=date(2026, 11, 24))
    alerts = compute_alerts(policy(registry, expired, overdue), registry, NOW, NOTHING)
    assert codes(alerts) == [
        ("agreement_expired", "critical", "dsa-gone"),
        ("agreement_review_overdue", "critical", "dsa-unreviewed"),
    ]
    assert alerts[0].due == local_midnight(date(2026, 11, 2))
    assert "expired at the end of 2026-11-01 (23 days ago); it releases nothing" in alerts[0].message
    assert alerts[1].due == local_midnight(date(2026, 11, 25))


def test_an_agreement_not_yet_in_force_raises_nothing(registry: Registry) -> None:
    later = agreement("dsa-later", valid_from=date(2027, 1, 1))
    assert compute_alerts(policy(registry, later), registry, NOW, NOTHING) == []


@pytest.mark.parametrize(("field", "code"), [("valid_to", "agreement_expiring"), ("review_by", "agreement_review_due")])
def test_30_days_ahead_is_an_alert_and_a_second_more_is_not(registry: Registry, field: str, code: str) -> None:
    doc = agreement("dsa-soon", **{field: date(2026, 12, 31)})
    if field == "valid_to":
        doc["review_by"] = date(2026, 12, 31)  # review_by may not fall after valid_to
    compiled = policy(registry, doc)
    bites = local_midnight(date(2027, 1, 1))  # the end of the day named
    at_30 = compute_alerts(compiled, registry, bites - timedelta(days=30), NOTHING)
    assert code in [a.code.value for a in at_30]
    (alert,) = [a for a in at_30 if a.code.value == code]
    assert alert.severity is Severity.WARNING
    assert alert.due == bites
    assert "(in 30 days)" in alert.message
    assert compute_alerts(compiled, registry, bites - timedelta(days=30, seconds=1), NOTHING) == []


# -- partners gone quiet ---------------------------------------------------------------------------------


def test_a_partner_is_silent_only_past_its_cadence(registry: Registry) -> None:
    weekly = policy(registry, with_cadence(agreement(), 7))

    def silence(ago: timedelta) -> list[tuple[str, str, str]]:
        return codes(compute_alerts(weekly, registry, NOW, Observations({ED: NOW - ago}, ())))

    assert silence(timedelta(days=6, hours=23)) == []
    assert silence(timedelta(days=7)) == []  # exactly the cadence: on time
    assert silence(timedelta(days=7, seconds=1)) == [("partner_silent", "warning", ED)]
    assert silence(timedelta(days=14)) == [("partner_silent", "warning", ED)]
    assert silence(timedelta(days=14, seconds=1)) == [("partner_silent", "critical", ED)]  # two missed
    (alert,) = compute_alerts(weekly, registry, NOW, Observations({ED: NOW - timedelta(days=9)}, ()))
    assert alert.due == NOW - timedelta(days=2)  # when the next message was due
    assert "last authenticated message 9 days ago" in alert.message
    assert "flow ae-flow of dsa-test-ae expects one at least every 7 days" in alert.message


def test_a_partner_never_heard_from_is_silent_once_a_cadence_has_passed_since_monitoring_began(
    registry: Registry,
) -> None:
    weekly = policy(registry, with_cadence(agreement(), 7))
    began = Observations({}, (), since=NOW - timedelta(days=8))
    (alert,) = compute_alerts(weekly, registry, NOW, began)
    assert (alert.code, alert.subject) == (AlertCode.PARTNER_SILENT, ED)
    assert "no authenticated message since monitoring began (8 days ago)" in alert.message
    assert compute_alerts(weekly, registry, NOW, Observations({}, (), since=NOW - timedelta(days=6))) == []
    assert compute_alerts(weekly, registry, NOW, NOTHING) == []  # an empty store: nothing monitored yet
    # The agreement's own start counts too: not overdue before a cadence has passed since it.
    started = with_cadence(agreement(valid_from=date(2026, 11, 20)), 7)
    assert compute_alerts(policy(registry, started), registry, NOW, began) == []


def test_the_tightest_cadence_of_the_flows_in_force_applies(registry: Registry) -> None:
    monthly = with_cadence(agreement("dsa-monthly"), 31)
    weekly_lapsed = with_cadence(agreement("dsa-weekly", valid_to=date(2026, 11, 1), review_by=date(2026, 10, 1)), 7)
    compiled = policy(registry, monthly, weekly_lapsed)
    assert partner_cadences(compiled, NOW)[ED].days == 31  # the lapsed agreement's flow is not watched
    seen = Observations({ED: NOW - timedelta(days=10)}, ())
    assert [a.code for a in compute_alerts(compiled, registry, NOW, seen)] == [AlertCode.AGREEMENT_EXPIRED]
    both = policy(registry, monthly, with_cadence(agreement("dsa-weekly"), 7))
    assert (partner_cadences(both, NOW)[ED].days, partner_cadences(both, NOW)[ED].agreement_id) == (7, "dsa-weekly")


def test_a_flow_without_a_cadence_is_never_silent(registry: Registry) -> None:
    compiled = policy(registry, agreement())
    quiet = Observations({ED: NOW - timedelta(days=400)}, (), since=NOW - timedelta(days=500))
    assert compute_alerts(compiled, registry, NOW, quiet) == []
    (status,) = [p for p in partner_statuses(compiled, registry, NOW, quiet) if p.id == ED]
    assert status.as_dict()["cadence_days"] is None
    assert status.as_dict()["overdue"] is False


def test_the_shipped_agreements_declare_their_cadences(registry: Registry) -> None:
    cadences = partner_cadences(shipped_policy(registry), NOW)
    assert {p: c.days for p, c in cadences.items()} == {
        "uhdb-royal-derby-ed": 7,
        "crh-chesterfield-ed": 7,
        "derby-city-education": 140,
        "derbyshire-cc-education": 140,
        "derby-pubwatch": 7,
        "chesterfield-pubwatch": 7,
        "derbyshire-police": 7,
    }
    assert (cadences[ED].agreement_id, cadences[ED].flow_id) == ("dsa-istv-ae-2026", "ae-to-derby-csp")


# -- rejected and withheld rising ------------------------------------------------------------------------


def day(days_ago: int, kind: str, count: int, source: str | None = ED) -> DayCount:
    return DayCount(TODAY - timedelta(days=days_ago), kind, source, count)


def traffic(recent: tuple[int, int, int], baseline: tuple[int, int, int], source: str | None = ED) -> list[DayCount]:
    """(received, rejected, withheld) in the recent week (on its first day) and the baseline (on
    its last day: the boundaries of both windows are exercised)."""
    rows = []
    for ago, (received, rejected, withheld) in ((6, recent), (7, baseline)):
        rows += [day(ago, "received", received, source), day(ago, "rejected", rejected, source)]
        rows += [day(ago, "withheld", withheld, source)]
    return rows


def rate_alerts(registry: Registry, rows: list[DayCount]) -> list[tuple[str, str, str]]:
    return codes(compute_alerts(policy(registry, agreement()), registry, NOW, Observations({}, rows)))


@pytest.mark.parametrize(
    ("recent", "baseline", "expected"),
    [
        ((100, 10, 0), (1000, 20, 0), "warning"),  # 10% against 2%: doubled, +8 points, 10 rejected
        ((100, 9, 0), (1000, 0, 0), None),  # 9 rejected: under the minimum count, whatever the rate
        ((100, 10, 0), (1000, 50, 0), "warning"),  # exactly double and exactly +5 points
        ((100, 10, 0), (1000, 51, 0), None),  # 10% against 5.1%: not double
        ((1000, 30, 0), (1000, 10, 0), None),  # 3% against 1%: tripled, but only +2 points
        ((100, 50, 0), (1000, 20, 0), "critical"),  # half refused
        ((12, 10, 0), (0, 0, 0), "critical"),  # a new partner: no baseline counts as 0%
        ((2, 2, 0), (1000, 1, 0), None),  # 1 -> 2 is not an alert
    ],
)
def test_rejections_rising(
    registry: Registry, recent: tuple[int, int, int], baseline: tuple[int, int, int], expected: str | None
) -> None:
    alerts = [a for a in rate_alerts(registry, traffic(recent, baseline)) if a[2] == ED]
    assert alerts == ([] if expected is None else [("rejections_rising", expected, ED)])


def test_withheld_rising_is_a_share_of_accepted_messages(registry: Registry) -> None:
    # 100 received, 50 rejected: 50 accepted, 10 of them withheld (20%) against 1% before.
    rows = traffic((100, 50, 10), (1000, 0, 10))
    found = {a for a in rate_alerts(registry, rows) if a[2] == ED}
    assert found == {("rejections_rising", "critical", ED), ("withheld_rising", "warning", ED)}
    (alert,) = [
        a
        for a in compute_alerts(policy(registry, agreement()), registry, NOW, Observations({}, rows))
        if a.code is AlertCode.WITHHELD_RISING and a.subject == ED
    ]
    assert alert.message == (
        f"{ED}: 10 of 50 accepted messages accepted but released nothing in the last 7 days (20%), against "
        "1% of 1000 in the 28 days before."
    )
    assert alert.due is None


def test_an_unregistered_source_counts_only_in_the_whole(registry: Registry) -> None:
    rows = traffic((20, 20, 0), (0, 0, 0), source="not-a-partner") + traffic((20, 20, 0), (0, 0, 0), source=None)
    assert rate_alerts(registry, rows) == [("rejections_rising", "critical", ALL_SOURCES)]
    rates = {r.subject: r for r in outcome_rates(registry, NOW, rows)}
    assert rates[ALL_SOURCES].recent.rejected == 40
    assert "not-a-partner" not in rates
    assert rates[POLICE].recent.received == 0  # every registered partner has its rates, traffic or none


def test_days_outside_the_windows_are_ignored(registry: Registry) -> None:
    old = [day(35, "received", 100), day(35, "rejected", 100), day(-1, "rejected", 100)]
    rates = {r.subject: r for r in outcome_rates(registry, NOW, old)}
    assert rates[ED].recent.rejected == rates[ED].baseline.rejected == 0
    assert counts_since(NOW) == datetime(2026, 10, 22, tzinfo=UTC)  # 35 days: today and the 34 before


def test_rising_in_whole_numbers_at_the_boundaries() -> None:
    assert rising(10, 100, 5, 100) == 0.1  # exactly double, exactly +5 points
    assert rising(10, 100, 6, 100) is None
    assert rising(9, 90, 0, 0) is None
    assert rising(10, 0, 0, 0) is None


# -- held events -----------------------------------------------------------------------------------------


def test_held_events_near_their_expiry(registry: Registry) -> None:
    held = [
        HeldSummary("dsa-a", 3, NOW + timedelta(days=8)),
        HeldSummary("dsa-b", 1, NOW + timedelta(days=7)),
        HeldSummary("dsa-c", 2, NOW + timedelta(days=1)),
        HeldSummary("dsa-d", 0, NOW),  # nothing held: nothing said
    ]
    alerts = compute_alerts(policy(registry, agreement()), registry, NOW, Observations({}, (), held))
    assert codes(alerts) == [
        ("held_expiring", "critical", "dsa-c"),
        ("held_expiring", "warning", "dsa-b"),
        ("events_held", "info", "dsa-a"),
    ]
    assert alerts[1].message.startswith("1 event held for dsa-b; the first expires in 7 days")
    assert alerts[0].due == NOW + timedelta(days=1)


# -- the shape ---------------------------------------------------------------------------------------------


def test_alerts_as_json_hold_ids_codes_and_times() -> None:
    alert = Alert(AlertCode.PARTNER_SILENT, Severity.WARNING, ED, "m", NOW)
    assert alert.as_dict() == {
        "code": "partner_silent",
        "severity": "warning",
        "subject": ED,
        "message": "m",
        "due": "2026-11-25T12:00:00.000Z",
    }
