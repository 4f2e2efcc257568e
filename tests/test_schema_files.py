"""The exported JSON Schemas stay in step with the models, and describe what the broker accepts."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.signer import Signer
from adapters.synthetic import SyntheticGenerator
from schemas.envelope import ALLOWED_ATTRS, REQUIRED_ATTRS, dataschema_for
from schemas.events import EVENT_MODELS, EventModel
from schemas.messages import (
    ConsumerFigures,
    ConsumerNotice,
    ConsumerRecord,
    QuarantineHeaders,
    ReceiptsMessage,
    consumer_notice,
)
from schemas.schema_files import SCHEMA_DIR, all_schemas, envelope_schema, render, write_schema_files
from schemas.strictjson import parse_strict
from tests.strategies import any_event
from tests.test_messages import RECEIPTS_BODY_P, RECEIPTS_JSON, RECORD_1, RECORD_2_NO_TIME

EVENT_FILES = {f"{t}.v{v}.json": model for (t, v), model in EVENT_MODELS.items()}
MESSAGE_FILES: dict[str, Any] = {
    "receipts.v1.json": ReceiptsMessage,
    "consumer_record.v1.json": ConsumerRecord,
    "consumer_notice.v1.json": ConsumerNotice,
    "consumer_figures.v1.json": ConsumerFigures,
    "quarantine_headers.v1.json": QuarantineHeaders,
}


def committed(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    return doc


def test_committed_files_are_exactly_the_rendered_ones() -> None:
    rendered = all_schemas()
    assert sorted(p.name for p in SCHEMA_DIR.glob("*.json")) == sorted(rendered)
    stale = [name for name, schema in rendered.items() if (SCHEMA_DIR / name).read_text("utf-8") != render(schema)]
    assert stale == [], "run `sv-broker schemas export` and commit schemas/jsonschema/"


def test_every_event_model_the_envelope_and_each_message_are_exported() -> None:
    contract = {"envelope.v1.json", "key_file.v1.json", "asyncapi.v1.json", "checkpoint.v1.json"}
    assert set(all_schemas()) == set(EVENT_FILES) | contract | set(MESSAGE_FILES)


def test_export_writes_what_check_compares(tmp_path: Any) -> None:
    written = write_schema_files(tmp_path)
    assert sorted(p.name for p in written) == sorted(all_schemas())
    for path in written:
        assert path.read_bytes() == (SCHEMA_DIR / path.name).read_bytes()


def test_render_is_deterministic_strict_json() -> None:
    for name, schema in all_schemas().items():
        text = render(schema)
        assert text == render(json.loads(text))
        assert text.endswith("}\n")
        assert parse_strict(text.encode()) == schema, name  # partners' strict parsers can read it


@pytest.mark.parametrize("name", sorted(EVENT_FILES))
def test_event_schema_forbids_additional_properties(name: str) -> None:
    assert committed(name)["additionalProperties"] is False


def test_envelope_schema_forbids_additional_properties() -> None:
    assert committed("envelope.v1.json")["additionalProperties"] is False


@pytest.mark.parametrize(("name", "definition"), sorted(MESSAGE_FILES.items()))
def test_message_schema_matches_its_definition(name: str, definition: Any) -> None:
    schema = committed(name)
    assert schema["$id"] == f"urn:sv-broker:schema:{name.removesuffix('.v1.json')}:v1"
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert all(d["additionalProperties"] is False for d in schema.get("$defs", {}).values())
    assert set(schema["properties"]) == set(definition.__annotations__)
    assert set(schema["required"]) == set(definition.__required_keys__)


def test_the_brokers_messages_satisfy_the_exported_schemas() -> None:
    receipts = committed("receipts.v1.json")
    assert schema_errors(json.loads(RECEIPTS_BODY_P), receipts, receipts) == []
    for name, (_, text) in RECEIPTS_JSON.items():
        errors = schema_errors({"receipts": [json.loads(text)]}, receipts, receipts)
        # "failed" is the broker's internal status: built over HTTP, replaced by a problem response
        assert errors == ([".receipts.0.status: not in enum"] if name == "failed" else []), name
    record = committed("consumer_record.v1.json")
    for body in (RECORD_1, RECORD_2_NO_TIME):
        assert schema_errors(json.loads(body), record, record) == []
    notice = committed("consumer_notice.v1.json")
    at = datetime(2026, 11, 1, tzinfo=UTC)
    for kind, reason in (
        ("withdrawn", "sent_in_error"),
        ("withdrawn", "no_longer_entitled"),
        ("deleted", "retention_expired"),
    ):
        body = consumer_notice(
            notice=kind, record_id="rec-1", consumer="c", agreement_id="dsa", revision=2, reason=reason, at=at
        )
        assert schema_errors(json.loads(body), notice, notice) == []
        assert schema_errors(json.loads(body), record, record) != []  # a notice is never taken for a record
    headers = committed("quarantine_headers.v1.json")
    full = {"reason": "x", "reason_message": "", "body_sha256": "ab", "source": "", "message_id": ""}
    assert schema_errors(full | {"verified": False, "body_kept": True}, headers, headers) == []
    assert (
        schema_errors({"reason": "dead_lettered", "reason_message": "m", "body_sha256": "ab"}, headers, headers) == []
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"extra": 1}, ".receipts.0.extra: not allowed"),
        ({"status": "maybe"}, ".receipts.0.status: not in enum"),
        ({"records": "2"}, ".receipts.0.records: not integer"),
        ({"message_id": 7}, ".receipts.0.message_id: matches no alternative"),
    ],
)
def test_the_receipts_schema_can_fail(change: dict[str, Any], expected: str) -> None:
    schema = committed("receipts.v1.json")
    good = json.loads(RECEIPTS_JSON["accepted"][1])
    assert expected in schema_errors({"receipts": [good | change]}, schema, schema)


@pytest.mark.parametrize(("name", "model"), sorted(EVENT_FILES.items()))
def test_event_schema_matches_the_model(name: str, model: type[EventModel]) -> None:
    schema = committed(name)
    assert schema["$id"] == dataschema_for(model.EVENT_TYPE, model.VERSION)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["properties"]) == set(model.model_fields)
    required = {n for n, f in model.model_fields.items() if f.is_required()}
    assert set(schema["required"]) == required


def test_envelope_schema_matches_the_envelope_module() -> None:
    schema = committed("envelope.v1.json")
    assert schema == envelope_schema()
    assert set(schema["properties"]) == ALLOWED_ATTRS
    assert schema["required"] == list(REQUIRED_ATTRS)


def test_a_real_envelope_matches_the_envelope_schema_patterns(signers: dict[str, Signer]) -> None:
    schema = committed("envelope.v1.json")
    record = SyntheticGenerator(seed=4).ae_assault()
    doc = signers[record.partner].sign("ae_assault", record.data(), source_key=record.source_key)
    for name, value in doc.items():
        prop = schema["properties"][name]
        if "pattern" in prop:
            assert re.search(prop["pattern"], value), (name, value)
        if "const" in prop:
            assert value == prop["const"]
    assert not re.search(schema["properties"]["signature"]["pattern"], doc["signature"] + "A")


# --- a small JSON Schema checker, for the keywords pydantic emits ---------------------------------

ANNOTATIONS = {"title", "description", "default", "$schema", "$id", "$defs", "format"}


def schema_errors(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str = "") -> list[str]:
    """The subset of JSON Schema 2020-12 that the exported files use; unknown keywords fail loudly."""
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return schema_errors(value, target, root, path)
    errors: list[str] = []
    for key, arg in schema.items():
        if key in ANNOTATIONS:
            if key == "format" and isinstance(value, str):
                parse = {"date-time": datetime.fromisoformat, "date": date.fromisoformat}[arg]
                try:
                    parse(value)
                except ValueError:
                    errors.append(f"{path}: not a {arg}")
            continue
        if key == "anyOf":
            if all(schema_errors(value, sub, root, path) for sub in arg):
                errors.append(f"{path}: matches no alternative")
        elif key == "type":
            kinds = {"string": str, "integer": int, "boolean": bool, "array": list, "object": dict, "null": type(None)}
            ok = isinstance(value, kinds[arg]) and not (arg == "integer" and isinstance(value, bool))
            if not ok:
                errors.append(f"{path}: not {arg}")
        elif key == "enum":
            if value not in arg:
                errors.append(f"{path}: not in enum")
        elif key == "pattern":
            if isinstance(value, str) and not re.search(arg, value):
                errors.append(f"{path}: does not match {arg}")
        elif key in {"minLength", "minItems"}:
            if isinstance(value, (str, list)) and len(value) < arg:
                errors.append(f"{path}: too short")
        elif key in {"maxLength", "maxItems"}:
            if isinstance(value, (str, list)) and len(value) > arg:
                errors.append(f"{path}: too long")
        elif key == "uniqueItems":
            if arg and isinstance(value, list) and len({json.dumps(v, sort_keys=True) for v in value}) != len(value):
                errors.append(f"{path}: items repeat")
        elif key == "minimum":
            if isinstance(value, int) and value < arg:
                errors.append(f"{path}: below minimum")
        elif key == "maximum":
            if isinstance(value, int) and value > arg:
                errors.append(f"{path}: above maximum")
        elif key == "items":
            if isinstance(value, list):
                for i, item in enumerate(value):
                    errors += schema_errors(item, arg, root, f"{path}.{i}")
        elif key == "required":
            errors += [f"{path}.{name}: missing" for name in arg if isinstance(value, dict) and name not in value]
        elif key == "properties":
            if isinstance(value, dict):
                for name, item in value.items():
                    if name in arg:
                        errors += schema_errors(item, arg[name], root, f"{path}.{name}")
        elif key == "additionalProperties":
            if arg is True:  # a free-form object (a record's released data): no constraint
                continue
            assert arg is False
            if isinstance(value, dict):
                errors += [f"{path}.{name}: not allowed" for name in value if name not in schema.get("properties", {})]
        else:
            raise AssertionError(f"schema keyword {key!r} is not understood by this test; extend schema_errors")
    return errors


@given(event=any_event(), exclude_none=st.booleans())
@settings(max_examples=150, deadline=None)
def test_valid_events_satisfy_the_exported_schema(event: EventModel, exclude_none: bool) -> None:
    schema = committed(f"{event.EVENT_TYPE}.v{event.VERSION}.json")
    data = event.model_dump(mode="json", exclude_none=exclude_none)
    assert schema_errors(data, schema, schema) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"nhs_number": "9434765919"}, ".nhs_number: not allowed"),
        ({"assault_method": "stabbing"}, ".assault_method: not in enum"),
        ({"patient_age": 121}, ".patient_age: matches no alternative"),
        ({"patient_age": True}, ".patient_age: matches no alternative"),
        ({"site_code": "rx1"}, ".site_code: does not match ^[A-Z0-9]{3,9}$"),
        ({"arrival_datetime": "yesterday"}, ".arrival_datetime: not a date-time"),
    ],
)
def test_the_schema_checker_can_fail(change: dict[str, Any], expected: str) -> None:
    # Control for the property above: the exported schema (and this checker) refuse bad payloads.
    schema = committed("ae_assault.v1.json")
    data = SyntheticGenerator(seed=8).ae_assault().data() | change
    assert expected in schema_errors(data, schema, schema)


def test_missing_required_field_fails_the_schema() -> None:
    schema = committed("ae_assault.v1.json")
    data = SyntheticGenerator(seed=8).ae_assault().data()
    del data["site_code"]
    assert schema_errors(data, schema, schema) == [".site_code: missing"]


def test_schema_times_are_timezone_aware_in_the_models() -> None:
    # The schema's "date-time" format demands an offset (RFC 3339); the model agrees.
    model = EVENT_MODELS[("ae_assault", 1)]
    data = SyntheticGenerator(seed=8).ae_assault().data()
    assert model.model_validate_json(json.dumps(data), strict=True)
    naive = data | {"arrival_datetime": datetime(2026, 10, 3, 22, 0, tzinfo=UTC).replace(tzinfo=None).isoformat()}
    with pytest.raises(ValueError, match="timezone"):
        model.model_validate_json(json.dumps(naive), strict=True)
