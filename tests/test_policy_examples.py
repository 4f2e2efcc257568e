"""Example in -> expected out, for every shipped agreement (policies/agreements/*.toml).

Written to be read by an information governance lead, like a policy test suite: each example is
an event as a partner sends it and the EXACT record each consumer receives. Any consumer not
listed receives nothing (including derbyshire-fire-analysts, which no agreement names). Fields not
shown in a record are not released. ``None`` means "the partner did not send this field".

Times: agreements read times in UK local time. British Summer Time ended on 25 October 2026 at
02:00 BST (01:00 UTC); before that a "+01:00" time is local, after it UTC is local.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from adapters.signer import Signer
from broker.policy.engine import decide
from broker.policy.transforms import pseudonym
from broker.registry import Registry
from tests.test_policy_support import NOBODY, NOW, TEST_SECRETS, shipped_policy, signed_validated


@dataclass(frozen=True)
class Pseudonym:
    """The agreement's keyed pseudonym of a value (the value itself never leaves)."""

    field: str
    value: str


@dataclass(frozen=True)
class Example:
    story: str
    partner: str
    event_type: str
    event: dict[str, Any]
    receives: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # consumer -> (agreement, record)
    # Figures flows: consumer -> (agreement, what is counted); None: not checked in this example.
    counts: dict[str, tuple[str, dict[str, Any]]] | None = None


COUNTED_10D: dict[str, Any] = {
    "offence_group": "possession_of_weapons",
    "offence_quarter": "2026-Q4",
    "offence_day_of_week": "Tuesday",
    "offence_hour": 10,
    "district": "E07000032",
    "knife_involved": True,
    "victim_age_band": "not_known",
    "victim_sex": "not_known",
    "suspect_age_band": "18-24",
    "suspect_sex": "female",
}

