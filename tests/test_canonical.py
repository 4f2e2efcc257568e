"""RFC 8785 (JCS) canonicalisation: the RFC's vectors, ECMAScript numbers, UTF-16 key order."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.canonical import canonicalize, canonicalize_plain
from schemas.strictjson import parse_document, parse_strict
from tests.conftest import TESTVECTORS

JCS = TESTVECTORS / "jcs"
JCS_NAMES = ("arrays", "french", "structures", "unicode", "values", "weird")


def test_all_jcs_vectors_are_present() -> None:
    # If the shared vectors move or grow, the parametrised test below must not silently shrink.
    assert sorted(p.stem for p in (JCS / "input").glob("*.json")) == sorted(JCS_NAMES)
    assert sorted(p.stem for p in (JCS / "output").glob("*.json")) == sorted(JCS_NAMES)


@pytest.mark.parametrize("name", JCS_NAMES)
def test_rfc8785_vector(name: str) -> None:
    source = (JCS / "input" / f"{name}.json").read_bytes()
    expected = (JCS / "output" / f"{name}.json").read_bytes()
    # The vectors are plain JSON (no duplicate keys etc.), so both parsers must agree on them.
    assert canonicalize(json.loads(source)) == expected
    # parse_strict takes objects only (arrays.json is a top-level array), so wrap the value.
    assert canonicalize(parse_strict(b'{"v":' + source + b"}")["v"]) == expected


@pytest.mark.parametrize("name", JCS_NAMES)
def test_canonical_form_is_a_fixed_point(name: str) -> None:
    expected = (JCS / "output" / f"{name}.json").read_bytes()
    assert canonicalize(json.loads(expected)) == expected


def _double(bits: str) -> float:
    value: float = struct.unpack(">d", bytes.fromhex(bits))[0]
    return value


# RFC 8785 Appendix B: IEEE 754 bit patterns and their ECMAScript Number serialisation.
RFC8785_NUMBERS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),  # minus zero
    ("0000000000000001", "5e-324"),  # min subnormal
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),  # max double
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),  # 2^53
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),  # 2^68
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),  # first value written with an exponent
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),  # last value written without one
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "expected"), RFC8785_NUMBERS)
def test_ecmascript_number_serialisation(bits: str, expected: str) -> None:
    assert canonicalize(_double(bits)) == expected.encode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1"),
        (-1.5, "-1.5"),
        (100.0, "100"),
        (0.1, "0.1"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1.5e21, "1.5e+21"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (1.25e-7, "1.25e-7"),
        (123456789.125, "123456789.125"),
        (5e-324, "5e-324"),
    ],
)
def test_number_formatting_edge_cases(value: float, expected: str) -> None:
    assert canonicalize(value) == expected.encode()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(value: float) -> None:
    with pytest.raises(ValueError, match="NaN and Infinity"):
        canonicalize({"n": value})


@given(st.floats(allow_nan=False, allow_infinity=False))
@settings(max_examples=300)
def test_numbers_round_trip_and_integral_doubles_print_as_integers(value: float) -> None:
    text = canonicalize(value).decode()
    assert float(text) == value  # shortest round-tripping digits, never lossy
    assert "E" not in text
    assert not text.endswith(".0")
    if value.is_integer() and abs(value) <= 2**53:
        assert text == str(int(value))
    elif value.is_integer() and abs(value) < 1e21:
        # Beyond 2^53 ECMAScript prints the shortest digits padded with zeros, not the exact value.
        assert "." not in text
        assert "e" not in text


@given(st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1))
@settings(max_examples=100)
def test_safe_integers_match_their_double(value: int) -> None:
    # A partner in JavaScript sees every number as a double: 5 and 5.0 must canonicalise alike.
    assert canonicalize(value) == canonicalize(float(value)) == str(value).encode()


def test_members_are_sorted_by_utf16_code_units() -> None:
    # RFC 8785 section 3.2.3's example: U+1F600 (surrogates D83D DE00) sorts before U+FB33 in
    # UTF-16 although it comes after it in code points.
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    out = canonicalize(value).decode("utf-8")
    keys = list(json.loads(out, object_pairs_hook=lambda pairs: [k for k, _ in pairs]))
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert sorted(value) != keys  # code-point order would differ: the test can tell them apart


def test_nested_members_are_sorted_and_arrays_keep_their_order() -> None:
    value = {"b": [3, 1, 2], "a": {"z": 1, "y": {"d": None, "c": True}}, "A": False}
    assert canonicalize(value) == b'{"A":false,"a":{"y":{"c":true,"d":null},"z":1},"b":[3,1,2]}'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("\b\t\n\f\r", '"\\b\\t\\n\\f\\r"'),
        ('"\\', '"\\"\\\\"'),
        ("\x00\x01\x1f", '"\\u0000\\u0001\\u001f"'),  # lower-case hex
        ("\x7f", '"\x7f"'),  # DEL is not escaped
        ("/", '"/"'),  # nor is the solidus
        ("é€😀", '"é€😀"'),  # non-ASCII is written as UTF-8, never \u-escaped
    ],
)
def test_string_escaping(value: str, expected: str) -> None:
    assert canonicalize(value) == expected.encode("utf-8")


def test_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        canonicalize({"a": "\ud800"})


@pytest.mark.parametrize("value", [{1: "a"}, {"a": {None: 1}}])
def test_non_string_member_names_are_refused(value: dict[Any, Any]) -> None:
    with pytest.raises(TypeError, match="member names"):
        canonicalize(value)


@pytest.mark.parametrize("value", [b"bytes", {1, 2}, object()])
def test_non_json_values_are_refused(value: object) -> None:
    with pytest.raises(TypeError):
        canonicalize({"a": value})


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    # parse_strict reads an integral double beyond 2^53 (printed without a fraction) as an
    # out-of-range integer, so keep doubles inside the interoperable range here.
    | st.floats(min_value=-(2.0**53), max_value=2.0**53, exclude_min=True, exclude_max=True)
    | st.text(alphabet=st.characters(exclude_categories=("Cs",))),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet=st.characters(exclude_categories=("Cs",))), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
@settings(max_examples=200)
def test_canonical_form_is_idempotent_and_parses_strictly(value: Any) -> None:
    once = canonicalize(value)
    assert json.loads(once) == value  # -0.0 becomes 0, which compares equal
    assert canonicalize(json.loads(once)) == once
    assert canonicalize(parse_strict(b'{"v":' + once + b"}")["v"]) == once


# --- the fast path (json module output) must equal the reference path -----------------------------

# Characters chosen to stress the places where the json module and RFC 8785 could differ: control
# characters and their escapes, DEL, the top of the BMP (U+E000-U+FFFF, which sorts above
# surrogate pairs in UTF-16 but below them in code points) and characters beyond the BMP.
tricky_chars = st.one_of(
    st.characters(min_codepoint=0, max_codepoint=0x7F),
    st.characters(min_codepoint=0xE000, max_codepoint=0xFFFF, exclude_categories=("Cs",)),
    st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF),
    st.characters(exclude_categories=("Cs",)),
)
tricky_text = st.text(alphabet=tricky_chars, max_size=6)
documents = st.dictionaries(
    tricky_text,
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
        | st.floats(min_value=-(2.0**53), max_value=2.0**53, exclude_min=True, exclude_max=True)
        | tricky_text,
        lambda children: st.lists(children, max_size=3) | st.dictionaries(tricky_text, children, max_size=3),
        max_leaves=12,
    ),
    max_size=6,
)


@given(documents, st.booleans())
@settings(max_examples=400)
def test_plain_fast_path_equals_reference(doc: dict[str, Any], ascii_only: bool) -> None:
    # However the sender wrote it (raw UTF-8 or \u escapes), a document the parser calls "plain"
    # must canonicalise to the same bytes on the fast path as on the reference path, or honest
    # messages would fail verification.
    body = json.dumps(doc, ensure_ascii=ascii_only).encode()
    parsed, plain = parse_document(body)
    assert canonicalize(parsed) == canonicalize(doc)
    if plain:
        assert canonicalize_plain(parsed) == canonicalize(parsed)


def test_plain_is_false_for_floats_and_non_bmp_keys() -> None:
    assert parse_document(b'{"a": 1, "b": "x"}')[1] is True
    assert parse_document(b'{"a": 1.5}')[1] is False
    # U+1F600 sorts before U+FB33 by UTF-16 code units, after it by code points.
    for body in ('{"\U0001f600": 1, "\ufb33": 2}'.encode(), b'{"\\ud83d\\ude00": 1, "\\ufb33": 2}'):
        parsed, plain = parse_document(body)
        assert plain is False
        assert canonicalize(parsed) == '{"\U0001f600":1,"\ufb33":2}'.encode()
        assert canonicalize_plain(parsed) != canonicalize(parsed)  # why the fast path must be refused
