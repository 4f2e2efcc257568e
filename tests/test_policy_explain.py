"""``sv-broker policy explain``: text and --json through the CLI, for unsigned event files and
signed envelopes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapters.signer import Signer
from broker.cli import main
from broker.policy.transforms import pseudonym
from tests.test_policy_support import NOBODY, TEST_SECRETS, secrets_file

AT = "2026-11-25T12:00:00Z"

AE_EVENT: dict[str, Any] = {
    "type": "ae_assault",
    "version": 1,
    "source": "uhdb-royal-derby-ed",
    "id": "explain-test-0001",
    "data": {
        "site_code": "RTG01",
        "reporting_period_start": "2026-10-01",
        "reporting_period_end": "2026-10-31",
        "arrival_datetime": "2026-10-17T23:40:00+01:00",
        "assault_datetime": "2026-10-17T22:55:00+01:00",
        "assault_method": "glass_or_bottle",
        "assault_location_type": "licensed_premises",
        "assault_location_text": "outside the Old Bell Yard",
        "patient_age": 19,
        "patient_sex": "male",
        "patient_lsoa": "E01013456",
        "district": "E06000015",
    },
}

EXCLUSION_EVENT: dict[str, Any] = {
    "type": "school_exclusion",
    "version": 1,
    "source": "derby-city-education",
    "data": {
        "exclusion_type": "suspension",
        "start_date": "2026-10-05",
        "sessions": 3,
        "reason_codes": ["PP"],
        "year_group": "9",
        "term": "autumn",
        "academic_year": "2026/27",
        "school_urn": "112345",
        "la_code": "831",
        "pupil_age": 14,
    },
}


def write(tmp_path: Path, doc: dict[str, Any] | bytes, name: str = "event.json") -> Path:
    path = tmp_path / name
    path.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    return path


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(["policy", "explain", "--at", AT, *args])
    return rc, capsys.readouterr().out


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    return secrets_file(tmp_path, TEST_SECRETS)


def test_text_shows_each_consumer_field_by_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], secrets: Path
) -> None:
    rc, out = explain(capsys, "--event", str(write(tmp_path, AE_EVENT)), "--secrets", str(secrets))
    assert rc == 0, out
    assert "unsigned event file" in out
    assert "derby-csp-analysts (Derby Community Safety Partnership analysts): RECEIVES 1 record" in out
    assert "derbyshire-vru (Derbyshire Violence Reduction Unit): RECEIVES 1 record" in out
    assert f"{NOBODY} (Derbyshire Fire and Rescue Service prevention analysts): receives NOTHING" in out
    assert f"no_agreement: No flow of any agreement names {NOBODY}." in out
    assert "agreement dsa-istv-ae-2026 revision 3, flow ae-to-derby-csp" in out
    # The flow's declared cadence (how often its partners send; silence beyond it is an alert).
    assert "cadence: the partners send at least every 7 days" in out
    assert "cadence: the partners send at least every 31 days" in out  # the VRU's monthly flow
    # A rule that produced a field, with the rule id and what it did.
    assert "-> patient_age_band = 18-24  [rule ae-age-band: generalise to band (sv-age)]" in out
    assert "-> arrival_week = 2026-W42  [rule ae-arrival-week: generalise to week]" in out
    # Fields dropped by default, free text included.
    assert "assault_location_text   outside the Old Bell Yard\n      -> dropped  [default deny" in out
    assert "patient_lsoa            E01013456\n      -> dropped  [default deny" in out
    # A consumer whose row condition fails says which.
    assert "row_condition_false (agreement dsa-istv-ae-2026)" in out


def test_json_for_machines(tmp_path: Path, capsys: pytest.CaptureFixture[str], secrets: Path) -> None:
    rc, out = explain(capsys, "--event", str(write(tmp_path, AE_EVENT)), "--secrets", str(secrets), "--json")
    assert rc == 0
    report = json.loads(out)
    assert report["event"] == {
        "source": "uhdb-royal-derby-ed",
        "type": "ae_assault",
        "version": 1,
        "message_id": "explain-test-0001",
        "signature": "unsigned",
        "note": report["event"]["note"],
    }
    by_consumer = {c["consumer"]: c for c in report["consumers"]}
    assert {c for c, entry in by_consumer.items() if entry["receives"]} == {"derby-csp-analysts", "derbyshire-vru"}
    assert by_consumer[NOBODY]["refusals"][0]["reason"] == "no_agreement"
    (release,) = by_consumer["derby-csp-analysts"]["releases"]
    assert release["agreement_id"] == "dsa-istv-ae-2026"
    assert release["cadence_days"] == 7
    fields = {f["output"] or f["field"]: f for f in release["fields"]}
    assert fields["patient_age_band"] == {
        "field": "patient_age",
        "input": 19,
        "output": "patient_age_band",
        "value": "18-24",
        "rule": "ae-age-band",
        "action": "generalise to band (sv-age)",
    }
    assert fields["patient_lsoa"]["rule"] is None
    assert fields["patient_lsoa"]["action"].startswith("drop")
    assert release["record"] == {f["output"]: f["value"] for f in release["fields"] if f["rule"]}
    assert report["throwaway_secrets"] == []


def test_one_consumer(tmp_path: Path, capsys: pytest.CaptureFixture[str], secrets: Path) -> None:
    rc, out = explain(
        capsys, "--event", str(write(tmp_path, AE_EVENT)), "--secrets", str(secrets), "--consumer", "derbyshire-vru"
    )
    assert rc == 0
    assert "derbyshire-vru (Derbyshire Violence Reduction Unit): RECEIVES 1 record" in out
    assert "derby-csp-analysts" not in out
    assert "-> arrival_month = 2026-10  [rule vru-arrival-month: generalise to month]" in out


def test_unknown_consumer_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["policy", "explain", "--event", str(write(tmp_path, AE_EVENT)), "--consumer", "nobody-at-all"])
    assert rc == 2
    assert "not a registered consumer" in capsys.readouterr().err


def test_pseudonyms_with_the_real_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str], secrets: Path) -> None:
    rc, out = explain(capsys, "--event", str(write(tmp_path, EXCLUSION_EVENT)), "--secrets", str(secrets), "--json")
    assert rc == 0
    report = json.loads(out)
    (entry,) = [c for c in report["consumers"] if c["receives"]]
    assert entry["consumer"] == "derby-youth-justice"
    expected = pseudonym(
        TEST_SECRETS["dsa-education-exclusions-2026"], "dsa-education-exclusions-2026", "school_urn", "112345"
    )
    assert entry["releases"][0]["record"]["school_pseudonym"] == expected
    assert report["throwaway_secrets"] == []


def test_pseudonyms_without_a_secret_use_a_throwaway_key_and_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SV_BROKER_SECRET_DSA_EDUCATION_EXCLUSIONS_2026", raising=False)
    rc, out = explain(capsys, "--event", str(write(tmp_path, EXCLUSION_EVENT)))
    assert rc == 0
    assert "derby-youth-justice (Derby Youth Justice Service analysts): RECEIVES 1 record" in out
    assert "-> school_pseudonym = psn-" in out
    assert "no secret loaded for dsa-education-exclusions-2026" in out
    assert "throwaway key" in out


def test_signed_envelope_is_not_verified_but_is_validated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], signers: dict[str, Signer], secrets: Path
) -> None:
    envelope = signers["uhdb-royal-derby-ed"].sign("ae_assault", AE_EVENT["data"], source_key="ATT-0000001")
    rc, out = explain(capsys, "--event", str(write(tmp_path, json.dumps(envelope).encode())), "--secrets", str(secrets))
    assert rc == 0, out
    assert "signature was NOT verified" in out
    assert "derbyshire-vru (Derbyshire Violence Reduction Unit): RECEIVES 1 record" in out
    # A tampered payload is still explained (explain does not verify), and says so in --json.
    envelope["data"]["patient_age"] = 33
    rc, out = explain(
        capsys, "--event", str(write(tmp_path, json.dumps(envelope).encode())), "--secrets", str(secrets), "--json"
    )
    assert rc == 0
    assert json.loads(out)["event"]["signature"] == "not verified"
    # An invalid payload is rejected with the broker's reason.
    envelope["data"]["patient_age"] = "33"
    rc, out = explain(capsys, "--event", str(write(tmp_path, json.dumps(envelope).encode())), "--json")
    assert rc == 1
    verdict = json.loads(out)
    assert verdict["verdict"] == "rejected"
    assert verdict["reason"] == "schema_invalid"
    assert verdict["field"] == "patient_age"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"data": {**AE_EVENT["data"], "nhs_number": "9434765919"}}, "direct_identifier"),
        ({"data": {**AE_EVENT["data"], "patient_age": 121}}, "schema_invalid"),
        ({"source": "derby-pubwatch"}, "type_not_registered"),
        ({"source": "somebody-else"}, "unknown_partner"),
        ({"colour": "blue"}, "envelope_invalid"),
        ({"version": "1"}, "envelope_invalid"),
    ],
)
def test_events_the_broker_would_reject(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], reason: str
) -> None:
    rc, out = explain(capsys, "--event", str(write(tmp_path, {**AE_EVENT, **change})))
    assert rc == 1
    assert out.startswith(f"rejected: the broker would refuse this event: {reason}:")


def test_duplicate_json_keys_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = b'{"type": "ae_assault", "type": "nte_incident", "version": 1, "source": "derby-pubwatch", "data": {}}'
    rc, out = explain(capsys, "--event", str(write(tmp_path, body)))
    assert rc == 1
    assert "duplicate_key" in out
