"""A standard JSON Schema validator and the broker agree on every rule of the event models.

The models' validators hold rules beyond single fields (an offence code and its group, a text
allowed only beside one code, consecutive academic years ...). A partner validating with the
exported schema must get the broker's verdict, so each rule is written into the schema
(``EventModel.add_schema_rules``), from the same Python tables. Here the ``jsonschema`` package
(Draft 2020-12, formats checked) runs the committed files, the broker runs its validate stage,
and for generated valid and invalid events per rule the two must accept and refuse alike. A rule
JSON Schema cannot state is pinned as such: the standard validator accepts, the broker refuses,
and the schema's description names it.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from broker.stages.validate import validate_payload
from schemas.envelope import Envelope
from schemas.errors import ContractError, Reason
from schemas.events import EVENT_MODELS, EventModel
from schemas.events.ae_assault_v1 import AssaultMethod
from schemas.events.nte_incident_v1 import NteAction
from schemas.events.police_sv_offence_v1 import HO_CODE_GROUP, HoOffenceCode, SvGroup
from schemas.events.school_exclusion_v1 import ACADEMIC_YEARS, ExclusionReason
from schemas.schema_files import SCHEMA_DIR
from tests.strategies import any_event, event_strategy
from tests.test_validate import good_data

FILES = {event_type: SCHEMA_DIR / f"{event_type}.v{version}.json" for event_type, version in EVENT_MODELS}
VALIDATORS = {
    event_type: Draft202012Validator(
        json.loads(path.read_text(encoding="utf-8")), format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    for event_type, path in FILES.items()
}

# Every model validator, by name, and how its rule reaches the exported schema. A validator added
# to a model without a line here fails test_every_model_rule_is_accounted_for.
EXPRESSED = "expressed"
BROKER_ONLY = "not expressible in JSON Schema"
RULES: dict[str, dict[str, str]] = {
    "ae_assault": {
        "_period_in_order": BROKER_ONLY,
        "_other_text_only_for_other": EXPRESSED,
        "_assault_not_after_arrival": BROKER_ONLY,
    },
    "nte_incident": {"_reference_needs_call": EXPRESSED, "_actions_unique": EXPRESSED},
    "police_sv_offence": {"_code_matches_group": EXPRESSED},
    "school_exclusion": {"_reasons_unique": EXPRESSED, "_consecutive_years": EXPRESSED},
}


def schema_accepts(event_type: str, data: dict[str, Any]) -> bool:
    return VALIDATORS[event_type].is_valid(data)


def broker_accepts(event_type: str, data: dict[str, Any]) -> bool:
    env = Envelope("m", "p", event_type, 1, datetime.now(UTC), "k", "s", data, b"")
    try:
        validate_payload(env)
    except ContractError as exc:
        reason = exc.reason
    else:
        return True
    assert reason is Reason.SCHEMA_INVALID
    return False


def verdicts(event_type: str, data: dict[str, Any]) -> tuple[bool, bool]:
    return schema_accepts(event_type, data), broker_accepts(event_type, data)


def as_json(event: EventModel, exclude_none: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = event.model_dump(mode="json", exclude_none=exclude_none)
    return data


# --- the setting ----------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", sorted(FILES))
def test_each_exported_file_is_a_valid_draft_2020_12_schema(event_type: str) -> None:
    schema = json.loads(FILES[event_type].read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_the_validator_checks_formats() -> None:
    # Control: without rfc3339-validator, jsonschema skips "date-time" silently.
    data = good_data("ae_assault") | {"arrival_datetime": "2026-10-03T22:15:00"}  # no offset
    assert verdicts("ae_assault", data) == (False, False)
    assert verdicts("ae_assault", good_data("ae_assault") | {"reporting_period_start": "2026-02-30"}) == (False, False)


def test_every_model_rule_is_accounted_for() -> None:
    found = {
        event_type: set(model.__pydantic_decorators__.model_validators)
        | set(model.__pydantic_decorators__.field_validators)
        for (event_type, _), model in EVENT_MODELS.items()
    }
    assert found == {event_type: set(rules) for event_type, rules in RULES.items()}


@pytest.mark.parametrize("event_type", sorted(FILES))
def test_the_description_names_the_rules(event_type: str) -> None:
    description = json.loads(FILES[event_type].read_text(encoding="utf-8"))["description"]
    broker_only = [name for name, how in RULES[event_type].items() if how == BROKER_ONLY]
    assert ("not expressible in JSON Schema" in description) == bool(broker_only)


@given(event=any_event(), exclude_none=st.booleans())
@settings(max_examples=200, deadline=None)
def test_valid_events_pass_both(event: EventModel, exclude_none: bool) -> None:
    assert verdicts(event.EVENT_TYPE, as_json(event, exclude_none)) == (True, True)


# --- police_sv_offence: the Home Office code and its group ----------------------------------------


@pytest.mark.parametrize(("code", "group"), list(itertools.product(HoOffenceCode, SvGroup)))
def test_every_offence_code_and_group(code: HoOffenceCode, group: SvGroup) -> None:
    data = good_data("police_sv_offence") | {"ho_offence_code": code.value, "sv_group": group.value}
    expected = HO_CODE_GROUP[code] is group
    assert verdicts("police_sv_offence", data) == (expected, expected)


@given(event=event_strategy(EVENT_MODELS[("police_sv_offence", 1)]), code=st.sampled_from(HoOffenceCode))
@settings(max_examples=100, deadline=None)
def test_any_police_event_with_any_code(event: EventModel, code: HoOffenceCode) -> None:
    data = as_json(event) | {"ho_offence_code": code.value}
    expected = HO_CODE_GROUP[code].value == data["sv_group"]
    assert verdicts("police_sv_offence", data) == (expected, expected)


# --- ae_assault: assault_method_other only with "other" -------------------------------------------

_ABSENT = object()


@pytest.mark.parametrize("method", list(AssaultMethod))
@pytest.mark.parametrize("other", [_ABSENT, None, "a chair"], ids=["absent", "null", "text"])
def test_assault_method_other(method: AssaultMethod, other: object) -> None:
    data = good_data("ae_assault") | {"assault_method": method.value}
    data.pop("assault_method_other", None)
    if other is not _ABSENT:
        data["assault_method_other"] = other
    expected = other in (_ABSENT, None) or method is AssaultMethod.OTHER
    assert verdicts("ae_assault", data) == (expected, expected)


# --- nte_incident: a police reference only when police were called --------------------------------


@pytest.mark.parametrize("called", [True, False])
@pytest.mark.parametrize("reference", [_ABSENT, None, "DP-12345"], ids=["absent", "null", "reference"])
def test_police_reference_needs_a_call(called: bool, reference: object) -> None:
    data = good_data("nte_incident") | {"police_called": called}
    data.pop("police_reference", None)
    if reference is not _ABSENT:
        data["police_reference"] = reference
    expected = called or reference in (_ABSENT, None)
    assert verdicts("nte_incident", data) == (expected, expected)


# --- lists without repeats ------------------------------------------------------------------------


@given(
    actions=st.lists(st.sampled_from(NteAction), min_size=1, max_size=6),
    reasons=st.lists(st.sampled_from(ExclusionReason), min_size=1, max_size=3),
)
@settings(max_examples=150, deadline=None)
def test_lists_without_repeats(actions: list[NteAction], reasons: list[ExclusionReason]) -> None:
    nte = good_data("nte_incident") | {"action_taken": [a.value for a in actions]}
    unique = len(set(actions)) == len(actions)
    assert verdicts("nte_incident", nte) == (unique, unique)
    school = good_data("school_exclusion") | {"reason_codes": [r.value for r in reasons]}
    unique = len(set(reasons)) == len(reasons)
    assert verdicts("school_exclusion", school) == (unique, unique)


# --- school_exclusion: consecutive academic years -------------------------------------------------


def test_every_academic_year_shape() -> None:
    base = good_data("school_exclusion")
    accepted = []
    for first, second in itertools.product(range(100), range(100)):
        year = f"20{first:02d}/{second:02d}"
        schema_ok, broker_ok = verdicts("school_exclusion", base | {"academic_year": year})
        assert schema_ok == broker_ok, year
        if broker_ok:
            accepted.append(year)
    assert accepted == sorted(ACADEMIC_YEARS)
    assert {"2025/26", "2099/00"} <= set(accepted)
    assert verdicts("school_exclusion", base | {"academic_year": "1999/00"}) == (False, False)


# --- the rules JSON Schema cannot state: pinned as gaps -------------------------------------------


@given(event=event_strategy(EVENT_MODELS[("ae_assault", 1)]), days=st.integers(min_value=1, max_value=400))
@settings(max_examples=50, deadline=None)
def test_gap_reporting_period_out_of_order(event: EventModel, days: int) -> None:
    data = as_json(event)
    start = datetime.fromisoformat(data["reporting_period_end"]) + timedelta(days=days)
    data["reporting_period_start"] = start.date().isoformat()
    assert verdicts("ae_assault", data) == (True, False)  # _period_in_order: broker only


@given(event=event_strategy(EVENT_MODELS[("ae_assault", 1)]), seconds=st.integers(min_value=1, max_value=10**6))
@settings(max_examples=50, deadline=None)
def test_gap_assault_after_arrival(event: EventModel, seconds: int) -> None:
    data = as_json(event)
    arrival = datetime.fromisoformat(data["arrival_datetime"])
    data["assault_datetime"] = (arrival + timedelta(seconds=seconds)).astimezone(UTC).isoformat()
    assert verdicts("ae_assault", data) == (True, False)  # _assault_not_after_arrival: broker only
