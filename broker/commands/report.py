"""``sv-broker report quarterly``: the quarterly board pack from one consumer's released records.

Reads the consumer's feed from the store, read-only (as ``sv-broker audit``: a SQLite file under
``--data-dir`` or ``--store URL``), builds the tables and charts (``broker/figures/board.py``,
``board_render.py``: pure) and writes them to ``--out``: board.html, board.json, one CSV and one
PNG per table. Only what the consumer was released is read, so the pack never holds a field the
consumer's agreements do not give it; every table is protected by ``broker/figures`` before it
is written. It is an operator's command, like ``audit``: it does not append to the audit trail.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.commands.audit import _store_args, _with_store
from broker.figures.specs import Quarter
from broker.pipeline.access import feed_bodies
from broker.ports.store import Store

if TYPE_CHECKING:  # the figures modules load numpy, scipy and matplotlib: only when a pack is made
    from broker.figures.board import Board


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("report", help="reports built from a consumer's released records")
    reports = cmd.add_subparsers(dest="report", required=True, metavar="REPORT")
    q = reports.add_parser(
        "quarterly",
        help="the quarterly board pack (HTML, CSV, JSON, PNG charts), disclosure-controlled",
        description=(
            "The Serious Violence Board's quarterly pack (what, when, who, where, trend) from one consumer's "
            "released records, read from the store read-only. Periods are by the records' own event-date field "
            "(offence week, arrival week or month), not release time; every table goes through the disclosure "
            "control of broker/figures (suppressed cells [c]). Exit 0 written, 1 the tables cannot be protected, "
            "2 a bad argument or an unreadable store."
        ),
    )
    _store_args(q)
    q.add_argument("--quarter", required=True, help="the quarter, e.g. 2026-Q3")
    q.add_argument("--consumer", required=True, help="whose released records (e.g. derbyshire-csp-analysts)")
    q.add_argument("--out", type=Path, required=True, help="output directory (created)")
    q.add_argument(
        "--rules",
        choices=("partnership", "source"),
        default="partnership",
        help="disclosure rules: the partnership default for every table, or each source's own "
        "(police: partnership, ae_assault: NHS Digital 1-7) (default: %(default)s)",
    )
    q.set_defaults(handler=run)


async def consumer_figures(store: Store, consumer: str, quarter: Quarter) -> list[dict[str, Any]]:
    """The latest figures release of each of the consumer's figures flows for ``quarter``."""
    rows = await store.figures_of(consumer)
    return [json.loads(r.body) for r in rows if r.period == str(quarter)]


def pack_for(records: list[dict[str, Any]], figures: list[dict[str, Any]], quarter: Quarter, consumer: str,
             rules: str) -> Board:  # fmt: skip
    """A figures-only consumer's pack is its released figures, as released (never recounted, it
    has no records); any other consumer's is built from its released records."""
    from broker.figures.board import board_from_figures, build_board

    if figures:
        return board_from_figures(figures, consumer)
    return build_board(records, quarter, consumer=consumer, rules="source" if rules == "source" else "partnership")


def run(args: argparse.Namespace) -> int:
    try:
        quarter = Quarter.parse(args.quarter)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2

    async def read(store: Store) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        figures = await consumer_figures(store, args.consumer, quarter)
        return ([] if figures else await feed_bodies(store, args.consumer)), figures

    try:
        records, figures = _with_store(args, read)
    except SystemExit as exc:
        print(exc)
        return 2
    from broker.figures.board_render import render
    from broker.figures.suppress import UnderProtected

    try:
        board = pack_for(records, figures, quarter, args.consumer, args.rules)
    except UnderProtected as exc:
        print(f"error: the tables cannot be protected, nothing written: {exc}")
        return 1
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    files = render(board)
    for name, body in files.items():
        (out / name).write_bytes(body)
    excluded = sum(board.excluded.values())
    what = "events counted in its figures" if figures else "records"
    print(
        f"wrote {len(files)} files to {out}: {board.included} {what} in {quarter}, {excluded} not counted, "
        f"{len(board.release.report.cells)} entries suppressed"
    )
    return 0
