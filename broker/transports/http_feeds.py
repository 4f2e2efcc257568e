"""The analysts' feeds: ``GET /v1/feeds/{consumer}/records`` (cursor pages, JSON or CSV) and
``/stream`` (Server-Sent Events).

An analyst reads only their own consumer's records, and every page is audited (with the record
ids read) before it is written to the wire.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import io
import json
import re
from typing import Any

from aiohttp import web

from broker.auth.tokens import Principal
from broker.errors import ApiError
from broker.ports.store import FeedRow
from broker.spreadsheet import csv_cell
from broker.transports.http_access import (
    ACCESS,
    ANALYST,
    SMALL_INT,
    audited_route,
    authenticate,
    page_limit,
    query_time,
    response_format,
)
from schemas.errors import Reason
from schemas.events import EVENT_TYPES

QUARTER = re.compile(r"[0-9]{4}-Q[1-4]")


async def analyst_for(request: web.Request) -> tuple[Principal, str]:
    """The analyst and the consumer feed they asked for; refused unless it is their own."""
    principal = await authenticate(request, frozenset({ANALYST}))
    consumer = request.match_info["consumer"]
    if principal.consumer != consumer or consumer not in request.app[ACCESS].registry.consumers:
        # Threat: an analyst of one consumer reading another's records (horizontal escalation).
        await request.app[ACCESS].audit.denied(
            audited_route(request),
            403,
            Reason.NOT_YOUR_FEED,
            {"consumer": consumer},
            principal,
        )
        raise ApiError(Reason.NOT_YOUR_FEED, "An analyst may read only their own consumer's feed.")
    return principal, consumer


def encode_cursor(record_row_id: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{record_row_id}".encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, number = text.partition(":")
        if version != "v1" or not SMALL_INT.fullmatch(number):
            raise ValueError(cursor)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(Reason.BAD_CURSOR, "The cursor is not one this feed issued.") from None


# -- feeds --------------------------------------------------------------------------------------------
async def _page(request: web.Request, consumer: str, after: int, limit: int) -> list[FeedRow]:
    ctx = request.app[ACCESS]
    event_type = request.query.get("event_type")
    if event_type is not None and event_type not in EVENT_TYPES:
        raise ApiError(Reason.BAD_EVENT_TYPE, f"event_type must be one of {', '.join(sorted(EVENT_TYPES))}.")
    since, until = query_time(request, "since"), query_time(request, "until")
    history = request.query.get("history", "false")
    if history not in ("true", "false"):
        raise ApiError(Reason.BAD_HISTORY, "history must be true or false.")
    period = request.query.get("period")
    if period is not None and not QUARTER.fullmatch(period):
        raise ApiError(Reason.BAD_QUARTER, "period must be a calendar quarter like 2026-Q3 (by event date).")
    return await ctx.store.feed_page(
        consumer,
        after=after,
        limit=limit,
        event_type=event_type,
        since=since,
        until=until,
        history=history == "true",
        period=period,
    )


def feed_item(row: FeedRow) -> dict[str, Any]:
    """A feed row as the client reads it: the record (or notice) body and when it was released.
    A record has ``data``; a notice (``schemas.messages.ConsumerNotice``) has ``notice``."""
    item: dict[str, Any] = json.loads(row.body)
    item["released_at"] = row.released_at
    return item


async def feed_records(request: web.Request) -> web.StreamResponse:
    principal, consumer = await analyst_for(request)
    ctx = request.app[ACCESS]
    fmt = response_format(request, ("json", "csv"))
    after = decode_cursor(request.query.get("after"))
    rows = await _page(request, consumer, after, page_limit(request))
    next_cursor = encode_cursor(rows[-1].id) if rows else encode_cursor(after)
    await ctx.audit.read(
        principal,
        "feed",
        audited_route(request),
        {
            "consumer": consumer,
            "format": fmt,
            "count": len(rows),
            "record_ids": [r.record_id for r in rows],
            "query": {
                k: v
                for k, v in request.query.items()
                if k in ("after", "limit", "event_type", "since", "until", "history", "period")
            },
        },
    )
    records = [feed_item(r) for r in rows]
    if fmt == "json":
        return web.json_response(
            {"consumer": consumer, "count": len(records), "next_cursor": next_cursor, "records": records}
        )
    data_fields = sorted({key for rec in records for key in rec.get("data", ())})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "record_id",
            "released_at",
            "kind",
            "revision",
            "event_type",
            "agreement_id",
            "agreement_revision",
            "reason",
            *data_fields,
        ]
    )
    for row, rec in zip(rows, records, strict=True):
        agreement = rec.get("agreement") or {}
        writer.writerow(
            [
                csv_cell(rec.get("record_id", rec.get("figures_id"))),  # a figures release has figures_id
                csv_cell(rec["released_at"]),
                csv_cell(row.kind),
                csv_cell(row.revision),  # from the row: a record stored before revisions has none in its body
                csv_cell(row.event_type),
                csv_cell(agreement.get("id", rec.get("agreement_id"))),
                csv_cell(agreement.get("revision")),
                csv_cell(rec.get("reason")),
                *(csv_cell(rec.get("data", {}).get(f)) for f in data_fields),
            ]
        )
    return web.Response(
        text=out.getvalue(), content_type="text/csv", charset="utf-8", headers={"X-Next-Cursor": next_cursor}
    )


async def feed_stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: every new record as it is released; resumes after ``Last-Event-ID``."""
    principal, consumer = await analyst_for(request)
    ctx = request.app[ACCESS]
    after = decode_cursor(request.headers.get("Last-Event-ID") or request.query.get("after"))
    await _page(request, consumer, after, 1)  # validate the filters before the stream starts
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    idle = 0.0
    while not ctx.stopping.is_set():
        if principal.expires_at is not None and ctx.clock() >= principal.expires_at:
            # The token was checked when the stream opened; it must not outlive the token (a
            # stolen or revoked-by-expiry token would otherwise read new records for ever).
            await response.write(b"event: token_expired\ndata: {}\n\n")
            break
        rows = await _page(request, consumer, after, 200)
        if rows:
            # Audited before the records are written to the wire.
            await ctx.audit.read(
                principal,
                "feed",
                audited_route(request),
                {"consumer": consumer, "format": "sse", "count": len(rows), "record_ids": [r.record_id for r in rows]},
            )
            chunks = []
            for row in rows:
                event = "record" if row.kind == "record" else "notice"
                item = json.dumps(feed_item(row))
                chunks.append(f"id: {encode_cursor(row.id)}\nevent: {event}\ndata: {item}\n\n")
            await response.write("".join(chunks).encode())
            after = rows[-1].id
            idle = 0.0
            continue
        await asyncio.sleep(ctx.stream_poll)
        idle += ctx.stream_poll
        if idle >= 15:
            await response.write(b": keep-alive\n\n")
            idle = 0.0
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/feeds/{consumer}/records", feed_records)
    app.router.add_get("/v1/feeds/{consumer}/stream", feed_stream)
