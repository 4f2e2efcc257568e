"""What a caller types never enters the access audit verbatim unless it is one of the broker's names."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given
from hypothesis import strategies as st

from broker.pipeline.access import screened

KNOWN = frozenset({"derby-csp-analysts", "derbyshire-vru", "dsa-istv-ae-2026"})


@given(st.text(min_size=1, max_size=60))
def test_an_arbitrary_string_is_kept_only_as_a_digest(text: str) -> None:
    out = screened({"query": {"consumer": text}, "ids": [text]}, KNOWN)
    kept = out["query"].get("consumer", out["query"].get("consumer_untrusted"))
    if kept == text:  # kept verbatim: only a known name, an id, a time, a number or a fixed word
        assert text in KNOWN or text.isascii()
        return
    assert kept == {
        "untrusted_sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
        "length": len(text),
    }
    assert out["ids"] == [kept]
    assert "consumer" not in out["query"]  # the indexed column's key never holds a digest
    skeleton = json.dumps(screened({"query": {"consumer": "x" * 5}, "ids": ["x" * 5]}, KNOWN), ensure_ascii=False)
    if len(text) >= 4 and text not in skeleton:  # (the entry's own words, "untrusted", "length", ...)
        assert text not in json.dumps(out, ensure_ascii=False).replace(kept["untrusted_sha256"], "")


def test_the_broker_s_own_identifiers_are_kept() -> None:
    for value in (
        "derby-csp-analysts",
        "rec-" + "a" * 32,
        "uhdb-royal-derby-ed:" + "0" * 32,
        "2026-12-01T10:00:00Z",
        "released",
        "csv",
        42,
        True,
        None,
    ):
        assert screened(value, KNOWN) == value


def test_foreign_digits_and_lookalikes_are_not_identifiers() -> None:
    for value in (
        "rec-" + "٣" * 32,
        "derby-csp-analysts\n",
        "DERBY-CSP-ANALYSTS",
        "٢٠٢٦-١٢-٠١",
        "Canary nhs 943 476 5919",
    ):
        assert isinstance(screened(value, KNOWN), dict), value
