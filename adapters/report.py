"""What went wrong with which row, in words a data manager can act on, and the CSV report file.

Each problem has a stable reason code (for filtering and for support) and a sentence. The
report stays on the partner's machine: it names the partner's own record keys and, for a bad
date or an unknown code, the offending value, so the row can be found and fixed. It never holds
the value of a direct-identifier column (only the column's name).

It also lists, as stage ``change`` (not problems: they do not count towards the exit status), the
rows the broker took as a correction (reason ``corrected``) and the records it took a withdrawal
of (``withdrawn``), with the revision each was sent as: what changed at the consumers is then
visible to the partner row by row, not only in a count.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Stage(StrEnum):
    FILE = "file"  # the whole export (header, encoding): nothing was sent
    ROW = "row"  # one row did not map or validate: it was not sent
    SEND = "send"  # RabbitMQ / the broker did not confirm: re-run to retry
    BROKER = "broker"  # the broker refused the message (its receipt's reason)
    CHANGE = "change"  # not a problem: a correction or withdrawal the transport / broker took


class Problem(StrEnum):
    # file
    DIRECT_IDENTIFIER_COLUMN = "direct_identifier_column"
    MISSING_COLUMN = "missing_column"
    DUPLICATE_COLUMN = "duplicate_column"
    UNREADABLE_FILE = "unreadable_file"
    # file, with --withdraw-missing: the export cannot be trusted to list every record
    TOO_MANY_WITHDRAWALS = "too_many_withdrawals"
    UNKEYED_ROWS = "unkeyed_rows"
    # row
    MALFORMED_ROW = "malformed_row"
    MISSING_RECORD_KEY = "missing_record_key"
    DUPLICATE_RECORD_KEY = "duplicate_record_key"
    MISSING_VALUE = "missing_value"
    BAD_DATE = "bad_date"
    BAD_NUMBER = "bad_number"
    BAD_BOOLEAN = "bad_boolean"
    BAD_VALUE = "bad_value"
    UNKNOWN_CODE = "unknown_code"
    SCHEMA_INVALID = "schema_invalid"
    # withdraw: a record key this adapter never sent (nothing to withdraw, and no revision to follow)
    UNKNOWN_RECORD_KEY = "unknown_record_key"
    # send
    NOT_CONFIRMED = "not_confirmed"


class Change(StrEnum):
    CORRECTED = "corrected"  # sent as a correction: revision >= 2 with the corrected event
    WITHDRAWN = "withdrawn"  # sent as a withdrawal: revision >= 2, no event


@dataclass(frozen=True, slots=True)
class RowProblem:
    row: int  # spreadsheet row (CSV: the header is row 1) or line number (JSON lines); 0: the file
    record_key: str
    column: str
    stage: Stage
    reason: str
    message: str
    revision: int = 0  # the revision sent (0: not sent, or a first send before corrections mattered)


REPORT_COLUMNS = ("row", "record_key", "revision", "column", "stage", "reason", "message")


class ReportWriter:
    """Writes problems to a CSV file as they are found (a crash leaves a partial, readable report)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.counts: Counter[str] = Counter()
        self.rows_with_problems: set[int] = set()
        self.first: list[RowProblem] = []  # the first few, for the terminal
        self.changes: Counter[str] = Counter()  # corrected / withdrawn: not problems
        self._fh = None
        self._writer: csv.DictWriter[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # 0600: it holds the partner's record keys and cell values.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self._fh = os.fdopen(fd, "w", encoding="utf-8", newline="")
            self._writer = csv.DictWriter(self._fh, fieldnames=REPORT_COLUMNS)
            self._writer.writeheader()

    def add(self, problem: RowProblem) -> None:
        if problem.stage is Stage.CHANGE:
            self.changes[problem.reason] += 1
        else:
            self.counts[problem.reason] += 1
            self.rows_with_problems.add(problem.row)
            if len(self.first) < 10:
                self.first.append(problem)
        if self._writer is not None:
            self._writer.writerow(
                {
                    "row": problem.row,
                    "record_key": problem.record_key,
                    "revision": problem.revision or "",
                    "column": problem.column,
                    "stage": problem.stage.value,
                    "reason": problem.reason,
                    "message": problem.message,
                }
            )

    def extend(self, problems: Iterable[RowProblem]) -> None:
        for problem in problems:
            self.add(problem)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None


def read_report(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))
