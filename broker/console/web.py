"""The IG console over HTTP: server-rendered pages under ``/console`` (aiohttp + Jinja2).

Mounted as a sub-application on every broker process that serves HTTP (``add_console``), so its
own middleware gives every console answer, refusals and errors included, an HTML body and the
security headers below, and the JSON API's middleware never sees a console page.

Each request: 1 the session cookie (``session.py``: MAC, idle and absolute limits, the token's
expiry) ─► 2 signed out on any host? (``Store.session_ended``) ─► 3 role ─► for a POST: 4 same
origin (``Origin`` / ``Sec-Fetch-Site``) and 5 the form's CSRF token ─► 6 read the store ─►
7 audit ``accessed`` (resource ``console:<page>``, the filters used), durable before the page is
sent ─► 8 render. A refusal at 1-5 is an ``access_denied`` entry, as the API writes for a bad
token; the pasted token itself is never stored or logged (only its verdict).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from broker.auth.tokens import Principal
from broker.console import session as sessions
from broker.console import views
from broker.console.session import CSRF_FIELD, Limits, Session, SessionRefused
from broker.dpia.facts import How
from broker.dpia.flowmap import Side, build_flow_map
from broker.dpia.register import Register, build_register
from broker.dpia.render_map import to_svg
from broker.errors import AuthError
from broker.figures.pack_css import CSS as PACK_CSS
from broker.logs import get_logger
from broker.monitor.alerts import Alert
from broker.pipeline.access import screened
from broker.pipeline.held import HeldFlow
from broker.pipeline.status import current_alerts
from broker.pipeline.trail import audit_pages, trace_entries, verify_store
from broker.policy.model import PolicySet
from broker.ports.store import AuditQuery, EndedSession, HeldRow, QuarantineRow
from broker.spreadsheet import csv_cell
from broker.transports.http_access import (
    ACCESS,
    ADMIN,
    ANALYST,
    IG,
    AccessContext,
    audited_route,
    verify_token,
    visible_alerts,
)
from broker.transports.http_feeds import QUARTER
from broker.transports.http_held import AGREEMENT_ID, HELD_ID, MAX_NOTE
from schemas.envelope import PARTY_ID_RE, format_time, message_id
from schemas.errors import Reason

log = get_logger("sv_broker.console")
PREFIX = "/console"
IG_ROLES = frozenset({IG, ADMIN})
ALL_ROLES = frozenset({ANALYST, IG, ADMIN})
SESSION = web.RequestKey("console_session", Session)  # the (renewed) session of this request
SIGNED_OUT = web.RequestKey("console_signed_out", bool)
PAGE_SIZE = 50
SCAN_LIMIT = 5000  # audit entries one access-log page reads at most (a bound on one request's work)
CSV_LIMIT = 100_000
LIST_LIMIT = 20_000  # quarantine / held rows read for the counts
MAX_TOKEN_FIELD = 8192
MAX_FILTER = 200
MESSAGE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}:[0-9a-f]{32}(?::r[0-9]{1,9})?", re.ASCII)
RECORD_ID = re.compile(r"(?:rec|fig|cnt)-[0-9a-f]{32}", re.ASCII)  # records, figures, contributions

# Threat: script injected into a page (stored in an audit value, a partner's reason sentence)
# runs nowhere: no script source at all, styles only from the broker, forms only to itself, never
# framed (clickjacking), no <base> rewriting relative links.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # filters in a URL never leave in a Referer
    "Cache-Control": "no-store",  # no page of the trail is kept by a shared or back-button cache
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".ico": "image/x-icon"}


@dataclass
class ConsoleContext:
    access: AccessContext  # the API's: store, verifier, registry, policy (reloads follow), audit
    held: HeldFlow
    session_key: bytes
    limits: Limits = field(default_factory=Limits)
    behind_tls: bool = False  # a TLS-terminating proxy in front: cookies Secure, origin https
    id_keys_dir: Path | None = None
    checkpoint_log: Path | None = None
    checkpoints_exchange: str | None = None  # AMQP mode: where checkpoints are published
    lock: Mapping[str, int] | None = None  # policies/revisions.lock


CONSOLE = web.AppKey("console", ConsoleContext)
TEMPLATES = web.AppKey("console_templates", jinja2.Environment)
STATIC = web.AppKey("console_static", dict[str, tuple[bytes, str]])


class Refusal(Exception):
    def __init__(self, status: int, title: str, message: str, *, sign_in: bool = False) -> None:
        super().__init__(message)
        self.status, self.title, self.message, self.sign_in = status, title, message, sign_in


NAV: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("/console", "Home", ALL_ROLES),
    ("/console/agreements", "Agreements", ALL_ROLES),
    ("/console/flow-map", "Flow map", ALL_ROLES),
    ("/console/access", "Access log", IG_ROLES),
    ("/console/trace", "Record trace", IG_ROLES),
    ("/console/integrity", "Trail integrity", IG_ROLES),
    ("/console/quarantine", "Quarantine", IG_ROLES),
    ("/console/held", "Held events", IG_ROLES),
    ("/console/figures", "Figures", IG_ROLES),
)


# -- rendering ----------------------------------------------------------------------------------------
def _ctx(request: web.Request) -> ConsoleContext:
    return request.app[CONSOLE]


def render(request: web.Request, template: str, title: str, status: int = 200, **values: Any) -> web.Response:
    session: Session | None = request.get(SESSION)
    env = request.app[TEMPLATES]

    def csrf(action: str) -> str:
        return "" if session is None else sessions.csrf_token(session, action)

    nav = [] if session is None else [(href, label) for href, label, roles in NAV if session.role in roles]
    html = env.get_template(template).render(
        title=title,
        session=session,
        nav=nav,
        path=request.path,
        csrf=csrf,
        csrf_field=CSRF_FIELD,
        **values,
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _secure(request: web.Request) -> bool:
    return request.secure or _ctx(request).behind_tls


def _set_cookie(response: web.StreamResponse, request: web.Request, session: Session, now: datetime) -> None:
    response.set_cookie(
        sessions.COOKIE,
        sessions.encode(session, _ctx(request).session_key),
        max_age=max(0, int((session.ends - now).total_seconds())),
        path=PREFIX,
        httponly=True,  # threat: a script (there is none, but defence in depth) reading the session
        samesite="Strict",  # threat: a cross-site page sending the cookie (CSRF, cross-site reads)
        secure=_secure(request),  # threat: the cookie sent in clear over plain HTTP
    )


def _clear_cookie(response: web.StreamResponse, request: web.Request) -> None:
    response.set_cookie(
        sessions.COOKIE, "", max_age=0, path=PREFIX, httponly=True, samesite="Strict", secure=_secure(request)
    )


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


@web.middleware
async def console_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """HTML for every answer, the security headers on every answer, the renewed cookie."""
    response: web.StreamResponse
    try:
        response = await handler(request)
    except Refusal as exc:
        response = render(request, "refused.html", exc.title, exc.status, message=exc.message, sign_in=exc.sign_in)
        if exc.sign_in:
            _clear_cookie(response, request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        title = {404: "Page not found", 405: "Method not allowed", 413: "Request too large"}.get(
            exc.status, "Request refused"
        )
        response = render(request, "refused.html", title, exc.status, message=exc.reason, sign_in=False)
    except Exception as exc:
        log.exception("console_handler_failed", route=audited_route(request), error=type(exc).__name__)
        response = render(
            request, "refused.html", "Sorry, there is a problem", 500, message="The console hit an internal error.",
            sign_in=False,
        )  # fmt: skip
    response.headers.update(SECURITY_HEADERS)
    session: Session | None = request.get(SESSION)
    if session is not None and not request.get(SIGNED_OUT):
        _set_cookie(response, request, session, _ctx(request).access.clock())
    return response


# -- sessions, roles, forms ----------------------------------------------------------------------------
def principal_of(session: Session, ctx: ConsoleContext) -> Principal:
    return Principal(session.sub, session.role, session.consumer, ctx.access.verifier.issuer, None, session.ends)


async def signed_in(request: web.Request, roles: frozenset[str]) -> tuple[Session, Principal]:
    ctx = _ctx(request)
    now = ctx.access.clock()
    route = audited_route(request)
    try:
        session = sessions.decode(request.cookies.get(sessions.COOKIE, ""), ctx.session_key, now, ctx.limits)
    except SessionRefused as exc:
        await ctx.access.audit.denied(route, 401, exc.reason)
        raise Refusal(401, "Sign in", exc.message, sign_in=True) from None
    principal = principal_of(session, ctx)
    if await ctx.access.store.session_ended(session.sid):
        # Threat: a cookie copied before sign-out, replayed afterwards (on this host or another).
        await ctx.access.audit.denied(route, 401, Reason.SESSION_ENDED, principal=principal)
        raise Refusal(401, "Sign in", "This session was signed out: sign in again.", sign_in=True)
    if session.role not in roles:
        await ctx.access.audit.denied(route, 403, Reason.ROLE_NOT_ALLOWED, principal=principal)
        raise Refusal(403, "You cannot open this page", f"The {session.role} role may not open this page.")
    request[SESSION] = sessions.renewed(session, now)
    return session, principal


def same_origin(request: web.Request, behind_tls: bool) -> bool:
    """Threat: a form on another site posting into a signed-in console (CSRF), or a login form
    posted cross-site (login CSRF). Browsers send ``Origin`` on every POST and
    ``Sec-Fetch-Site`` on every request; a POST that lacks ``Origin`` is refused rather than
    trusted. The expected origin is this request's own host (the browser chose it).

    The console's own ``Referrer-Policy: no-referrer`` makes a browser send ``Origin: null`` on
    every form POST (the Fetch standard serialises the origin as null under that policy), so a
    null origin is accepted only together with ``Sec-Fetch-Site: same-origin``, which the browser
    alone sets (a page cannot forge it) and which an opaque origin (a sandboxed frame, a data: URL)
    never gets. A null origin without it is refused."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("Origin")
    if origin == "null":
        return site == "same-origin"
    scheme = "https" if request.secure or behind_tls else "http"
    return origin == f"{scheme}://{request.host}"


