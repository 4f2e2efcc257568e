"""HTTP for the people who read: analysts' feeds, IG leads' audit API, the agreements in force.

Every route here needs a bearer token (``broker.auth.tokens``). Every read is an audit entry made
durable *before* the response is sent (a crash cannot leave a read unaudited); every refusal is an
``access_denied`` entry. An analyst reads only their own consumer's records; audit routes need the
``ig`` or ``admin`` role.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import io
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from aiohttp import web

from broker.audit.checkpoints import export_document, export_line
from broker.audit.trail import verify_trail
from broker.auth.tokens import Principal, TokenVerifier
from broker.errors import ApiError, AuthError
from broker.pipeline.access import AccessAudit
from broker.policy.model import PolicySet
from broker.ports.sqlite_store import AuditQuery, FeedRow, SqliteStore
from broker.registry import Registry
from schemas.envelope import format_time, parse_time
from schemas.errors import Reason
from schemas.events import EVENT_TYPES

ANALYST, IG, ADMIN = "analyst", "ig", "admin"
AUDIT_ROLES = frozenset({IG, ADMIN})
ANY_ROLE = frozenset({ANALYST, IG, ADMIN})
MAX_PAGE = 1000
CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class AccessContext:
    store: SqliteStore
    verifier: TokenVerifier
    registry: Registry
    policy: PolicySet
    public_jwks: dict[str, Any]
    checkpoint_keys: dict[str, Any]
    clock: Callable[[], datetime]
    warn_within: timedelta = timedelta(days=30)
    stream_poll: float = 0.25
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    audit: AccessAudit = field(init=False)

    def __post_init__(self) -> None:
        self.audit = AccessAudit(self.store)


ACCESS = web.AppKey("access", AccessContext)


# -- authentication and the access audit ------------------------------------------------------------
async def authenticate(request: web.Request, roles: frozenset[str]) -> Principal:
    ctx = request.app[ACCESS]
    header = request.headers.get("Authorization", "")
    try:
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise AuthError(Reason.TOKEN_MISSING, "An 'Authorization: Bearer <token>' header is required.")
        principal = ctx.verifier.verify(header[7:].strip())
    except AuthError as exc:
        # The token itself is never recorded (a token in the audit would be a credential at rest).
        await ctx.audit.denied(request.path, 401, exc.reason)
        raise ApiError(exc.reason, exc.message, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
    if principal.role not in roles:
        await ctx.audit.denied(
            request.path, 403, Reason.ROLE_NOT_ALLOWED, {"sub": principal.sub, "role": principal.role}
        )
        raise ApiError(Reason.ROLE_NOT_ALLOWED, f"The {principal.role!r} role may not use this route.")
    return principal


async def analyst_for(request: web.Request) -> tuple[Principal, str]:
    """The analyst and the consumer feed they asked for; refused unless it is their own."""
    principal = await authenticate(request, frozenset({ANALYST}))
    consumer = request.match_info["consumer"]
    if principal.consumer != consumer or consumer not in request.app[ACCESS].registry.consumers:
        # Threat: an analyst of one consumer reading another's records (horizontal escalation).
        await request.app[ACCESS].audit.denied(
            request.path,
            403,
            Reason.NOT_YOUR_FEED,
            {"sub": principal.sub, "consumer": consumer, "own_consumer": principal.consumer},
        )
        raise ApiError(Reason.NOT_YOUR_FEED, "An analyst may read only their own consumer's feed.")
    return principal, consumer


# -- query parameters ---------------------------------------------------------------------------------
def encode_cursor(record_row_id: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{record_row_id}".encode()).rstrip(b"=").decode()


_SMALL_INT = re.compile(r"[0-9]{1,18}")  # ASCII digits only ("²".isdigit() is True), and < 2^63


def decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, number = text.partition(":")
        if version != "v1" or not _SMALL_INT.fullmatch(number):
            raise ValueError(cursor)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(Reason.BAD_CURSOR, "The cursor is not one this feed issued.") from None


def _limit(request: web.Request, default: int = 100) -> int:
    raw = request.query.get("limit", str(default))
    if not _SMALL_INT.fullmatch(raw) or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiError(Reason.BAD_LIMIT, f"limit must be an integer from 1 to {MAX_PAGE}.")
    return int(raw)


def _time(request: web.Request, name: str) -> str | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return format_time(parse_time(raw))
    except (ValueError, OverflowError):
        raise ApiError(Reason.BAD_TIME, f"{name} must be an RFC 3339 date-time with an offset.") from None


def _format(request: web.Request, allowed: tuple[str, ...]) -> str:
    fmt = request.query.get("format")
    if fmt is None:
        accept = request.headers.get("Accept", "")
        fmt = "csv" if "text/csv" in accept and "csv" in allowed else allowed[0]
    if fmt not in allowed:
        raise ApiError(Reason.BAD_FORMAT, f"format must be one of {', '.join(allowed)}.")
    return fmt


def csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        value = ";".join(str(v) for v in value)
    text = str(value)
    # CSV injection (OWASP): a cell starting with = + - @ is a formula to a spreadsheet.
    return "'" + text if text.startswith(CSV_FORMULA_START) else text


# -- feeds --------------------------------------------------------------------------------------------
async def _page(request: web.Request, consumer: str, after: int, limit: int) -> list[FeedRow]:
    ctx = request.app[ACCESS]
    event_type = request.query.get("event_type")
    if event_type is not None and event_type not in EVENT_TYPES:
        raise ApiError(Reason.BAD_EVENT_TYPE, f"event_type must be one of {', '.join(sorted(EVENT_TYPES))}.")
    since, until = _time(request, "since"), _time(request, "until")
    return await ctx.store.read(
        lambda conn: SqliteStore.feed_page(
            conn, consumer, after=after, limit=limit, event_type=event_type, since=since, until=until
        )
    )


async def _audit_read(
    ctx: AccessContext, principal: Principal, resource: str, route: str, extra: dict[str, Any]
) -> None:
    await ctx.audit.read(principal, resource, route, extra)


async def feed_records(request: web.Request) -> web.StreamResponse:
    principal, consumer = await analyst_for(request)
    ctx = request.app[ACCESS]
    fmt = _format(request, ("json", "csv"))
    after = decode_cursor(request.query.get("after"))
    rows = await _page(request, consumer, after, _limit(request))
    next_cursor = encode_cursor(rows[-1].id) if rows else encode_cursor(after)
    await _audit_read(
        ctx,
        principal,
        "feed",
        request.path,
        {
            "consumer": consumer,
            "format": fmt,
            "count": len(rows),
            "record_ids": [r.record_id for r in rows],
            "query": {
                k: v for k, v in request.query.items() if k in ("after", "limit", "event_type", "since", "until")
            },
        },
    )
    records = [json.loads(r.body) | {"released_at": r.released_at} for r in rows]
    if fmt == "json":
        return web.json_response(
            {"consumer": consumer, "count": len(records), "next_cursor": next_cursor, "records": records}
        )
    data_fields = sorted({key for rec in records for key in rec["data"]})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["record_id", "released_at", "event_type", "agreement_id", "agreement_revision", *data_fields])
    for rec in records:
        writer.writerow(
            [
                csv_cell(rec["record_id"]),
                csv_cell(rec["released_at"]),
                csv_cell(rec["event_type"]),
                csv_cell(rec["agreement"]["id"]),
                csv_cell(rec["agreement"]["revision"]),
                *(csv_cell(rec["data"].get(f)) for f in data_fields),
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
            await _audit_read(
                ctx,
                principal,
                "feed",
                request.path,
                {"consumer": consumer, "format": "sse", "count": len(rows), "record_ids": [r.record_id for r in rows]},
            )
            chunks = []
            for row in rows:
                record = json.loads(row.body) | {"released_at": row.released_at}
                chunks.append(f"id: {encode_cursor(row.id)}\nevent: record\ndata: {json.dumps(record)}\n\n")
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


# -- IG: audit ---------------------------------------------------------------------------------------
def _audit_query(request: web.Request, after: int, limit: int) -> AuditQuery:
    q = request.query
    return AuditQuery(
        after=after,
        limit=limit,
        message_id=q.get("message_id"),
        record_id=q.get("record_id"),
        source=q.get("source"),
        consumer=q.get("consumer"),
        agreement_id=q.get("agreement_id"),
        kind=q.get("kind"),
        since=_time(request, "since"),
        until=_time(request, "until"),
    )


def _filters(request: web.Request) -> dict[str, str]:
    names = ("message_id", "record_id", "source", "consumer", "agreement_id", "kind", "since", "until", "after")
    return {k: v for k, v in request.query.items() if k in names}


def _entry(seq: int, body: bytes) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(body)
    return entry


async def audit_entries(request: web.Request) -> web.Response:
    principal = await authenticate(request, AUDIT_ROLES)
    ctx = request.app[ACCESS]
    after_raw = request.query.get("after", "0")
    if not _SMALL_INT.fullmatch(after_raw):
        raise ApiError(Reason.BAD_CURSOR, "after must be a sequence number.")
    query = _audit_query(request, int(after_raw), _limit(request))
    rows = await ctx.store.read(lambda conn: SqliteStore.audit_page(conn, query))
    await _audit_read(ctx, principal, "audit", request.path, {"query": _filters(request), "count": len(rows)})
    return web.json_response(
        {
            "count": len(rows),
            "next_after": rows[-1][0] if rows else query.after,
            "entries": [_entry(seq, body) for seq, body in rows],
        }
    )


async def audit_export(request: web.Request) -> web.StreamResponse:
    """The matching entries as JSONL (each line re-verifiable offline) or CSV, streamed in pages."""
    principal = await authenticate(request, AUDIT_ROLES)
    ctx = request.app[ACCESS]
    fmt = _format(request, ("jsonl", "csv"))
    first = _audit_query(request, 0, MAX_PAGE)  # parameters are checked before the stream starts
    await _audit_read(ctx, principal, "audit_export", request.path, {"query": _filters(request), "format": fmt})
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-ndjson" if fmt == "jsonl" else "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="sv-broker-audit.{fmt}"',
        }
    )
    await response.prepare(request)
    columns = ["seq", "at", "kind", "message_id", "source", "consumer", "agreement_id", "record_id", "reason"]
    if fmt == "csv":
        await response.write((",".join(columns) + "\n").encode())
    after = 0
    while True:
        query = replace(first, after=after)
        rows = await ctx.store.read(partial(SqliteStore.audit_page_with_hash, query=query))
        if not rows:
            break
        out = io.StringIO()
        if fmt == "jsonl":
            for seq, body, entry_hash in rows:
                out.write(export_line(seq, body, entry_hash) + "\n")
        else:
            writer = csv.writer(out)
            for seq, body, _ in rows:
                entry = json.loads(body)
                writer.writerow([csv_cell(entry.get(c)) if c != "seq" else seq for c in columns])
        await response.write(out.getvalue().encode())
        after = rows[-1][0]
    await response.write_eof()
    return response


async def audit_trace(request: web.Request) -> web.Response:
    """received -> decisions -> releases -> reads -> purge, for one record id."""
    principal = await authenticate(request, AUDIT_ROLES)
    ctx = request.app[ACCESS]
    record_id = request.match_info["record_id"]
    message_id = await ctx.store.read(lambda conn: SqliteStore.record_message(conn, record_id))
    if message_id is None:
        await _audit_read(ctx, principal, "audit_trace", request.path, {"record_id": record_id, "found": False})
        raise ApiError(Reason.UNKNOWN_RECORD, "No release of this record id is in the audit trail.")
    by_record = await ctx.store.read(
        lambda conn: SqliteStore.audit_page(conn, AuditQuery(limit=100000, record_id=record_id))
    )
    by_message = await ctx.store.read(
        lambda conn: SqliteStore.audit_page(conn, AuditQuery(limit=100000, message_id=message_id))
    )
    seen: dict[int, bytes] = {}
    for seq, body in by_record + by_message:
        entry = json.loads(body)
        # the message's entries about *other* consumers' records belong to their traces, not this one
        if entry.get("record_id") not in (None, record_id):
            continue
        seen[seq] = body
    await _audit_read(ctx, principal, "audit_trace", request.path, {"record_id": record_id, "count": len(seen)})
    return web.json_response(
        {
            "record_id": record_id,
            "message_id": message_id,
            "entries": [_entry(seq, seen[seq]) for seq in sorted(seen)],
        }
    )


async def audit_checkpoints(request: web.Request) -> web.Response:
    principal = await authenticate(request, AUDIT_ROLES)
    ctx = request.app[ACCESS]
    checkpoints = await ctx.store.read(SqliteStore.checkpoints_list)
    await _audit_read(ctx, principal, "audit_checkpoints", request.path, {"count": len(checkpoints)})
    return web.json_response(export_document(checkpoints) | {"public_keys": ctx.public_jwks})


async def audit_verify(request: web.Request) -> web.Response:
    principal = await authenticate(request, AUDIT_ROLES)
    ctx = request.app[ACCESS]
    checkpoints = await ctx.store.read(SqliteStore.checkpoints_list)
    rows = await ctx.store.read(SqliteStore.all_audit_rows)
    report = await asyncio.to_thread(verify_trail, rows, checkpoints, ctx.checkpoint_keys)
    await _audit_read(ctx, principal, "audit_verify", request.path, {"ok": report.ok})
    return web.json_response(
        {
            "ok": report.ok,
            "entries": report.chain.entries,
            "head_seq": report.chain.head_seq,
            "head_hash": report.chain.head_hash,
            "checkpoints_checked": report.checkpoints.checked if report.checkpoints else 0,
            "first_bad_seq": report.first_bad_seq,
            "problem": report.problem,
        }
    )


# -- agreements ----------------------------------------------------------------------------------------
def agreement_summaries(policy: PolicySet, now: datetime, warn_within: timedelta) -> list[dict[str, Any]]:
    out = []
    for agreement in sorted(policy.agreements.values(), key=lambda a: a.id):
        state = agreement.state(now)
        warnings = []
        if state is None:
            if agreement.ends - now <= warn_within:
                warnings.append(f"valid_to {agreement.valid_to.isoformat()} is within {warn_within.days} days")
            if agreement.review_due - now <= warn_within:
                warnings.append(f"review_by {agreement.review_by.isoformat()} is within {warn_within.days} days")
        out.append(
            {
                "id": agreement.id,
                "title": agreement.title,
                "revision": agreement.revision,
                "parties": list(agreement.parties),
                "purpose": agreement.purpose.strip(),
                "lawful_basis": list(agreement.lawful_basis),
                "valid_from": agreement.valid_from.isoformat(),
                "valid_to": agreement.valid_to.isoformat(),
                "review_by": agreement.review_by.isoformat(),
                "retention_days": agreement.retention_days,
                "state": "in_force" if state is None else state.value,
                "warnings": warnings,
            }
        )
    return out


async def agreements(request: web.Request) -> web.Response:
    principal = await authenticate(request, ANY_ROLE)
    ctx = request.app[ACCESS]
    await _audit_read(ctx, principal, "agreements", request.path, {})
    return web.json_response({"agreements": agreement_summaries(ctx.policy, ctx.clock(), ctx.warn_within)})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application, ctx: AccessContext) -> None:
    app[ACCESS] = ctx
    app.router.add_get("/v1/feeds/{consumer}/records", feed_records)
    app.router.add_get("/v1/feeds/{consumer}/stream", feed_stream)
    app.router.add_get("/v1/audit/entries", audit_entries)
    app.router.add_get("/v1/audit/export", audit_export)
    app.router.add_get("/v1/audit/trace/{record_id}", audit_trace)
    app.router.add_get("/v1/audit/checkpoints", audit_checkpoints)
    app.router.add_get("/v1/audit/verify", audit_verify)
    app.router.add_get("/v1/agreements", agreements)
