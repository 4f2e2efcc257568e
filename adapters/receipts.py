"""``adapter receipts``: what the broker decided about each message, mapped back to the export's rows.

Over RabbitMQ a publisher confirm says only that the message is safely queued; the broker's
verdict (accepted with N records, duplicate, rejected with a reason) comes later on the
partner's receipts queue ``<prefix>.receipts.<partner>``, a batch of receipts per message:
``{"receipts": [{status, message_id, source, body_sha256, at, records | reason, message}]}``.
Both are the contract's (``schemas.topology.Names.receipts_queue``, ``schemas.messages.Receipt``):
a message that does not match it exactly is counted as unreadable, not guessed at.

Receipts name message ids, which are keyed hashes (the broker never sees record keys); the local
state file maps them back to the record key, file and row, so the partner can find and fix a
rejected row. The verdicts are also written into the state: a rejected row is sent again by the
next push (after the export is fixed); an accepted one is not.

Corrections and withdrawals (issue 12 item 3) have their own message ids, ``<first id>:r<n>``, so
each receipt names the revision it is about; the rows say which (``revision``; ``change``:
``corrected`` or ``withdrawn``) and how many consumers were told to delete the record
(``withdrawn``: a withdrawal, or a correction that left some consumer unentitled). A refusal as
``revision_superseded`` (the broker applied a later revision already) maps back to its row too.

Receipts are acknowledged (removed from the queue) only after they are written out and the
state is fsynced; ``--keep`` leaves them on the queue.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from adapters.report import Change
from adapters.state import Entry, StateFile, Status
from schemas.messages import RECEIPTS_MESSAGE, Receipt
from schemas.topology import Names

RECEIPT_COLUMNS = (
    "at",
    "status",
    "reason",
    "message",
    "record_key",
    "file",
    "row",
    "message_id",
    "revision",
    "change",
    "records",
    "withdrawn",
    "withheld",
    "body_sha256",
)
_REVISION_ID = re.compile(r":r([0-9]{1,4})$")


@dataclass(frozen=True, slots=True)
class ReceiptRow:
    at: str
    status: str
    reason: str
    message: str
    record_key: str
    file: str
    row: int | None
    message_id: str
    records: int | None
    body_sha256: str
    withheld: str = ""  # accepted with 0 records: why, "reason (agreement); ..."
    revision: int = 1
    change: str = ""  # "corrected" (a correction), "withdrawn" (a withdrawal), "" (a first message)
    withdrawn: int = 0  # withdrawal notices the broker sent to consumers holding the record


def _revision_of(message_id: str, entry: Entry | None) -> int:
    if entry is not None:
        return entry.revision
    found = _REVISION_ID.search(message_id)  # a receipt the state has no line for
    return int(found.group(1)) if found else 1


def _change(revision: int, entry: Entry | None) -> str:
    if entry is not None and entry.withdrawn:
        return Change.WITHDRAWN.value
    return Change.CORRECTED.value if revision > 1 else ""


def _lookup(states: list[StateFile], message_id: str) -> tuple[StateFile, Entry] | None:
    for state in states:
        entry = state.by_message_id(message_id) if message_id else None
        if entry is not None:
            return state, entry
    return None


def _withheld(items: Any) -> str:
    """The receipt's reasons for releasing nothing, as one readable cell."""
    if not isinstance(items, list):
        return ""
    parts = []
    for item in items:
        if isinstance(item, Mapping):
            where = item.get("agreement_id") or "no agreement"
            parts.append(f"{item.get('reason')} ({where})")
    return "; ".join(parts)


def to_rows(receipts: Iterable[Mapping[str, Any]], states: list[StateFile]) -> list[ReceiptRow]:
    out: list[ReceiptRow] = []
    for receipt in receipts:
        message_id = str(receipt.get("message_id") or "")
        found = _lookup(states, message_id)
        entry = found[1] if found else None
        records = receipt.get("records")
        notices = receipt.get("withdrawn", 0)
        revision = _revision_of(message_id, entry)
        out.append(
            ReceiptRow(
                at=str(receipt.get("at") or ""),
                status=str(receipt.get("status") or ""),
                reason=str(receipt.get("reason") or ""),
                message=str(receipt.get("message") or ""),
                record_key=entry.key if entry else "",
                file=entry.file if entry else "",
                row=entry.row if entry and entry.row else None,
                message_id=message_id,
                records=records if isinstance(records, int) else None,
                body_sha256=str(receipt.get("body_sha256") or ""),
                withheld=_withheld(receipt.get("withheld")),
                revision=revision,
                change=_change(revision, entry),
                withdrawn=notices if isinstance(notices, int) else 0,
            )
        )
    return out