async def posted(
    request: web.Request, roles: frozenset[str], action: str
) -> tuple[Session, Principal, Mapping[str, Any]]:
    """A console form: session, role, same origin, then the CSRF token bound to this session and
    this form's action, compared in constant time. Refused 403 and audited otherwise."""
    session, principal = await signed_in(request, roles)
    ctx = _ctx(request)
    route = audited_route(request)
    if not same_origin(request, ctx.behind_tls):
        await ctx.access.audit.denied(route, 403, Reason.CROSS_ORIGIN, principal=principal)
        raise Refusal(403, "Request refused", "The form was not sent from this console.")
    form = await request.post()
    token = form.get(CSRF_FIELD)
    if not isinstance(token, str) or not sessions.csrf_ok(session, action, token):
        await ctx.access.audit.denied(route, 403, Reason.CSRF_FAILED, principal=principal)
        raise Refusal(
            403, "Request refused", "The form's security token is missing or out of date: open the page again."
        )
    return session, principal, form


def _query(request: web.Request, *names: str) -> dict[str, str]:
    """The named query parameters that were given (non-empty, bounded)."""
    out = {}
    for name in names:
        value = request.query.get(name, "").strip()
        if value:
            if len(value) > MAX_FILTER:
                raise Refusal(400, "Check the filters", f"{name} is longer than {MAX_FILTER} characters.")
            out[name] = value
    return out


