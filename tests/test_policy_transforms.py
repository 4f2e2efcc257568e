"""The pure transforms at their edges: local time across BST changes, ISO week years, the
Friday/Saturday night peak, bands with gaps, keyed pseudonyms."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from broker.errors import SpecError
from broker.policy.model import SCHEMA_FIELDS, Band
from broker.policy.transforms import (
    band_of,
    compile_pseudonymise,
    day_of_week,
    day_part,
    hour,
    iso_week,
    month,
    nte_peak,
    parse_bands,
    parse_groups,
    pseudonym,
    quarter,
)

BST = timezone(timedelta(hours=1))


@pytest.mark.parametrize(
    ("moment", "peak"),
    [
        (datetime(2026, 11, 6, 17, 59, tzinfo=UTC), False),  # Friday, before 18:00
        (datetime(2026, 11, 6, 18, 0, tzinfo=UTC), True),  # Friday 18:00
        (datetime(2026, 11, 7, 5, 59, tzinfo=UTC), True),  # Saturday small hours: Friday night
        (datetime(2026, 11, 7, 6, 0, tzinfo=UTC), False),  # Saturday 06:00
        (datetime(2026, 11, 7, 17, 59, tzinfo=UTC), False),  # Saturday afternoon
        (datetime(2026, 11, 7, 18, 0, tzinfo=UTC), True),  # Saturday 18:00
        (datetime(2026, 11, 8, 5, 59, tzinfo=UTC), True),  # Sunday small hours: Saturday night
        (datetime(2026, 11, 8, 6, 0, tzinfo=UTC), False),
        (datetime(2026, 11, 5, 23, 0, tzinfo=UTC), False),  # Thursday night
        (datetime(2026, 11, 6, 5, 0, tzinfo=UTC), False),  # Friday small hours: Thursday night
        # In summer, 17:30 UTC on a Friday is 18:30 local: in the peak (a UTC reading would say no).
        (datetime(2026, 10, 23, 17, 30, tzinfo=UTC), True),
        (datetime(2026, 10, 23, 16, 59, tzinfo=UTC), False),
        # The same instant expressed in another offset decides the same.
        (datetime(2026, 10, 23, 12, 30, tzinfo=timezone(timedelta(hours=-5))), True),
    ],
)
def test_nte_peak_is_friday_and_saturday_18_to_06_local(moment: datetime, peak: bool) -> None:
    assert nte_peak(moment) is peak


def test_day_part_and_hour_are_local() -> None:
    assert [day_part(datetime(2026, 11, 6, h, 0, tzinfo=UTC)) for h in (0, 5, 6, 11, 12, 17, 18, 23)] == [
        "night",
        "night",
        "morning",
        "morning",
        "afternoon",
        "afternoon",
        "evening",
        "evening",
    ]
    assert hour(datetime(2026, 7, 1, 23, 30, tzinfo=UTC)) == 0  # 00:30 BST
    assert day_part(datetime(2026, 7, 1, 5, 30, tzinfo=UTC)) == "morning"  # 06:30 BST


def test_dates_fall_on_the_local_day() -> None:
    # 23:30 UTC on 30 June is 00:30 on 1 July in London.
    summer = datetime(2026, 6, 30, 23, 30, tzinfo=UTC)
    assert (month(summer), quarter(summer), day_of_week(summer)) == ("2026-07", "2026-Q3", "Wednesday")
    # 23:30 at UTC-5 on 31 December 2026 is 04:30 on 1 January 2027 in London, ISO week 2026-W53.
    new_year = datetime(2026, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert (iso_week(new_year), month(new_year), quarter(new_year)) == ("2026-W53", "2027-01", "2027-Q1")
    # A plain date is already a local day.
    assert (iso_week(date(2027, 1, 4)), day_of_week(date(2027, 1, 4))) == ("2027-W01", "Monday")


def test_bands_with_gaps_and_open_end() -> None:
    bands = parse_bands(["11-17", "18-24", "65+"], "bands.x")
    assert bands == (Band("11-17", 11, 17), Band("18-24", 18, 24), Band("65+", 65, None))
    assert [band_of(v, bands) for v in (10, 11, 17, 24, 25, 64, 65, 120)] == [
        None,
        "11-17",
        "11-17",
        "18-24",
        None,
        None,
        "65+",
        "65+",
    ]


@pytest.mark.parametrize(
    ("labels", "code"),
    [
        (["0-10", "10-20"], "overlapping_bands"),
        (["65+", "70-80"], "overlapping_bands"),
        (["20-10"], "bad_band"),
        (["teen"], "bad_band"),
        ([], "bad_band"),
        ("0-10", "bad_band"),
    ],
)
def test_bad_bands(labels: object, code: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_bands(labels, "bands.x")
    assert info.value.code == code


def test_a_code_in_two_groups_is_refused() -> None:
    with pytest.raises(SpecError, match="'PP' is in groups 'violence' and 'abuse'"):
        parse_groups({"violence": ["PP", "PA"], "abuse": ["PP"]}, "groups.x")


def test_pseudonyms_are_keyed_per_agreement_and_field() -> None:
    key, other_key = b"\x01" * 32, b"\x02" * 32
    base = pseudonym(key, "dsa-a", "school_urn", "112345")
    assert base.startswith("psn-")
    assert len(base) == 36
    assert base == pseudonym(key, "dsa-a", "school_urn", "112345")
    assert base != pseudonym(other_key, "dsa-a", "school_urn", "112345")
    assert base != pseudonym(key, "dsa-b", "school_urn", "112345")  # even if a key were reused
    assert base != pseudonym(key, "dsa-a", "la_code", "112345")
    assert base != pseudonym(key, "dsa-a", "school_urn", "112346")
    compiled = compile_pseudonymise(SCHEMA_FIELDS[("school_exclusion", 1)]["school_urn"], key, "dsa-a")
    assert compiled("112345") == base
    assert compiled(None) is None
