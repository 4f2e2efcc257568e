"""verify_chain's page-at-a-time check (``_page_hashes``) against its row-by-row walk: it may only
ever accept what the walk accepts, so every report is the walk's (same entry, same problem)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit import chain
from broker.audit.chain import GENESIS, ChainReport, ChainRow, Draft, Kind, seal, verify_chain
from broker.audit.columns import Columns, columns_of

AT = datetime(2026, 5, 1, tzinfo=UTC)


def _sealed(n: int) -> list[tuple[int, bytes, str, Columns]]:
    rows: list[tuple[int, bytes, str, Columns]] = []
    prev = GENESIS
    for i in range(1, n + 1):
        attrs: dict[str, Any] = {"message_id": f"m-{i}", "source": "derbyshire-police"}
        if i % 3 == 0:
            attrs |= {"consumer": "derby-csp-analysts", "record_ids": [f"rec-{i}", f"rec-{i - 1}"]}
        entry = seal(Draft(Kind.RELEASED if i % 2 else Kind.ACCESSED, attrs), seq=i, prev=prev, at=AT)
        rows.append((i, entry.body, entry.hash, columns_of(json.loads(entry.body))))
        prev = entry.hash
    return rows


def _walk(rows: list[ChainRow]) -> ChainReport:
    return chain._verify_rows(rows, ChainReport(True, 0, 0, GENESIS), None, None)


def _row(seq: int, body: bytes) -> tuple[int, bytes, str]:
    return seq, body, hashlib.sha256(body).hexdigest()


@pytest.fixture(autouse=True)
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chain, "_PAGE", 4)


def test_pages_verify_and_collect_across_pages() -> None:
    rows = _sealed(11)
    hashes: dict[int, str] = {}
    report = verify_chain(rows, collect={1, 4, 5, 11, 40}, collected=hashes)
    assert report == _walk(list(rows)) == ChainReport(True, 11, 11, rows[-1][2])
    assert hashes == {s: rows[s - 1][2] for s in (1, 4, 5, 11)}
    assert verify_chain([r[:3] for r in rows]).ok


def test_rows_that_only_join_into_json_are_each_not_json() -> None:
    """Bodies that are not JSON values one by one, but whose concatenation is a canonical list
    of entries with a valid chain: each row must be its own entry."""
    b1 = ('{"prev":"' + GENESIS + '","seq":1,"x":"}').encode()
    b2 = b'{"}'
    h1, h2 = hashlib.sha256(b1).hexdigest(), hashlib.sha256(b2).hexdigest()
    b3 = ('{"prev":"' + h1 + '","seq":2},{"prev":"' + h2 + '","seq":3}').encode()
    rows: list[ChainRow] = [_row(1, b1), _row(2, b2), _row(3, b3)]
    joined = b"[" + b",".join(r[1] for r in rows) + b"]"
    assert chain._PLAIN.encode(json.loads(joined)).encode() == joined  # the trap is real
    assert chain._page_hashes(rows, 1, GENESIS) is None
    report = verify_chain(rows)
    assert (report.ok, report.first_bad_seq, report.problem) == (False, 1, "entry is not JSON")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b' {"prev":"%s","seq":1}', "entry is not in canonical form"),
        (b'{"prev":"%s","seq":1} ', "entry is not in canonical form"),
        (b'{"seq":1,"prev":"%s"}', "entry is not in canonical form"),
        (b'{"prev":"%s","seq":1,"x":NaN}', "entry is not in canonical form"),
        (b'{"prev":"%s","seq":1,"x":"\\u0041"}', "entry is not in canonical form"),
        (b'["%s"]', "entry is not a JSON object"),
        (b'{"prev":"%s","seq":1', "entry is not JSON"),
        (b'{"prev":"%s","seq":2}', "sequence out of step (expected 1)"),
        (b'{"prev":"%s","seq":1,"x":1e-7}', None),  # canonical by the reference encoder only
        ('{"prev":"%s","seq":1,"x":"é"}'.encode(), None),  # not ASCII
    ],
)
def test_each_problem_is_the_walks(body: bytes, problem: str | None) -> None:
    first = body.replace(b"%s", GENESIS.encode())
    rest = _sealed(6)[1:]  # entries 2.. of another chain: linked to this first entry below
    rows: list[ChainRow] = [_row(1, first)]
    prev = rows[0][2]
    for seq, _body, _hash, _cols in rest:
        entry = seal(Draft(Kind.RECEIVED, {"message_id": f"m-{seq}"}), seq=seq, prev=prev, at=AT)
        rows.append((seq, entry.body, entry.hash))
        prev = entry.hash
    report = verify_chain(rows)
    assert report == _walk(rows)
    assert report.problem == problem


def test_a_nulled_column_is_an_edited_column() -> None:
    rows = _sealed(8)
    seq, body, digest, cols = rows[5]
    assert json.loads(body)["consumer"] == "derby-csp-analysts"
    rows[5] = (seq, body, digest, cols._replace(consumer=None))
    report = verify_chain(rows)
    assert report == _walk(list(rows))
    assert report.first_bad_seq == 6
    assert report.problem == "the consumer column does not match the entry (the stored index was edited)"


def test_a_member_that_is_not_a_string_is_indexed_as_nothing() -> None:
    entry = seal(Draft(Kind.RECEIVED, {"consumer": 5, "message_id": "m-1"}), seq=1, prev=GENESIS, at=AT)
    cols = columns_of(json.loads(entry.body))
    assert cols.consumer is None
    assert verify_chain([(1, entry.body, entry.hash, cols)]).ok
    report = verify_chain([(1, entry.body, entry.hash, cols._replace(consumer=5))])  # type: ignore[arg-type]
    assert report == _walk([(1, entry.body, entry.hash, cols._replace(consumer=5))])  # type: ignore[arg-type]
    assert report.problem == "the consumer column does not match the entry (the stored index was edited)"


TAMPER = st.sampled_from(["body", "hash", "seq", "column", "record_ids", "drop", "swap"])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 13), where=st.integers(0, 12), how=TAMPER)
def test_pages_report_what_the_walk_reports(n: int, where: int, how: str) -> None:
    rows: list[Any] = list(_sealed(n))
    i = where % n
    seq, body, digest, cols = rows[i]
    if how == "body":
        rows[i] = (seq, body.replace(b"m-", b"n-"), digest, cols)
    elif how == "hash":
        rows[i] = (seq, body, "0" * 64, cols)
    elif how == "seq":
        rows[i] = (seq + 1, body, digest, cols)
    elif how == "column":
        rows[i] = (seq, body, digest, cols._replace(message_id="m-other"))
    elif how == "record_ids":
        rows[i] = (seq, body, digest, cols._replace(record_ids=("rec-x",)))
    elif how == "drop":
        del rows[i]
    elif how == "swap" and i + 1 < len(rows):
        rows[i], rows[i + 1] = rows[i + 1], rows[i]
    assert verify_chain(rows) == _walk(rows)
