"""Mapping files: how one partner export's columns become one event type's fields.

A mapping is data (TOML), written by the partner's data manager, not code. It names, for every
event field it fills, the column it comes from and how to read it: a date format, a code table
translating the partner's local codes to the contract's, age bands, list separators, defaults.
How to read a cell follows from the event field's type in the schema (a date field is read as a
date, a boolean field as yes/no), so a mapping says only what differs between exports.

The file's shape (which keys, of which types) is :class:`adapters.mapping_documents.MappingDoc`.
Loading then checks the mapping against the event model, so mistakes surface once, before a row is
read: an unknown field, a required field left unmapped, a code table translating into a value
the schema does not have, and a column that looks like a direct identifier (a mapping may never
read one: DOMAIN.md, health feeds are anonymised at source). Event fields a mapping does not name
are not sent at all (data minimisation at the source: UK GDPR Art 5(1)(c)).

Mapping a row is pure: values in, an event payload or a list of problems out.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from adapters.datetimes import (
    Format,
    FormatError,
    ValueFormatError,
    compile_format,
    parse_date,
    parse_datetime,
)
from adapters.mapping_documents import FieldRuleDoc, ordered_bands, problem, shape
from adapters.report import Problem
from schemas.envelope import join_record_key, record_key_part
from schemas.errors import ConfigurationError
from schemas.events import EVENT_MODELS, EventModel
from schemas.fields import FieldKind, FieldSpec, schema_fields
from schemas.identifiers import looks_like_identifier

BUILTIN_DIR = Path(__file__).resolve().parent / "mappings"

Row = Mapping[str, Any]  # one export row: column -> cell (CSV: str; JSON lines: any JSON value)


class MappingError(ConfigurationError, ValueError):
    """The mapping file itself is wrong; ``where`` points into it (e.g. ``fields.arrival_datetime``).

    A :class:`ConfigurationError` (nothing is read with a wrong mapping); still a ``ValueError`` for
    callers that caught it as one."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where


class CellError(Exception):
    """One cell could not be read; the row is reported and not sent."""

    def __init__(self, column: str, reason: Problem, message: str) -> None:
        super().__init__(message)
        self.column = column
        self.reason = reason
        self.message = message


# -- what each event field needs, from the schema ---------------------------------------------------


class Kind(StrEnum):
    """How a cell is read: the mapping's coarser view of :class:`schemas.fields.FieldKind`."""

    TEXT = "text"  # str or a code list (enum)
    INT = "int"
    BOOL = "bool"
    DATE = "date"
    DATETIME = "datetime"
    LIST = "list"  # a list of codes


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    kind: Kind
    enum: type[Enum] | None  # the code list, for TEXT and LIST fields that have one
    required: bool


_KIND: Mapping[FieldKind, Kind] = {
    FieldKind.TEXT: Kind.TEXT,
    FieldKind.STRING: Kind.TEXT,
    FieldKind.CODE: Kind.TEXT,
    FieldKind.DISTRICT: Kind.TEXT,
    FieldKind.LSOA: Kind.TEXT,
    FieldKind.INT: Kind.INT,
    FieldKind.BOOL: Kind.BOOL,
    FieldKind.DATE: Kind.DATE,
    FieldKind.DATETIME: Kind.DATETIME,
    FieldKind.CODE_LIST: Kind.LIST,
}


def _target(spec: FieldSpec) -> Target:
    enum = spec.python_type if isinstance(spec.python_type, type) and issubclass(spec.python_type, Enum) else None
    return Target(spec.name, _KIND[spec.kind], enum, spec.required)


def targets(model: type[EventModel]) -> dict[str, Target]:
    """The mapping's view of an event model's fields (the one reading: ``schemas/fields.py``)."""
    return {name: _target(spec) for name, spec in schema_fields(model).items()}


# -- the compiled mapping ------------------------------------------------------------------------------

Converter = Callable[[Row], Any]  # returns the field's value, or None when the export gives none

DEFAULT_TRUE = ("y", "yes", "true", "t", "1")
DEFAULT_FALSE = ("n", "no", "false", "f", "0")


@dataclass(frozen=True, slots=True)
class FieldRule:
    target: Target
    label: str  # the column(s) it reads, for the report
    columns: tuple[str, ...]
    convert: Converter


