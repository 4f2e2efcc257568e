"""Mapping files, date formats and identifier-column detection: pure, no I/O beyond tmp files."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from adapters.datetimes import FormatError, ValueFormatError, compile_format, parse_date, parse_datetime
from adapters.mapping import CellProblem, Mapped, MappingError, builtin_mappings, compile_mapping, load_mapping
from adapters.sample_exports import KINDS, export_rows, sample_records
from schemas.events.common import DIRECT_IDENTIFIER_FIELDS
from schemas.identifiers import identifier_columns, looks_like_identifier

LONDON = ZoneInfo("Europe/London")

# -- dates and times ------------------------------------------------------------------------------------


def test_uk_dates_and_times_parse() -> None:
    fmt = compile_format("%d/%m/%Y", need_date=True, need_time=False)
    assert parse_date(fmt, "03/10/2026") == date(2026, 10, 3)
    assert parse_date(fmt, "3/1/2026") == date(2026, 1, 3)  # spreadsheets drop leading zeros
    both = compile_format("%d-%b-%y %H:%M", need_date=True, need_time=True)
    assert parse_datetime(both, "03-Oct-26 23:15", LONDON) == datetime(2026, 10, 3, 23, 15, tzinfo=LONDON)


@pytest.mark.parametrize("value", ["31/02/2026", "2026-10-03", "03/10/26", "3/10/2026 ", "00/10/2026", ""])
def test_impossible_or_misformatted_dates_are_refused(value: str) -> None:
    fmt = compile_format("%d/%m/%Y", need_date=True, need_time=False)
    with pytest.raises(ValueFormatError):
        parse_date(fmt, value)


def test_local_times_take_the_offset_of_their_day() -> None:
    date_fmt = compile_format("%d/%m/%Y", need_date=True, need_time=False)
    time_fmt = compile_format("%H:%M", need_date=False, need_time=True)
    summer = parse_datetime(date_fmt, "01/07/2026", LONDON, time_fmt, "23:40")
    winter = parse_datetime(date_fmt, "01/12/2026", LONDON, time_fmt, "23:40")
    assert summer.isoformat() == "2026-07-01T23:40:00+01:00"
    assert winter.isoformat() == "2026-12-01T23:40:00+00:00"
    # the hour that happens twice (clocks go back 25/10/2026): the first occurrence, BST
    twice = parse_datetime(date_fmt, "25/10/2026", LONDON, time_fmt, "01:30")
    assert twice.isoformat() == "2026-10-25T01:30:00+01:00"
    # the hour that never happens (clocks go forward 29/03/2026): refused
    with pytest.raises(ValueFormatError, match="does not exist"):
        parse_datetime(date_fmt, "29/03/2026", LONDON, time_fmt, "01:30")
    with pytest.raises(ValueFormatError):
        parse_datetime(date_fmt, "29/03/2026", LONDON, time_fmt, "24:00")


def test_iso_date_times_keep_their_offset_or_take_the_local_one() -> None:
    iso = compile_format("iso", need_date=True, need_time=True)
    assert parse_datetime(iso, "2026-10-03T23:15:00+01:00", LONDON).isoformat() == "2026-10-03T23:15:00+01:00"
    assert parse_datetime(iso, "2026-12-03T23:15", LONDON).isoformat() == "2026-12-03T23:15:00+00:00"


@pytest.mark.parametrize("fmt", ["%d/%m", "%Y-%j", "%d/%m/%Y %I:%M", "%H", "%d/%m/%Y %"])
def test_unreadable_formats_are_mapping_errors(fmt: str) -> None:
    with pytest.raises(FormatError):
        compile_format(fmt, need_date=True, need_time=False)


# -- direct identifiers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "NHS Number",
        "NHS No.",
        "nhs_no",
        "Patient Name",
        "Forename",
        "Legal Surname",
        "Pupil Forenames",
        "DOB",
        "D.O.B.",
        "Date of Birth",
        "Postcode",
        "Home Post Code",
        "UPN",
        "Former UPN",
        "Unique Pupil Number",
        "Address Line 1",
        "Email Address",
        "Tel No",
        "Mobile Number",
        "NI Number",
        "SIA Badge No",
        "PNC ID",
        "Latitude",
        "Easting",
        "Hospital Number",
        "Name",
    ],
)
def test_identifier_headers_are_recognised(header: str) -> None:
    assert looks_like_identifier(header) is not None


def test_every_contract_identifier_field_is_recognised() -> None:
    assert [f for f in DIRECT_IDENTIFIER_FIELDS if looks_like_identifier(f) is None] == []


@pytest.mark.parametrize(
    "header",
    [
        "Attendance No",
        "Premises Name",
        "School Name",
        "Premises Address",
        "Patient LSOA",
        "Age at Arrival",
        "Gender",
        "Crime Reference",
        "URN",
        "Location Desc",
        "premises_licence_no",
        "police_ref",
        "Offence Description",
    ],
)
def test_ordinary_headers_are_not_flagged(header: str) -> None:
    assert looks_like_identifier(header) is None


def test_no_builtin_mapping_or_sample_column_looks_like_an_identifier() -> None:
    for kind in KINDS.values():
        assert identifier_columns(kind.columns) == [], kind.name


# -- mapping files --------------------------------------------------------------------------------------


def test_every_builtin_mapping_loads() -> None:
    assert set(builtin_mappings()) == set(KINDS)
    for name in builtin_mappings():
        mapping = load_mapping(name)
        assert mapping.partner == KINDS[name].partner


@pytest.mark.parametrize("name", sorted(KINDS))
def test_synthetic_exports_map_back_to_the_same_events(name: str) -> None:
    """The sample writer speaks the partner's codes; its mapping must translate every one back."""
    kind = KINDS[name]
    mapping = load_mapping(name)
    records = sample_records(kind, 600, seed=11)
    for record, row in zip(records, export_rows(kind, records, seed=11), strict=True):
        cells: dict[str, Any] = (
            json.loads(json.dumps(row))
            if kind.format == "jsonl"
            else {k: "" if v is None else str(v) for k, v in row.items()}
        )
        mapped = mapping.map_row(cells)
        assert isinstance(mapped, Mapped), mapped
        want = record.data()
        if name == "premises-incidents":
            want.pop("lsoa", None)  # the incident-log app does not know the LSOA
        assert mapped.data == want