# -- sign in and out ----------------------------------------------------------------------------------
async def sign_in_form(request: web.Request) -> web.Response:
    return render(request, "sign_in.html", "Sign in", signed_out=request.query.get("signed_out") == "1", errors=[])


async def sign_in(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    route = audited_route(request)
    if not same_origin(request, ctx.behind_tls):
        await ctx.access.audit.denied(route, 403, Reason.CROSS_ORIGIN)
        raise Refusal(403, "Request refused", "The sign-in form was not sent from this console.")
    form = await request.post()
    raw = form.get("token")
    token = raw.strip() if isinstance(raw, str) else ""
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    try:
        if not token:
            raise AuthError(Reason.TOKEN_MISSING, "Paste your access token.")
        if len(token) > MAX_TOKEN_FIELD:
            raise AuthError(Reason.TOKEN_MALFORMED, "That is not an access token (too long).")
        principal = verify_token(ctx.access.verifier, token)
    except AuthError as exc:
        # As the API: the refusal and its reason are audited, the token never (a credential at rest).
        await ctx.access.audit.denied(route, 401, exc.reason)
        errors = [("token", f"The token was refused: {exc.message} ({exc.reason.value})")]
        return render(request, "sign_in.html", "Sign in", 401, signed_out=False, errors=errors)
    now = ctx.access.clock()
    session = sessions.open_session(
        principal.sub, principal.role, principal.consumer, principal.expires_at, now, ctx.limits
    )
    await ctx.access.audit.read(
        principal,
        "console:sign-in",
        route,
        {"session": session.sid, "token_id": principal.token_id, "ends": format_time(session.ends)},
    )
    response = see_other("/console")
    _set_cookie(response, request, session, now)
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    session, principal, _ = await posted(request, ALL_ROLES, "/console/sign-out")
    ctx = _ctx(request)
    # One commit: the sign-out's audit entry and the session's end (every host refuses it next).
    await ctx.access.audit.read_and_end(
        principal,
        "console:sign-out",
        audited_route(request),
        {"session": session.sid},
        EndedSession(session.sid, session.ends),
    )
    request[SIGNED_OUT] = True
    response = see_other("/console/sign-in?signed_out=1")
    _clear_cookie(response, request)
    return response


# -- home -----------------------------------------------------------------------------------------------
async def home(request: web.Request) -> web.Response:
    session, principal = await signed_in(request, ALL_ROLES)
    ctx = _ctx(request)
    access = ctx.access
    policy, registry, now = access.policy, access.registry, access.clock()
    alerts: list[Alert] = visible_alerts(await current_alerts(access.store, policy, registry, now), principal, policy)
    register = _register_for(session, ctx, now)
    states: dict[str, int] = {}
    for entry in register.agreements:
        states[entry.state.tag] = states.get(entry.state.tag, 0) + 1
    counts = await access.store.counts() if session.role in IG_ROLES else None
    held = await access.store.held_agreements() if session.role in IG_ROLES else {}
    await access.audit.read(principal, "console:home", audited_route(request), {"alerts": len(alerts)})
    return render(
        request,
        "home.html",
        "Home",
        alerts=alerts,
        states=sorted(states.items()),
        agreements=len(register.agreements),
        counts=counts,
        held=sorted(held.items()),
        held_total=sum(held.values()),
        agreement_ids=_visible_agreements(session, policy),
    )


# -- agreements ------------------------------------------------------------------------------------------
def _visible_agreements(session: Session, policy: PolicySet) -> set[str]:
    """An analyst sees the agreements naming their consumer; IG leads and admins every one."""
    if session.role in IG_ROLES:
        return set(policy.agreements)
    return {a.id for a in policy.agreements.values() if session.consumer in a.parties}


def _register_for(session: Session, ctx: ConsoleContext, now: datetime) -> Register:
    register = build_register(ctx.access.policy, ctx.access.registry, now, ctx.lock)
    visible = _visible_agreements(session, ctx.access.policy)
    shown = tuple(e for e in register.agreements if e.id in visible)
    return replace(register, agreements=shown, unused=register.unused if session.role in IG_ROLES else ())


async def agreements(request: web.Request) -> web.Response:
    session, principal = await signed_in(request, ALL_ROLES)
    ctx = _ctx(request)
    register = _register_for(session, ctx, ctx.access.clock())
    await ctx.access.audit.read(
        principal, "console:agreements", audited_route(request), {"count": len(register.agreements)}
    )
    return render(request, "agreements.html", "Agreements register", register=register)


async def agreement(request: web.Request) -> web.Response:
    session, principal = await signed_in(request, ALL_ROLES)
    ctx = _ctx(request)
    agreement_id = request.match_info["agreement_id"]
    route = audited_route(request)
    if agreement_id in ctx.access.policy.agreements and agreement_id not in _visible_agreements(
        session, ctx.access.policy
    ):
        # Threat: an analyst reading the terms of agreements that do not name their consumer.
        await ctx.access.audit.denied(route, 403, Reason.ROLE_NOT_ALLOWED, {"agreement_id": agreement_id}, principal)
        raise Refusal(403, "You cannot open this page", "This agreement does not name your organisation.")
    register = _register_for(session, ctx, ctx.access.clock())
    entry = next((e for e in register.agreements if e.id == agreement_id), None)
    await ctx.access.audit.read(
        principal, "console:agreement", route, {"agreement_id": agreement_id, "found": entry is not None}
    )
    if entry is None:
        raise Refusal(404, "Agreement not found", "No agreement in force has this id.")
    return render(request, "agreement.html", entry.title, entry=entry, How=How)


# -- flow map --------------------------------------------------------------------------------------------
def _period(request: web.Request, now: datetime) -> tuple[str, str, datetime, datetime, list[tuple[str, str]]]:
    today = now.date()
    errors = []
    since_day, until_day = today - timedelta(days=89), today
    try:
        until_day = views.parse_day(request.query.get("until"), today)
    except ValueError:
        errors.append(("until", "Enter the end of the period as a date, like 2026-03-31"))
    try:
        since_day = views.parse_day(request.query.get("since"), until_day - timedelta(days=89))
    except ValueError:
        errors.append(("since", "Enter the start of the period as a date, like 2026-01-01"))
    if not errors and since_day > until_day:
        errors.append(("since", "The start of the period must be on or before its end"))
    start, end = views.period(since_day, until_day)
    return since_day.isoformat(), until_day.isoformat(), start, end, errors


def _visible_policy(session: Session, policy: PolicySet) -> PolicySet:
    if session.role in IG_ROLES:
        return policy
    ids = _visible_agreements(session, policy)
    return replace(
        policy,
        agreements={k: v for k, v in policy.agreements.items() if k in ids},
        flows=tuple(f for f in policy.flows if f.agreement.id in ids),
    )


async def _flow_map(request: web.Request, session: Session, start: datetime, end: datetime) -> Any:
    ctx = _ctx(request)
    counts = await ctx.access.store.released_volumes(format_time(start), format_time(end))
    volumes = {
        (c.agreement_id, c.flow_id, c.consumer): c.count
        for c in counts
        # an analyst sees the volume released to their own consumer only
        if session.role in IG_ROLES or c.consumer == session.consumer
    }
    policy = _visible_policy(session, ctx.access.policy)
    return build_flow_map(policy, ctx.access.registry, ctx.access.clock(), volumes)


async def flow_map(request: web.Request) -> web.Response:
    session, principal = await signed_in(request, ALL_ROLES)
    ctx = _ctx(request)
    since, until, start, end, errors = _period(request, ctx.access.clock())
    fmap = await _flow_map(request, session, start, end)
    names = {p.party_id: p.name for p in fmap.consumers}
    edges = [e for e in fmap.edges if e.side is Side.RECEIVES]
    await ctx.access.audit.read(
        principal, "console:flow-map", audited_route(request), {"since": since, "until": until, "edges": len(edges)}
    )
    return render(
        request,
        "flow_map.html",
        "Flow map",
        fmap=fmap,
        edges=edges,
        names=names,
        since=since,
        until=until,
        errors=errors,
        total=sum(e.volume or 0 for e in edges),
        status=400 if errors else 200,
    )


async def flow_map_svg(request: web.Request) -> web.Response:
    session, principal = await signed_in(request, ALL_ROLES)
    ctx = _ctx(request)
    since, until, start, end, _ = _period(request, ctx.access.clock())
    fmap = await _flow_map(request, session, start, end)
    await ctx.access.audit.read(
        principal, "console:flow-map.svg", audited_route(request), {"since": since, "until": until}
    )
    return web.Response(text=to_svg(fmap), content_type="image/svg+xml", charset="utf-8")


# -- access log ----------------------------------------------------------------------------------------------
def _access_filters(
    request: web.Request, ctx: ConsoleContext
) -> tuple[dict[str, str], AuditQuery, views.AccessFilter, list[tuple[str, str]]]:
    given = _query(request, "sub", "consumer", "agreement_id", "since", "until")
    errors: list[tuple[str, str]] = []
    since = until = None
    try:
        if "since" in given:
            since = format_time(views.day_start(views.parse_day(given["since"], datetime.min.date())))
    except ValueError:
        errors.append(("since", "Enter the first day as a date, like 2026-01-01"))
    try:
        if "until" in given:
            until_day = views.parse_day(given["until"], datetime.min.date())
            until = format_time(views.day_start(until_day + timedelta(days=1)))
    except ValueError:
        errors.append(("until", "Enter the last day as a date, like 2026-03-31"))
    agreement_id = given.get("agreement_id")
    consumers = None
    if agreement_id is not None:
        consumers = frozenset(c for f in ctx.access.policy.flows if f.agreement.id == agreement_id for c in f.consumers)
    console = request.query.get("console") == "yes"
    if console:
        given["console"] = "yes"
    flt = views.AccessFilter(given.get("sub"), given.get("consumer"), consumers, agreement_id, console)
    query = AuditQuery(kind="accessed", consumer=given.get("consumer"), since=since, until=until, limit=500)
    return given, query, flt, errors


async def access_log(request: web.Request) -> web.Response:
    _, principal = await signed_in(request, IG_ROLES)
    ctx = _ctx(request)
    given, query, flt, errors = _access_filters(request, ctx)
    after_raw = request.query.get("after", "0")
    after = int(after_raw) if after_raw.isdecimal() and len(after_raw) < 19 else 0
    rows: list[views.AccessRow] = []
    scanned, next_after = 0, None
    if not errors:
        cursor = after
        while len(rows) < PAGE_SIZE and scanned < SCAN_LIMIT:
            page = await ctx.access.store.audit_page(replace(query, after=cursor))
            if not page:
                break
            for audit_row in page:
                scanned += 1
                cursor = audit_row.seq
                row = views.access_row(audit_row)
                if flt.admits(row, views.agreement_of(audit_row)):
                    rows.append(row)
                    if len(rows) == PAGE_SIZE:
                        break
            if len(page) < query.limit and len(rows) < PAGE_SIZE:
                cursor = -1  # the end of the trail
                break
        next_after = cursor if cursor > 0 else None
    await ctx.access.audit.read(
        principal, "console:access", audited_route(request), {"query": given, "after": after, "count": len(rows)}
    )
    base = dict(given)
    return render(
        request,
        "access.html",
        "Access log",
        rows=rows,
        given=given,
        errors=errors,
        next_query=None if next_after is None else base | {"after": str(next_after)},
        csv_query=base,
        consumers=sorted(ctx.access.registry.consumers),
        agreements=sorted(ctx.access.policy.agreements),
        status=400 if errors else 200,
    )


async def access_csv(request: web.Request) -> web.Response:
    _, principal = await signed_in(request, IG_ROLES)
    ctx = _ctx(request)
    given, query, flt, errors = _access_filters(request, ctx)
    if errors:
        raise Refusal(400, "Check the filters", "; ".join(message for _, message in errors))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(views.CSV_COLUMNS)
    count = 0
    async for page in audit_pages(ctx.access.store, query, 1000):
        for audit_row in page:
            row = views.access_row(audit_row)
            if flt.admits(row, views.agreement_of(audit_row)):
                # Threat: a value planted in the trail (a path, a sub) read as a formula by a spreadsheet.
                writer.writerow([csv_cell(v) for v in views.csv_values(row)])
                count += 1
        if count >= CSV_LIMIT:
            break
    await ctx.access.audit.read(
        principal, "console:access.csv", audited_route(request), {"query": given, "count": count}
    )
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": 'attachment; filename="sv-broker-access.csv"'},
    )


