"""The IG lead's audit API (``ig`` or ``admin`` role): query, export, trace, checkpoints, verify.

Every call is itself an audit entry (who looked at the trail, with which filters), made durable
before the response is sent.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from dataclasses import replace
from typing import Any

from aiohttp import web

from broker.audit.checkpoints import checkpoints_document, export_line, parse_checkpoints_document
from broker.audit.trail import AuditReport
from broker.errors import ApiError
from broker.pipeline.trail import trace_entries, verify_store
from broker.ports.store import AuditQuery
from broker.spreadsheet import csv_cell
from broker.transports.http_access import (
    ACCESS,
    AUDIT_ROLES,
    MAX_PAGE,
    SMALL_INT,
    audited_route,
    authenticate,
    page_limit,
    query_time,
    response_format,
)
from broker.transports.http_app import read_limited
from schemas.errors import Reason


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
        since=query_time(request, "since"),
        until=query_time(request, "until"),
    )


def _filters(request: web.Request) -> dict[str, str]:
    names = ("message_id", "record_id", "source", "consumer", "agreement_id", "kind", "since", "until", "after")
    return {k: v for k, v in request.query.items() if k in names}


def _entry(body: bytes) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(body)
    return entry


async def audit_entries(request: web.Request) -> web.Response:
    principal = await authenticate(request, AUDIT_ROLES)
    ctx = request.app[ACCESS]
    after_raw = request.query.get("after", "0")
    if not SMALL_INT.fullmatch(after_raw):
        raise ApiError(Reason.BAD_CURSOR, "after must be a sequence number.")
    query = _audit_query(request, int(after_raw), page_limit(request))
    rows = await ctx.store.audit_page(query)
    await ctx.audit.read(principal, "audit", audited_route(request), {"query": _filters(request), "count": len(rows)})
    return web.json_response(
        {
            "count": len(rows),
            "next_after": rows[-1].seq if rows else query.after,
            "entries": [_entry(row.body) for row in rows],
        }
    )


async def audit_export(request: web.Request) -> web.StreamResponse:
    """The matching entries as JSONL (each line re-verifiable offline) or CSV, streamed in pages."""
    principal = await authenticate(request, AUDIT_ROLES)
    ctx = request.app[ACCESS]
    fmt = response_format(request, ("jsonl", "csv"))
    first = _audit_query(request, 0, MAX_PAGE)  # parameters are checked before the stream starts
    await ctx.audit.read(principal, "audit_export", audited_route(request), {"query": _filters(request), "format": fmt})
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
        rows = await ctx.store.audit_page(query)
        if not rows:
            break
        out = io.StringIO()
        if fmt == "jsonl":
            for row in rows:
                out.write(export_line(row.seq, row.body, row.hash) + "\n")
        else:
            writer = csv.writer(out)
            for row in rows:
                entry = json.loads(row.body)
                writer.writerow([csv_cell(entry.get(c)) if c != "seq" else row.seq for c in columns])
        await response.write(out.getvalue().encode())
        after = rows[-1].seq
    await response.write_eof()
    return response


async def audit_trace(request: web.Request) -> web.Response:
    """received -> decisions -> releases -> reads -> purge, for one record id."""
    principal = await authenticate(request, AUDIT_ROLES)
    ctx = request.app[ACCESS]
    record_id = request.match_info["record_id"]
    message_id = await ctx.store.record_message(record_id)
    if message_id is None:
        await ctx.audit.read(principal, "audit_trace", audited_route(request), {"record_id": record_id, "found": False})
        raise ApiError(Reason.UNKNOWN_RECORD, "No release of this record id is in the audit trail.")
    seen = await trace_entries(ctx.store, record_id, message_id)
    await ctx.audit.read(principal, "audit_trace", audited_route(request), {"record_id": record_id, "count": len(seen)})
    return web.json_response(
        {
            "record_id": record_id,
            "message_id": message_id,
            "entries": [_entry(seen[seq]) for seq in sorted(seen)],
        }
    )


async def audit_checkpoints(request: web.Request) -> web.Response:
    principal = await authenticate(request, AUDIT_ROLES)
    ctx = request.app[ACCESS]
    checkpoints = await ctx.store.checkpoints()
    await ctx.audit.read(principal, "audit_checkpoints", audited_route(request), {"count": len(checkpoints)})
    return web.json_response(checkpoints_document(checkpoints) | {"public_keys": ctx.public_jwks})


# About 13,000 checkpoints (a week at one a minute): a verifier sends the ones it kept, newest first
# matter most; a larger body is refused before it is read (413).
MAX_CHECKPOINTS_BODY = 4 * 1024 * 1024
CHECKPOINT_MEDIA_TYPES = frozenset({"application/json", "application/x-ndjson", "application/jsonl"})


def _verify_answer(report: AuditReport, source: str) -> web.Response:
    return web.json_response(
        {
            "ok": report.ok,
            "entries": report.chain.entries,
            "head_seq": report.chain.head_seq,
            "head_hash": report.chain.head_hash,
            "checkpoints_checked": report.checkpoints.checked if report.checkpoints else 0,
            "checkpoints_source": source,
            "first_bad_seq": report.first_bad_seq,
            "problem": report.problem,
        }
    )


async def audit_verify(request: web.Request) -> web.Response:
    """The chain against the checkpoints the store holds. Not evidence against whoever can rewrite
    the store (a rebuilt chain comes with re-signed checkpoints): ``POST`` the checkpoints you
    kept for that (``checkpoints_source`` says which were used)."""
    principal = await authenticate(request, AUDIT_ROLES)
    ctx = request.app[ACCESS]
    report = await verify_store(ctx.store, await ctx.store.checkpoints(), ctx.checkpoint_keys)
    await ctx.audit.read(principal, "audit_verify", audited_route(request), {"ok": report.ok, "checkpoints": "store"})
    return _verify_answer(report, "store")


async def audit_verify_external(request: web.Request) -> web.Response:
    """The chain against checkpoints kept outside the store: the body is what ``GET
    /v1/audit/checkpoints`` or ``sv-broker audit checkpoints`` wrote, or a checkpoint log (the
    broker's ``checkpoints.jsonl``, or bodies collected from a checkpoints queue)."""
    principal = await authenticate(request, AUDIT_ROLES)
    ctx = request.app[ACCESS]
    if request.content_type not in CHECKPOINT_MEDIA_TYPES:
        raise ApiError(
            Reason.UNSUPPORTED_MEDIA_TYPE,
            "Send a checkpoints document as application/json, or a checkpoint log as application/x-ndjson.",
        )
    try:
        # Threat: a slow or endless body holding the handler (the same bounds as ingest, larger).
        async with asyncio.timeout(ctx.body_timeout):
            body = await read_limited(request, MAX_CHECKPOINTS_BODY)
    except TimeoutError:
        raise ApiError(Reason.REQUEST_TIMEOUT, "The checkpoints did not arrive within the read timeout.") from None
    if len(body) > MAX_CHECKPOINTS_BODY:
        raise ApiError(
            Reason.BODY_TOO_LARGE,
            f"At most {MAX_CHECKPOINTS_BODY // (1024 * 1024)} MiB of checkpoints per request: send the latest ones.",
        )
    try:
        checkpoints = parse_checkpoints_document(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
        raise ApiError(Reason.CHECKPOINTS_INVALID, f"The body is not checkpoints: {reason}.") from None
    if not checkpoints:
        raise ApiError(Reason.CHECKPOINTS_INVALID, "The body holds no checkpoint.")
    report = await verify_store(ctx.store, checkpoints, ctx.checkpoint_keys)
    await ctx.audit.read(
        principal,
        "audit_verify",
        audited_route(request),
        {"ok": report.ok, "checkpoints": "external", "count": len(checkpoints)},
    )
    return _verify_answer(report, "external")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/audit/entries", audit_entries)
    app.router.add_get("/v1/audit/export", audit_export)
    app.router.add_get("/v1/audit/trace/{record_id}", audit_trace)
    app.router.add_get("/v1/audit/checkpoints", audit_checkpoints)
    app.router.add_get("/v1/audit/verify", audit_verify)
    app.router.add_post("/v1/audit/verify", audit_verify_external)
