"""Synthetic partner data with the strategy's patterns; never real data.

Patterns from the Derby and Derbyshire Serious Violence Strategy 2026-2028 summary: a
concentration on Friday and Saturday nights 18:00-06:00 (about a quarter of police recorded
serious violence), victims and suspects mostly aged 11-25 (15 the peak), mostly male, and most
incidents in Derby, Chesterfield, Amber Valley and Erewash; possession of weapons, violence with
injury and robbery the commonest offences, three in ten knife related.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from schemas.events import (
    AeAssaultV1,
    EventModel,
    NteIncidentV1,
    PoliceSvOffenceV1,
    SchoolExclusionV1,
)
from schemas.events.police_sv_offence_v1 import HO_CODE_GROUP, HoOffenceCode

LONDON = ZoneInfo("Europe/London")

# District weights: the strategy's "where" list, most frequent first.
DISTRICT_WEIGHTS: dict[str, int] = {
    "E06000015": 34,  # Derby
    "E07000034": 14,  # Chesterfield
    "E07000032": 11,  # Amber Valley
    "E07000036": 10,  # Erewash
    "E07000039": 7,  # South Derbyshire
    "E07000033": 6,  # Bolsover
    "E07000037": 6,  # High Peak
    "E07000038": 6,  # North East Derbyshire
    "E07000035": 3,  # Derbyshire Dales
}

PREMISES: list[tuple[str, str, str]] = [
    ("DCC/PL/0412", "The Old Bell Yard", "E06000015"),
    ("DCC/PL/0588", "Friar Gate Social", "E06000015"),
    ("DCC/PL/0733", "Sadler Gate Tap", "E06000015"),
    ("DCC/PL/0901", "Cathedral Quarter Club", "E06000015"),
    ("CBC/PL/1120", "Spire Lounge", "E07000034"),
    ("CBC/PL/1187", "Market Place Rooms", "E07000034"),
    ("AVBC/PL/0231", "Ripley Arms", "E07000032"),
    ("EBC/PL/0318", "Ilkeston Assembly", "E07000036"),
]

SITES = {"uhdb-royal-derby-ed": "RTG01", "crh-chesterfield-ed": "RFSDA"}


def _weighted(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _lsoa(rng: random.Random) -> str:
    return f"E01{rng.randint(19000, 19999):06d}"


def _age(rng: random.Random) -> int:
    # Most between 11 and 25, peaking at 15; a tail of older adults.
    if rng.random() < 0.7:
        return max(11, min(25, round(rng.gauss(16.5, 3.5))))
    return rng.randint(26, 70)


def _moment(rng: random.Random, start: datetime, days: int) -> datetime:
    """A local time with the Friday/Saturday 18:00-06:00 peak, returned timezone-aware."""
    day = start + timedelta(days=rng.randrange(days))
    if rng.random() < 0.45:
        # Shift to the nearest Friday or Saturday evening/night.
        while day.weekday() not in (4, 5):
            day += timedelta(days=1)
        hour = rng.choice([18, 19, 20, 21, 22, 22, 23, 23, 23, 0, 0, 1, 1, 2, 3])
        if hour < 6:
            day += timedelta(days=1)
    else:
        hour = rng.randint(0, 23)
    return datetime(day.year, day.month, day.day, hour, rng.randint(0, 59), tzinfo=LONDON)


def _make(model: type[EventModel], **fields: Any) -> EventModel:
    # Python-mode strict validation wants enum instances; the generator speaks in code values, so
    # it validates in lax mode (no str<->int coercion in pydantic v2, so nothing unsafe is admitted).
    return model.model_validate(fields, strict=False)


def _age_band(age: int) -> str:
    for lo, hi, band in (
        (0, 10, "0-10"),
        (11, 17, "11-17"),
        (18, 24, "18-24"),
        (25, 34, "25-34"),
        (35, 49, "35-49"),
        (50, 64, "50-64"),
    ):
        if lo <= age <= hi:
            return band
    return "65+"


@dataclass(frozen=True, slots=True)
class SyntheticRecord:
    """One source record as a partner holds it: its own record key and the event payload."""

    partner: str
    source_key: str
    event: EventModel

    def data(self) -> dict[str, Any]:
        return self.event.model_dump(mode="json", exclude_none=True)


class SyntheticGenerator:
    def __init__(self, seed: int = 2026, start: datetime | None = None, days: int = 28) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.start = start or datetime(2026, 10, 1, tzinfo=UTC)
        self.days = days
        self.counter = 0

    def _key(self, prefix: str) -> str:
        # The seed is part of the key: two generators never invent the same source record.
        self.counter += 1
        return f"{prefix}-{self.seed}-{self.counter:07d}"

    def ae_assault(self, partner: str = "uhdb-royal-derby-ed") -> SyntheticRecord:
        rng = self.rng
        assault = _moment(rng, self.start, self.days)
        arrival = assault + timedelta(minutes=rng.randint(15, 240))
        method = rng.choices(
            [
                "body_part",
                "blunt_object",
                "knife_or_sharp",
                "glass_or_bottle",
                "firearm",
                "other",
                "unknown",
            ],
            weights=[45, 12, 18, 10, 1, 4, 10],
        )[0]
        location = rng.choices(
            [
                "street_public_place",
                "licensed_premises",
                "home",
                "school_or_education",
                "transport",
                "workplace",
                "other",
                "unknown",
            ],
            weights=[38, 24, 14, 5, 5, 4, 4, 6],
        )[0]
        district = (
            "E07000034" if partner == "crh-chesterfield-ed" and rng.random() < 0.6 else _weighted(rng, DISTRICT_WEIGHTS)
        )
        period_start = date(arrival.year, arrival.month, 1)
        period_end = (period_start + timedelta(days=32)).replace(day=1) - timedelta(days=1)
        event = _make(
            AeAssaultV1,
            site_code=SITES.get(partner, "RTG01"),
            reporting_period_start=period_start,
            reporting_period_end=period_end,
            arrival_datetime=arrival,
            assault_datetime=assault,
            assault_method=method,
            assault_method_other="struck with a scooter" if method == "other" else None,
            assault_location_type=location,
            assault_location_text=rng.choice(["outside nightclub", "bus station", "park", "taxi rank"])
            if rng.random() < 0.5
            else None,
            patient_age=_age(rng),
            patient_sex=rng.choices(["male", "female", "not_known"], weights=[73, 25, 2])[0],
            patient_lsoa=_lsoa(rng),
            district=district,
        )
        return SyntheticRecord(partner, self._key("ATT"), event)

    def school_exclusion(self, partner: str = "derby-city-education") -> SyntheticRecord:
        rng = self.rng
        age = rng.randint(8, 17)
        year_group = str(max(1, min(13, age - 4)))
        reasons = rng.sample(
            ["PP", "PA", "VP", "VA", "OW", "BU", "PD", "DA", "DM", "MT"],
            k=rng.randint(1, 3),
        )
        start = self.start.date() + timedelta(days=rng.randrange(self.days))
        while start.weekday() >= 5:
            start += timedelta(days=1)
        term = "autumn" if start.month >= 9 else ("spring" if start.month <= 3 else "summer")
        first_year = start.year if start.month >= 9 else start.year - 1
        permanent = rng.random() < 0.04
        event = _make(
            SchoolExclusionV1,
            exclusion_type="permanent" if permanent else "suspension",
            start_date=start,
            sessions=rng.randint(1, 10) if not permanent else 1,
            reason_codes=reasons,
            year_group=year_group,
            term=term,
            academic_year=f"{first_year}/{(first_year + 1) % 100:02d}",
            school_urn=f"{rng.randint(112000, 112999)}",
            la_code="831" if partner == "derby-city-education" else "830",
            district="E06000015"
            if partner == "derby-city-education"
            else _weighted(rng, {k: v for k, v in DISTRICT_WEIGHTS.items() if k != "E06000015"}),
            weapon_involved="OW" in reasons,
            pupil_age=age,
        )
        return SyntheticRecord(partner, self._key("EXC"), event)

    def nte_incident(self, partner: str = "derby-pubwatch") -> SyntheticRecord:
        rng = self.rng
        pool = [p for p in PREMISES if (p[2] == "E07000034") == (partner == "chesterfield-pubwatch")]
        ref, name, district = rng.choice(pool or PREMISES)
        category = rng.choices(
            [
                "assault",
                "disorder",
                "weapon_found",
                "drugs",
                "sexual_harassment",
                "refused_entry_aggression",
                "theft",
                "medical",
                "other",
            ],
            weights=[30, 20, 6, 12, 8, 12, 5, 5, 2],
        )[0]
        police = category in ("assault", "weapon_found") or rng.random() < 0.2
        actions = rng.sample(
            ["refused_entry", "ejected", "first_aid", "ambulance", "searched"],
            k=rng.randint(1, 2),
        )
        event = _make(
            NteIncidentV1,
            incident_datetime=_moment(rng, self.start, self.days),
            category=category,
            premises_licence_ref=ref,
            premises_name=name,
            location_in_premises=rng.choice(
                [
                    "entrance",
                    "bar",
                    "dance_floor",
                    "toilets",
                    "smoking_area",
                    "outside_frontage",
                ]
            ),
            district=district,
            lsoa=_lsoa(rng),
            injury=category == "assault" and rng.random() < 0.6,
            weapon_involved=category == "weapon_found" or rng.random() < 0.05,
            action_taken=actions,
            police_called=police,
            police_reference=f"DP/{rng.randint(100000, 999999)}/26" if police else None,
            cctv_available=rng.random() < 0.8,
        )
        return SyntheticRecord(partner, self._key("INC"), event)

    def police_sv_offence(self, partner: str = "derbyshire-police") -> SyntheticRecord:
        rng = self.rng
        code = rng.choices(
            [
                HoOffenceCode.POSSESSION_BLADE,
                HoOffenceCode.POSSESSION_WEAPON,
                HoOffenceCode.WOUNDING_GBH,
                HoOffenceCode.ABH,
                HoOffenceCode.WOUNDING_GBH_INTENT,
                HoOffenceCode.ROBBERY_PERSONAL,
                HoOffenceCode.ROBBERY_BUSINESS,
                HoOffenceCode.THREATS_BLADE,
                HoOffenceCode.ATTEMPTED_MURDER,
                HoOffenceCode.MURDER,
            ],
            weights=[18, 8, 14, 16, 6, 16, 3, 6, 1, 0.3],
        )[0]
        knife = code in (HoOffenceCode.POSSESSION_BLADE, HoOffenceCode.THREATS_BLADE) or rng.random() < 0.15
        event = _make(
            PoliceSvOffenceV1,
            ho_offence_code=code,
            sv_group=HO_CODE_GROUP[code],
            offence_datetime=_moment(rng, self.start, self.days),
            district=_weighted(rng, DISTRICT_WEIGHTS),
            lsoa=_lsoa(rng),
            knife_involved=knife,
            victim_age_band=_age_band(_age(rng)),
            victim_sex=rng.choices(["male", "female"], weights=[73, 27])[0],
            suspect_age_band=_age_band(_age(rng)),
            suspect_sex=rng.choices(["male", "female", "not_known"], weights=[80, 15, 5])[0],
            outcome_status=rng.choice(
                [
                    "under_investigation",
                    "charged_summonsed",
                    "evidential_difficulties",
                    "suspect_not_identified",
                    "community_resolution",
                ]
            ),
        )
        return SyntheticRecord(partner, self._key("CRM"), event)

    def for_partner(self, partner: str, event_type: str) -> SyntheticRecord:
        maker = {
            "ae_assault": self.ae_assault,
            "school_exclusion": self.school_exclusion,
            "nte_incident": self.nte_incident,
            "police_sv_offence": self.police_sv_offence,
        }[event_type]
        return maker(partner)

    def mixed(self, count: int) -> list[SyntheticRecord]:
        """A realistic mix across all partners (A&E and police heaviest, schools termly)."""
        plan = [
            ("uhdb-royal-derby-ed", "ae_assault", 22),
            ("crh-chesterfield-ed", "ae_assault", 10),
            ("derby-city-education", "school_exclusion", 8),
            ("derbyshire-cc-education", "school_exclusion", 8),
            ("derby-pubwatch", "nte_incident", 14),
            ("chesterfield-pubwatch", "nte_incident", 6),
            ("derbyshire-police", "police_sv_offence", 32),
        ]
        weights = [w for _, _, w in plan]
        out = []
        for _ in range(count):
            partner, event_type, _w = self.rng.choices(plan, weights=weights)[0]
            out.append(self.for_partner(partner, event_type))
        return out
