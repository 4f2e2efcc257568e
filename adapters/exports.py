"""Reading a partner's export: CSV with a header row, or JSON lines (one object per line).

Two passes over the file. The first (:func:`scan`) reads everything once without sending
anything: it finds the columns (for JSON lines, every key of every object, nested ones too), counts
the rows for the progress bar, and finds what makes the whole file unusable (an undecodable byte,
a broken CSV). Only then does the second pass (:func:`rows`) stream the rows to be mapped, so a
direct-identifier column on the last line of a JSON lines file still stops the file before its
first row is sent.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.mapping import ExportMapping
from adapters.report import Problem, RowProblem, Stage

CSV_SUFFIXES = (".csv", ".txt", ".tsv")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass(frozen=True, slots=True)
class SourceRow:
    number: int  # CSV: spreadsheet row (header = 1); JSON lines: line number
    values: dict[str, Any] | None  # None: the row itself is malformed (see ``problem``)
    problem: str = ""


@dataclass
class ExportScan:
    format: str
    columns: list[str] = field(default_factory=list)  # header order, or first-seen order
    first_seen: dict[str, int] = field(default_factory=dict)  # column -> first row that has it
    rows: int = 0
    problems: list[RowProblem] = field(default_factory=list)  # file-level: the file must not be sent


def detect_format(path: Path, mapping: ExportMapping) -> str:
    if mapping.format is not None:
        return mapping.format
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    return "csv"


def _file_problem(
    message: str, *, row: int = 0, column: str = "", reason: Problem = Problem.UNREADABLE_FILE
) -> RowProblem:
    return RowProblem(row, "", column, Stage.FILE, reason.value, message)


def scan(path: Path, mapping: ExportMapping) -> ExportScan:
    fmt = detect_format(path, mapping)
    result = ExportScan(fmt)
    try:
        if fmt == "csv":
            _scan_csv(path, mapping, result)
        else:
            _scan_jsonl(path, mapping, result)
    except UnicodeDecodeError:
        result.problems.append(
            _file_problem(
                f"The file is not valid {mapping.encoding} (an undecodable byte after data row {result.rows}); "
                "export it as UTF-8, or set encoding in the mapping (e.g. cp1252 for older Windows systems)."
            )
        )
    except csv.Error as exc:
        result.problems.append(_file_problem(f"The CSV file is broken near row {result.rows + 1}: {exc}."))
    except OSError as exc:
        result.problems.append(_file_problem(f"The file cannot be read: {exc.strerror or exc}."))
    return result


def _open(path: Path, mapping: ExportMapping) -> Any:
    return path.open(encoding=mapping.encoding, newline="", errors="strict")


def _scan_csv(path: Path, mapping: ExportMapping, result: ExportScan) -> None:
    with _open(path, mapping) as fh:
        reader = csv.reader(fh, delimiter=mapping.delimiter)
        header = next(reader, None)
        if header is None:
            result.problems.append(_file_problem("The file is empty: it has no header row."))
            return
        result.columns = [h.strip() for h in header]
        result.first_seen = dict.fromkeys(result.columns, 1)
        for cells in reader:
            if any(c.strip() for c in cells):
                result.rows += 1
    counts: dict[str, int] = {}
    for column in result.columns:
        counts[column] = counts.get(column, 0) + 1
    for column in mapping.columns:
        if counts.get(column, 0) > 1:
            result.problems.append(
                _file_problem(
                    f"The header has {counts[column]} columns named {column!r}; the mapping cannot tell which to read.",
                    row=1,
                    column=column,
                    reason=Problem.DUPLICATE_COLUMN,
                )
            )


def _keys(value: Any, line: int, seen: dict[str, int]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            seen.setdefault(str(key), line)
            _keys(inner, line, seen)
    elif isinstance(value, list):
        for inner in value:
            _keys(inner, line, seen)


def _scan_jsonl(path: Path, mapping: ExportMapping, result: ExportScan) -> None:
    with _open(path, mapping) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            result.rows += 1
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue  # reported row by row in the second pass
            _keys(value, number, result.first_seen)
    result.columns = list(result.first_seen)


def rows(path: Path, mapping: ExportMapping, fmt: str, header: list[str]) -> Iterator[SourceRow]:
    """The export's rows, each holding only the columns the mapping reads (the rest, and so any
    identifier column, is never carried further than the CSV reader)."""
    if fmt == "csv":
        yield from _csv_rows(path, mapping, header)
    else:
        yield from _jsonl_rows(path, mapping)


def _csv_rows(path: Path, mapping: ExportMapping, header: list[str]) -> Iterator[SourceRow]:
    wanted = [(column, header.index(column)) for column in mapping.columns if column in header]
    width = len(header)
    with _open(path, mapping) as fh:
        reader = csv.reader(fh, delimiter=mapping.delimiter)
        next(reader, None)
        for number, cells in enumerate(reader, 2):
            if not any(c.strip() for c in cells):
                continue  # an empty line (spreadsheets leave them at the end)
            if len(cells) != width:
                yield SourceRow(number, None, f"The row has {len(cells)} cells; the header has {width}.")
                continue
            yield SourceRow(number, {column: cells[index] for column, index in wanted})


def _jsonl_rows(path: Path, mapping: ExportMapping) -> Iterator[SourceRow]:
    wanted = mapping.columns
    with _open(path, mapping) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield SourceRow(number, None, f"The line is not valid JSON ({exc.msg} at column {exc.colno}).")
                continue
            if not isinstance(value, dict):
                yield SourceRow(number, None, "The line is not a JSON object.")
                continue
            yield SourceRow(number, {column: value[column] for column in wanted if column in value})