EXAMPLES = [
    # ---------------------------------------------------------------- dsa-istv-ae-2026 (A&E, ISTV)
    Example(
        story="Royal Derby A&E: glassing outside a pub, Saturday night, patient 19, in Derby",
        partner="uhdb-royal-derby-ed",
        event_type="ae_assault",
        event={
            "site_code": "RTG01",
            "reporting_period_start": "2026-10-01",
            "reporting_period_end": "2026-10-31",
            "arrival_datetime": "2026-10-17T23:40:00+01:00",
            "assault_datetime": "2026-10-17T22:55:00+01:00",
            "assault_method": "glass_or_bottle",
            "assault_location_type": "licensed_premises",
            "assault_location_text": "outside the Old Bell Yard",  # free text: never released
            "patient_age": 19,
            "patient_sex": "male",
            "patient_lsoa": "E01013456",  # small-area location: never released
            "district": "E06000015",
        },
        receives={
            "derby-csp-analysts": (
                "dsa-istv-ae-2026",
                {
                    "site_code": "RTG01",
                    "arrival_week": "2026-W42",
                    "assault_day_of_week": "Saturday",
                    "assault_day_part": "evening",
                    "assault_in_nte_peak": True,
                    "assault_method": "glass_or_bottle",
                    "assault_location_type": "licensed_premises",
                    "patient_age_band": "18-24",
                    "patient_sex": "male",
                    "district": "E06000015",
                },
            ),
            "derbyshire-vru": (
                "dsa-istv-ae-2026",
                {
                    "site_code": "RTG01",
                    "arrival_month": "2026-10",
                    "assault_in_nte_peak": True,
                    "assault_method": "glass_or_bottle",
                    "assault_location_type": "licensed_premises",
                    "patient_age_band": "18-24",
                    "patient_sex": "male",
                    "district": "E06000015",
                },
            ),
        },
    ),
    Example(
        story="Chesterfield A&E: stabbing at 00:30 local on Sunday 25 Oct (the night BST ended), patient 15",
        partner="crh-chesterfield-ed",
        event_type="ae_assault",
        event={
            "site_code": "RFSDA",
            "reporting_period_start": "2026-10-01",
            "reporting_period_end": "2026-10-31",
            "arrival_datetime": "2026-10-25T01:30:00Z",  # 01:30 GMT, after the clocks went back
            "assault_datetime": "2026-10-24T23:30:00Z",  # 00:30 BST on Sunday: still Saturday night's peak
            "assault_method": "knife_or_sharp",
            "assault_location_type": "street_public_place",
            "assault_location_text": "by the bus station",
            "patient_age": 15,
            "patient_sex": "male",
            "patient_lsoa": "E01019876",
            "district": "E07000034",
        },
        receives={
            "derbyshire-csp-analysts": (
                "dsa-istv-ae-2026",
                {
                    "site_code": "RFSDA",
                    "arrival_week": "2026-W43",
                    "assault_day_of_week": "Sunday",
                    "assault_day_part": "night",
                    "assault_in_nte_peak": True,
                    "assault_method": "knife_or_sharp",
                    "assault_location_type": "street_public_place",
                    "patient_age_band": "11-17",
                    "patient_sex": "male",
                    "district": "E07000034",
                },
            ),
            "derbyshire-vru": (
                "dsa-istv-ae-2026",
                {
                    "site_code": "RFSDA",
                    "arrival_month": "2026-10",
                    "assault_in_nte_peak": True,
                    "assault_method": "knife_or_sharp",
                    "assault_location_type": "street_public_place",
                    "patient_age_band": "11-17",
                    "patient_sex": "male",
                    "district": "E07000034",
                },
            ),
        },
    ),
    Example(
        story="Royal Derby A&E: no district sent, so no CSP can be chosen; only the VRU receives it",
        partner="uhdb-royal-derby-ed",
        event_type="ae_assault",
        event={
            "site_code": "RTG01",
            "reporting_period_start": "2026-10-01",
            "reporting_period_end": "2026-10-31",
            "arrival_datetime": "2026-10-13T14:10:00+01:00",
            "assault_method": "body_part",
            "assault_location_type": "home",
            "patient_age": 70,
        },
        receives={
            "derbyshire-vru": (
                "dsa-istv-ae-2026",
                {
                    "site_code": "RTG01",
                    "arrival_month": "2026-10",
                    "assault_in_nte_peak": None,
                    "assault_method": "body_part",
                    "assault_location_type": "home",
                    "patient_age_band": "65+",
                    "patient_sex": None,
                    "district": None,
                },
            ),
        },
    ),
    # ------------------------------------------------- dsa-education-exclusions-2026 (schools)
    Example(
        story="Derby school: pupil aged 14 (Year 9) suspended for assaulting a pupil and threatening staff",
        partner="derby-city-education",
        event_type="school_exclusion",
        event={
            "exclusion_type": "suspension",
            "start_date": "2026-10-05",
            "sessions": 3,
            "reason_codes": ["PP", "VA"],
            "year_group": "9",
            "term": "autumn",
            "academic_year": "2026/27",
            "school_urn": "112345",
            "la_code": "831",
            "district": "E06000015",
            "weapon_involved": False,
            "pupil_age": 14,
        },
        receives={
            "derby-youth-justice": (
                "dsa-education-exclusions-2026",
                {
                    "exclusion_type": "suspension",
                    "exclusion_week": "2026-W41",
                    "sessions_band": "3-5",
                    "reason_groups": ["threats_and_abuse", "violence"],
                    "key_stage": "KS3",
                    "district": "E06000015",
                    "weapon_involved": False,
                    "school_pseudonym": Pseudonym("school_urn", "112345"),
                },
            ),
        },
    ),
    Example(
        story="Derbyshire school: pupil aged 16 (Year 11) permanently excluded for bringing a knife",
        partner="derbyshire-cc-education",
        event_type="school_exclusion",
        event={
            "exclusion_type": "permanent",
            "start_date": "2026-09-14",
            "sessions": 1,
            "reason_codes": ["OW"],
            "year_group": "11",
            "term": "autumn",
            "academic_year": "2026/27",
            "school_urn": "112901",
            "la_code": "830",
            "district": "E07000032",
            "weapon_involved": True,
            "pupil_age": 16,
        },
        receives={
            "derbyshire-early-help": (
                "dsa-education-exclusions-2026",
                {
                    "exclusion_type": "permanent",
                    "exclusion_week": "2026-W38",
                    "sessions_band": "1-2",
                    "reason_groups": ["violence"],
                    "key_stage": "KS4",
                    "district": "E07000032",
                    "weapon_involved": True,
                    "school_pseudonym": Pseudonym("school_urn", "112901"),
                },
            ),
        },
    ),
    Example(
        story="Derby school: pupil aged 9 (Year 5): under 11, so nobody receives it",
        partner="derby-city-education",
        event_type="school_exclusion",
        event={
            "exclusion_type": "suspension",
            "start_date": "2026-10-05",
            "sessions": 2,
            "reason_codes": ["PP"],
            "year_group": "5",
            "term": "autumn",
            "academic_year": "2026/27",
            "school_urn": "112345",
            "la_code": "831",
            "pupil_age": 9,
        },
    ),
    Example(
        story="Derby school: pupil aged 14 suspended for drugs and disruption (no violence reason): nobody",
        partner="derby-city-education",
        event_type="school_exclusion",
        event={
            "exclusion_type": "suspension",
            "start_date": "2026-10-05",
            "sessions": 4,
            "reason_codes": ["DA", "PD"],
            "year_group": "9",
            "term": "autumn",
            "academic_year": "2026/27",
            "school_urn": "112345",
            "la_code": "831",
            "pupil_age": 14,
        },
    ),
    Example(
        story="Derby school: age not sent, so the 11-17 condition cannot be shown to hold: nobody",
        partner="derby-city-education",
        event_type="school_exclusion",
        event={
            "exclusion_type": "suspension",
            "start_date": "2026-10-05",
            "sessions": 4,
            "reason_codes": ["PA"],
            "year_group": "9",
            "term": "autumn",
            "academic_year": "2026/27",
            "school_urn": "112345",
            "la_code": "831",
        },
    ),
    # ----------------------------- dsa-nte-police-licensing-2026 and dsa-nte-csp-2026 (premises)
    Example(
        story="Derby pub: assault on the dance floor at 00:20 on Saturday, police called",
        partner="derby-pubwatch",
        event_type="nte_incident",
        event={
            "incident_datetime": "2026-11-07T00:20:00+00:00",
            "category": "assault",
            "premises_licence_ref": "DCC/PL/0412",
            "premises_name": "The Old Bell Yard",
            "location_in_premises": "dance_floor",
            "district": "E06000015",
            "lsoa": "E01013456",
            "injury": True,
            "weapon_involved": False,
            "action_taken": ["ejected", "first_aid"],
            "police_called": True,
            "police_reference": "DP/123456/26",
            "cctv_available": True,
        },
        receives={
            "derbyshire-police-licensing": (
                "dsa-nte-police-licensing-2026",
                {
                    "premises_licence_ref": "DCC/PL/0412",
                    "premises_name": "The Old Bell Yard",
                    "incident_datetime": "2026-11-07T00:20:00+00:00",
                    "in_nte_peak": True,
                    "category": "assault",
                    "location_in_premises": "dance_floor",
                    "district": "E06000015",
                    "injury": True,
                    "weapon_involved": False,
                    "action_taken": ["ejected", "first_aid"],
                    "police_called": True,
                    "police_reference": "DP/123456/26",
                    "cctv_available": True,
                },
            ),
            # District level: no premises, no police reference, no LSOA, no CCTV detail.
            "derby-csp-analysts": (
                "dsa-nte-csp-2026",
                {
                    "incident_week": "2026-W45",
                    "incident_day_of_week": "Saturday",
                    "incident_hour": 0,
                    "in_nte_peak": True,
                    "category": "assault",
                    "location_in_premises": "dance_floor",
                    "district": "E06000015",
                    "injury": True,
                    "weapon_involved": False,
                    "action_taken": ["ejected", "first_aid"],
                    "police_called": True,
                },
            ),
        },
    ),
    Example(
        story="Chesterfield bar: knife found at the door on a Friday evening",
        partner="chesterfield-pubwatch",
        event_type="nte_incident",
        event={
            "incident_datetime": "2026-10-30T21:15:00Z",
            "category": "weapon_found",
            "premises_licence_ref": "CBC/PL/1120",
            "premises_name": "Spire Lounge",
            "location_in_premises": "entrance",
            "district": "E07000034",
            "injury": False,
            "weapon_involved": True,
            "action_taken": ["searched", "item_confiscated"],
            "police_called": True,
            "cctv_available": False,
        },
        receives={
            "derbyshire-police-licensing": (
                "dsa-nte-police-licensing-2026",
                {
                    "premises_licence_ref": "CBC/PL/1120",
                    "premises_name": "Spire Lounge",
                    "incident_datetime": "2026-10-30T21:15:00+00:00",
                    "in_nte_peak": True,
                    "category": "weapon_found",
                    "location_in_premises": "entrance",
                    "district": "E07000034",
                    "injury": False,
                    "weapon_involved": True,
                    "action_taken": ["searched", "item_confiscated"],
                    "police_called": True,
                    "police_reference": None,
                    "cctv_available": False,
                },
            ),
            "derbyshire-csp-analysts": (
                "dsa-nte-csp-2026",
                {
                    "incident_week": "2026-W44",
                    "incident_day_of_week": "Friday",
                    "incident_hour": 21,
                    "in_nte_peak": True,
                    "category": "weapon_found",
                    "location_in_premises": "entrance",
                    "district": "E07000034",
                    "injury": False,
                    "weapon_involved": True,
                    "action_taken": ["searched", "item_confiscated"],
                    "police_called": True,
                },
            ),
        },
    ),
    # --------------------------------------------------- dsa-police-sv-csp-2026 (police recorded)
    Example(
        story="Police: personal robbery with a knife in Derby, Friday 22:15",
        partner="derbyshire-police",
        event_type="police_sv_offence",
        event={
            "ho_offence_code": "34B",
            "sv_group": "robbery",
            "offence_datetime": "2026-11-06T22:15:00Z",
            "district": "E06000015",
            "lsoa": "E01013456",
            "knife_involved": True,
            "victim_age_band": "18-24",
            "victim_sex": "male",
            "suspect_age_band": "11-17",
            "suspect_sex": "male",
            "outcome_status": "under_investigation",
        },
        receives={
            "derby-csp-analysts": (
                "dsa-police-sv-csp-2026",
                {
                    "offence_group": "robbery",
                    "offence_week": "2026-W45",
                    "offence_day_of_week": "Friday",
                    "offence_day_part": "evening",
                    "in_nte_peak": True,
                    "district": "E06000015",
                    "knife_involved": True,
                    "victim_age_band": "18-24",
                    "victim_sex": "male",
                    "suspect_age_band": "11-17",
                    "suspect_sex": "male",
                },
            ),
        },
    ),
    Example(
        story="Police: possession of a bladed article in Amber Valley, Tuesday morning",
        partner="derbyshire-police",
        event_type="police_sv_offence",
        event={
            "ho_offence_code": "10D",
            "sv_group": "possession_of_weapons",
            "offence_datetime": "2026-10-13T10:05:00+01:00",
            "district": "E07000032",
            "knife_involved": True,
            "victim_age_band": "not_known",
            "victim_sex": "not_known",
            "suspect_age_band": "18-24",
            "suspect_sex": "female",
            "outcome_status": "charged_summonsed",
        },
        receives={
            "derbyshire-csp-analysts": (
                "dsa-police-sv-csp-2026",
                {
                    "offence_group": "possession_of_weapons",
                    "offence_week": "2026-W42",
                    "offence_day_of_week": "Tuesday",
                    "offence_day_part": "morning",
                    "in_nte_peak": False,
                    "district": "E07000032",
                    "knife_involved": True,
                    "victim_age_band": "not_known",
                    "victim_sex": "not_known",
                    "suspect_age_band": "18-24",
                    "suspect_sex": "female",
                },
            ),
        },
        # The Board and the VRU receive no record: the event is counted in their quarterly figures,
        # by the exact quarter of its own date.
        counts={
            "sv-board": ("dsa-sv-board-figures-2026", COUNTED_10D),
            "derbyshire-vru": ("dsa-sv-board-figures-2026", COUNTED_10D),
        },
    ),
]


