"""Strict JSON parsing: the first thing that touches a body, before any field is trusted.

Each refusal below closes a gap where two parsers could read the same bytes differently
(a signature checked over one reading, a policy applied to another) or where a body could
exhaust the service:

* size limit first: memory exhaustion by a huge body;
* a BOM, invalid UTF-8 and lone surrogates: bytes that canonicalise differently (or not at
  all) in other languages' JSON libraries, so signer and verifier would disagree;
* duplicate keys: "first wins" in one parser and "last wins" in another is a classic
  signature-bypass (the signed value is not the value acted on);
* NaN / Infinity: not JSON, and not representable in RFC 8785;
* integers beyond +-2^53: silently rounded by JavaScript and many other parsers;
* trailing data: a second document smuggled after the signed one;
* non-object top level and excessive nesting: what the envelope must be / stack exhaustion.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from schemas.errors import ContractError, Reason

DEFAULT_MAX_BYTES = 64 * 1024
MAX_SAFE_INTEGER = 2**53 - 1  # RFC 8785 / I-JSON (RFC 7493) interoperable integer range
MAX_DEPTH = 32


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ContractError(
                Reason.DUPLICATE_KEY,
                f"The member name {key!r} appears more than once in one object.",
                field=key,
            )
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise ContractError(Reason.NON_FINITE_NUMBER, f"{name} is not a JSON number.")


def _int(text: str) -> int:
    # Checked on the literal first: int() of a literal over 4,300 digits raises its own error
    # (CPython's digit limit), and a long literal would cost CPU to convert anyway.
    if len(text.lstrip("-")) > 16:
        raise ContractError(
            Reason.INTEGER_OUT_OF_RANGE,
            "An integer is outside +-(2^53 - 1), where JSON parsers disagree on its value.",
        )
    value = int(text)
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise ContractError(
            Reason.INTEGER_OUT_OF_RANGE,
            "An integer is outside +-(2^53 - 1), where JSON parsers disagree on its value.",
        )
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ContractError(Reason.NON_FINITE_NUMBER, f"The number {text[:40]} overflows a double.")
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(text: str) -> bool:
    # Python decodes "\ud800" escapes to lone surrogate code points; valid pairs are already
    # combined by the json module, so any code point left in the surrogate block is unpaired.
    return _SURROGATE.search(text) is not None


def _check_tree(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ContractError(Reason.TOO_DEEP, f"The JSON nests deeper than {MAX_DEPTH} levels.")
    if isinstance(value, str):
        if _has_lone_surrogate(value):
            raise ContractError(Reason.LONE_SURROGATE, "A string holds an unpaired UTF-16 surrogate.")
    elif isinstance(value, dict):
        for key, item in value.items():
            if _has_lone_surrogate(key):
                raise ContractError(Reason.LONE_SURROGATE, "A member name holds an unpaired UTF-16 surrogate.")
            _check_tree(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_tree(item, depth + 1)


# A member name that sorts differently by UTF-16 code units than by code points needs a character
# beyond the BMP (literal, or escaped as a surrogate pair). A document with no float (the parser
# sees every float literal) and no such text has RFC 8785 bytes equal to the json module's sorted
# compact output (``schemas.canonical.canonicalize_plain``). False positives only cost speed.
_NON_BMP = re.compile("[\U00010000-\U0010ffff]")


def _bmp_only(text: str) -> bool:
    return not (_NON_BMP.search(text) or _SURROGATE_ESCAPE.search(text))


def parse_strict(body: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Parse ``body`` as one JSON object, refusing everything listed in the module docstring."""
    return parse_document(body, max_bytes=max_bytes)[0]


def parse_document(body: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[dict[str, Any], bool]:
    """:func:`parse_strict`, plus whether the document is "plain" (no float, no non-BMP text), in
    which case its canonical form can be produced by the fast path."""
    if len(body) > max_bytes:
        raise ContractError(Reason.BODY_TOO_LARGE, f"The body is {len(body)} bytes; the limit is {max_bytes} bytes.")
    if body.startswith(b"\xef\xbb\xbf"):
        raise ContractError(Reason.BOM_PRESENT, "The body starts with a byte order mark; send plain UTF-8.")
    try:
        text = body.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise ContractError(Reason.INVALID_UTF8, f"The body is not valid UTF-8 (byte offset {exc.start}).") from None
    if _has_lone_surrogate(text):  # cannot come from strict UTF-8, kept for str callers' safety
        raise ContractError(Reason.LONE_SURROGATE, "The body holds an unpaired surrogate.")
    floats: list[float] = []

    def _float_seen(literal: str) -> float:
        number = _float(literal)
        floats.append(number)
        return number

    try:
        value = json.loads(
            text, object_pairs_hook=_pairs, parse_constant=_constant, parse_int=_int, parse_float=_float_seen
        )
    except ContractError:
        raise
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            raise ContractError(
                Reason.TRAILING_DATA, f"There is data after the JSON value (at character {exc.pos})."
            ) from None
        raise ContractError(Reason.MALFORMED_JSON, f"The body is not JSON: {exc.msg} at character {exc.pos}.") from None
    except RecursionError:
        raise ContractError(Reason.TOO_DEEP, f"The JSON nests deeper than {MAX_DEPTH} levels.") from None
    if not isinstance(value, dict):
        raise ContractError(
            Reason.NOT_AN_OBJECT, f"The top-level JSON value is a {type(value).__name__}, not an object."
        )
    # Fast path: strict UTF-8 text cannot hold a surrogate, so only a \uD8xx-\uDFxx escape can make
    # one; and JSON cannot nest deeper than its count of opening brackets. Walk the tree only when
    # either is possible.
    if _SURROGATE_ESCAPE.search(text) or text.count("{") + text.count("[") > MAX_DEPTH:
        _check_tree(value, 0)
    return value, not floats and _bmp_only(text)