def base_doc(**fields: Any) -> dict[str, Any]:
    return {
        "mapping": {"name": "t", "event_type": "police_sv_offence", "record_key": "Ref"},
        "fields": {
            "ho_offence_code": "Class",
            "sv_group": {"column": "Class", "codes": "group"},
            "offence_datetime": {"column": "When", "format": "%d/%m/%Y %H:%M"},
            "district": "LA",
            "knife_involved": "Knife",
            "victim_age_band": {"column": "VAge", "bands": "age", "default": "not_known"},
            "victim_sex": {"column": "VSex", "codes": {"M": "male", "F": "female"}},
            "suspect_age_band": {"value": "not_known"},
            "suspect_sex": {"value": "not_known"},
            "outcome_status": {"column": "Outcome", "default": "under_investigation"},
            **fields,
        },
        "codes": {"group": {"8N": "violence_with_injury", "10D": "possession_of_weapons"}},
        "bands": {"age": {"0-10": [0, 10], "11-17": [11, 17], "18-24": [18, 24], "25-34": [25, 120]}},
    }


GOOD_ROW = {
    "Ref": "CR1",
    "Class": "8N",
    "When": "03/10/2026 23:15",
    "LA": "E06000015",
    "Knife": "Y",
    "VAge": "15",
    "VSex": "m",
    "Outcome": "",
}


def test_a_row_maps_with_codes_bands_defaults_and_case_insensitive_codes() -> None:
    mapped = compile_mapping(base_doc()).map_row(GOOD_ROW)
    assert isinstance(mapped, Mapped)
    assert mapped.record_key == "CR1"
    assert mapped.data["sv_group"] == "violence_with_injury"
    assert mapped.data["victim_age_band"] == "11-17"
    assert mapped.data["victim_sex"] == "male"
    assert mapped.data["knife_involved"] is True
    assert mapped.data["outcome_status"] == "under_investigation"
    assert mapped.data["offence_datetime"] == "2026-10-03T23:15:00+01:00"


