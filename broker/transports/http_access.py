"""HTTP for the people who read: who may read, the query parameters, the agreements in force.

Every route under ``/v1/feeds``, ``/v1/audit`` and ``/v1/agreements`` needs a bearer token
(``broker.auth.tokens``). Every read is an audit entry made durable *before* the response is sent
(a crash cannot leave a read unaudited); every refusal is an ``access_denied`` entry.

- this module: the shared :class:`AccessContext`, :func:`authenticate`, the query-parameter
  parsers every route uses, and ``GET /v1/agreements``;
- ``http_feeds.py``: the analysts' feeds (an analyst reads only their own consumer's records);
- ``http_audit.py``: the IG lead's audit API (the ``ig`` or ``admin`` role).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from broker.auth.tokens import Principal, TokenVerifier
from broker.errors import ApiError, AuthError
from broker.logs import get_logger
from broker.monitor.alerts import AGREEMENT_CODES, Alert
from broker.pipeline.access import AccessAudit
from broker.pipeline.status import current_alerts
from broker.policy.model import PolicySet
from broker.ports.store import Store
from broker.registry import Registry
from broker.transports.http_app import route_template
from schemas.envelope import format_time, parse_time
from schemas.errors import Reason

log = get_logger("sv_broker.http")
ANALYST, IG, ADMIN = "analyst", "ig", "admin"
AUDIT_ROLES = frozenset({IG, ADMIN})
ANY_ROLE = frozenset({ANALYST, IG, ADMIN})
MAX_PAGE = 1000


@dataclass
class AccessContext:
    store: Store
    verifier: TokenVerifier
    registry: Registry
    policy: PolicySet
    public_jwks: dict[str, Any]
    checkpoint_keys: dict[str, Any]
    clock: Callable[[], datetime]
    warn_within: timedelta = timedelta(days=30)
    stream_poll: float = 0.25
    max_authorization: int = 8 * 1024  # Settings.http_max_authorization
    body_timeout: float = 30.0  # Settings.http_body_timeout (a request body's read bound)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    audit: AccessAudit = field(init=False)

    def reconfigure(self, registry: Registry, policy: PolicySet) -> None:
        """A reloaded registry and agreement set (the audit's known names follow)."""
        self.registry, self.policy = registry, policy
        self.__post_init__()

    def __post_init__(self) -> None:
        # The broker's own names are kept verbatim in access entries; other caller values as digests.
        known = [*self.registry.partners, *self.registry.consumers, *self.policy.agreements]
        self.audit = AccessAudit(self.store, known)


ACCESS = web.AppKey("access", AccessContext)


def audited_route(request: web.Request) -> str:
    """The route an access entry records: its template, never the path the caller typed."""
    return route_template(request) or "{unrouted}"


# -- authentication and the access audit ------------------------------------------------------------
def verify_token(verifier: TokenVerifier, token: str) -> Principal:
    """Threat: a token the verifier's code did not foresee (as "exp": 1e300 was, a datetime
    overflow) answered 500 with no ``access_denied`` entry, on every protected route. A token that
    makes the verifier fail is refused like any bad token (401, audited); the failure is logged
    as its exception class only (the token is never logged)."""
    try:
        return verifier.verify(token)
    except AuthError:
        raise
    except Exception as exc:
        log.error("token_verifier_failed", error=type(exc).__name__)
        raise AuthError(Reason.TOKEN_MALFORMED, "The bearer token is not a well-formed JWT.") from None


async def authenticate(request: web.Request, roles: frozenset[str]) -> Principal:
    ctx = request.app[ACCESS]
    headers = request.headers.getall("Authorization", [])
    header = headers[0] if headers else ""
    try:
        # Threat: a huge header as a bound on unauthenticated work, and two Authorization headers
        # (a proxy and the broker may each read a different one). Refused 401 and audited like any
        # other bad token; the value itself is never logged or stored, only its length class.
        if len(header) > ctx.max_authorization:
            raise AuthError(
                Reason.TOKEN_MALFORMED, f"The Authorization header is longer than {ctx.max_authorization} bytes."
            )
        if len(headers) > 1:
            raise AuthError(Reason.TOKEN_MALFORMED, "More than one Authorization header was sent.")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise AuthError(Reason.TOKEN_MISSING, "An 'Authorization: Bearer <token>' header is required.")
        principal = verify_token(ctx.verifier, header[7:].strip())
    except AuthError as exc:
        # The token itself is never recorded (a token in the audit would be a credential at rest).
        await ctx.audit.denied(audited_route(request), 401, exc.reason)
        raise ApiError(exc.reason, exc.message, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
    if principal.role not in roles:
        await ctx.audit.denied(audited_route(request), 403, Reason.ROLE_NOT_ALLOWED, principal=principal)
        raise ApiError(Reason.ROLE_NOT_ALLOWED, f"The {principal.role!r} role may not use this route.")
    return principal


# -- query parameters ---------------------------------------------------------------------------------
SMALL_INT = re.compile(r"[0-9]{1,18}")  # ASCII digits only ("²".isdigit() is True), and < 2^63


def page_limit(request: web.Request, default: int = 100) -> int:
    raw = request.query.get("limit", str(default))
    if not SMALL_INT.fullmatch(raw) or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiError(Reason.BAD_LIMIT, f"limit must be an integer from 1 to {MAX_PAGE}.")
    return int(raw)


def query_time(request: web.Request, name: str) -> str | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return format_time(parse_time(raw))
    except (ValueError, OverflowError):
        raise ApiError(Reason.BAD_TIME, f"{name} must be an RFC 3339 date-time with an offset.") from None


def response_format(request: web.Request, allowed: tuple[str, ...]) -> str:
    fmt = request.query.get("format")
    if fmt is None:
        accept = request.headers.get("Accept", "")
        fmt = "csv" if "text/csv" in accept and "csv" in allowed else allowed[0]
    if fmt not in allowed:
        raise ApiError(Reason.BAD_FORMAT, f"format must be one of {', '.join(allowed)}.")
    return fmt


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


def visible_alerts(alerts: list[Alert], principal: Principal, policy: PolicySet) -> list[Alert]:
    """What a caller may see. IG leads and admins: every alert. An analyst: only the date alerts
    of agreements naming their consumer (which the listing shows them anyway); a partner's silence
    and refusal rates are operational facts about other parties' flows, for the people who govern
    them (least privilege: ICO Data Sharing Code, accountability without over-sharing)."""
    if principal.role in AUDIT_ROLES:
        return alerts
    return [
        a
        for a in alerts
        if a.code in AGREEMENT_CODES
        and a.subject in policy.agreements
        and principal.consumer in policy.agreements[a.subject].parties
    ]


async def agreements(request: web.Request) -> web.Response:
    principal = await authenticate(request, ANY_ROLE)
    ctx = request.app[ACCESS]
    policy, registry, now = ctx.policy, ctx.registry, ctx.clock()  # one set, even across a reload
    alerts = await current_alerts(ctx.store, policy, registry, now)
    await ctx.audit.read(principal, "agreements", audited_route(request), {})
    return web.json_response(
        {
            "agreements": agreement_summaries(policy, now, ctx.warn_within),
            "alerts": [a.as_dict() for a in visible_alerts(alerts, principal, policy)],
        }
    )


def add_routes(app: web.Application, ctx: AccessContext) -> None:
    """Share ``ctx`` with every reading route and mount ``GET /v1/agreements``.

    The composition root mounts the feeds (``http_feeds``) and the audit API (``http_audit``)
    beside it; both read ``ctx`` from the application."""
    app[ACCESS] = ctx
    app.router.add_get("/v1/agreements", agreements)
