"""Where each event type's released record holds the board's variables, and quarters by event date.

Light on purpose (no numpy, no scipy): the policy loader reads ``SPECS`` to check a figures flow
releases what its figures need, and the pipeline reads ``period_of`` for every counted event.
An ISO week belongs to the quarter holding its Thursday (the ISO rule for years), so a week is
never split between quarters.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import date, timedelta


@dataclass(frozen=True, slots=True, order=True)
class Quarter:
    year: int
    q: int

    @classmethod
    def parse(cls, text: str) -> Quarter:
        year, sep, q = text.strip().upper().partition("-Q")
        if not sep or not year.isdigit() or q not in {"1", "2", "3", "4"}:
            raise ValueError(f"not a quarter (YYYY-Qn): {text!r}")
        return cls(int(year), int(q))

    @classmethod
    def of(cls, day: date) -> Quarter:
        return cls(day.year, (day.month - 1) // 3 + 1)

    def previous(self) -> Quarter:
        return Quarter(self.year - 1, 4) if self.q == 1 else Quarter(self.year, self.q - 1)

    def __str__(self) -> str:
        return f"{self.year}-Q{self.q}"


@dataclass(frozen=True, slots=True)
class Who:
    label: str
    age: str
    sex: str


@dataclass(frozen=True, slots=True)
class Spec:
    """Where an event type's released record holds each of the board's variables."""

    title: str
    source: str  # the disclosure source (rules.RuleBook) under ``--rules source``
    period: tuple[str, ...]
    what: str
    what_title: str
    knife: str
    knife_value: object
    day: str
    day_part: str
    hour: str
    nte: str
    who: tuple[Who, ...]
    district: str = "district"


SPECS: dict[str, Spec] = {
    "police_sv_offence": Spec(
        title="Police recorded serious violence",
        source="police",
        period=("offence_quarter", "offence_month", "offence_week", "offence_date"),
        what="offence_group",
        what_title="Offence group",
        knife="knife_involved",
        knife_value=True,
        day="offence_day_of_week",
        day_part="offence_day_part",
        hour="offence_hour",
        nte="in_nte_peak",
        who=(Who("Victims", "victim_age_band", "victim_sex"), Who("Suspects", "suspect_age_band", "suspect_sex")),
    ),
    "ae_assault": Spec(
        title="A&E assault attendances (ISTV)",
        source="health",
        period=("arrival_quarter", "arrival_month", "arrival_week", "arrival_date"),
        what="assault_method",
        what_title="Assault method",
        knife="assault_method",
        knife_value="knife_or_sharp",
        day="assault_day_of_week",
        day_part="assault_day_part",
        hour="assault_hour",
        nte="assault_in_nte_peak",
        who=(Who("Patients", "patient_age_band", "patient_sex"),),
    ),
}
PERIOD_FIELDS = {name: spec.period for name, spec in SPECS.items()}


def period_of(value: object) -> Quarter | None:
    return _period_of(value) if isinstance(value, str) else None


@functools.lru_cache(maxsize=4096)  # a year has 53 weeks and 12 months: each read once, not per record
def _period_of(value: object) -> Quarter | None:
    """The quarter of a generalised event date: ``2026-Q3``, ``2026-08``, ``2026-W27``, ``2026-08-14``."""
    if not isinstance(value, str):
        return None
    try:
        if "-Q" in value:
            return Quarter.parse(value)
        if "-W" in value:
            year, week = value.split("-W")
            return Quarter.of(date.fromisocalendar(int(year), int(week), 4))
        if len(value) == 7:
            return Quarter.of(date(int(value[:4]), int(value[5:7]), 1))
        return Quarter.of(date.fromisoformat(value[:10]))
    except ValueError:
        return None


def quarter_start(q: Quarter) -> date:
    return date(q.year, 3 * (q.q - 1) + 1, 1)


def quarter_end(q: Quarter) -> date:
    """The quarter's last day."""
    if q.q == 4:  # (not via the next quarter's start: 9999-Q4 has none)
        return date(q.year, 12, 31)
    return quarter_start(Quarter(q.year, q.q + 1)) - timedelta(days=1)


def period_field(event_type: str, fields: Collection[str]) -> str | None:
    """The first of the event type's period fields among ``fields`` (a flow's outputs), or None."""
    spec = SPECS.get(event_type)
    if spec is None:
        return None
    return next((f for f in spec.period if f in fields), None)


def period_label(event_type: str, data: Mapping[str, object]) -> str | None:
    """``quarter_of_record`` as its label ("2026-Q3"), None when the record releases no event date."""
    quarter = quarter_of_record(event_type, data)
    return str(quarter) if quarter is not None else None


def quarter_of_record(event_type: str, data: Mapping[str, object]) -> Quarter | None:
    """The quarter (by event date) of a minimised record, or None when it releases no event date."""
    spec = SPECS.get(event_type)
    if spec is None:
        return None
    found = next((f for f in spec.period if f in data), None)
    return period_of(data[found]) if found is not None else None