# -- record trace ---------------------------------------------------------------------------------------------
def _id_key(ctx: ConsoleContext, partner: str) -> bytes | str:
    """The partner's message-id key from the operator's ``--id-keys-dir``, or why not. Read-only:
    never created here (``schemas.keyfile.load_or_create_id_key`` would make one)."""
    if ctx.id_keys_dir is None:
        return "no id keys are configured"
    path = ctx.id_keys_dir / f"{partner}.idkey"
    try:
        mode = path.stat().st_mode
        if stat.S_IMODE(mode) & 0o077:
            return f"{partner}'s id key file is readable by group or others (chmod 600 it)"
        raw = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        return f"no id key for {partner} in the id keys directory"
    except (OSError, ValueError):
        return f"{partner}'s id key file cannot be read"
    return raw if len(raw) >= 32 else f"{partner}'s id key file does not hold a 32-byte key"


async def _trace_of(
    ctx: ConsoleContext, record_id: str | None, message: str | None
) -> tuple[dict[int, bytes], str | None]:
    store = ctx.access.store
    if record_id is not None:
        found = await store.record_message(record_id)
        if found is None:
            return {}, None
        return await trace_entries(store, record_id, found), found
    assert message is not None
    seen: dict[int, bytes] = {}
    released: list[str] = []
    async for page in audit_pages(store, AuditQuery(message_id=message)):
        for row in page:
            seen[row.seq] = row.body
            rid = json.loads(row.body).get("record_id")
            if row.kind == "released" and isinstance(rid, str):
                released.append(rid)
    for rid in dict.fromkeys(released):
        seen.update(await trace_entries(store, rid, message))
    return seen, message


