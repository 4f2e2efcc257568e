"""RFC 8785 JSON Canonicalization Scheme (JCS), written here rather than taken from a library.

Why our own: it is ~80 lines, the contract must be reproducible byte for byte by partners in
other languages (so we want to own and test every rule against the RFC's vectors), and it keeps
the wire contract free of a dependency whose maintenance we do not control.  The input is a
value that :func:`schemas.strictjson.parse_strict` accepted (or one we built), so duplicate
keys, NaN and lone surrogates cannot reach it; we still refuse them defensively.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def _string(value: str) -> str:
    """RFC 8785 3.2.2.2: escape only '"', '\\' and U+0000-U+001F (\b \t \n \f \r short forms, the rest
    as lower-case \\u00xx); everything else is emitted as is.  That is exactly what the json module's
    C ``encode_basestring`` does (checked against the RFC vectors in the tests), at C speed."""
    if _SURROGATE.search(value):
        raise ValueError("lone surrogate cannot be canonicalised")
    return encode_basestring(value)


def _number(value: float) -> str:
    """ECMAScript Number.prototype.toString (ECMA-262 7.1.12.1), as RFC 8785 section 3.2.2.3 asks."""
    if not math.isfinite(value):
        raise ValueError("NaN and Infinity have no JSON form")
    if value == 0:
        return "0"
    if value < 0:
        return "-" + _number(-value)
    # repr gives the shortest round-tripping digits, which is what ECMAScript's algorithm picks.
    _, digit_tuple, exponent = Decimal(repr(value)).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    # n: where the decimal point sits relative to the digit string (ECMAScript's "n").
    n = len("".join(map(str, digit_tuple)).lstrip("0")) + int(exponent)
    digits = digits.lstrip("0")
    k = len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + digits
    e = n - 1
    sign = "+" if e >= 0 else "-"
    head = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{head}e{sign}{abs(e)}"


def _utf16_key(key: str) -> list[int]:
    # RFC 8785 3.2.3: sort member names by their UTF-16 code units, not code points.
    return list(key.encode("utf-16-be"))


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        # Checked before sorting: the sort key needs strings (an int key would raise AttributeError).
        if not all(isinstance(key, str) for key in value):
            raise TypeError("JSON member names must be strings")
        for i, key in enumerate(sorted(value, key=_utf16_key)):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


def canonicalize_plain(value: Any) -> bytes:
    """RFC 8785 bytes of a value known to hold no float and no member name beyond the BMP
    (:func:`schemas.strictjson.is_plain`): then the json module's sorted, compact output is
    byte-identical (same string escaping, integers printed the same, and code-point order equals
    UTF-16 order for BMP keys), produced in C. Tests hold the two paths equal."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def canonicalize(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of a JSON value."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8")
