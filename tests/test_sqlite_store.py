"""SQLite-only details of the SQLite backend (the store contract itself is held by
``tests/test_store_contract.py``, on both backends)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def test_multi_row_statements_respect_a_low_bound_parameter_limit(tmp_path: Path) -> None:
    """SQLite before 3.32 binds at most 999 parameters per statement."""
    from broker.ports.sqlite_store import _insert_many

    conn = sqlite3.connect(tmp_path / "t.db")
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    conn.execute("CREATE TABLE t (" + ", ".join(f"c{i}" for i in range(10)) + ")")
    _insert_many(conn, "INSERT INTO t VALUES ", [tuple(range(n, n + 10)) for n in range(450)])
    assert conn.execute("SELECT COUNT(*), SUM(c0) FROM t").fetchone() == (450, sum(range(450)))