async def _trace_page(
    request: web.Request, principal: Principal, record_id: str | None, message: str | None,
    errors: list[tuple[str, str]], partner: str | None = None,
) -> web.Response:  # fmt: skip
    ctx = _ctx(request)
    entries: dict[int, bytes] = {}
    found_message = None
    if not errors and (record_id or message):
        entries, found_message = await _trace_of(ctx, record_id, message)
    # Which id was given shows as its key: record_id, message_id, or the partner whose record key
    # was used (with the message id derived from it).
    details: dict[str, Any] = {"count": len(entries), "found": bool(entries)}
    if record_id:
        details["record_id"] = record_id
    if message:
        details["message_id"] = message
    if partner:
        details["partner"] = partner  # never the partner's record key: it may be a case number
    await ctx.access.audit.read(principal, "console:trace", audited_route(request), details)
    return render(
        request,
        "trace.html",
        "Record trace",
        steps=views.trace_steps(entries),
        recipients=views.recipients(entries),
        searched=bool(record_id or message) and not errors,
        record_id=record_id or "",
        message_id=message or "",
        found_message=found_message,
        partner=partner or "",
        partners=sorted(ctx.access.registry.partners),
        id_keys=ctx.id_keys_dir is not None,
        errors=errors,
        status=400 if errors else 200,
    )