def problems(row: dict[str, Any], **fields: Any) -> list[tuple[str, str]]:
    result = compile_mapping(base_doc(**fields)).map_row(row)
    assert not isinstance(result, Mapped)
    return [(p.column, p.reason.value) for p in result if isinstance(p, CellProblem)]


def test_every_problem_in_a_row_is_reported_with_its_column() -> None:
    row = GOOD_ROW | {"When": "31/09/2026 23:15", "VSex": "Q", "Knife": "maybe", "VAge": "fifteen", "LA": ""}
    assert sorted(problems(row)) == sorted(
        [
            ("When", "bad_date"),
            ("VSex", "unknown_code"),
            ("Knife", "bad_boolean"),
            ("VAge", "bad_number"),
            ("LA", "missing_value"),
        ]
    )


def test_missing_record_key_and_schema_rules_are_reported() -> None:
    assert ("Ref", "missing_record_key") in problems(GOOD_ROW | {"Ref": " "})
    assert ("LA", "unknown_code") in problems(GOOD_ROW | {"LA": "E09000001"})  # not a Derbyshire district
    # the model's own cross-field rule: the group must match the class
    doc_codes = {"group": {"8N": "robbery", "10D": "possession_of_weapons"}}
    mapping = compile_mapping(base_doc() | {"codes": doc_codes})
    result = mapping.map_row(GOOD_ROW)
    assert not isinstance(result, Mapped)
    assert [p.reason.value for p in result] == ["schema_invalid"]
    assert "does not match Home Office code" in result[0].message


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"fields": {"nosuchfield": "X"}}, "has no field 'nosuchfield'"),
        ({"drop": "district"}, "requires district"),
        ({"fields": {"victim_sex": {"column": "VSex", "codes": {"M": "man"}}}}, "'man' is not a value of victim_sex"),
        ({"fields": {"district": {"column": "NHS Number"}}}, "looks like a direct identifier"),
        ({"record_key": "Date of Birth"}, "looks like a direct identifier"),
        ({"fields": {"district": {"column": "LA", "colum": "x"}}}, "unknown key"),
        ({"fields": {"offence_datetime": {"column": "When", "format": "%d/%m"}}}, "needs a day"),
        ({"fields": {"victim_age_band": {"column": "VAge", "bands": "nope"}}}, "no table"),
        ({"event_type": "ae_assault_v9"}, "no event type"),
    ],
)
def test_mapping_mistakes_are_caught_at_load(change: dict[str, Any], match: str) -> None:
    doc = base_doc()
    if "fields" in change:
        doc["fields"].update(change["fields"])
    if "drop" in change:
        del doc["fields"][change["drop"]]
    if "record_key" in change:
        doc["mapping"]["record_key"] = change["record_key"]
    if "event_type" in change:
        doc["mapping"]["event_type"] = change["event_type"]
    with pytest.raises(MappingError, match=match):
        compile_mapping(doc)


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split("/")
    table = doc
    for part in parents:
        table = table[part]
    table[last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "where", "message"),
    [
        # unknown keys are refused at every level, all of a table's at once
        ("extra", {}, "", "unknown table(s) extra (expected mapping, fields, codes, bands)"),
        ("mapping/nmae", "t", "mapping", "unknown key(s) nmae"),
        ("fields/district", {"column": "LA", "zz": 1, "aa": 2}, "fields.district", "unknown key(s) aa, zz (allowed:"),
        # strict types: TOML "1" is not 1, false is not 0
        ("mapping/version", "1", "mapping.version", "must be an integer"),
        ("mapping/version", True, "mapping.version", "must be an integer"),
        ("bands/age/0-10", [False, 10], "bands.age.0-10", "must be [lowest, highest] (whole numbers, inclusive)"),
        ("codes/group/8N", 8, "codes.group", "the value for '8N' must be a string"),
        ("codes/unused", {"A": 1}, "codes.unused", "the value for 'A' must be a string"),  # used or not
        ("mapping/description", 12, "mapping.description", "must be a string"),
        ("mapping/record_key", ["Ref", " "], "mapping.record_key[1]", "must be a non-empty string"),
        ("mapping/format", "xls", "mapping.format", "must be one of csv, jsonl"),
        ("mapping/partner", "Police", "mapping.partner", "must be a partner id"),
        ("mapping/delimiter", ";;", "mapping.delimiter", "must be one character"),
        ("mapping/encoding", "nope-8", "mapping.encoding", "unknown encoding 'nope-8'"),
        ("mapping/timezone", "Mars/Olympus", "mapping.timezone", "unknown time zone 'Mars/Olympus'"),
        ("fields/district", 3, "fields.district", "must be a column name or a table"),
        ("fields/district", " ", "fields.district.column", "must be a non-empty string"),
        ("fields/district", {"column": "LA", "value": "x"}, "fields.district", "give exactly one of column, columns"),
        ("fields/victim_sex", {"column": "VSex", "codes": {"M": 1}}, "fields.victim_sex.codes", "the value for 'M'"),
        ("fields/victim_sex", {"column": "VSex", "codes": 3}, "fields.victim_sex.codes", "must name a [codes.X] table"),
        ("fields/knife_involved", {"column": "K", "true_values": "Y"}, "fields.knife_involved", "true_values / false"),
        ("fields/offence_datetime", {"column": "When", "format": 3}, "fields.offence_datetime", "format must be a"),
    ],
)
def test_the_document_shape_is_strict_and_says_where(path: str, value: Any, where: str, message: str) -> None:
    with pytest.raises(MappingError) as caught:
        compile_mapping(_set(base_doc(), path, value))
    assert caught.value.where == where
    assert str(caught.value).startswith(f"{where}: {message}" if where else message)


