"""Every exported pattern means in ECMA-262 what the broker means by it.

JSON Schema's ``pattern`` is an ECMA-262 regular expression: a partner's validator (Ajv, and the
other JavaScript, Java, .NET ones) runs it with ``new RegExp(p, "u")``. The broker checks the same
fields with pydantic (Rust ``regex``) and the envelope with Python's ``re.fullmatch``. Where the
dialects part, the two sides disagree about an event: ``\\d`` is any Unicode digit in Python and
Rust but ``[0-9]`` in ECMA-262, so an LSOA or a school URN written in Arabic-Indic digits passed
the broker (and gave one school a second pseudonym) while the partner's own validator refused it.

Here a real ECMA-262 engine (V8, through ``mini-racer``) compiles every "pattern" and
"patternProperties" key of every committed schema file, and its verdict on a set of tricky strings
is compared with (1) Python's ``re`` and pydantic's Rust engine on the same exported pattern, and
(2) the broker's own check of that field (the event model, the envelope parser, the signature
decoder).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from py_mini_racer import MiniRacer
from pydantic import StringConstraints, TypeAdapter, ValidationError

from adapters.signer import Signer
from broker.audit.checkpoints import checkpoint_from
from broker.registry import KeyEntryDoc, Registry
from broker.stages.validate import validate_payload
from schemas.envelope import DATASCHEMA_RE, TYPE_RE, Envelope, dataschema_for, envelope_from_document
from schemas.errors import ContractError, Reason
from schemas.events import EVENT_MODELS
from schemas.events.common import LSOA_PATTERN
from schemas.schema_files import SCHEMA_DIR, portable_pattern
from schemas.signing import b64u_decode, b64u_encode
from tests.test_validate import good_data, refused

SCHEMAS: dict[str, dict[str, Any]] = {
    path.name: json.loads(path.read_text(encoding="utf-8")) for path in sorted(SCHEMA_DIR.glob("*.json"))
}


def walk(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """(JSON pointer, regex) of every "pattern" and "patternProperties" key, at any depth.

    Written here rather than imported, so a fault in the exporter's own walker cannot hide one."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield f"{where}/pattern", value
            if key == "patternProperties" and isinstance(value, dict):
                yield from ((f"{where}/patternProperties/{regex}", regex) for regex in value)
            yield from walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from walk(item, f"{where}/{index}")


PATTERNS: list[tuple[str, str, str]] = [
    (name, where, regex) for name, doc in SCHEMAS.items() for where, regex in walk(doc)
]
PATTERN_IDS = [f"{name}{where}" for name, where, _ in PATTERNS]


# --- the ECMA-262 engine --------------------------------------------------------------------------

_JS = """
function verdicts(pattern, texts) {
  const re = new RegExp(pattern, "u");
  return JSON.stringify(texts.map((t) => re.test(t)));
}
function compiles(pattern) {
  try { new RegExp(pattern, "u"); return ""; } catch (e) { return String(e); }
}
"""


@pytest.fixture(scope="module")
def ecma() -> Iterator[Callable[[str, list[str]], list[bool]]]:
    with MiniRacer() as ctx:
        ctx.eval(_JS)

        def run(pattern: str, texts: list[str]) -> list[bool]:
            error = ctx.call("compiles", pattern)
            assert error == "", f"{pattern!r} is not an ECMA-262 regular expression: {error}"
            result: list[bool] = json.loads(ctx.call("verdicts", pattern, texts))
            return result

        yield run


def test_the_engine_is_ecma_262(ecma: Callable[[str, list[str]], list[bool]]) -> None:
    # Controls: the differences this file is about are real in this engine.
    assert ecma(r"^\d$", ["5", "\u0665", "\uff15"]) == [True, False, False]  # \d is [0-9]
    assert ecma("^a$", ["a", "a\n"]) == [True, False]  # $ is the end of the text, nothing else
    assert ecma("^.$", ["\U0001f600"]) == [True]  # "u": code points, not UTF-16 units
    with MiniRacer() as ctx:
        ctx.eval(_JS)
        assert "Invalid group" in ctx.call("compiles", "(?P<x>a)")  # Python's named groups


# --- the tricky strings ---------------------------------------------------------------------------

