"""Strict parsing: one test per refusal, each checking the stable reason code and the sentence."""

from __future__ import annotations

import pytest

from schemas.errors import ContractError, Reason
from schemas.strictjson import DEFAULT_MAX_BYTES, MAX_DEPTH, MAX_SAFE_INTEGER, parse_strict


def refused(body: bytes, reason: Reason, **kwargs: int) -> ContractError:
    with pytest.raises(ContractError) as info:
        parse_strict(body, **kwargs)
    exc = info.value
    assert exc.reason is reason, f"{body[:60]!r}: expected {reason.value}, got {exc.reason.value} ({exc.message})"
    # A sentence a partner's data manager can act on: words, ending with a full stop.
    assert exc.message.strip()
    assert " " in exc.message
    assert exc.message.rstrip().endswith(".")
    assert str(exc).startswith(f"{reason.value}: ")
    return exc


def test_a_plain_object_is_accepted() -> None:
    body = '{"a": 1, "b": [true, false, null], "c": {"d": "é😀"}, "e": -0.5}'.encode()
    assert parse_strict(body) == {"a": 1, "b": [True, False, None], "c": {"d": "é😀"}, "e": -0.5}


# --- duplicate keys -------------------------------------------------------------------------------


def test_duplicate_key() -> None:
    exc = refused(b'{"a": 1, "a": 2}', Reason.DUPLICATE_KEY)
    assert exc.field == "a"
    assert "'a'" in exc.message


def test_duplicate_key_nested() -> None:
    exc = refused(b'{"data": {"x": 1, "y": [{"z": 1, "z": 1}]}}', Reason.DUPLICATE_KEY)
    assert exc.field == "z"


def test_duplicate_key_with_equal_value_after_escape_decoding() -> None:
    # "a" and "\u0061" are the same member name once decoded.
    refused(b'{"a": 1, "\\u0061": 1}', Reason.DUPLICATE_KEY)


def test_same_key_in_sibling_objects_is_fine() -> None:
    assert parse_strict(b'{"a": {"k": 1}, "b": {"k": 2}}') == {"a": {"k": 1}, "b": {"k": 2}}


# --- non-finite numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_literals(literal: bytes) -> None:
    exc = refused(b'{"n": ' + literal + b"}", Reason.NON_FINITE_NUMBER)
    assert literal.decode() in exc.message


@pytest.mark.parametrize("literal", [b"1e400", b"-1e400", b"1.5E+999"])
def test_numbers_overflowing_a_double(literal: bytes) -> None:
    refused(b'{"n": ' + literal + b"}", Reason.NON_FINITE_NUMBER)


# --- integer range --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [MAX_SAFE_INTEGER + 1, -(MAX_SAFE_INTEGER + 1), 2**64, -(2**64), 10**400])
def test_integer_beyond_safe_range(value: int) -> None:
    refused(b'{"n": ' + str(value).encode() + b"}", Reason.INTEGER_OUT_OF_RANGE)


def test_integer_literal_beyond_pythons_digit_limit() -> None:
    # int() of a literal over 4,300 digits raises its own ValueError: must still be this refusal.
    refused(b'{"n": 1' + b"1" * 5000 + b"}", Reason.INTEGER_OUT_OF_RANGE)


def test_integer_beyond_safe_range_nested() -> None:
    refused(b'{"a": [1, {"b": 9007199254740992}]}', Reason.INTEGER_OUT_OF_RANGE)


@pytest.mark.parametrize("value", [MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, 0])
def test_integer_at_the_boundary_is_accepted(value: int) -> None:
    assert MAX_SAFE_INTEGER == 2**53 - 1
    assert parse_strict(b'{"n": ' + str(value).encode() + b"}") == {"n": value}


# --- encoding -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",  # never valid in UTF-8
        b"\xc3",  # truncated two-byte sequence
        b"\xc0\xaf",  # overlong encoding of '/'
        b"\xed\xa0\x80",  # a UTF-16 surrogate encoded as UTF-8 (CESU-8)
        b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    ],
)
def test_invalid_utf8(raw: bytes) -> None:
    exc = refused(b'{"a": "' + raw + b'"}', Reason.INVALID_UTF8)
    assert "offset 7" in exc.message


def test_invalid_utf8_in_a_key() -> None:
    refused(b'{"\xfe": 1}', Reason.INVALID_UTF8)


