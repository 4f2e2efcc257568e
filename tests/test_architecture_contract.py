"""The package boundaries: ``schemas/`` is the contract both sides build on; ``adapters/`` (the
partner's side) never imports ``broker/``; ``schemas/`` imports neither.

Checked on the source with ``ast`` (every import statement, also those inside functions, and
``import_module("...")`` calls with a literal name), so a lazy import cannot slip past.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file; relative imports are resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            # "from x import y" may import a submodule y of x
            out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in {"import_module", "__import__"} and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    out.append((node.lineno, first.value))
    return out


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path):
            top = module.split(".", 1)[0]
            if top in forbidden:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return sorted(set(found))


def test_adapters_import_nothing_from_broker() -> None:
    assert violations("adapters", ("broker",)) == []


def test_schemas_import_neither_broker_nor_adapters() -> None:
    assert violations("schemas", ("broker", "adapters")) == []


@pytest.mark.parametrize(
    "source",
    [
        "import broker",
        "import broker.ports.amqp as amqp",
        "from broker.ports.amqp import Names",
        "from broker import cli",
        "def f():\n    from broker.commands.keys import add_generate_arguments\n",
        "import importlib\nimportlib.import_module('broker.settings')",
        "from adapters import state\nfrom broker.registry import Registry",
    ],
)
def test_the_check_finds_every_kind_of_import(tmp_path: Path, source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Control: the walk above would see each of these in a module of adapters/.
    package = tmp_path / "adapters"
    package.mkdir()
    (package / "bad.py").write_text(source, encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert violations("adapters", ("broker",)) != []


def test_the_check_sees_the_packages() -> None:
    # Control: the walk reads real files (a wrong ROOT would find nothing, and pass).
    modules = {m for p in (ROOT / "adapters").rglob("*.py") for _, m in imported_modules(p)}
    assert "schemas.topology.Names" in modules
    assert len(list((ROOT / "schemas").rglob("*.py"))) > 5