DIGIT_ZEROS = {
    "arabic-indic": 0x0660,
    "extended-arabic-indic": 0x06F0,
    "devanagari": 0x0966,
    "bengali": 0x09E6,
    "fullwidth": 0xFF10,
    "mathematical-bold": 0x1D7CE,  # astral
}


def _digits(text: str, zero: int, *, only: int | None = None) -> str:
    """``text`` with its ASCII digits in another script (all of them, or only the one at ``only``)."""
    return "".join(chr(zero + int(c)) if "0" <= c <= "9" and only in (None, i) else c for i, c in enumerate(text))


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) - 0x21 + 0xFF01) if "!" <= c <= "~" else c for c in text)


def tricky(example: str) -> list[str]:
    """The valid ``example`` and variants that a dialect difference could let through."""
    s = example
    out = [s, "", s.lower(), s.upper(), _fullwidth(s), s[:1] + _fullwidth(s[1:2]) + s[2:]]
    places = [i for i, c in enumerate(s) if "0" <= c <= "9"]
    for zero in DIGIT_ZEROS.values():
        out += [_digits(s, zero), *(_digits(s, zero, only=i) for i in places[:1] + places[-1:])]
    out += [_digits(s, DIGIT_ZEROS["arabic-indic"], only=i) for i in places]  # each digit on its own
    out += [s[:i] + _digits(s[i:], DIGIT_ZEROS["arabic-indic"]) for i in places]  # every tail of digits
    out += [s.replace("K", "\u212a"), s.replace("s", "\u017f"), s.replace("i", "\u0131")]  # case-folding traps
    out += [s.replace("-", "\u2010"), s.replace("-", "\u2212"), s.replace("/", "\u2215"), s.replace(":", "\uff1a")]
    out += [s + "\n", "\n" + s, s + "\r", s + "\r\n", s + "\n\n", s[:1] + "\n" + s[1:]]
    out += [" " + s, s + " ", "\t" + s, s + "\t", s + "\u00a0", "\u00a0" + s, s + "\u3000"]
    out += [s + "\x00", "\x00" + s, s[:1] + "\x00" + s[1:]]
    out += [s + "\u2028", s + "\u2029", s + "\u0085", "\ufeff" + s, s + "\u200b", s[:1] + "\u200d" + s[1:]]
    out += [s + "\u0301", s[:1] + "\u0301" + s[1:], s[:1] + "\u20dd" + s[1:]]  # combining marks
    out += [s + "\U0001f600", s[:1] + "\U0001f600" + s[1:], "\U0001d7ce" + s[1:], s + "\U000e0001"]  # astral
    return list(dict.fromkeys(out))


# --- what the broker says about one field ---------------------------------------------------------

EVENT_EXAMPLES: dict[str, dict[str, str]] = {
    "ae_assault": {"site_code": "RTG01", "patient_lsoa": "E01013456"},
    "nte_incident": {"premises_licence_ref": "DE/PL-0042", "lsoa": "E01013456", "police_reference": "DP-2026-1042"},
    "police_sv_offence": {"lsoa": "E01033216"},
    "school_exclusion": {"academic_year": "2025/26", "school_urn": "112233", "la_code": "831"},
}
_SIGNATURE = b64u_encode(bytes(range(64)))
ENVELOPE_EXAMPLE: dict[str, Any] = {
    "specversion": "1.0",
    "id": "uhdb-royal-derby-ed:0123456789abcdef0123456789abcdef",
    "source": "uhdb-royal-derby-ed",
    "type": "ae_assault",
    "dataschema": "urn:sv-broker:schema:ae_assault:v1",
    "time": "2026-03-01T22:15:00.123+01:00",
    "datacontenttype": "application/json",
    "keyid": "uhdb-2026.k1",
    "signature": _SIGNATURE,
    "data": {},
    "supersedes": "uhdb-royal-derby-ed:0123456789abcdef0123456789abcdef",
}


def _refusal(check: Callable[[], object]) -> ContractError | None:
    try:
        check()
    except ContractError as exc:
        return exc
    return None


