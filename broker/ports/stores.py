"""Which backend a store location names: ``postgresql://…`` (or ``postgres://…``) is PostgreSQL;
anything else is the path of a SQLite file (the embedded default)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from broker.errors import StartupError
from broker.ports.store import Store

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def redacted(location: str | Path) -> str:
    """The location without a password (for logs and errors: a credential never reaches them)."""
    text = str(location)
    if not is_postgres(text) or "@" not in text:
        return text
    scheme, rest = text.split("://", 1)
    userinfo, host = rest.rsplit("@", 1)
    return f"{scheme}://{userinfo.split(':', 1)[0]}@{host}"


def store_for(
    location: str | Path,
    *,
    batch_max: int = 512,
    readonly: bool = False,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Store:
    if is_postgres(location):
        try:
            from broker.ports.postgres_store import PostgresStore
        except ImportError:  # asyncpg is the ``postgres`` extra
            raise StartupError("a PostgreSQL store needs asyncpg: pip install 'sv-broker[postgres]'") from None
        return PostgresStore(str(location), batch_max=batch_max, readonly=readonly, clock=clock)
    from broker.ports.sqlite_store import SqliteStore

    return SqliteStore(Path(location), batch_max=batch_max, readonly=readonly, clock=clock)