@dataclass(frozen=True, slots=True)
class Mapped:
    """A row that mapped and validated: ready to sign."""

    record_key: str
    data: dict[str, Any]  # JSON-ready payload, exactly as it will be signed
    content_sha256: str  # of (event type, version, payload): what the broker compares on a resend
    data_json: str  # the payload's canonical JSON (RFC 8785)


@dataclass(frozen=True, slots=True)
class CellProblem:
    column: str
    reason: Problem
    message: str


@dataclass(frozen=True)
class ExportMapping:
    name: str
    description: str
    event_type: str
    version: int
    model: type[EventModel]
    format: str | None
    partner: str | None
    record_key: tuple[str, ...]
    encoding: str
    delimiter: str
    timezone: str
    rules: tuple[FieldRule, ...]
    origin: str = ""
    empty_values: frozenset[str] = field(default_factory=frozenset)
    source: dict[str, Any] | None = field(default=None, repr=False)  # the TOML document (for a worker process)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the mapping reads (record key first), without repeats."""
        seen = dict.fromkeys(self.record_key)
        for rule in self.rules:
            seen.update(dict.fromkeys(rule.columns))
        return tuple(seen)

    def key_of(self, row: Row) -> str | None:
        """The row's source record key (``schemas.envelope.join_record_key``), or None when a
        record-key column is missing or empty: the contract every client must reproduce."""
        parts = []
        for column in self.record_key:
            value = row.get(column)
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                return None
            text = record_key_part(value)
            if text in self.empty_values:
                return None
            parts.append(text)
        return join_record_key(parts)

    def map_row(self, row: Row) -> Mapped | list[CellProblem]:
        """Map and validate one row; every problem in it is reported, not only the first."""
        key = self.key_of(row)
        problems: list[CellProblem] = []
        if key is None:
            problems.append(
                CellProblem(
                    " + ".join(self.record_key),
                    Problem.MISSING_RECORD_KEY,
                    "The record key is empty: without it a re-run could not recognise this row.",
                )
            )
        values: dict[str, Any] = {}
        for rule in self.rules:
            try:
                value = rule.convert(row)
            except CellError as exc:
                problems.append(CellProblem(exc.column, exc.reason, exc.message))
                continue
            if value is not None:
                values[rule.target.name] = value
            elif rule.target.required:
                problems.append(
                    CellProblem(
                        rule.label, Problem.MISSING_VALUE, f"{rule.target.name} is required and the cell is empty."
                    )
                )
        if problems:
            return problems
        assert key is not None
        try:
            # Lax mode only to turn code strings into the schema's enums: every value already has
            # its field's Python type (converted above), so nothing is coerced across types.
            event = self.model.model_validate(values, strict=False)
        except ValidationError as exc:
            return [self._schema_problem(error) for error in exc.errors(include_url=False)]
        data = event.model_dump(mode="json", exclude_none=True)
        # The payload's canonical JSON (no model has a float field, member names are ASCII: the
        # C encoder's sorted compact output is RFC 8785), computed once: hashed here for the
        # state file, and the signed envelope is assembled around it (adapters.signer.EnvelopeWriter).
        data_json = json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)
        try:
            content = hashlib.sha256(f'["{self.event_type}",{self.version},{data_json}]'.encode()).hexdigest()
        except UnicodeEncodeError:
            # A JSON lines export can smuggle a lone surrogate ("\ud800") into text: no UTF-8 form,
            # so no canonical form either (RFC 8785); the broker's parser refuses it too.
            return [CellProblem("", Problem.BAD_VALUE, "A text value holds an invalid character (a lone surrogate).")]
        return Mapped(key, data, content, data_json)

    def _schema_problem(self, error: Any) -> CellProblem:
        loc = error.get("loc") or ()
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if loc and isinstance(loc[0], str):
            name = loc[0]
            rule = next((r for r in self.rules if r.target.name == name), None)
            return CellProblem(rule.label if rule else name, Problem.SCHEMA_INVALID, f"{name}: {message}")
        return CellProblem("", Problem.SCHEMA_INVALID, message)


# -- loading -------------------------------------------------------------------------------------------


def builtin_mappings() -> dict[str, Path]:
    return {path.stem: path for path in sorted(BUILTIN_DIR.glob("*.toml"))}


def resolve(source: str | Path) -> Path:
    """A path, or the name of a mapping shipped with the adapter (``ae-istv``)."""
    path = Path(source)
    if path.exists():
        return path
    builtin = builtin_mappings().get(str(source))
    if builtin is not None:
        return builtin
    known = ", ".join(builtin_mappings()) or "none"
    raise MappingError("", f"no mapping file {str(source)!r} (built-in mappings: {known})")