def _event_accepts(event_type: str, field: str, value: str) -> bool:
    data = good_data(event_type) | {field: value}
    if field == "police_reference":
        data["police_called"] = True  # a reference needs a call (a rule of its own)
    env = Envelope("m", "p", event_type, 1, datetime.now(UTC), "k", _SIGNATURE, data, b"")
    exc = _refusal(lambda: validate_payload(env))
    if exc is None:
        return True
    assert exc.reason is Reason.SCHEMA_INVALID
    # refused for this field (or by a model rule about it: academic_year), never for another
    assert exc.field in {field, "data"}, (exc.field, exc.message)
    return False


def _envelope_accepts(attr: str, value: str) -> bool:
    if attr == "supersedes":
        # A correction's first message id, checked by its pattern before the id rule that ties it to
        # the message's own id (which this example does not follow: a refusal there is not this one's).
        doc = {k: v for k, v in ENVELOPE_EXAMPLE.items() if k != "supersedes"} | {"supersedes": value, "revision": 2}
        exc = _refusal(lambda: envelope_from_document(doc))
        return exc is None or exc.field != "supersedes"
    doc = {k: v for k, v in ENVELOPE_EXAMPLE.items() if k != "supersedes"} | {attr: value}
    if attr == "type" and TYPE_RE.fullmatch(value):
        doc["dataschema"] = dataschema_for(value, 1)  # keep the two consistent (a rule of its own)
    if attr == "dataschema":
        match = DATASCHEMA_RE.fullmatch(value)
        doc["type"] = match.group("type") if match else "ae_assault"
    exc = _refusal(lambda: envelope_from_document(doc))
    if exc is not None:
        assert exc.field == attr, (exc.field, exc.message)
        return False
    if attr == "signature":
        try:
            b64u_decode(value, expected_len=64)  # the verify stage's first check
        except ValueError:
            return False
    return True


_CHECKPOINT = {
    "seq": 7,
    "head_hash": "0123456789abcdef" * 4,
    "at": "2026-11-21T23:46:00.000Z",
    "kid": "k",
    "signature": _SIGNATURE,
}
_KEY_ENTRY = {
    "kid": "derbyshire-police-k1",
    "partner": "derbyshire-police",
    "public_key": b64u_encode(bytes(range(1, 33))),
    "valid_from": datetime(2026, 1, 1, tzinfo=UTC),
}


def _checkpoint_accepts(field: str, value: str) -> bool:
    try:
        checkpoint_from(_CHECKPOINT | {field: value})
    except ValueError:
        return False
    return True


def _key_entry_accepts(field: str, value: str) -> bool:
    """The registry loader's shape checks of a [[key]] entry (and, for public_key, the base64url
    decoding; the point checks that follow are beyond any schema: the registry's own tests)."""
    if field == "public_key":
        try:
            b64u_decode(value, expected_len=32)
        except ValueError:
            return False
        return True
    try:
        KeyEntryDoc.model_validate(_KEY_ENTRY | {field: value})
    except ValidationError:
        return False
    return True


def broker_check(name: str, where: str) -> tuple[Callable[[str], bool], str]:
    """The broker's own verdict on one field's value, and a valid example of it."""
    parts = where.split("/")
    if name == "checkpoint.v1.json":
        field = parts[2]
        return (lambda value: _checkpoint_accepts(field, value)), str(_CHECKPOINT[field])
    if name == "key_file.v1.json":
        assert parts[1:5] == ["properties", "key", "items", "properties"], where
        field = parts[5]
        return (lambda value: _key_entry_accepts(field, value)), str(_KEY_ENTRY[field])
    assert parts[1] == "properties", f"{name}{where}: no broker check for a pattern here; add one"
    field = parts[2]
    if name == "envelope.v1.json":
        return (lambda value: _envelope_accepts(field, value)), ENVELOPE_EXAMPLE[field]
    event_type = name.removesuffix(".v1.json")
    assert event_type in EVENT_EXAMPLES, f"{name}{where}: no broker check for a pattern here; add one"
    assert field in EVENT_EXAMPLES[event_type], f"{name}{where}: add a valid example of {field!r}"
    return (lambda value: _event_accepts(event_type, field, value)), EVENT_EXAMPLES[event_type][field]


@cache
def _rust(pattern: str) -> TypeAdapter[str]:
    return TypeAdapter(Annotated[str, StringConstraints(pattern=pattern)])


