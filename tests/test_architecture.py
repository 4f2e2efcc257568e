"""The arrows of the design (DESIGN.md), held by reading every module's imports with ``ast``.

- ``schemas/`` (the wire contract) imports nothing of ours and no I/O library;
- the pure core (``broker/stages``, ``broker/policy``, ``broker/audit``) imports no I/O library
  and never awaits;
- ``adapters/`` (the partner side) never imports ``broker``;
- ports (outbound I/O) do not import the flows or the transports that drive them;
- each dependency is imported only where its errors are translated.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IO_LIBRARIES = frozenset({"aiohttp", "aio_pika", "aiormq", "pamqp", "sqlite3", "asyncpg", "socket", "asyncio"})


def modules(folder: str) -> Iterator[Path]:
    yield from sorted((ROOT / folder).rglob("*.py"))


def imports(path: Path) -> set[str]:
    """Every module name this file imports (at any depth: lazy imports count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def top(name: str) -> str:
    return name.split(".", 1)[0]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def offending(folder: str, forbidden: frozenset[str] | set[str], *, prefix: bool = False) -> list[str]:
    bad = []
    for path in modules(folder):
        for name in imports(path):
            hit = any(name == f or name.startswith(f + ".") for f in forbidden) if prefix else top(name) in forbidden
            if hit:
                bad.append(f"{rel(path)} imports {name}")
    return bad


def test_schemas_import_nothing_of_ours_and_no_io() -> None:
    assert offending("schemas", {"broker", "adapters", "tests", "bench"} | IO_LIBRARIES) == []


def test_adapters_do_not_import_the_broker() -> None:
    assert offending("adapters", {"broker", "tests", "bench"}) == []


@pytest.mark.parametrize(
    "folder", ["broker/stages", "broker/policy", "broker/audit", "broker/monitor", "broker/dpia", "broker/figures"]
)
def test_the_pure_core_imports_no_io_and_never_awaits(folder: str) -> None:
    assert offending(folder, IO_LIBRARIES) == []
    asynchronous = [
        f"{rel(path)}:{node.lineno}"
        for path in modules(folder)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.AsyncFunctionDef | ast.Await | ast.AsyncFor | ast.AsyncWith)
    ]
    assert asynchronous == []


def test_ports_do_not_import_the_flows_or_the_transports() -> None:
    assert offending("broker/ports", {"broker.pipeline", "broker.transports", "broker.service"}, prefix=True) == []


def test_the_pure_core_does_not_import_ports_flows_or_transports() -> None:
    drivers = {"broker.ports", "broker.pipeline", "broker.transports", "broker.service", "broker.commands"}
    # The store port's module defines the values it takes (records, quarantine items, checkpoints)
    # beside its Protocol: types only, no I/O, so the pure core may build them.
    allowed_everywhere = {"broker.ports.store"}
    bad = []
    for folder in ("broker/stages", "broker/policy", "broker/audit", "broker/monitor", "broker/dpia", "broker/figures"):
        for path in modules(folder):
            for name in imports(path):
                if any(name == d or name.startswith(d + ".") for d in drivers) and name not in allowed_everywhere:
                    bad.append(f"{rel(path)} imports {name}")
    assert bad == []


# Each dependency is imported only in the modules that translate its errors (or, for the demo,
# that play the partners and consumers against a real RabbitMQ).
WHERE = {
    # No module outside a store backend touches a database library (or writes SQL).
    "sqlite3": {"broker/ports/sqlite_store.py"},
    "asyncpg": {"broker/ports/postgres_store.py"},
    "aiormq": {
        "broker/ports/rabbitmq/errors.py",
        "broker/ports/rabbitmq/fast_publish.py",
        "broker/ports/rabbitmq/publisher.py",
        "broker/transports/amqp_ingest.py",
    },
    "jwt": {"broker/auth/tokens.py"},
    "prometheus_client": {"broker/metrics.py"},
}


@pytest.mark.parametrize("dependency", sorted(WHERE))
def test_each_dependency_is_imported_where_its_errors_are_translated(dependency: str) -> None:
    users = {
        rel(path)
        for folder in ("broker", "schemas")
        for path in modules(folder)
        if dependency in map(top, imports(path))
    }
    assert users <= WHERE[dependency], (
        f"{dependency} imported outside its translating modules: {users - WHERE[dependency]}"
    )