async def trace(request: web.Request) -> web.Response:
    _, principal = await signed_in(request, IG_ROLES)
    given = _query(request, "message_id", "record_id")
    errors = []
    record_id, message = given.get("record_id"), given.get("message_id")
    if record_id is not None and not RECORD_ID.fullmatch(record_id):
        errors.append(("record-id", "Enter a record id as the broker writes it: rec- and 32 hexadecimal digits"))
    if message is not None and not MESSAGE_ID.fullmatch(message):
        errors.append(("message-id", "Enter a message id as the broker writes it: partner:32 hexadecimal digits"))
    return await _trace_page(request, principal, record_id, None if record_id else message, errors)


async def trace_by_key(request: web.Request) -> web.Response:
    """A partner and the partner's own record key: the message id is derived with the partner's
    id key, read from the operator's ``--id-keys-dir`` (never typed into a browser). POST, so the
    record key stays out of URLs, histories and logs."""
    _, principal, form = await posted(request, IG_ROLES, "/console/trace")
    ctx = _ctx(request)
    partner = str(form.get("partner", "")).strip()
    key = str(form.get("record_key", ""))
    errors = []
    if partner not in ctx.access.registry.partners or not PARTY_ID_RE.fullmatch(partner):
        errors.append(("partner", "Choose the partner that sent the record"))
    if not key.strip() or len(key) > 512:
        errors.append(("record-key", "Enter the partner's record key (at most 512 characters)"))
    message = None
    if not errors:
        id_key = _id_key(ctx, partner)
        if isinstance(id_key, str):
            errors.append(("partner", f"The message id cannot be derived here: {id_key}"))
        else:
            message = message_id(partner, key.strip(), id_key)
    return await _trace_page(request, principal, None, message, errors, partner or None)


# -- trail integrity ---------------------------------------------------------------------------------------------
async def integrity(request: web.Request) -> web.Response:
    _, principal = await signed_in(request, IG_ROLES)
    ctx = _ctx(request)
    store = ctx.access.store
    checkpoints = await store.checkpoints()
    started = time.perf_counter()
    report = await verify_store(store, checkpoints, ctx.access.checkpoint_keys)
    took = time.perf_counter() - started
    await ctx.access.audit.read(
        principal,
        "console:integrity",
        audited_route(request),
        {"ok": report.ok, "entries": report.chain.entries, "checkpoints": len(checkpoints)},
    )
    return render(
        request,
        "integrity.html",
        "Trail integrity",
        report=report,
        took=f"{took:.3f}",
        checkpoints=list(reversed(checkpoints[-20:])),
        checkpoint_count=len(checkpoints),
        checkpoint_log=str(ctx.checkpoint_log) if ctx.checkpoint_log else None,
        exchange=ctx.checkpoints_exchange,
        checked_at=format_time(ctx.access.clock()),
    )