def _resolve(agreement_id: str, record: dict[str, Any]) -> dict[str, Any]:
    return {
        key: pseudonym(TEST_SECRETS[agreement_id], agreement_id, value.field, value.value)
        if isinstance(value, Pseudonym)
        else value
        for key, value in record.items()
    }


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.story for e in EXAMPLES])
def test_example(example: Example, signers: dict[str, Signer], registry: Registry) -> None:
    policy = shipped_policy(registry)
    validated = signed_validated(signers, registry, example.partner, example.event_type, example.event)
    decision = decide(validated, policy, NOW)

    got = {r.consumer: (r.agreement_id, r.record) for r in decision.releases}
    want = {c: (a, _resolve(a, rec)) for c, (a, rec) in example.receives.items()}
    assert got == want
    if example.counts is not None:
        assert {r.consumer: (r.agreement_id, r.record) for r in decision.counted} == example.counts
    # a figures-only consumer is never released a record
    assert "sv-board" not in got
    assert NOBODY not in got
    for consumer in set(registry.consumers) - set(want):
        assert consumer not in got, f"{consumer} should receive nothing"
    if not want:
        assert decision.refusals, "a withheld event says why"


def test_every_shipped_agreement_has_an_example(registry: Registry) -> None:
    exercised = {a for e in EXAMPLES for a, _ in (*e.receives.values(), *(e.counts or {}).values())}
    assert exercised == set(shipped_policy(registry).agreements)


def test_a_typical_event_has_two_entitled_consumers() -> None:
    assert len(EXAMPLES[0].receives) == 2