def test_lone_surrogate_escape_in_value() -> None:
    refused(b'{"a": "\\ud800"}', Reason.LONE_SURROGATE)


def test_lone_low_surrogate_escape_in_value() -> None:
    refused(b'{"a": ["x", "ok\\udc00"]}', Reason.LONE_SURROGATE)


def test_lone_surrogate_escape_in_key() -> None:
    exc = refused(b'{"\\ud800": 1}', Reason.LONE_SURROGATE)
    assert "member name" in exc.message


def test_reversed_surrogate_pair_is_two_lone_surrogates() -> None:
    refused(b'{"a": "\\ude00\\ud83d"}', Reason.LONE_SURROGATE)


def test_escaped_surrogate_pair_is_accepted() -> None:
    assert parse_strict(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}


def test_bom() -> None:
    refused(b'\xef\xbb\xbf{"a": 1}', Reason.BOM_PRESENT)


# --- shape ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("trailer", [b" {}", b"{}", b"x", b" 1", b"\n[]", b'"s"'])
def test_trailing_data(trailer: bytes) -> None:
    refused(b'{"a": 1}' + trailer, Reason.TRAILING_DATA)


def test_trailing_whitespace_is_not_data() -> None:
    assert parse_strict(b'{"a": 1} \n\t\r') == {"a": 1}


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"[]", "list"),
        (b'[{"a": 1}]', "list"),
        (b'"string"', "str"),
        (b"1", "int"),
        (b"1.5", "float"),
        (b"null", "NoneType"),
        (b"true", "bool"),
    ],
)
def test_top_level_must_be_an_object(body: bytes, kind: str) -> None:
    exc = refused(body, Reason.NOT_AN_OBJECT)
    assert kind in exc.message


def _object_of_size(size: int) -> bytes:
    head, tail = b'{"p": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_body_at_the_default_limit_is_accepted() -> None:
    assert DEFAULT_MAX_BYTES == 64 * 1024
    body = _object_of_size(DEFAULT_MAX_BYTES)
    assert len(body) == DEFAULT_MAX_BYTES
    assert parse_strict(body)["p"].startswith("x")


def test_body_over_the_default_limit() -> None:
    exc = refused(_object_of_size(DEFAULT_MAX_BYTES + 1), Reason.BODY_TOO_LARGE)
    assert str(DEFAULT_MAX_BYTES + 1) in exc.message
    assert str(DEFAULT_MAX_BYTES) in exc.message


def test_body_over_a_configured_limit() -> None:
    body = _object_of_size(200)
    assert parse_strict(body, max_bytes=200)
    exc = refused(body, Reason.BODY_TOO_LARGE, max_bytes=199)
    assert "199" in exc.message


def test_size_is_checked_before_anything_else() -> None:
    # A huge malformed body costs no parsing: the limit comes first.
    refused(b"\xef\xbb\xbf" + b"[" * 100, Reason.BODY_TOO_LARGE, max_bytes=50)


def _nested(levels: int) -> bytes:
    """An object whose value nests ``levels`` arrays deep: {"a": [[...]]}."""
    return b'{"a": ' + b"[" * levels + b"]" * levels + b"}"


def test_nesting_up_to_the_limit_is_accepted() -> None:
    assert parse_strict(_nested(MAX_DEPTH))


def test_nesting_beyond_the_limit() -> None:
    exc = refused(_nested(MAX_DEPTH + 1), Reason.TOO_DEEP)
    assert str(MAX_DEPTH) in exc.message


def test_nested_objects_beyond_the_limit() -> None:
    body = b'{"a": ' * (MAX_DEPTH + 2) + b"1" + b"}" * (MAX_DEPTH + 2)
    refused(body, Reason.TOO_DEEP)


def test_nesting_that_would_exhaust_the_stack() -> None:
    levels = 200_000
    refused(_nested(levels), Reason.TOO_DEEP, max_bytes=2 * levels + 100)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"{",
        b'{"a": }',
        b'{"a": 1,}',
        b"{'a': 1}",
        b'{"a": 01}',
        b'{"a": .5}',
        b'{"a": "\x01"}',  # unescaped control character
        b'{"a": "\\x41"}',
        b'{"a": tru}',
        b"{a: 1}",
    ],
)
def test_malformed_json(body: bytes) -> None:
    exc = refused(body, Reason.MALFORMED_JSON)
    assert "not JSON" in exc.message