# -- quarantine and held --------------------------------------------------------------------------------------
def _by(request: web.Request) -> str:
    return "week" if request.query.get("by") == "week" else "day"


async def quarantine(request: web.Request) -> web.Response:
    _, principal = await signed_in(request, IG_ROLES)
    ctx = _ctx(request)
    rows: list[QuarantineRow] = []
    after = 0
    while len(rows) < LIST_LIMIT and (page := await ctx.access.store.quarantine_page(after=after, limit=1000)):
        rows.extend(page)
        after = page[-1].id
    by = _by(request)
    await ctx.access.audit.read(principal, "console:quarantine", audited_route(request), {"by": by, "count": len(rows)})
    return render(
        request,
        "quarantine.html",
        "Quarantine",
        counts=views.quarantine_counts(rows, by),
        items=list(reversed(rows[-100:])),
        total=len(rows),
        by=by,
        truncated=len(rows) >= LIST_LIMIT,
    )


async def _held_rows(ctx: ConsoleContext) -> list[HeldRow]:
    rows: list[HeldRow] = []
    after = 0
    while len(rows) < LIST_LIMIT and (page := await ctx.access.store.held_page(after=after, limit=1000)):
        rows.extend(page)
        after = page[-1].pos
    return rows


OUTCOME_KEYS = ("released", "held", "discarded", "unreadable")


async def held(request: web.Request, errors: list[tuple[str, str]] | None = None) -> web.Response:
    _, principal = await signed_in(request, IG_ROLES)
    ctx = _ctx(request)
    rows = await _held_rows(ctx)
    by = _by(request)
    outcome = {k: int(v) for k in OUTCOME_KEYS if (v := request.query.get(k, "")).isdecimal() and len(v) < 10}
    done_agreement = request.query.get("agreement_id", "")
    if not AGREEMENT_ID.fullmatch(done_agreement):
        done_agreement = ""
    await ctx.access.audit.read(principal, "console:held", audited_route(request), {"by": by, "count": len(rows)})
    return render(
        request,
        "held.html",
        "Held events",
        counts=views.held_counts(rows, by),
        groups=views.held_groups(rows),
        total=len(rows),
        by=by,
        outcome=outcome,
        done_agreement=done_agreement,
        errors=errors or [],
        max_note=MAX_NOTE,
        status=400 if errors else 200,
    )


def _held_form(form: Mapping[str, Any], ctx: ConsoleContext) -> tuple[str, list[str]]:
    agreement_id = str(form.get("agreement_id", ""))
    if not AGREEMENT_ID.fullmatch(agreement_id) or agreement_id not in ctx.access.policy.agreements:
        raise Refusal(400, "Request refused", "The form names no agreement.")
    getall = getattr(form, "getall", None)
    ids = [str(i) for i in (getall("ids", []) if getall else [])]
    if len(ids) > 1000 or not all(HELD_ID.fullmatch(i) for i in ids):
        raise Refusal(400, "Request refused", "The form names held events that are not held ids.")
    return agreement_id, list(dict.fromkeys(ids))


async def held_release(request: web.Request) -> web.StreamResponse:
    _, principal, form = await posted(request, IG_ROLES, "/console/held/release")
    ctx = _ctx(request)
    agreement_id, ids = _held_form(form, ctx)
    details = {"agreement_id": agreement_id, "ids": len(ids) if ids else "all"}
    await ctx.access.audit.read(principal, "console:held-release", audited_route(request), details)
    result = await ctx.held.redecide(agreement_id, ids or None)  # the same code as POST /v1/held/release
    counts = "&".join(f"{k}={v}" for k, v in result.as_dict().items())
    return see_other(f"/console/held?agreement_id={agreement_id}&{counts}")


async def held_discard(request: web.Request) -> web.StreamResponse:
    _, principal, form = await posted(request, IG_ROLES, "/console/held/discard")
    ctx = _ctx(request)
    agreement_id, ids = _held_form(form, ctx)
    note = str(form.get("reason", "")).strip()
    every = form.get("all") == "yes"
    errors = []
    if not note or len(note) > MAX_NOTE:
        errors.append((f"reason-{agreement_id}", f"Give a reason for discarding (at most {MAX_NOTE} characters)"))
    if not ids and not every:
        errors.append((f"all-{agreement_id}", "Choose the events to discard, or tick 'all held events'"))
    if errors:
        return await held(request, errors)
    who = {"sub": principal.sub, "role": principal.role, "note": screened(note, ctx.access.audit.known)}
    await ctx.access.audit.read(
        principal, "console:held-discard", audited_route(request), {"agreement_id": agreement_id, "ids": len(ids)}
    )
    count = await ctx.held.discard(agreement_id, ids or None, who)  # the same code as POST /v1/held/discard
    return see_other(f"/console/held?agreement_id={agreement_id}&discarded={count}")


