"""The base of every configuration document's model, and the plain reading of pydantic's errors.

Agreements, the registry, the secrets file and the adapters' mappings are TOML an operator edits.
Each document's *shape* (which keys, which types, which may be left out) is a pydantic model on
:class:`DocumentModel`: strict (TOML ``"12"`` is not 12, ``1`` is not ``true``), frozen, and with
unknown keys refused at every level, because a misspelt key is otherwise silently ignored, and an
ignored ``when`` or ``revoked`` is a release wider than the one signed, or a key still trusted.

What the model layer cannot say (cross-references, the event schema, the revision lock) stays in
each loader. Each loader turns a :class:`pydantic.ValidationError` into its own error type, with
its own stable codes, using :func:`key_path` and :func:`sentence` from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import ErrorDetails

__all__ = ["DocumentModel", "ErrorDetails", "key_path", "sentence"]


class DocumentModel(BaseModel):
    """Strict, frozen, and refusing unknown keys (see the module docstring for why)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, validate_default=False)


def key_path(loc: Sequence[int | str]) -> str:
    """``("flows", 0, "rules", 2, "to")`` -> ``flows[0].rules[2].to``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


_SENTENCES = {
    "missing": "is required",
    "extra_forbidden": "is not a known setting",
    "string_type": "must be a string",
    "string_too_short": "must be a non-empty string",
    "int_type": "must be an integer",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "too_short": "must not be empty",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "date_type": "must be a TOML date, e.g. 2026-04-01",
    "datetime_type": "must be a TOML date-time with a UTC offset",
}


def sentence(error: ErrorDetails) -> str:
    """A sentence for one pydantic error, without the key (the caller puts the key path first)."""
    kind = error["type"]
    if kind in ("value_error", "assertion_error"):
        return str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind in _SENTENCES:
        return _SENTENCES[kind]
    context: dict[str, Any] = dict(error.get("ctx") or {})
    if kind == "literal_error" and "expected" in context:
        return f"must be one of {context['expected']}"
    return str(error["msg"]).replace("Input should be", "must be")