def test_an_unknown_key_is_reported_before_what_it_leaves_missing() -> None:
    doc = base_doc()
    doc["mapping"]["nmae"] = doc["mapping"].pop("name")
    with pytest.raises(MappingError, match="unknown key"):
        compile_mapping(doc)


def test_overlapping_bands_are_refused() -> None:
    doc = base_doc()
    doc["bands"]["age"]["18-24"] = [17, 24]
    with pytest.raises(MappingError, match="overlap"):
        compile_mapping(doc)


def test_list_fields_from_several_columns_or_one_cell() -> None:
    mapping = load_mapping("school-exclusions")
    row = dict.fromkeys(mapping.columns, "") | {
        "Exclusion ID": "EX1",
        "Category": "FIXD",
        "Start Date": "2026-10-05",
        "Sessions": "2",
        "Reason 1": "PP",
        "Reason 3": "OW",
        "NC Year": "9",
        "Term": "AUT",
        "Academic Year": "2026/27",
        "URN": "112233",
        "LA": "830",
    }
    mapped = mapping.map_row(row)
    assert isinstance(mapped, Mapped)
    assert mapped.data["reason_codes"] == ["PP", "OW"]
    lunchtime = mapping.map_row(row | {"Category": "LUNC"})
    assert not isinstance(lunchtime, Mapped)
    assert [(p.column, p.reason.value) for p in lunchtime] == [("Category", "unknown_code")]


def test_a_lone_surrogate_from_json_lines_is_a_row_problem_not_a_crash() -> None:
    mapping = load_mapping("premises-incidents")
    kind = KINDS["premises-incidents"]
    records = sample_records(kind, 1)
    row = json.loads(json.dumps(export_rows(kind, records)[0]))
    row["premises_name"] = "The Old \ud800 Bell"
    result = mapping.map_row(row)
    assert not isinstance(result, Mapped)
    assert len(result) == 1
    assert result[0].reason.value in ("schema_invalid", "bad_value")  # the schema's check, or ours behind it