def rust_accepts(pattern: str, text: str) -> bool:
    try:
        _rust(pattern).validate_python(text)
    except ValidationError:
        return False
    return True


def python_search_agrees(pattern: str, text: str, verdict: bool) -> bool:
    """Python's ``re.search`` (what python-jsonschema runs) against the ECMA-262 verdict.

    The one difference left is ``$``: in Python it also matches before a final "\\n", so
    python-jsonschema accepts "E01013456\\n" where ECMA-262 (and the broker) refuse it. Only that
    case may differ; ``(?!\\n)`` before each ``$`` would close it (see the report)."""
    found = re.search(pattern, text) is not None
    return found == verdict or (found and text.endswith("\n") and re.search(pattern, text[:-1]) is not None)


# --- the tests ------------------------------------------------------------------------------------


def test_every_schema_file_is_walked_and_has_patterns() -> None:
    assert set(SCHEMAS) >= {f"{t}.v{v}.json" for t, v in EVENT_MODELS} | {"envelope.v1.json"}
    assert {name for name, _, _ in PATTERNS} >= {f"{t}.v{v}.json" for t, v in EVENT_MODELS} | {"envelope.v1.json"}


@pytest.mark.parametrize(("name", "where", "pattern"), PATTERNS, ids=PATTERN_IDS)
def test_no_exported_pattern_uses_a_construct_the_dialects_read_differently(
    name: str, where: str, pattern: str
) -> None:
    for construct in (r"\d", r"\D", r"\w", r"\W", r"\s", r"\S", r"\b", r"\B", r"\Z", r"\A", "(?P<", "(?<", "(?i"):
        assert construct not in pattern, f"{name}{where}: {pattern!r} uses {construct!r}"
    assert pattern.startswith("^"), f"{name}{where}: unanchored"
    assert pattern.endswith("$"), f"{name}{where}: unanchored"
    assert portable_pattern(pattern) == pattern


@pytest.mark.parametrize(("name", "where", "pattern"), PATTERNS, ids=PATTERN_IDS)
def test_ecma_and_the_broker_agree_on_tricky_strings(
    ecma: Callable[[str, list[str]], list[bool]], name: str, where: str, pattern: str
) -> None:
    accepts, example = broker_check(name, where)
    texts = tricky(example)
    verdicts = ecma(pattern, texts)
    assert verdicts[0], f"{name}{where}: the example {example!r} does not match in ECMA-262"
    for text, ecma_ok in zip(texts, verdicts, strict=True):
        assert accepts(text) == ecma_ok, f"{name}{where}: broker and ECMA-262 disagree on {text!r}"
        assert rust_accepts(pattern, text) == ecma_ok, f"{name}{where}: pydantic's engine disagrees on {text!r}"
        assert (re.fullmatch(pattern, text) is not None) == ecma_ok, f"{name}{where}: re.fullmatch on {text!r}"
        assert python_search_agrees(pattern, text, ecma_ok), f"{name}{where}: re.search on {text!r}"
    # only the example itself passes (base64url and ids also pass in another letter case)
    assert sum(verdicts) == 1 or name in {"envelope.v1.json", "key_file.v1.json", "checkpoint.v1.json"}, texts


_ODD = "".join(chr(DIGIT_ZEROS[k] + d) for k in DIGIT_ZEROS for d in (0, 5, 9)) + (
    "\n\r\t \x00\u00a0\u0301\u200b\u2028\ufeff\u212a\u017f\uff21\uff41\U0001f600-/:._aZz09"
)


@st.composite
def near_misses(draw: st.DrawFn) -> tuple[str, str, str, str]:
    """A pattern, and a string it matches with one character replaced, inserted or appended."""
    name, where, pattern = draw(st.sampled_from(PATTERNS))
    text = draw(st.from_regex(pattern, fullmatch=True))
    odd = draw(st.sampled_from(_ODD))
    at = draw(st.integers(min_value=0, max_value=len(text)))
    text = draw(st.sampled_from([text, text[:at] + odd + text[at + 1 :], text[:at] + odd + text[at:]]))
    return name, where, pattern, text


