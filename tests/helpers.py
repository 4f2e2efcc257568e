"""Helpers shared by the broker-level tests."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker.policy.engine import decide
from broker.policy.loader import PolicySet
from broker.registry import Registry
from broker.stages.parse import parse
from broker.stages.types import Fresh
from broker.stages.validate import validate
from broker.stages.verify import verify


def expected_records(body: bytes, registry: Registry, policy: PolicySet) -> dict[str, dict[str, Any]]:
    """consumer -> minimised record data the engine decides for this signed body."""
    now = datetime.now(UTC)
    validated = validate(Fresh(verify(parse(body, max_bytes=65536, now=now), registry), now))
    decision = decide(validated, policy, datetime.now(UTC))
    return {release.consumer: release.record for release in decision.releases}


def query(db: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def audit_entries(db: Path, kind: str | None = None) -> list[dict[str, Any]]:
    rows = (
        query(db, "SELECT body FROM audit ORDER BY seq")
        if kind is None
        else query(db, "SELECT body FROM audit WHERE kind = ? ORDER BY seq", kind)
    )
    return [json.loads(body) for (body,) in rows]
