"""JSON Schema export of the event models, the envelope and the broker's messages (receipts,
released records, quarantine headers: ``schemas.messages``), for partners in other languages."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from schemas.asyncapi import asyncapi_document, checkpoint_schema, key_file_schema
from schemas.envelope import (
    DATASCHEMA_RE,
    ID_RE,
    KEY_ID_RE,
    MAX_REVISION,
    PARTY_ID_RE,
    SPECVERSION,
    TIME_RE,
    TYPE_RE,
    WithdrawalReason,
)
from schemas.events import EVENT_MODELS
from schemas.messages import MESSAGE_SCHEMAS

SCHEMA_DIR = Path(__file__).resolve().parent / "jsonschema"

# --- patterns that mean the same in Python and in ECMA-262 -----------------------------------------
#
# JSON Schema's "pattern" is an ECMA-262 regular expression; the broker checks the same fields with
# Python's ``re`` (the envelope, with ``fullmatch``) or pydantic's Rust engine (the event models).
# Where the dialects differ, a partner's validator and the broker would disagree about an event:
# ``\d`` is any Unicode digit in Python and Rust but [0-9] in ECMA-262 (an LSOA in Arabic-Indic
# digits passed the broker), ``(?P<name>...)`` is a syntax error in ECMA-262, ``.``, ``\w``, ``\s``
# and ``\b`` differ at the edges. So every exported pattern is anchored (^...$, no top-level |) and
# uses only literal characters, explicit ASCII classes, groups, lookahead and counted repetition.

_CLASS_ESCAPES = frozenset("dDwWsSbBAZz")  # \d \w \s \b ... (and \A \Z \z): Unicode- or dialect-dependent
_GROUP_OPENERS = ("(?:", "(?=", "(?!")  # ECMA-262 and Python agree on these; (?P<, (?<, (?i) ... are refused


def portable_pattern(pattern: str) -> str:
    r"""``pattern`` written so that ECMA-262 (``new RegExp(p, "u")``) and Python agree on it.

    Two rewrites keep the meaning the broker gives the pattern, where it matches with ``fullmatch``
    on text whose digits another check already holds to ASCII: a named group ``(?P<name>`` becomes
    a plain group, and ``\d`` becomes ``[0-9]``. Any other construct on which the dialects differ
    raises ValueError: the event models must write their patterns portably in the first place
    (there the broker's engine reads ``\d`` as any Unicode digit).
    """
    out: list[str] = []
    depth = 0
    in_class = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            escaped = pattern[i + 1 : i + 2]
            if escaped == "d" and not in_class:
                out.append("[0-9]")
            elif escaped in _CLASS_ESCAPES or escaped.isdigit() or escaped == "":
                raise ValueError(f"pattern {pattern!r}: \\{escaped} differs between Python and ECMA-262")
            else:
                out.append(char + escaped)
            i += 2
            continue
        if in_class:
            if char == "[":
                raise ValueError(f"pattern {pattern!r}: '[' inside a class differs between Python and ECMA-262")
            in_class = char != "]"
        elif char == "[":
            if pattern.startswith(("[]", "[^]"), i):  # Python: a literal ']'; ECMA-262: an empty class
                raise ValueError(f"pattern {pattern!r}: a class opening with ']' is not portable")
            in_class = True
        elif char == "(":
            named = re.match(r"\(\?P<[A-Za-z_][A-Za-z0-9_]*>", pattern[i:])
            if named:
                out.append("(")
                i += named.end()
                depth += 1
                continue
            if pattern.startswith("(?", i) and not pattern.startswith(_GROUP_OPENERS, i):
                raise ValueError(f"pattern {pattern!r}: group {pattern[i : i + 4]!r} is not portable")
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "." or (char == "|" and depth == 0):
            raise ValueError(f"pattern {pattern!r}: {char!r} is not portable here")
        out.append(char)
        i += 1
    text = "".join(out)
    if not (text.startswith("^") and text.endswith("$") and not text.endswith("\\$")):
        raise ValueError(f"pattern {pattern!r} must be anchored with ^ and $")
    return text


def patterns_in(schema: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """(JSON pointer, regex) of every "pattern" and "patternProperties" key in ``schema``, recursively."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            here = f"{where}/{key}"
            if key == "pattern" and isinstance(value, str):
                yield here, value
            elif key == "patternProperties" and isinstance(value, dict):
                yield from ((f"{here}/{regex}", regex) for regex in value)
            yield from patterns_in(value, here)
    elif isinstance(schema, list):
        for index, item in enumerate(schema):
            yield from patterns_in(item, f"{where}/{index}")


def _check_portable(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    for where, regex in patterns_in(schema):
        if portable_pattern(regex) != regex:
            raise ValueError(f"{name}{where}: pattern {regex!r} is not portable; write {portable_pattern(regex)!r}")
    return schema


def envelope_schema() -> dict[str, Any]:
    def pattern(regex: re.Pattern[str]) -> dict[str, str]:
        return {"type": "string", "pattern": portable_pattern(regex.pattern)}

    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:sv-broker:schema:envelope:v1",
        "title": "sv-broker signed envelope (CloudEvents 1.0 structured JSON)",
        "description": (
            "signature = base64url(Ed25519(RFC 8785 canonical bytes of this object without 'signature')). "
            "Body limit 64 KiB by default; duplicate keys, NaN/Infinity, integers beyond +-(2^53-1), "
            "a BOM, lone surrogates and trailing data are refused. A later revision of a record (a "
            "correction, or a withdrawal with data {}) names the record's first message id in 'supersedes', "
            "counts 'revision' from 2, and has the id '<supersedes>:r<revision>'."
        ),
        "type": "object",
        "additionalProperties": False,
        "required": ["specversion", "id", "source", "type", "dataschema", "time", "keyid", "signature", "data"],
        "properties": {
            "specversion": {"const": SPECVERSION},
            "id": pattern(ID_RE),
            "source": pattern(PARTY_ID_RE),
            "type": pattern(TYPE_RE),
            "dataschema": pattern(DATASCHEMA_RE),
            "time": pattern(TIME_RE) | {"format": "date-time"},
            "datacontenttype": {"const": "application/json"},
            "keyid": pattern(KEY_ID_RE),
            # 64 bytes are 86 base64url characters whose last one carries 4 unused bits, which the
            # broker requires to be zero (one encoding per signature): so it is one of A, Q, g, w.
            "signature": {"type": "string", "pattern": "^[A-Za-z0-9_-]{85}[AQgw]$"},
            "data": {"type": "object"},
            "supersedes": pattern(ID_RE),
            "revision": {"type": "integer", "minimum": 2, "maximum": MAX_REVISION},
            "withdrawn": {"enum": [reason.value for reason in WithdrawalReason]},
        },
        "dependentRequired": {
            "supersedes": ["revision"],
            "revision": ["supersedes"],
            "withdrawn": ["supersedes", "revision"],
        },
        "dependentSchemas": {"withdrawn": {"properties": {"data": {"maxProperties": 0}}}},
    }


def all_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema document, for every event model, the envelope and each message."""
    out = {"envelope.v1.json": envelope_schema()}
    for (event_type, version), model in sorted(EVENT_MODELS.items()):
        schema = model.model_json_schema(mode="validation")
        model.add_schema_rules(schema)  # the model validators' rules (tests/test_schema_rules.py)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"urn:sv-broker:schema:{event_type}:v{version}"
        out[f"{event_type}.v{version}.json"] = schema
    for name, (message, title, adapter) in MESSAGE_SCHEMAS.items():
        schema = adapter.json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"urn:sv-broker:schema:{message}:v1"
        schema["title"] = title
        out[name] = schema
    # The registry key file, the checkpoint and the AMQP interface (schemas/asyncapi.py).
    out["key_file.v1.json"] = key_file_schema()
    out["asyncapi.v1.json"] = asyncapi_document()
    out["checkpoint.v1.json"] = checkpoint_schema()
    return {name: _check_portable(name, schema) for name, schema in out.items()}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schema_files(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in all_schemas().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written
