"""The fast canonical path (C json encoder) is byte-identical to the RFC 8785 encoder whenever the
parser says it applies, and the parser says so only when it does."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.canonical import canonicalize, canonicalize_plain
from schemas.strictjson import parse_document

plain_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.text(alphabet=st.characters(max_codepoint=0xFFFF, blacklist_categories=("Cs",)))
)
plain_json = st.recursive(
    plain_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(alphabet=st.characters(max_codepoint=0xFFFF, blacklist_categories=("Cs",))), inner, max_size=4
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), plain_json, max_size=6))
def test_fast_path_equals_rfc8785(doc: dict[str, object]) -> None:
    body = json.dumps(doc, ensure_ascii=False).encode()
    parsed, plain = parse_document(body)
    if plain:
        assert canonicalize_plain(parsed) == canonicalize(parsed)


def test_floats_and_non_bmp_keys_take_the_slow_path() -> None:
    assert parse_document(b'{"a": 1.5}')[1] is False
    assert parse_document(b'{"a": 1e3}')[1] is False
    assert parse_document('{"\U0001f600": 1, "\ufb33": 2}'.encode())[1] is False
    assert parse_document(b'{"k": "\\ud83d\\ude00"}')[1] is False
    assert parse_document(b'{"t": "2026-01-01T00:00:00.000Z", "n": 3}')[1] is True
    # the case the fast path would get wrong: code-point order differs from UTF-16 order
    doc = {"\U0001f600": 1, "\ufb33": 2}
    assert canonicalize(doc) != canonicalize_plain(doc)