def load_mapping(source: str | Path) -> ExportMapping:
    path = resolve(source)
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(str(path), f"not valid TOML ({exc})") from None
    return compile_mapping(doc, origin=str(path))


def _not_identifier(where: str, column: str) -> str:
    # A mapping may never read a direct identifier (DOMAIN.md: health feeds are anonymised at
    # source): a column whose name looks like one (NHS number, date of birth, UPN, ...) is refused
    # here, before a row is read, whatever field it would fill.
    looks = looks_like_identifier(column)
    if looks is not None:
        raise MappingError(
            where,
            f"column {column!r} looks like a direct identifier ({looks}); a mapping may never read one "
            "(identifiers stay in the partner's system: PCSC Act 2022 s.16 does not cover patient data)",
        )
    return column


def compile_mapping(doc: dict[str, Any], *, origin: str = "") -> ExportMapping:
    """Check a mapping document against its event model and compile it into row converters.

    The document's shape (keys, types, band overlaps) is :class:`MappingDoc`'s; what is checked
    here needs the event model or the running system: the event type exists, every field named
    exists and every required one is mapped, codes translate into the schema's values, no column
    looks like a direct identifier, formats compile, the time zone and encoding exist."""
    try:
        shaped = shape(doc)
    except ValidationError as exc:
        raise MappingError(*problem(exc)) from None
    head = shaped.mapping
    event_type, version = head.event_type, head.version
    model = EVENT_MODELS.get((event_type, version))
    if model is None:
        known = ", ".join(f"{t} v{v}" for t, v in sorted(EVENT_MODELS))
        raise MappingError("mapping.event_type", f"no event type {event_type!r} v{version} (known: {known})")
    record_key = tuple(_not_identifier("mapping.record_key", c) for c in head.record_key)
    try:
        "".encode(head.encoding)
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        raise MappingError("mapping.encoding", f"unknown encoding {head.encoding!r}") from None
    try:
        zone = ZoneInfo(head.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise MappingError("mapping.timezone", f"unknown time zone {head.timezone!r}") from None
    empty_values = frozenset(v.strip() for v in head.empty_values) | {""}

    bands = {name: ordered_bands(table) for name, table in shaped.bands.items()}
    all_targets = targets(model)
    rules: list[FieldRule] = []
    for field_name, spec in shaped.fields.items():
        where = f"fields.{field_name}"
        target = all_targets.get(field_name)
        if target is None:
            raise MappingError(
                where, f"{event_type} v{version} has no field {field_name!r} (fields: {', '.join(all_targets)})"
            )
        rules.append(_rule(where, target, spec, shaped.codes, bands, zone, empty_values))
    mapped = {rule.target.name for rule in rules}
    missing = [t.name for t in all_targets.values() if t.required and t.name not in mapped]
    if missing:
        raise MappingError(
            "fields", f"{event_type} v{version} requires {', '.join(missing)}: say which column each comes from"
        )
    return ExportMapping(
        name=head.name,
        description=head.description,
        event_type=event_type,
        version=version,
        model=model,
        format=head.format,
        partner=head.partner,
        record_key=record_key,
        encoding=head.encoding,
        delimiter=head.delimiter,
        timezone=head.timezone,
        rules=tuple(rules),
        origin=origin,
        empty_values=empty_values,
        source=doc,
    )


def _check_value(where: str, target: Target, value: Any) -> None:
    if target.enum is not None and value not in {m.value for m in target.enum}:
        allowed = ", ".join(str(m.value) for m in target.enum)
        raise MappingError(where, f"{value!r} is not a value of {target.name} (allowed: {allowed})")


def _rule(
    where: str,
    target: Target,
    spec: FieldRuleDoc,
    codes: Mapping[str, Mapping[str, str]],
    bands: Mapping[str, list[tuple[int, int, str]]],
    zone: ZoneInfo,
    empty: frozenset[str],
) -> FieldRule:
    given = spec.model_fields_set  # the keys the file sets (the model: exactly one of column, columns, value)
    if "value" in given:
        constant = spec.value
        for item in constant if isinstance(constant, list) else [constant]:
            _check_value(f"{where}.value", target, item)
        return FieldRule(target, "(constant)", (), lambda _row: constant)

    if spec.columns is not None:
        if target.kind is not Kind.LIST:
            raise MappingError(where, "columns (several cells) is only for list fields")
        columns: tuple[str, ...] = tuple(spec.columns)
    else:
        assert spec.column is not None  # the model: one of column, columns, value
        columns = (spec.column,)
    time_column = spec.time_column
    if time_column is not None:
        if target.kind is not Kind.DATETIME:
            raise MappingError(where, "time_column is only for date-time fields")
        columns = (*columns, time_column)
    for column in columns:
        _not_identifier(where, column)
    label = " + ".join(columns)

    table: dict[str, str] | None = None
    if spec.codes is not None:
        if target.kind not in (Kind.TEXT, Kind.LIST):
            raise MappingError(where, "codes translate text or list fields only")
        raw: Mapping[str, str]
        if isinstance(spec.codes, str):
            if spec.codes not in codes:
                raise MappingError(f"{where}.codes", f"no table [codes.{spec.codes}]")
            raw = codes[spec.codes]
        else:
            raw = spec.codes
        table = {}
        for code, value in raw.items():
            _check_value(f"{where}.codes.{code}", target, value)
            folded = code.strip().casefold()
            if folded in table and table[folded] != value:
                raise MappingError(f"{where}.codes", f"code {code!r} appears twice (codes are matched ignoring case)")
            table[folded] = value
    band_table = None
    if spec.bands is not None:
        if target.kind is not Kind.TEXT:
            raise MappingError(where, "bands turn a number into a text or code field")
        if spec.bands not in bands:
            raise MappingError(f"{where}.bands", f"no table [bands.{spec.bands}]")
        band_table = bands[spec.bands]
        for _, _, band_label in band_table:
            _check_value(f"bands.{spec.bands}.{band_label}", target, band_label)
    default = spec.default
    if default is not None:
        for item in default if isinstance(default, list) else [default]:
            _check_value(f"{where}.default", target, item)

    column = columns[0]
    kind = target.kind

    def cell(row: Row, name: str = column) -> Any:
        value = row.get(name)
        if isinstance(value, str):
            value = value.strip()
            if value in empty:
                return None
        return value

    if kind is Kind.TEXT:
        allowed = None if target.enum is None else {str(m.value) for m in target.enum}
        for key in ("format", "time_format", "separator", "period", "true_values", "false_values"):
            if key in given:
                raise MappingError(where, f"{key} does not apply to a text field")

        def text(row: Row) -> Any:
            value = cell(row)
            if value is None:
                return default
            if band_table is not None:
                number = _as_int(column, value)
                for lo, hi, band in band_table:
                    if lo <= number <= hi:
                        return band
                raise CellError(column, Problem.BAD_NUMBER, f"{number} is in none of the bands")
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise CellError(column, Problem.BAD_VALUE, f"expected text, found {type(value).__name__}")
            value = str(value)
            if table is not None:
                mapped = table.get(value.casefold())
                if mapped is None:
                    raise CellError(
                        column, Problem.UNKNOWN_CODE, f"{_show(value)} is not in the code table ({_known(table)})"
                    )
                return mapped
            if allowed is not None and value not in allowed:
                raise CellError(
                    column, Problem.UNKNOWN_CODE, f"{_show(value)} is not a code of {target.name} ({_known(allowed)})"
                )
            return value

        return FieldRule(target, label, columns, text)

    if kind is Kind.INT:

        def integer(row: Row) -> Any:
            value = cell(row)
            return default if value is None else _as_int(column, value)

        return FieldRule(target, label, columns, integer)

    if kind is Kind.BOOL:
        truthy = _folded(DEFAULT_TRUE if spec.true_values is None else spec.true_values)
        falsy = _folded(DEFAULT_FALSE if spec.false_values is None else spec.false_values)
        if truthy & falsy:
            raise MappingError(where, f"{', '.join(sorted(truthy & falsy))} is both true and false")

        def boolean(row: Row) -> Any:
            value = cell(row)
            if value is None:
                return default
            if isinstance(value, bool):
                return value
            folded = str(value).casefold()
            if folded in truthy:
                return True
            if folded in falsy:
                return False
            raise CellError(column, Problem.BAD_BOOLEAN, f"{_show(str(value))} is neither yes nor no")

        return FieldRule(target, label, columns, boolean)

    date_format = "iso" if spec.format is None else spec.format

    if kind is Kind.DATE:
        fmt = _format(where, date_format, need_date=True, need_time=False)
        period = spec.period

        def day(row: Row) -> Any:
            value = cell(row)
            if value is None:
                return default
            if not isinstance(value, str):
                raise CellError(column, Problem.BAD_DATE, f"expected a date, found {type(value).__name__}")
            try:
                parsed = _date_only(fmt, value, zone)
            except ValueFormatError as exc:
                raise CellError(column, Problem.BAD_DATE, str(exc)) from None
            if period == "month_start":
                return parsed.replace(day=1)
            if period == "month_end":
                return (parsed.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
            return parsed

        return FieldRule(target, label, columns, day)

    if kind is Kind.DATETIME:
        fmt = _format(where, date_format, need_date=True, need_time=time_column is None)
        time_fmt = (
            _format(where, "iso" if spec.time_format is None else spec.time_format, need_date=False, need_time=True)
            if time_column is not None
            else None
        )
        if time_fmt is not None and time_fmt.has_date:
            raise MappingError(f"{where}.time_format", "must hold a time only")
        if time_column is not None and fmt.has_time:
            raise MappingError(f"{where}.format", "the time is in time_column: format must hold a date only")

        def moment(row: Row) -> Any:
            value = cell(row)
            clock = cell(row, time_column) if time_column is not None else ""
            if value is None:
                if clock:
                    raise CellError(column, Problem.MISSING_VALUE, "the time is given but the date is empty")
                return None
            if clock is None:
                raise CellError(str(time_column), Problem.MISSING_VALUE, "the date is given but the time is empty")
            if not isinstance(value, str) or not isinstance(clock, str):
                raise CellError(label, Problem.BAD_DATE, "expected a date and time as text")
            try:
                return parse_datetime(fmt, value, zone, time_fmt, clock)
            except ValueFormatError as exc:
                raise CellError(label, Problem.BAD_DATE, str(exc)) from None

        return FieldRule(target, label, columns, moment)

    # Kind.LIST: one cell split by a separator, several cells (one code each), or a JSON array.
    separator = spec.separator
    if spec.column is not None and separator is None:
        separator = ";"
    allowed_items = None if target.enum is None else {str(m.value) for m in target.enum}

    def one_item(name: str, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise CellError(name, Problem.BAD_VALUE, f"expected a code, found {type(value).__name__}")
        text_value = str(value).strip()
        if table is not None:
            mapped = table.get(text_value.casefold())
            if mapped is None:
                raise CellError(
                    name, Problem.UNKNOWN_CODE, f"{_show(text_value)} is not in the code table ({_known(table)})"
                )
            return mapped
        if allowed_items is not None and text_value not in allowed_items:
            raise CellError(
                name,
                Problem.UNKNOWN_CODE,
                f"{_show(text_value)} is not a code of {target.name} ({_known(allowed_items)})",
            )
        return text_value

    def items(row: Row) -> Any:
        out: list[str] = []
        for name in columns:
            value = cell(row, name)
            if value is None:
                continue
            if isinstance(value, list):
                parts: list[Any] = value
            elif isinstance(value, str) and separator is not None:
                parts = [p for p in (s.strip() for s in value.split(separator)) if p and p not in empty]
            else:
                parts = [value]
            out.extend(one_item(name, p) for p in parts)
        return out or default

    return FieldRule(target, label, columns, items)


def _date_only(fmt: Format, value: str, zone: ZoneInfo) -> date:
    # A date field may be read from a date-time column (e.g. the period from "Arrival Date").
    if fmt.has_time:
        return parse_datetime(fmt, value, zone).date()
    return parse_date(fmt, value)


def _format(where: str, text: str, *, need_date: bool, need_time: bool) -> Format:
    try:
        return compile_format(text, need_date=need_date, need_time=need_time)
    except FormatError as exc:
        raise MappingError(where, str(exc)) from None


def _folded(values: Sequence[str]) -> frozenset[str]:
    return frozenset(v.strip().casefold() for v in values)


def _as_int(column: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("+-").isdigit() and text.isascii():
            return int(text)
    raise CellError(column, Problem.BAD_NUMBER, f"{_show(str(value))} is not a whole number")


def _show(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


def _known(codes: Mapping[str, Any] | set[str]) -> str:
    names = sorted(codes)
    shown = ", ".join(names[:12])
    return f"known: {shown}, ..." if len(names) > 12 else f"known: {shown}"
