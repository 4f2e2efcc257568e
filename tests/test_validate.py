"""The validate stage: direct identifiers, unknown fields, strict types, versions, model rules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.signer import Signer
from adapters.synthetic import SyntheticGenerator
from broker.registry import Registry
from broker.stages.parse import parse
from broker.stages.types import Fresh, Received, Validated, Verified
from broker.stages.validate import validate
from broker.stages.verify import verify
from schemas.envelope import encode, envelope_from_document
from schemas.errors import ContractError, Reason
from schemas.events import DIRECT_IDENTIFIER_FIELDS, EVENT_MODELS
from schemas.strictjson import DEFAULT_MAX_BYTES

PARTNER_FOR = {
    "ae_assault": "uhdb-royal-derby-ed",
    "school_exclusion": "derby-city-education",
    "nte_incident": "derby-pubwatch",
    "police_sv_offence": "derbyshire-police",
}


def good_data(event_type: str) -> dict[str, Any]:
    return SyntheticGenerator(seed=99).for_partner(PARTNER_FOR[event_type], event_type).data()


def run(
    signers: dict[str, Signer], registry: Registry, event_type: str, data: dict[str, Any], version: int = 1
) -> Validated:
    """Sign, parse and verify for real, so only the validate stage can refuse."""
    now = datetime.now(UTC)
    doc = signers[PARTNER_FOR[event_type]].sign(event_type, data, source_key="R-1", version=version, produced_at=now)
    verified = verify(parse(encode(doc), max_bytes=DEFAULT_MAX_BYTES, now=now), registry)
    return validate(Fresh(verified, verified.received.received_at))


def refused(
    signers: dict[str, Signer],
    registry: Registry,
    event_type: str,
    data: dict[str, Any],
    reason: Reason,
    field: str,
    version: int = 1,
) -> ContractError:
    with pytest.raises(ContractError) as info:
        run(signers, registry, event_type, data, version)
    exc = info.value
    assert exc.reason is reason, exc.message
    assert exc.field == field
    if field not in {"data", "dataschema"}:
        assert f"'{field}'" in exc.message  # the sender is told which field to fix
    return exc


@pytest.mark.parametrize("event_type", sorted(PARTNER_FOR))
def test_valid_event_passes(signers: dict[str, Signer], registry: Registry, event_type: str) -> None:
    record = SyntheticGenerator(seed=99).for_partner(PARTNER_FOR[event_type], event_type)
    validated = run(signers, registry, event_type, record.data())
    assert validated.event == record.event
    assert type(validated.event) is EVENT_MODELS[(event_type, 1)]


# --- direct identifiers ---------------------------------------------------------------------------


def test_the_named_identifiers_are_in_the_list() -> None:
    assert {"nhs_number", "upn", "date_of_birth", "patient_name", "home_postcode"} <= DIRECT_IDENTIFIER_FIELDS


def test_no_model_has_a_direct_identifier_field() -> None:
    for model in EVENT_MODELS.values():
        assert not set(model.model_fields) & DIRECT_IDENTIFIER_FIELDS, model.__name__


@pytest.mark.parametrize("name", sorted(DIRECT_IDENTIFIER_FIELDS))
@pytest.mark.parametrize("event_type", sorted(PARTNER_FOR))
def test_direct_identifier_field_is_refused(
    signers: dict[str, Signer], registry: Registry, event_type: str, name: str
) -> None:
    exc = refused(signers, registry, event_type, good_data(event_type) | {name: "x"}, Reason.DIRECT_IDENTIFIER, name)
    assert "direct identifier" in exc.message


@pytest.mark.parametrize("name", ["NHS_Number", "Date_Of_Birth", "UPN"])
def test_direct_identifier_in_any_case(signers: dict[str, Signer], registry: Registry, name: str) -> None:
    refused(signers, registry, "ae_assault", good_data("ae_assault") | {name: "1"}, Reason.DIRECT_IDENTIFIER, name)


def test_direct_identifier_beats_other_problems(signers: dict[str, Signer], registry: Registry) -> None:
    # Even with an invalid value and another unknown field, the sender is told about the leak.
    data = good_data("ae_assault") | {"nhs_number": 9434765919, "favourite_colour": "blue", "patient_age": "17"}
    refused(signers, registry, "ae_assault", data, Reason.DIRECT_IDENTIFIER, "nhs_number")


def test_first_identifier_alphabetically_is_named(signers: dict[str, Signer], registry: Registry) -> None:
    data = good_data("ae_assault") | {"upn": "A123", "dob": "2010-01-01"}
    exc = refused(signers, registry, "ae_assault", data, Reason.DIRECT_IDENTIFIER, "dob")
    assert "'upn'" not in exc.message


# --- unknown fields and types ---------------------------------------------------------------------


def test_unknown_extra_field(signers: dict[str, Signer], registry: Registry) -> None:
    exc = refused(
        signers,
        registry,
        "ae_assault",
        good_data("ae_assault") | {"favourite_colour": "blue"},
        Reason.SCHEMA_INVALID,
        "favourite_colour",
    )
    assert "not part of ae_assault v1" in exc.message


@pytest.mark.parametrize(
    ("event_type", "field", "value"),
    [
        ("ae_assault", "patient_age", "17"),  # a string for an int
        ("ae_assault", "patient_age", 17.5),  # a fraction for an int
        ("ae_assault", "patient_age", 121),  # out of range
        ("ae_assault", "patient_age", -1),
        ("ae_assault", "patient_age", True),  # a bool for an int
        ("nte_incident", "police_called", 1),  # an int for a bool
        ("nte_incident", "injury", "true"),  # a string for a bool
        ("ae_assault", "arrival_datetime", "2026-10-03T22:15:00"),  # naive datetime
        ("ae_assault", "arrival_datetime", "2026-10-03"),
        ("ae_assault", "arrival_datetime", 1790000000),
        ("ae_assault", "assault_method", "stabbing"),  # not a code of the list
        ("ae_assault", "assault_method", "KNIFE_OR_SHARP"),  # the enum name, not its value
        ("ae_assault", "site_code", "rx1"),  # pattern (lower case)
        ("ae_assault", "site_code", "RX"),  # pattern (too short)
        ("ae_assault", "patient_lsoa", "W01000001"),  # a Welsh LSOA
        ("ae_assault", "district", "E06000018"),  # Nottingham: not one of ours
        ("ae_assault", "reporting_period_start", "01/10/2026"),
        ("ae_assault", "assault_location_text", ""),  # min length
        ("ae_assault", "assault_location_text", "x" * 201),  # max length
        ("school_exclusion", "sessions", 0),
        ("school_exclusion", "sessions", 191),
        ("school_exclusion", "academic_year", "2025-26"),
        ("school_exclusion", "school_urn", "12345"),
        ("school_exclusion", "reason_codes", []),
        ("school_exclusion", "reason_codes", ["PP", "PA", "VP", "VA"]),
        ("school_exclusion", "year_group", 7),
        ("nte_incident", "action_taken", "ejected"),
        ("police_sv_offence", "ho_offence_code", "99"),
        ("police_sv_offence", "victim_age_band", "11 to 17"),
        ("nte_incident", "premises_name", None),
    ],
)
def test_type_error_names_the_field(
    signers: dict[str, Signer], registry: Registry, event_type: str, field: str, value: Any
) -> None:
    exc = refused(signers, registry, event_type, good_data(event_type) | {field: value}, Reason.SCHEMA_INVALID, field)
    assert "invalid" in exc.message


def test_integral_double_is_the_same_number_as_the_integer(signers: dict[str, Signer], registry: Registry) -> None:
    # 17.0 and 17 are one JSON number (RFC 8785 writes both as "17", so they are signed alike and
    # a JavaScript partner cannot tell them apart); the contract accepts both as the int 17.
    validated = run(signers, registry, "ae_assault", good_data("ae_assault") | {"patient_age": 17.0})
    assert validated.event.model_dump()["patient_age"] == 17
    assert type(validated.event.model_dump()["patient_age"]) is int


def test_nested_error_names_the_item(signers: dict[str, Signer], registry: Registry) -> None:
    data = good_data("school_exclusion") | {"reason_codes": ["PP", "XX"]}
    refused(signers, registry, "school_exclusion", data, Reason.SCHEMA_INVALID, "reason_codes.1")


@pytest.mark.parametrize("event_type", sorted(PARTNER_FOR))
def test_missing_required_field(signers: dict[str, Signer], registry: Registry, event_type: str) -> None:
    model = EVENT_MODELS[(event_type, 1)]
    required = sorted(name for name, f in model.model_fields.items() if f.is_required())
    data = good_data(event_type)
    del data[required[0]]
    exc = refused(signers, registry, event_type, data, Reason.SCHEMA_INVALID, required[0])
    assert "required" in exc.message.lower()


def test_several_problems_are_counted(signers: dict[str, Signer], registry: Registry) -> None:
    data = good_data("ae_assault") | {"patient_age": "17", "site_code": "x", "favourite_colour": "blue"}
    with pytest.raises(ContractError) as info:
        run(signers, registry, "ae_assault", data)
    assert info.value.reason is Reason.SCHEMA_INVALID
    assert "(2 more problem(s).)" in info.value.message


# --- type and version -----------------------------------------------------------------------------


def test_unknown_version(signers: dict[str, Signer], registry: Registry) -> None:
    exc = refused(
        signers, registry, "ae_assault", good_data("ae_assault"), Reason.UNKNOWN_EVENT_TYPE, "dataschema", version=2
    )
    assert "'ae_assault' version 2" in exc.message


def test_unknown_event_type() -> None:
    # The registry refuses partners registered for unknown types, so such a message cannot pass
    # verify; the stage still refuses it if handed one (defence in depth).
    now = datetime.now(UTC)
    doc = {
        "specversion": "1.0",
        "id": "test:00000001",
        "source": "uhdb-royal-derby-ed",
        "type": "knife_crime",
        "dataschema": "urn:sv-broker:schema:knife_crime:v1",
        "time": "2026-10-01T12:00:00Z",
        "keyid": "k1",
        "signature": "x",
        "data": {"a": 1},
    }
    received = Received(envelope=envelope_from_document(doc), body_sha256="0" * 64, received_at=now)
    with pytest.raises(ContractError) as info:
        validate(Fresh(Verified(received=received, kid="k1"), now))
    assert info.value.reason is Reason.UNKNOWN_EVENT_TYPE
    assert "knife_crime" in info.value.message


# --- model validators -----------------------------------------------------------------------------


def _ae(**changes: Any) -> dict[str, Any]:
    return good_data("ae_assault") | changes


@pytest.mark.parametrize(
    ("event_type", "changes", "words"),
    [
        (
            "ae_assault",
            {"reporting_period_start": "2026-10-31", "reporting_period_end": "2026-10-01"},
            "reporting_period_end is before",
        ),
        ("ae_assault", {"assault_method": "knife_or_sharp", "assault_method_other": "a chair"}, "assault_method_other"),
        (
            "ae_assault",
            {"arrival_datetime": "2026-10-03T22:00:00Z", "assault_datetime": "2026-10-03T23:30:00+01:00"},
            "assault_datetime is after",
        ),
        ("nte_incident", {"police_called": False, "police_reference": "DP-12345"}, "police_called is false"),
        ("nte_incident", {"action_taken": ["ejected", "ejected"]}, "repeats"),
        ("school_exclusion", {"reason_codes": ["PP", "PP"]}, "repeats"),
        ("school_exclusion", {"academic_year": "2025/27"}, "consecutive"),
        ("school_exclusion", {"academic_year": "2099/01"}, "consecutive"),
        ("police_sv_offence", {"ho_offence_code": "1", "sv_group": "robbery"}, "does not match"),
    ],
)
def test_model_validator_violation(
    signers: dict[str, Signer], registry: Registry, event_type: str, changes: dict[str, Any], words: str
) -> None:
    exc = refused(signers, registry, event_type, good_data(event_type) | changes, Reason.SCHEMA_INVALID, "data")
    assert words in exc.message


@pytest.mark.parametrize(
    ("event_type", "changes"),
    [
        ("ae_assault", {"assault_method": "other", "assault_method_other": "a chair"}),
        # Same instant written in two offsets: not "after".
        ("ae_assault", {"arrival_datetime": "2026-10-03T22:30:00Z", "assault_datetime": "2026-10-03T23:30:00+01:00"}),
        ("ae_assault", {"reporting_period_start": "2026-10-01", "reporting_period_end": "2026-10-01"}),
        ("nte_incident", {"police_called": True, "police_reference": "DP-12345"}),
        ("school_exclusion", {"academic_year": "2099/00"}),
        ("police_sv_offence", {"ho_offence_code": "4/1", "sv_group": "homicide"}),
    ],
)
def test_model_validator_boundaries_pass(
    signers: dict[str, Signer], registry: Registry, event_type: str, changes: dict[str, Any]
) -> None:
    assert run(signers, registry, event_type, good_data(event_type) | changes).event is not None
