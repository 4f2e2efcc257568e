"""One registry of reason codes: every code the code base emits is listed, documented and mapped.

Reason codes are keyed on by partners, analysts' tools and dashboards: a stray string (a typo, a
new code nobody documented) is a contract break. This reads every module with ``ast`` and fails
on a reason-like string literal that is not a registered code.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from schemas.errors import REASONS, CheckCode, Reason, reason_table

ROOT = Path(__file__).resolve().parents[1]
REGISTERED = {r.value for r in Reason} | {c.value for c in CheckCode}
# keyword arguments and dict keys whose value is a reason code
REASON_KEYS = frozenset({"reason", "code"})
# calls that take a reason code, and at which position
REASON_CALLS = {"Rejected": 0, "ContractError": 0, "AuthError": 0, "ApiError": 0, "RegistryError": 0, "SpecError": 0}
REASON_CALLS["problem"] = 1  # problem(status, reason, message)
CODE_LIKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)+")


def literal_reasons(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.keyword) and node.arg in REASON_KEYS:
            value = node.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                found.append((value.lineno, value.value))
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value in REASON_KEYS
                    and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)
                ):
                    found.append((value.lineno, value.value))
        elif isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            position = REASON_CALLS.get(name)
            if position is not None and len(node.args) > position:
                arg = node.args[position]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and CODE_LIKE.fullmatch(arg.value):
                    found.append((arg.lineno, arg.value))
    return found


def test_every_reason_literal_in_the_code_is_registered() -> None:
    stray = [
        f"{path.relative_to(ROOT)}:{line}: {value!r}"
        for folder in ("broker", "schemas", "adapters")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line, value in literal_reasons(path)
        if value and value not in REGISTERED
    ]
    assert stray == []


def test_the_checker_finds_a_stray_code(tmp_path: Path) -> None:
    """The check above cannot pass vacuously: it sees each way a code is written."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        'ApiError("made_up_code", "x")\nx = {"reason": "also_made_up"}\nf(reason="third_one")\n', encoding="utf-8"
    )
    assert [value for _, value in literal_reasons(sample)] == ["made_up_code", "also_made_up", "third_one"]


def test_every_reason_has_a_category_status_and_meaning() -> None:
    assert set(REASONS) == set(Reason)
    for reason, info in REASONS.items():
        assert info.meaning, reason
        assert 200 <= info.status < 600, reason


def test_the_readme_table_is_the_registry() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert reason_table() in readme, (
        "regenerate the README table: python -c 'from schemas.errors import reason_table; print(reason_table())'"
    )
