"""Count tables (two-way, or one-way as a single row) and their published views.

A table is held as its *extended matrix*: ``n_rows + 1`` by ``n_cols + 1`` entries, the last column
the row totals, the last row the column totals, the corner the grand total. Every entry (a cell or
a total) can be suppressed, and the attacker in ``suppress`` sees exactly the published entries.
A suppressed entry renders ``[c]`` (the GSS convention) with ``FOOTNOTE``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

SUPPRESSED = "[c]"
FOOTNOTE = (
    "[c] confidential: suppressed to protect individuals, either because the count is small or a few "
    "contributors dominate it, or so that another suppressed figure cannot be worked out from totals."
)

Entry = tuple[int, int]
"""An entry of the extended matrix: (row, col); row == n_rows is the total row, col == n_cols the total column."""


@dataclass(frozen=True, slots=True)
class CountTable:
    """True counts by two variables, with the largest single contributor's share of each cell.

    ``largest[i][j]`` is how many of cell (i, j)'s count come from its largest contributor (one
    premises, one school); ``None`` when the source does not say (then no dominance check).
    ``sources`` names where the counts come from (``police``, ``dfe``, ``health``): the strictest
    of their rules governs the table.
    """

    name: str
    row_title: str
    col_title: str
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]
    sources: tuple[str, ...] = ("police",)
    largest: tuple[tuple[int, ...], ...] | None = None
    one_way: bool = False

    def __post_init__(self) -> None:
        if not self.rows or not self.cols:
            raise ValueError(f"table {self.name!r}: needs at least one row and one column")
        if len(self.counts) != len(self.rows) or any(len(r) != len(self.cols) for r in self.counts):
            raise ValueError(f"table {self.name!r}: counts are not {len(self.rows)} x {len(self.cols)}")
        if any(v < 0 for r in self.counts for v in r):
            raise ValueError(f"table {self.name!r}: a count is negative")
        if self.one_way and len(self.rows) != 1:
            raise ValueError(f"table {self.name!r}: a one-way table has one row")
        if self.largest is not None:
            if len(self.largest) != len(self.rows) or any(len(r) != len(self.cols) for r in self.largest):
                raise ValueError(f"table {self.name!r}: largest is not the shape of counts")
            for lr, cr in zip(self.largest, self.counts, strict=True):
                if any(not 0 <= big <= v for big, v in zip(lr, cr, strict=True)):
                    raise ValueError(f"table {self.name!r}: a largest contributor is outside 0..count")

    @classmethod
    def one_way_table(
        cls,
        name: str,
        title: str,
        labels: Sequence[str],
        counts: Sequence[int],
        *,
        sources: tuple[str, ...] = ("police",),
        largest: Sequence[int] | None = None,
    ) -> CountTable:
        return cls(
            name=name,
            row_title="",
            col_title=title,
            rows=("All",),
            cols=tuple(labels),
            counts=(tuple(counts),),
            sources=sources,
            largest=None if largest is None else (tuple(largest),),
            one_way=True,
        )

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    @property
    def n_cols(self) -> int:
        return len(self.cols)

    @property
    def row_totals(self) -> tuple[int, ...]:
        return tuple(sum(r) for r in self.counts)

    @property
    def col_totals(self) -> tuple[int, ...]:
        return tuple(sum(col) for col in zip(*self.counts, strict=True))

    @property
    def grand_total(self) -> int:
        return sum(self.row_totals)

    def extended(self) -> tuple[tuple[int, ...], ...]:
        """The counts with the row totals as a last column and the column totals as a last row."""
        body = tuple((*r, t) for r, t in zip(self.counts, self.row_totals, strict=True))
        return (*body, (*self.col_totals, self.grand_total))

    def is_total(self, entry: Entry) -> bool:
        return entry[0] == self.n_rows or entry[1] == self.n_cols

    def label(self, entry: Entry) -> tuple[str, str]:
        r, c = entry
        return (
            "Total" if r == self.n_rows else self.rows[r],
            "Total" if c == self.n_cols else self.cols[c],
        )


Value = int | None
"""A published entry: the number, or ``None`` for suppressed (rendered ``[c]``)."""


def _show(v: Value) -> int | str:
    return SUPPRESSED if v is None else v


@dataclass(frozen=True, slots=True)
class PublishedTable:
    """What is released: the extended matrix with suppressed entries as ``None``."""

    name: str
    row_title: str
    col_title: str
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    values: tuple[tuple[Value, ...], ...]
    one_way: bool = False
    rounding_base: int | None = None

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    @property
    def n_cols(self) -> int:
        return len(self.cols)

    def value(self, entry: Entry) -> Value:
        return self.values[entry[0]][entry[1]]

    @property
    def suppressed(self) -> tuple[Entry, ...]:
        return tuple(
            (r, c) for r, row in enumerate(self.values) for c, v in enumerate(row) if v is None and self._shown((r, c))
        )

    def _shown(self, entry: Entry) -> bool:
        # a one-way table's column totals repeat its cells: they are not shown twice
        return not (self.one_way and entry[0] == self.n_rows and entry[1] != self.n_cols)

    def footnotes(self) -> tuple[str, ...]:
        notes = [FOOTNOTE] if self.suppressed else []
        if self.rounding_base:
            notes.append(f"Figures are rounded to the nearest {self.rounding_base}; totals may not add up.")
        return tuple(notes)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready view: numbers, ``"[c]"`` for suppressed entries, and the footnotes."""
        n, m = self.n_rows, self.n_cols
        out: dict[str, object] = {"table": self.name}
        if self.one_way:
            out |= {
                "title": self.col_title,
                "cells": {self.cols[j]: _show(self.values[0][j]) for j in range(m)},
                "total": _show(self.values[n][m]),
            }
        else:
            out |= {
                "row_title": self.row_title,
                "col_title": self.col_title,
                "rows": list(self.rows),
                "cols": list(self.cols),
                "cells": [[_show(self.values[i][j]) for j in range(m)] for i in range(n)],
                "row_totals": [_show(self.values[i][m]) for i in range(n)],
                "col_totals": [_show(self.values[n][j]) for j in range(m)],
                "total": _show(self.values[n][m]),
            }
        out["footnotes"] = list(self.footnotes())
        return out

    def csv_rows(self) -> list[list[str]]:
        """A CSV-ready view: a header, one line per row then the totals line, then the footnotes."""
        n, m = self.n_rows, self.n_cols
        lines: list[list[str]] = []
        if self.one_way:
            lines.append([self.col_title, "Count"])
            lines.extend([self.cols[j], str(_show(self.values[0][j]))] for j in range(m))
            lines.append(["Total", str(_show(self.values[n][m]))])
        else:
            lines.append([f"{self.row_title} \\ {self.col_title}", *self.cols, "Total"])
            lines.extend([self.rows[i], *(str(_show(v)) for v in self.values[i])] for i in range(n))
            lines.append(["Total", *(str(_show(v)) for v in self.values[n])])
        lines.extend([note] for note in self.footnotes())
        return lines

    def to_csv(self) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(self.csv_rows())
        return buffer.getvalue()