# -- static files -------------------------------------------------------------------------------------------
def load_static() -> dict[str, tuple[bytes, str]]:
    """Every file under ``static/``, read once: the only files the console serves (no path from
    the URL ever reaches the file system: threat, path traversal)."""
    out: dict[str, tuple[bytes, str]] = {}
    for item in resources.files("broker.console").joinpath("static").iterdir():
        suffix = Path(item.name).suffix
        if item.is_file() and suffix in STATIC_TYPES:
            out[item.name] = (item.read_bytes(), STATIC_TYPES[suffix])
    out["board.css"] = (PACK_CSS.encode(), STATIC_TYPES[".css"])  # the board pack's, one source
    return out


# -- figures releases (figures-only flows: the Board's and the VRU's quarterly counts) ----------------
async def figures(request: web.Request) -> web.Response:
    """Every figures quarter released, per consumer: its latest revision, events counted, when."""
    _, principal = await signed_in(request, IG_ROLES)
    ctx = _ctx(request)
    rows = [
        row for consumer in sorted(ctx.access.registry.consumers) for row in await ctx.access.store.figures_of(consumer)
    ]
    await ctx.access.audit.read(
        principal,
        "console:figures",
        audited_route(request),
        {"count": len(rows), "record_ids": [r.figures_id for r in rows]},
    )
    return render(request, "figures.html", "Figures releases", rows=rows)


async def figures_pack(request: web.Request) -> web.Response:
    """One consumer's quarterly pack from its figures releases, as released (the same page as
    ``GET /v1/feeds/{consumer}/board?format=html``), under the console's CSP: its stylesheet is a
    console file, its charts data images, no script."""
    _, principal = await signed_in(request, IG_ROLES)
    ctx = _ctx(request)
    consumer, period = request.query.get("consumer", ""), request.query.get("quarter", "")
    if consumer not in ctx.access.registry.consumers or not QUARTER.fullmatch(period):
        raise Refusal(400, "Request refused", "Choose a consumer and a quarter from the figures list.")
    releases = [r for r in await ctx.access.store.figures_of(consumer) if r.period == period]
    await ctx.access.audit.read(
        principal,
        "console:figures",
        audited_route(request),
        {"consumer": consumer, "quarter": period, "record_ids": [r.figures_id for r in releases]},
    )
    if not releases:
        raise Refusal(404, "Page not found", f"No figures for {consumer} in {period} have been released.")
    from broker.figures import board_render  # numpy, scipy, matplotlib: with the first pack shown
    from broker.figures.board import board_from_figures

    board = board_from_figures([json.loads(r.body) for r in releases], consumer)

    def page() -> str:
        files = board_render.charts(board)
        html = board_render.inline_charts(
            board_render.to_html(board, files, css_href=f"{PREFIX}/static/board.css"), files
        )
        return html.replace("<body>", f"<body><p><a href='{PREFIX}/figures'>Back to the figures releases</a></p>", 1)

    return web.Response(text=await asyncio.to_thread(page), content_type="text/html", charset="utf-8")


async def static(request: web.Request) -> web.Response:
    found = request.app[STATIC].get(request.match_info["name"])
    if found is None:
        raise web.HTTPNotFound()
    body, content_type = found
    return web.Response(body=body, headers={"Content-Type": content_type})


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("broker.console", "templates"),
        # Threat: a value from the trail or a partner (a reason sentence, a sub) rendered as markup.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["urlquery"] = lambda params: "&".join(
        f"{jinja2.filters.do_urlencode(k)}={jinja2.filters.do_urlencode(v)}" for k, v in dict(params).items()
    )
    return env


def console_app(ctx: ConsoleContext) -> web.Application:
    app = web.Application(middlewares=[console_middleware])
    app[CONSOLE] = ctx
    app[TEMPLATES] = templates()
    app[STATIC] = load_static()
    app.router.add_get("", home)
    app.router.add_get("/", home)
    app.router.add_get("/sign-in", sign_in_form)
    app.router.add_post("/sign-in", sign_in)
    app.router.add_post("/sign-out", sign_out)
    app.router.add_get("/agreements", agreements)
    app.router.add_get("/agreements/{agreement_id}", agreement)
    app.router.add_get("/flow-map", flow_map)
    app.router.add_get("/flow-map.svg", flow_map_svg)
    app.router.add_get("/access", access_log)
    app.router.add_get("/access.csv", access_csv)
    app.router.add_get("/trace", trace)
    app.router.add_post("/trace", trace_by_key)
    app.router.add_get("/integrity", integrity)
    app.router.add_get("/quarantine", quarantine)
    app.router.add_get("/held", held)
    app.router.add_get("/figures", figures)
    app.router.add_get("/figures/pack", figures_pack)
    app.router.add_post("/held/release", held_release)
    app.router.add_post("/held/discard", held_discard)
    app.router.add_get("/static/{name}", static)
    return app


def add_console(app: web.Application, ctx: ConsoleContext) -> None:
    """Mount the console under ``/console`` (after ``http_access.add_routes``: it shares ``ACCESS``)."""
    assert app[ACCESS] is ctx.access
    app.add_subapp(PREFIX, console_app(ctx))
