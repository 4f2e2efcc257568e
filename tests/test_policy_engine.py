"""The engine: validity windows (fail closed), pseudonyms, refusal reasons, record ids."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from typing import Any

import pytest

from broker.errors import PolicyError
from broker.policy.decision import record_id
from broker.policy.engine import decide
from broker.policy.loader import build_policy, load_policy
from broker.policy.model import PolicySet
from broker.registry import Registry
from broker.settings import REPO_POLICIES
from broker.stages.types import Validated
from tests.test_policy_support import NOBODY, NOW, TEST_SECRETS, records, shipped_policy, validated_event

SECRET_A = bytes.fromhex("01" * 32)
SECRET_B = bytes.fromhex("02" * 32)

AE_DATA: dict[str, Any] = {
    "site_code": "RTG01",
    "reporting_period_start": "2026-10-01",
    "reporting_period_end": "2026-10-31",
    "arrival_datetime": "2026-10-17T23:40:00+01:00",
    "assault_datetime": "2026-10-17T22:55:00+01:00",
    "assault_method": "glass_or_bottle",
    "assault_location_type": "licensed_premises",
    "patient_age": 19,
    "patient_sex": "male",
    "patient_lsoa": "E01013456",
    "district": "E06000015",
}

NTE_DATA: dict[str, Any] = {
    "incident_datetime": "2026-11-07T00:20:00+00:00",
    "category": "assault",
    "premises_licence_ref": "DCC/PL/0412",
    "premises_name": "The Old Bell Yard",
    "location_in_premises": "dance_floor",
    "district": "E06000015",
    "injury": True,
    "weapon_involved": False,
    "action_taken": ["ejected"],
    "police_called": False,
    "cctv_available": True,
}


def agreement(agreement_id: str = "dsa-test-ae", **overrides: Any) -> dict[str, Any]:
    """A small valid agreement document (as tomllib would return it)."""
    doc: dict[str, Any] = {
        "id": agreement_id,
        "title": "Test agreement",
        "revision": 1,
        "parties": ["uhdb-royal-derby-ed", "derby-csp-analysts", "derbyshire-vru"],
        "purpose": "Testing.",
        "lawful_basis": ["UK GDPR Art 6(1)(e)"],
        "valid_from": date(2026, 4, 1),
        "valid_to": date(2028, 3, 31),
        "review_by": date(2027, 3, 31),
        "retention_days": 30,
        "flows": [
            {
                "id": "ae-flow",
                "partners": ["uhdb-royal-derby-ed"],
                "event_type": "ae_assault",
                "versions": [1],
                "consumers": ["derby-csp-analysts", "derbyshire-vru"],
                "rules": [
                    {"id": "method", "field": "assault_method", "action": "keep"},
                    {"id": "site", "field": "site_code", "action": "pseudonymise", "as": "site_pseudonym"},
                ],
            }
        ],
    }
    doc.update(overrides)
    return doc


def build(*docs: dict[str, Any], secrets: dict[str, bytes] | None = None, registry: Registry) -> PolicySet:
    default = {d["id"]: bytes([i + 1]) * 32 for i, d in enumerate(docs)}
    return build_policy([(f"<{d['id']}>", d) for d in docs], registry, default if secrets is None else secrets)


def ae(message_id: str = "test-message-0001", **changes: Any) -> Validated:
    return validated_event(
        {**AE_DATA, **changes}, "uhdb-royal-derby-ed", event_type="ae_assault", message_id=message_id
    )


def reasons(decision: Any) -> set[tuple[str, str | None, str | None]]:
    return {(r.reason, r.agreement_id, r.consumer) for r in decision.refusals}


# --- validity windows: fail closed ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        # valid_from 2026-04-01 is a BST day: it starts at 2026-03-31T23:00Z.
        (datetime(2026, 3, 31, 22, 59, tzinfo=UTC), "not_yet_valid"),
        (datetime(2026, 3, 31, 23, 0, tzinfo=UTC), None),
        # review_by 2027-03-31 (BST from 28 March): overdue from 2027-03-31T23:00Z.
        (datetime(2027, 3, 31, 22, 59, tzinfo=UTC), None),
        (datetime(2027, 3, 31, 23, 0, tzinfo=UTC), "review_overdue"),
        # valid_to 2028-03-31 (BST from 26 March): expired from 2028-03-31T23:00Z; expiry wins.
        (datetime(2028, 3, 31, 23, 0, tzinfo=UTC), "expired"),
        (datetime(2029, 1, 1, tzinfo=UTC), "expired"),
    ],
)
def test_agreement_window(registry: Registry, now: datetime, reason: str | None) -> None:
    policy = shipped_policy(registry)
    decision = decide(ae(), policy, now)
    if reason is None:
        assert {r.consumer for r in decision.releases} == {"derby-csp-analysts", "derbyshire-vru"}
    else:
        assert decision.releases == ()
        assert (reason, "dsa-istv-ae-2026", "derby-csp-analysts") in reasons(decision)
        assert (reason, "dsa-istv-ae-2026", "derbyshire-vru") in reasons(decision)
        assert all(r.reason in (reason, "row_condition_false") for r in decision.refusals)


def test_review_date_can_lapse_while_valid(registry: Registry) -> None:
    doc = agreement(review_by=date(2026, 11, 1))
    decision = decide(ae(), build(doc, registry=registry), NOW)
    assert decision.releases == ()
    refusal = decision.refusals[0]
    assert refusal.reason == "review_overdue"
    assert "2026-11-01" in refusal.message


# --- refusal reasons -------------------------------------------------------------------------------


def test_partner_not_in_flow(registry: Registry) -> None:
    event = validated_event(AE_DATA, "crh-chesterfield-ed", event_type="ae_assault")
    decision = decide(event, build(agreement(), registry=registry), NOW)
    assert decision.releases == ()
    assert reasons(decision) == {("partner_not_in_flow", "dsa-test-ae", None)}


def test_version_not_in_flow(registry: Registry) -> None:
    # Only v1 schemas exist; a v2 envelope around a v1 payload stands in for a future version.
    event = validated_event(AE_DATA, "uhdb-royal-derby-ed", event_type="ae_assault", version=2)
    decision = decide(event, build(agreement(), registry=registry), NOW)
    assert decision.releases == ()
    assert reasons(decision) == {("version_not_in_flow", "dsa-test-ae", None)}


def test_no_agreement_for_event_type(registry: Registry) -> None:
    event = validated_event(NTE_DATA, "derby-pubwatch", event_type="nte_incident")
    decision = decide(event, build(agreement(), registry=registry), NOW)
    assert decision.releases == ()
    assert [r.reason for r in decision.refusals] == ["no_agreement"]


def test_row_condition_false_names_the_condition(registry: Registry) -> None:
    doc = agreement()
    doc["flows"][0]["when"] = [{"field": "patient_age", "between": [11, 17]}]
    decision = decide(ae(patient_age=19), build(doc, registry=registry), NOW)
    assert decision.releases == ()
    assert {r.reason for r in decision.refusals} == {"row_condition_false"}
    assert "patient_age is between 11 and 17" in decision.refusals[0].message
    assert records(decide(ae(patient_age=15), build(doc, registry=registry), NOW))


def test_condition_on_a_field_not_sent_is_false(registry: Registry) -> None:
    doc = agreement()
    doc["flows"][0]["when"] = [{"field": "district", "not_in": ["E07000034"]}]
    event = validated_event(
        {k: v for k, v in AE_DATA.items() if k != "district"}, "uhdb-royal-derby-ed", event_type="ae_assault"
    )
    assert decide(event, build(doc, registry=registry), NOW).releases == ()


def test_consumer_named_in_no_flow_gets_nothing(registry: Registry) -> None:
    policy = shipped_policy(registry)
    assert NOBODY not in policy.consumers_in_flows
    decision = decide(ae(), policy, NOW)
    assert NOBODY not in {r.consumer for r in decision.releases}
    assert NOBODY not in {r.consumer for r in decision.refusals}


def test_naive_clock_is_refused(registry: Registry) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(ae(), shipped_policy(registry), datetime(2026, 11, 25, 12))


# --- releases ------------------------------------------------------------------------------------


def test_release_carries_agreement_and_rules(registry: Registry) -> None:
    decision = decide(ae(message_id="msg-for-ids-0001"), shipped_policy(registry), NOW)
    by_consumer = {r.consumer: r for r in decision.releases}
    csp = by_consumer["derby-csp-analysts"]
    assert csp.agreement_id == "dsa-istv-ae-2026"
    assert csp.agreement_revision == 3
    assert csp.flow_id == "ae-to-derby-csp"
    assert csp.record_id == record_id(
        "uhdb-royal-derby-ed", "msg-for-ids-0001", "derby-csp-analysts", "dsa-istv-ae-2026"
    )
    assert csp.fields == tuple(sorted(csp.record))
    assert dict(zip(csp.fields, csp.rules, strict=True))["patient_age_band"] == "ae-age-band"
    assert dict(zip(csp.fields, csp.rules, strict=True))["arrival_week"] == "ae-arrival-week"
    assert csp.lawful_basis[0] == "UK GDPR Art 6(1)(e) public task"
    assert "Cardiff Model" in csp.purpose
    assert csp.retention_days == 730
    # The same message decides the same record ids (idempotent redelivery).
    again = decide(ae(message_id="msg-for-ids-0001"), shipped_policy(registry), NOW)
    assert [r.record_id for r in again.releases] == [r.record_id for r in decision.releases]


def test_records_are_not_shared_between_consumers(registry: Registry) -> None:
    decision = decide(ae(), build(agreement(), registry=registry), NOW)
    first, second = decision.releases
    assert first.record == second.record
    assert first.record is not second.record


def test_free_text_and_lsoa_never_leave_under_shipped_agreements(registry: Registry) -> None:
    decision = decide(ae(assault_location_text="outside the Old Bell Yard"), shipped_policy(registry), NOW)
    for release in decision.releases:
        assert "assault_location_text" not in release.record
        assert "patient_lsoa" not in release.record
        assert "outside the Old Bell Yard" not in repr(release.record)
        assert "E01013456" not in repr(release.record)


# --- pseudonyms ----------------------------------------------------------------------------------


def test_same_input_same_agreement_same_pseudonym(registry: Registry) -> None:
    policy = build(agreement(), secrets={"dsa-test-ae": SECRET_A}, registry=registry)
    one = records(decide(ae(message_id="message-one-0001"), policy, NOW))
    two = records(decide(ae(message_id="message-two-0002"), policy, NOW))
    assert one["derby-csp-analysts"]["site_pseudonym"] == two["derby-csp-analysts"]["site_pseudonym"]
    # Both consumers of one agreement can link with each other's records too.
    assert one["derby-csp-analysts"]["site_pseudonym"] == one["derbyshire-vru"]["site_pseudonym"]
    assert one["derby-csp-analysts"]["site_pseudonym"].startswith("psn-")
    assert "RTG01" not in repr(one)
    other_site = records(decide(ae(site_code="RFSDA"), policy, NOW))
    assert other_site["derby-csp-analysts"]["site_pseudonym"] != one["derby-csp-analysts"]["site_pseudonym"]


def test_two_agreements_give_different_pseudonyms(registry: Registry) -> None:
    first = agreement("dsa-test-first")
    second = agreement("dsa-test-second")
    second["flows"][0]["consumers"] = ["derbyshire-vru"]
    first["flows"][0]["consumers"] = ["derby-csp-analysts"]
    policy = build(first, second, secrets={"dsa-test-first": SECRET_A, "dsa-test-second": SECRET_B}, registry=registry)
    got = records(decide(ae(), policy, NOW))
    assert got["derby-csp-analysts"]["site_pseudonym"] != got["derbyshire-vru"]["site_pseudonym"]


def test_a_secret_reused_across_agreements_is_refused(registry: Registry) -> None:
    with pytest.raises(PolicyError) as info:
        build(
            agreement("dsa-test-first"),
            agreement("dsa-test-second"),
            secrets={"dsa-test-first": SECRET_A, "dsa-test-second": SECRET_A},
            registry=registry,
        )
    assert info.value.reason == "secret_reused"


def test_without_its_secret_the_engine_refuses_to_start_the_agreement(registry: Registry) -> None:
    with pytest.raises(PolicyError) as info:
        build(agreement(), secrets={}, registry=registry)
    assert info.value.reason == "secret_missing"
    assert "SV_BROKER_SECRET_DSA_TEST_AE" in info.value.message
    # The shipped exclusions agreement pseudonymises: no secret, no broker.
    without = {k: v for k, v in TEST_SECRETS.items() if k != "dsa-education-exclusions-2026"}
    with pytest.raises(PolicyError) as shipped:
        load_policy(REPO_POLICIES, registry, without)
    assert shipped.value.reason == "secret_missing"
    assert shipped.value.path.endswith("dsa-education-exclusions-2026.toml")
    assert shipped.value.line is not None


def test_a_short_secret_is_refused(registry: Registry) -> None:
    with pytest.raises(PolicyError) as info:
        build(agreement(), secrets={"dsa-test-ae": b"short"}, registry=registry)
    assert info.value.reason == "secret_weak"


def test_agreements_without_pseudonyms_need_no_secret(registry: Registry) -> None:
    doc = copy.deepcopy(agreement())
    doc["flows"][0]["rules"] = [{"id": "method", "field": "assault_method", "action": "keep"}]
    policy = build(doc, secrets={}, registry=registry)
    assert records(decide(ae(), policy, NOW))["derbyshire-vru"] == {"assault_method": "glass_or_bottle"}
