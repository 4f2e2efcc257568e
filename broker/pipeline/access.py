"""The access flow: every read of the API, and every refusal, audited before the answer.

    request ─► 1 authenticate (token) ─► 2 authorise (role, own feed) ─► 3 read the store
            ─► 4 audit ``accessed`` (durable) ─► 5 answer
    any refusal at 1 or 2 ─► audit ``access_denied`` (durable) ─► answer 401 / 403

A crash can therefore never leave a read unaudited (the entry is durable before the bytes leave).
The HTTP handlers (``broker/transports/http_feeds.py``, ``http_audit.py``, ``http_access.py``) run
steps 1-3 and 5; this module writes 4.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from broker.audit import entries
from broker.audit.chain import Kind
from broker.auth.tokens import Principal
from broker.ports.store import CommitUnit, EndedSession, Store
from schemas.errors import Reason

# Values a caller may put in a path or query string that the audit keeps as they are: the shapes
# of the broker's own identifiers and of times.  Anything else is recorded as a digest.
_SAFE_SHAPES = re.compile(
    r"(?:rec|fig)-[0-9a-f]{32}"  # record ids, figures ids
    r"|[0-9]{4}-Q[1-4]"  # quarters
    r"|[a-z0-9][a-z0-9-]{0,63}:[0-9a-f]{32}"  # message ids
    r"|[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?)?"
    r"|[0-9]{1,19}",  # cursors, limits, sequence numbers
    re.ASCII,
)
_FIXED_WORDS = frozenset({"csv", "jsonl", "json", "html", "true", "false", "asc", "desc", "figures", "records"}) | {
    k.value for k in Kind
}


def screened(value: Any, known: frozenset[str]) -> Any:
    """``value`` as the audit may keep it.  Pure.

    Threat: the access audit records what a caller asked for (the consumer in the path, the
    record id to trace, the filters of a query), and the caller chooses those strings. Kept
    verbatim, a hostile or careless client could write personal data (or anything else) into a
    trail that is kept for years and cannot be edited.  So a caller-supplied string is kept only
    when it is one of the broker's own names (``known``: partners, consumers, agreements), has
    the shape of one of its identifiers or of a time, or is a fixed word; otherwise the entry
    holds its SHA-256 and length, which an IG lead who knows the value can still match.
    """
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        if value in known or value in _FIXED_WORDS or _SAFE_SHAPES.fullmatch(value):
            return value
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
        return {"untrusted_sha256": digest, "length": len(value)}
    if isinstance(value, Mapping):
        # Keys are the broker's own (the handlers name them); only the values came from the caller.
        # A value kept as a digest moves to "<key>_untrusted", so an indexed audit column
        # (consumer, record_id, ...) only ever holds a real name or id, or nothing.
        out: dict[str, Any] = {}
        for key, item in value.items():
            kept = screened(item, known)
            untrusted = isinstance(item, str) and isinstance(kept, dict)
            out[f"{key}_untrusted" if untrusted else str(key)] = kept
        return out
    if isinstance(value, list | tuple):
        return [screened(v, known) for v in value]
    return screened(str(value), known)


class AccessAudit:
    """Writes the access entries; every caller-supplied value in them is screened first.

    ``route`` is the route's template (``/v1/feeds/{consumer}/records``), never the concrete path:
    the path holds what the caller typed (``broker.transports.http_access.route_of``)."""

    def __init__(self, store: Store, known: Iterable[str] = ()) -> None:
        self.store = store
        self.known = frozenset(known)

    async def denied(
        self,
        route: str,
        status: int,
        reason: Reason,
        details: Mapping[str, Any] | None = None,
        principal: Principal | None = None,
    ) -> None:
        """``principal``: who was refused, when the token itself was good (its ``sub`` and role
        were signed by a trusted issuer, so they are kept as they are; ``details`` are screened)."""
        attrs = screened(dict(details or {}), self.known)
        if principal is not None:
            attrs |= {"sub": principal.sub, "role": principal.role}
            if principal.consumer is not None:
                attrs["own_consumer"] = principal.consumer
        draft = entries.access_denied(route, status, reason, attrs or None)
        await self.store.commit(CommitUnit(drafts=[draft]))

    async def read(self, principal: Principal, resource: str, route: str, details: Mapping[str, Any]) -> None:
        draft = entries.accessed(principal.sub, principal.role, resource, route, screened(dict(details), self.known))
        await self.store.commit(CommitUnit(drafts=[draft]))

    async def read_and_end(
        self, principal: Principal, resource: str, route: str, details: Mapping[str, Any], ended: EndedSession
    ) -> None:
        """A console sign-out: its ``accessed`` entry and the session's end in one commit, so the
        trail never says "signed out" for a session another host still accepts."""
        draft = entries.accessed(principal.sub, principal.role, resource, route, screened(dict(details), self.known))
        await self.store.commit(CommitUnit(drafts=[draft], end_sessions=[ended]))


FEED_PAGE = 1000


async def feed_bodies(store: Store, consumer: str) -> list[dict[str, Any]]:
    """Every latest row of a consumer's feed (records, notices, figures), parsed, in cursor order:
    what a pack built from the consumer's own releases reads."""
    out: list[dict[str, Any]] = []
    after = 0
    while rows := await store.feed_page(consumer, after=after, limit=FEED_PAGE):
        out.extend(json.loads(r.body) for r in rows)
        if len(rows) < FEED_PAGE:
            break
        after = rows[-1].id
    return out