@given(case=near_misses())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_ecma_and_python_agree_near_the_pattern(
    ecma: Callable[[str, list[str]], list[bool]], case: tuple[str, str, str, str]
) -> None:
    name, where, pattern, text = case
    (ecma_ok,) = ecma(pattern, [text])
    assert rust_accepts(pattern, text) == ecma_ok, (pattern, text)
    assert (re.fullmatch(pattern, text) is not None) == ecma_ok, (pattern, text)
    assert python_search_agrees(pattern, text, ecma_ok), (pattern, text)
    accepts, _ = broker_check(name, where)
    if accepts(text):
        # A partner's validator never refuses what the broker would accept. (The converse holds
        # where the pattern is the whole rule; time, academic year and the rest add checks.)
        assert ecma_ok, (name, where, text)


# --- the outside testers' finding, end to end -----------------------------------------------------

ARABIC_INDIC = DIGIT_ZEROS["arabic-indic"]


@pytest.mark.parametrize(
    ("event_type", "field", "value"),
    [
        ("ae_assault", "patient_lsoa", "E01" + _digits("001234", ARABIC_INDIC)),
        ("nte_incident", "lsoa", "E01" + _digits("001234", ARABIC_INDIC)),
        ("police_sv_offence", "lsoa", "E01" + _digits("001234", ARABIC_INDIC)),
        ("police_sv_offence", "lsoa", "E01" + _digits("001234", DIGIT_ZEROS["fullwidth"])),
        ("school_exclusion", "school_urn", _digits("112233", ARABIC_INDIC)),
        ("school_exclusion", "school_urn", _digits("112233", DIGIT_ZEROS["devanagari"])),
        ("school_exclusion", "school_urn", "11223" + chr(ARABIC_INDIC + 3)),  # one digit is enough
        ("school_exclusion", "la_code", _digits("831", ARABIC_INDIC)),
        ("school_exclusion", "academic_year", _digits("2025/26", ARABIC_INDIC)),
    ],
)
def test_non_ascii_digits_are_refused_by_the_broker(
    signers: dict[str, Signer], registry: Registry, event_type: str, field: str, value: str
) -> None:
    # Signed, parsed, verified and validated for real: the whole ingest path refuses it.
    exc = refused(signers, registry, event_type, good_data(event_type) | {field: value}, Reason.SCHEMA_INVALID, field)
    assert "pattern" in exc.message


@pytest.mark.parametrize(
    "pattern",
    [
        r"^\d{3}$",
        r"^(?P<x>[a-z])$",
        r"^\w+$",
        r"^a\s$",
        r"^\bx$",
        r"^[\d]$",
        r"^a.b$",
        "^a|b$",
        "abc",
        r"^a\Z",
        r"(?i)^a$",
    ],
)
def test_the_exporter_refuses_or_rewrites_a_non_portable_pattern(pattern: str) -> None:
    # The exporter's guard: a model written with \d (or any of these) cannot be exported as is.
    try:
        rewritten = portable_pattern(pattern)
    except ValueError:
        return
    assert rewritten != pattern  # \d and (?P<x> are rewritten only for the envelope's fullmatch checks


def test_lsoa_fields_keep_the_lsoa_kind() -> None:
    # The policy engine recognises an LSOA field by its pattern (schemas/fields.py): releasing one
    # needs a reason. The pattern's new spelling must still be recognised, or LSOAs would count
    # as plain strings. schemas/fields.py must read LSOA_PATTERN from schemas.events.common.
    from schemas.fields import LSOA_PATTERN as FIELDS_LSOA_PATTERN
    from schemas.fields import SCHEMA_FIELDS, FieldKind

    assert FIELDS_LSOA_PATTERN == LSOA_PATTERN, (
        "schemas/fields.py keeps its own copy of the LSOA pattern: replace it with "
        "`from schemas.events.common import LSOA_PATTERN`, or every LSOA field is a plain string to the policy engine"
    )
    kinds = {(key, name): spec.kind for key, fields in SCHEMA_FIELDS.items() for name, spec in fields.items()}
    lsoas = {key for key in kinds if "lsoa" in key[1]}
    assert lsoas == {
        (("ae_assault", 1), "patient_lsoa"),
        (("nte_incident", 1), "lsoa"),
        (("police_sv_offence", 1), "lsoa"),
    }
    assert all(kinds[key] is FieldKind.LSOA for key in lsoas), kinds
