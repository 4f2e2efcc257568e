"""The IG lead's held-events API (``ig`` or ``admin`` role): list, release, discard.

    GET  /v1/held?agreement_id=&source=&after=&limit=   what is held (never the body), audited read
    POST /v1/held/release  {"agreement_id": ..., "ids": [...]?}              decide again now
    POST /v1/held/discard  {"agreement_id": ..., "ids": [...]?, "reason": "..."}   delete unreleased

"Release" never overrides an agreement: it decides the held events again under the agreements in
force (``broker/pipeline/held.py``), exactly as a reload does, and releases only what the
agreement now allows (invariant 1); the rest stays held or is discarded, each audited. "Discard"
deletes them, one ``held_discarded`` entry each, naming who; the IG lead's note is screened like
every caller value (``broker/pipeline/access.screened``: kept as a digest unless it is one of the
broker's own words), because a trail kept for years cannot be edited if a name is typed into it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web

from broker.errors import ApiError
from broker.pipeline.access import screened
from broker.pipeline.held import HeldFlow
from broker.ports.store import HeldRow
from broker.transports.http_access import (
    ACCESS,
    AUDIT_ROLES,
    SMALL_INT,
    audited_route,
    authenticate,
    page_limit,
)
from broker.transports.http_app import read_limited
from schemas.envelope import format_time
from schemas.errors import ContractError, Reason
from schemas.strictjson import parse_document

HELD = web.AppKey("held", HeldFlow)
MAX_BODY = 64 * 1024
MAX_IDS = 1000
AGREEMENT_ID = re.compile(r"[a-z0-9][a-z0-9\-]{1,62}", re.ASCII)
HELD_ID = re.compile(r"held-[0-9a-f]{32}", re.ASCII)
MAX_NOTE = 500


def _row(row: HeldRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "agreement_id": row.agreement_id,
        "held_under_revision": row.held_under_revision,
        "reason": row.reason,
        "source": row.source,
        "message_id": row.message_id,
        "event_type": row.event_type,
        "held_at": format_time(row.held_at),
        "expires_at": format_time(row.expires_at),
    }


async def held_list(request: web.Request) -> web.Response:
    principal = await authenticate(request, AUDIT_ROLES)
    ctx = request.app[ACCESS]
    after_raw = request.query.get("after", "0")
    if not SMALL_INT.fullmatch(after_raw):
        raise ApiError(Reason.BAD_CURSOR, "after must be a position from a previous page.")
    agreement_id, source = request.query.get("agreement_id"), request.query.get("source")
    rows = await ctx.store.held_page(
        agreement_id=agreement_id, source=source, after=int(after_raw), limit=page_limit(request)
    )
    filters = {k: v for k, v in request.query.items() if k in ("agreement_id", "source", "after", "limit")}
    await ctx.audit.read(principal, "held", audited_route(request), {"query": filters, "count": len(rows)})
    return web.json_response(
        {
            "count": len(rows),
            "next_after": rows[-1].pos if rows else int(after_raw),
            "held": [_row(row) for row in rows],
        }
    )


async def _body(request: web.Request, *, needs_reason: bool) -> tuple[str, list[str] | None, str | None]:
    """The request's agreement id, ids and reason, strictly (threat: a malformed or huge body)."""
    ctx = request.app[ACCESS]
    try:
        async with asyncio.timeout(ctx.body_timeout):
            raw = await read_limited(request, MAX_BODY)
    except TimeoutError:
        raise ApiError(Reason.REQUEST_TIMEOUT, "The body did not arrive within the read timeout.") from None
    try:
        doc, _ = parse_document(raw, max_bytes=MAX_BODY)
    except ContractError as exc:
        raise ApiError(Reason.BAD_HELD_REQUEST, f"The body is not a JSON object: {exc.reason.value}.") from None
    allowed = {"agreement_id", "ids", "reason"} if needs_reason else {"agreement_id", "ids"}
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ApiError(Reason.BAD_HELD_REQUEST, f"Unknown member(s): {', '.join(unknown[:5])[:200]}.")
    agreement_id = doc.get("agreement_id")
    if not isinstance(agreement_id, str) or not AGREEMENT_ID.fullmatch(agreement_id):
        raise ApiError(Reason.BAD_HELD_REQUEST, "agreement_id must be an agreement id.")
    ids = doc.get("ids")
    if ids is not None and (
        not isinstance(ids, list)
        or len(ids) > MAX_IDS
        or not all(isinstance(i, str) and HELD_ID.fullmatch(i) for i in ids)
    ):
        raise ApiError(Reason.BAD_HELD_REQUEST, f"ids must be a list of at most {MAX_IDS} held ids (held-...).")
    reason = doc.get("reason")
    if needs_reason and (not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_NOTE):
        raise ApiError(Reason.BAD_HELD_REQUEST, f"A discard needs a reason: a non-empty string of at most {MAX_NOTE}.")
    return agreement_id, (list(dict.fromkeys(ids)) if ids is not None else None), reason


async def held_release(request: web.Request) -> web.Response:
    principal = await authenticate(request, AUDIT_ROLES)
    ctx = request.app[ACCESS]
    agreement_id, ids, _ = await _body(request, needs_reason=False)
    details = {"agreement_id": agreement_id, "ids": len(ids) if ids is not None else "all"}
    # Who asked, before the work (a crash mid-way still shows the request in the trail).
    await ctx.audit.read(principal, "held_release", audited_route(request), details)
    result = await request.app[HELD].redecide(agreement_id, ids)
    return web.json_response({"agreement_id": agreement_id, **result.as_dict()})


async def held_discard(request: web.Request) -> web.Response:
    principal = await authenticate(request, AUDIT_ROLES)
    ctx = request.app[ACCESS]
    agreement_id, ids, note = await _body(request, needs_reason=True)
    who = {"sub": principal.sub, "role": principal.role, "note": screened(note, ctx.audit.known)}
    await ctx.audit.read(
        principal, "held_discard", audited_route(request), {"agreement_id": agreement_id, "ids": len(ids or ())}
    )
    count = await request.app[HELD].discard(agreement_id, ids, who)
    return web.json_response({"agreement_id": agreement_id, "discarded": count})


def add_routes(app: web.Application, flow: HeldFlow) -> None:
    app[HELD] = flow
    app.router.add_get("/v1/held", held_list)
    app.router.add_post("/v1/held/release", held_release)
    app.router.add_post("/v1/held/discard", held_discard)
