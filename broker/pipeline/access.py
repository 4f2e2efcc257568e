"""The access flow: every read of the API, and every refusal, audited before the answer.

    request ─► 1 authenticate (token) ─► 2 authorise (role, own feed) ─► 3 read the store
            ─► 4 audit ``accessed`` (durable) ─► 5 answer
    any refusal at 1 or 2 ─► audit ``access_denied`` (durable) ─► answer 401 / 403

A crash can therefore never leave a read unaudited (the entry is durable before the bytes leave).
The HTTP handlers (``broker/transports/http_feeds.py``, ``http_audit.py``, ``http_access.py``) run
steps 1-3 and 5; this module writes 4.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.audit import entries
from broker.auth.tokens import Principal
from broker.ports.store import CommitUnit, Store
from schemas.errors import Reason


class AccessAudit:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def denied(self, route: str, status: int, reason: Reason, details: Mapping[str, Any] | None = None) -> None:
        await self.store.commit(CommitUnit(drafts=[entries.access_denied(route, status, reason, details)]))

    async def read(self, principal: Principal, resource: str, route: str, details: Mapping[str, Any]) -> None:
        draft = entries.accessed(principal.sub, principal.role, resource, route, details)
        await self.store.commit(CommitUnit(drafts=[draft]))
