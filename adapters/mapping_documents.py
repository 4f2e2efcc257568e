"""The shape of a mapping file, as pydantic models on :class:`schemas.documents.DocumentModel`.

A mapping file has four tables: ``[mapping]`` (which event type, how the export is written),
``[fields]`` (per event field: the column and how to read it), ``[codes.X]`` (export code =
event value) and ``[bands.X]`` (label = [lowest, highest]). The models say which keys each table
may hold and of which types: strict (TOML ``"12"`` is not 12), and unknown keys refused at every
level, because a misspelt key is otherwise ignored (a misspelt ``default`` or ``codes`` changes
what is sent without anyone seeing it).

What a model cannot say stays in :mod:`adapters.mapping`: field names against the event model,
code tables translating into values the schema has, identifier-looking columns, formats that
compile, time zones and encodings that exist, and which keys fit which kind of field.

:func:`problem` turns a :class:`pydantic.ValidationError` into the ``(where, message)`` of a
``MappingError``, in the sentences partners' data managers have always read for each key.
"""

from __future__ import annotations

import itertools
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    model_validator,
)

from schemas.documents import DocumentModel, ErrorDetails, key_path, sentence
from schemas.envelope import PARTY_ID_RE

__all__ = [
    "DEFAULT_EMPTY",
    "FORMATS",
    "FieldRuleDoc",
    "MappingDoc",
    "MappingHeadDoc",
    "ordered_bands",
    "problem",
    "shape",
]

DEFAULT_EMPTY = ("", "NULL", "null", "N/A", "n/a")
ExportFormat = Literal["csv", "jsonl"]
FORMATS: tuple[str, ...] = typing.get_args(ExportFormat)
TABLES = ("mapping", "fields", "codes", "bands")  # as the unknown-table message names them

# A column name, a record-key part: surrounding spaces are not part of the name.
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


def _one_or_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# ``"A"`` or ``["A", "B"]``: one column or several, never none.
Names = Annotated[list[Name], BeforeValidator(_one_or_list), Field(min_length=1)]


def _partner_id(value: str) -> str:
    if not PARTY_ID_RE.fullmatch(value):
        raise ValueError(_PARTNER)
    return value


_PARTNER = "must be a partner id (lower-case letters, digits, '-')"


class MappingHeadDoc(DocumentModel):
    """The ``[mapping]`` table: which event type the export becomes, and how the export is written."""

    name: Name
    description: str = ""
    event_type: Name
    version: int = 1
    format: ExportFormat | None = None  # None: guessed from the export's file name
    partner: Annotated[str, AfterValidator(_partner_id)] | None = None
    record_key: Names
    encoding: str = "utf-8-sig"
    delimiter: Annotated[str, StringConstraints(min_length=1, max_length=1)] = ","
    timezone: str = "Europe/London"
    empty_values: list[str] = Field(default_factory=lambda: list(DEFAULT_EMPTY))


# A [codes.X] table, or one written inline in a field: export code = event value, never empty.
CodeTable = Annotated[dict[str, str], Field(min_length=1)]

# ``codes = "gender"`` names a [codes.gender] table; ``codes = { M = "male" }`` is one inline.
# The discriminator keeps pydantic from trying (and reporting) both readings of every value.
Codes = Annotated[
    Annotated[str, Tag("name")] | Annotated[CodeTable, Tag("table")],
    Discriminator(lambda value: "name" if isinstance(value, str) else "table"),
]
_UNION_TAGS = ("name", "table")


class FieldRuleDoc(DocumentModel):
    """One entry of ``[fields]``: where an event field's value comes from, and how to read it.

    Which keys fit which field (``format`` for dates, ``true_values`` for booleans, ...) depends
    on the event model, so :mod:`adapters.mapping` checks that; this says only what each key is."""

    column: Name | None = None
    columns: Names | None = None  # several cells, one code each (list fields)
    time_column: Name | None = None  # date-time fields whose time is in a column of its own
    value: Any = None  # a constant: checked against the event field by the loader
    format: str | None = None
    time_format: str | None = None
    codes: Codes | None = None
    separator: Annotated[str, StringConstraints(min_length=1)] | None = None
    period: Literal["month_start", "month_end"] | None = None
    bands: str | None = None
    default: Any = None  # checked against the event field by the loader
    true_values: list[str] | None = None
    false_values: list[str] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> FieldRuleDoc:
        given = self.model_fields_set
        if len(given & {"column", "columns", "value"}) != 1:
            raise ValueError("give exactly one of column, columns (list fields) or value (a constant)")
        if {"codes", "bands"} <= given:
            raise ValueError("give codes or bands, not both")
        return self


def _column_or_table(value: Any) -> Any:
    # ``district = "LA"`` is short for ``district = { column = "LA" }``.
    if isinstance(value, str):
        return {"column": value}
    if not isinstance(value, dict):
        raise ValueError("must be a column name or a table")
    return value


FieldEntry = Annotated[FieldRuleDoc, BeforeValidator(_column_or_table)]

_BOUNDS = "must be [lowest, highest] (whole numbers, inclusive)"


def _lowest_first(bounds: list[int]) -> list[int]:
    if bounds[0] > bounds[1]:
        raise ValueError(_BOUNDS)
    return bounds


Bounds = Annotated[list[int], Field(min_length=2, max_length=2), AfterValidator(_lowest_first)]