def record_verdicts(states: list[StateFile], rows: Iterable[ReceiptRow]) -> int:
    """Write the broker's verdicts into the state; returns how many rows they matched."""
    matched = 0
    for row in rows:
        found = _lookup(states, row.message_id)
        try:
            status = Status(row.status)
        except ValueError:
            continue
        if found is None or status is Status.CONFIRMED:
            continue
        state, entry = found
        if entry.status is Status.ACCEPTED and status is Status.DUPLICATE:
            continue  # a resend's "duplicate" does not make an accepted record less accepted
        state.add(
            Entry(entry.key, entry.message_id, entry.content, status, entry.file, entry.row, row.reason, entry.revision)
        )
        matched += 1
    return matched


def awaiting(states: list[StateFile]) -> set[str]:
    """Message ids RabbitMQ confirmed that have no verdict yet."""
    return {e.message_id for state in states for e in state.every_revision() if e.status is Status.CONFIRMED}


@dataclass
class Fetched:
    receipts: list[Receipt]
    messages: list[AbstractIncomingMessage]
    unreadable: int = 0


async def fetch(
    url: str,
    prefix: str,
    partner: str,
    *,
    wait: float,
    outstanding: set[str],
    limit: int = 1_000_000,
) -> tuple[Fetched, aio_pika.abc.AbstractConnection]:
    """Read what is on the receipts queue; with ``wait`` > 0 keep reading until every id in
    ``outstanding`` has a receipt, or ``wait`` seconds pass. The caller acknowledges (or not)
    and closes the returned connection."""
    try:
        connection = await aio_pika.connect(url, timeout=15)
    except Exception as exc:
        raise ConnectionError(str(exc) or type(exc).__name__) from None
    name = Names(prefix).receipts_queue(partner)
    try:
        channel = await connection.channel(publisher_confirms=False)
        # Not declared: the queue is the broker's (a partner account cannot configure it).
        queue = await channel.get_queue(name, ensure=False)
        fetched = Fetched([], [])
        deadline = time.monotonic() + max(0.0, wait)
        pending = set(outstanding)
        while len(fetched.receipts) < limit:
            try:
                message = await queue.get(no_ack=False, fail=False, timeout=15)
            except aiormq.exceptions.ChannelNotFoundEntity:
                raise ConnectionError(f"there is no queue {name!r}: check --partner and --amqp-prefix") from None
            if message is None:
                if not pending or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.2)
                continue
            fetched.messages.append(message)
            try:
                batch = RECEIPTS_MESSAGE.validate_json(message.body)["receipts"]
            except ValidationError:  # not JSON, or not the contract's receipts message
                fetched.unreadable += 1
                continue
            for receipt in batch:
                fetched.receipts.append(receipt)
                pending.discard(receipt["message_id"] or "")
        return fetched, connection
    except BaseException:
        await connection.close()
        raise


def write_rows(rows: list[ReceiptRow], path: Path | None, fmt: str, stream: TextIO) -> None:
    """Write receipts as CSV or JSON lines (durably, when to a file), or as text for a terminal."""
    if path is None:
        if fmt == "text":
            for row in rows:
                where = f"row {row.row} of {row.file}" if row.row else "row unknown"
                key = f" [{row.record_key}]" if row.record_key else ""
                detail = f"{row.reason}: {row.message}" if row.reason else f"{row.records} record(s)"
                if row.change:
                    detail = f"{row.change} (revision {row.revision}), {detail}"
                elif row.revision > 1:
                    detail = f"revision {row.revision}, {detail}"
                if row.withdrawn:
                    detail += f", {row.withdrawn} consumer(s) told to delete it"
                if row.withheld:
                    detail += f", withheld: {row.withheld}"
                stream.write(f"{row.status:<9} {where}{key}  {detail}\n")
            return
        _write(rows, fmt, stream)
        return
    # Appended: receipts are taken off the queue, so the file is their only copy.
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", encoding="utf-8", newline="") as fh:
        _write(rows, fmt, fh, header=new)
        fh.flush()
        os.fsync(fh.fileno())


def _write(rows: list[ReceiptRow], fmt: str, fh: TextIO, *, header: bool = True) -> None:
    if fmt == "csv":
        writer = csv.DictWriter(fh, fieldnames=RECEIPT_COLUMNS)
        if header:
            writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    else:
        for row in rows:
            fh.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")


def summary_line(rows: list[ReceiptRow], still_waiting: int, unreadable: int) -> str:
    statuses = Counter(r.status for r in rows)
    reasons = Counter(r.reason for r in rows if r.status == "rejected")
    changes = Counter(r.change for r in rows if r.status == "accepted" and r.change)
    accepted = f"accepted {statuses['accepted']}"
    if changes:
        accepted += f" (corrected {changes['corrected']}, withdrawn {changes['withdrawn']})"
    parts = [f"{len(rows)} receipt(s): {accepted}, duplicate {statuses['duplicate']}"]
    rejected = f"rejected {statuses['rejected']}"
    if reasons:
        rejected += " (" + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) + ")"
    parts.append(rejected)
    if still_waiting:
        parts.append(f"{still_waiting} confirmed row(s) still without a receipt")
    if unreadable:
        parts.append(f"{unreadable} unreadable receipt message(s)")
    return "; ".join(parts)