def ordered_bands(table: dict[str, list[int]]) -> list[tuple[int, int, str]]:
    """A band table as ``(lowest, highest, label)``, lowest first."""
    return sorted((bounds[0], bounds[1], label) for label, bounds in table.items())


def _no_overlap(table: dict[str, list[int]]) -> dict[str, list[int]]:
    # Overlapping bands would put one age in two bands: the label sent would depend on table order.
    for (_, hi, a), (lo, _, b) in itertools.pairwise(ordered_bands(table)):
        if lo <= hi:
            raise ValueError(f"bands {a!r} and {b!r} overlap")
    return table


BandTable = Annotated[dict[str, Bounds], Field(min_length=1), AfterValidator(_no_overlap)]


class MappingDoc(DocumentModel):
    """A whole mapping file (the field order is the order problems are found in)."""

    mapping: MappingHeadDoc
    codes: dict[str, CodeTable] = Field(default_factory=dict)
    bands: dict[str, BandTable] = Field(default_factory=dict)
    fields: Annotated[dict[str, FieldEntry], Field(min_length=1)]


def shape(doc: Any) -> MappingDoc:
    """The mapping document's shape, or :class:`ValidationError` (see :func:`problem`)."""
    return MappingDoc.model_validate(doc)


# -- pydantic's errors in the mapping's own words ----------------------------------------------------


def problem(exc: ValidationError) -> tuple[str, str]:
    """``(where, message)`` for the first problem of a mapping document.

    An unknown key is reported before anything else wrong in the table holding it (a misspelt
    key is usually why another looks missing), with every unknown key of that table at once."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    unknown = sorted((e for e in errors if e["type"] == "extra_forbidden"), key=lambda e: len(e["loc"]))
    for error in unknown:
        parent = tuple(error["loc"][:-1])
        if tuple(first["loc"][: len(parent)]) == parent:
            names = sorted(str(e["loc"][-1]) for e in unknown if tuple(e["loc"][:-1]) == parent)
            return _unknown(parent, ", ".join(names))
    return _located(first)


def _unknown(parent: tuple[int | str, ...], names: str) -> tuple[str, str]:
    if not parent:
        return "", f"unknown table(s) {names} (expected {', '.join(TABLES)})"
    if parent[0] == "fields":
        return key_path(parent), f"unknown key(s) {names} (allowed: {', '.join(sorted(FieldRuleDoc.model_fields))})"
    return key_path(parent), f"unknown key(s) {names}"


def _located(error: ErrorDetails) -> tuple[str, str]:
    loc = tuple(error["loc"])
    if loc[2:3] == ("codes",) and loc[3:4] and loc[3] in _UNION_TAGS:
        loc = loc[:3] + loc[4:]  # the discriminator's tag is not a key of the file
    if error["type"] in ("value_error", "assertion_error"):
        return key_path(loc), sentence(error)  # our own validators' sentences
    value = error.get("input")
    match loc:
        case ("mapping",):
            return "mapping", "the [mapping] table is missing"
        case ("mapping", "name" | "event_type"):
            return key_path(loc), "must be a non-empty string"
        case ("mapping", "description"):
            return key_path(loc), "must be a string"
        case ("mapping", "version"):
            return key_path(loc), "must be an integer"
        case ("mapping", "format"):
            return key_path(loc), f"must be one of {', '.join(FORMATS)}"
        case ("mapping", "partner"):
            return key_path(loc), _PARTNER
        case ("mapping", "record_key") | ("fields", str(), "columns"):
            return key_path(loc), "must be a string or a non-empty list of strings"
        case ("mapping", "record_key", int()) | ("fields", str(), "columns", int()):
            return key_path(loc), "must be a non-empty string"
        case ("mapping", "encoding"):
            return key_path(loc), f"unknown encoding {value!r}"
        case ("mapping", "delimiter"):
            return key_path(loc), "must be one character"
        case ("mapping", "timezone"):
            return key_path(loc), f"unknown time zone {value!r}"
        case ("mapping", "empty_values", *_):
            return "mapping.empty_values", "must be a list of strings"
        case ("codes" | "bands",):
            return key_path(loc), "must be a table of tables"
        case ("codes" | "bands", str()):
            return key_path(loc), "must be a non-empty table of export code = event value"
        case ("codes", str(), str() as code) | ("fields", str(), "codes", str() as code):
            return key_path(loc[:-1]), f"the value for {code!r} must be a string"
        case ("bands", str(), str(), *_):
            return key_path(loc[:3]), _BOUNDS
        case ("fields",):
            return "fields", "the [fields] table is missing or empty"
        case ("fields", str(), "column" | "time_column" | "separator"):
            return key_path(loc), "must be a non-empty string"
        case ("fields", str(), "format" | "time_format"):
            return key_path(loc[:2]), "format must be a string such as '%d/%m/%Y' or 'iso'"
        case ("fields", str(), "codes"):
            return key_path(loc), "must name a [codes.X] table or be an inline table"
        case ("fields", str(), "period"):
            return key_path(loc), "must be month_start or month_end"
        case ("fields", str(), "bands"):
            return key_path(loc), "must name a [bands.X] table"
        case ("fields", str(), "true_values" | "false_values", *_):
            return key_path(loc[:2]), "true_values / false_values must be lists of strings"
        case ():
            return "", "must be a table"
    return key_path(loc), sentence(error)
