"""Pure field transforms, and their compilation into one callable per rule.

Every transform maps ``None`` to ``None`` (an optional field the partner did not send stays
"not sent"; nothing is invented).  Times are read in Europe/London local time, because the
strategy's patterns ("Friday and Saturday nights, 18:00 to 06:00") are local-time patterns and a
UTC reading would move the boundary by an hour for half the year.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from broker.errors import SpecError
from broker.policy.model import LONDON, Band, FieldKind, FieldSpec, Form, JsonValue
from schemas.errors import CheckCode as C

DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
PSEUDONYM_PREFIX = "psn-"
MIN_SECRET_BYTES = 32

Transform = Callable[[Any], JsonValue]


# --- the transforms themselves ------------------------------------------------------------------


def local(moment: datetime) -> datetime:
    return moment.astimezone(LONDON)


# Each ``_x`` takes a value already on UK local time (a plain date is already a local day), so a
# compiled rule converts once and the public forms below share one definition with it.


def _week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def _month(day: date) -> str:
    return f"{day.year}-{day.month:02d}"


def _quarter(day: date) -> str:
    return f"{day.year}-Q{(day.month - 1) // 3 + 1}"


def _day_of_week(day: date) -> str:
    return DAY_NAMES[day.weekday()]


def _hour(moment: datetime) -> int:
    return moment.hour


def _day_part(moment: datetime) -> str:
    h = moment.hour
    if h < 6:
        return "night"
    if h < 12:
        return "morning"
    if h < 18:
        return "afternoon"
    return "evening"


def _nte_peak(moment: datetime) -> bool:
    weekday, h = moment.weekday(), moment.hour
    return (weekday in (4, 5) and h >= 18) or (weekday in (5, 6) and h < 6)


def _on_local_day(value: date) -> date:
    return local(value) if isinstance(value, datetime) else value


def iso_week(value: date) -> str:
    """ISO week of the UK local day, e.g. "2026-W42" (ISO year: 31 Dec 2026 is in 2026-W53)."""
    return _week(_on_local_day(value))


def month(value: date) -> str:
    return _month(_on_local_day(value))


def quarter(value: date) -> str:
    return _quarter(_on_local_day(value))


def day_of_week(value: date) -> str:
    return _day_of_week(_on_local_day(value))


def hour(value: datetime) -> int:
    return _hour(local(value))


def day_part(value: datetime) -> str:
    """night 00-06, morning 06-12, afternoon 12-18, evening 18-24, UK local time."""
    return _day_part(local(value))


def nte_peak(value: datetime) -> bool:
    """True in the strategy's peak: Friday or Saturday 18:00 to the next morning 06:00, local time
    (the window accounting for 23% of police recorded serious violence, strategy summary "When")."""
    return _nte_peak(local(value))


def band_of(value: int, bands: tuple[Band, ...]) -> str | None:
    """The label of the band holding ``value``; None if no band does (the agreement's bands need
    not cover every value; a value outside them is released as "not known", never as itself)."""
    for band in bands:
        if band.contains(value):
            return band.label
    return None


def pseudonym(secret: bytes, agreement_id: str, field: str, value: str) -> str:
    """Keyed HMAC-SHA256 pseudonym.

    The key is the agreement's own secret, so the same value links across records within one
    agreement but two agreements' pseudonyms of it cannot be joined (ICO Data Sharing Code, data
    minimisation; linkage across arrangements would build a profile no agreement allowed).  The
    agreement id and field are in the message too: a secret reused by mistake across agreements
    still gives unlinkable pseudonyms, and a value means nothing outside its field.  An unkeyed
    hash would not do: URNs and licence refs are small spaces anyone could enumerate.
    """
    message = b"sv-broker pseudonym v1\x00" + agreement_id.encode() + b"\x00" + field.encode() + b"\x00"
    digest = hmac.new(secret, message + value.encode(), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:32]


# --- JSON forms for ``keep`` --------------------------------------------------------------------


def _identity(value: Any) -> JsonValue:
    return value  # type: ignore[no-any-return]


# ``_value_`` is the enum member's stored value: the same as ``.value`` without the descriptor
# call, which is most of the cost of a keep on the hot path.
def _code(value: StrEnum | None) -> JsonValue:
    return None if value is None else value._value_


def _codes(value: list[StrEnum] | None) -> JsonValue:
    return None if value is None else [c._value_ for c in value]


def _iso(value: date | None) -> JsonValue:
    return None if value is None else value.isoformat()


KEEP: Mapping[FieldKind, Transform] = {
    FieldKind.TEXT: _identity,
    FieldKind.STRING: _identity,
    FieldKind.INT: _identity,
    FieldKind.BOOL: _identity,
    FieldKind.DATE: _iso,
    FieldKind.DATETIME: _iso,  # as sent, with its offset
    FieldKind.CODE: _code,
    FieldKind.CODE_LIST: _codes,
    FieldKind.DISTRICT: _code,
    FieldKind.LSOA: _identity,
}

_TIME_FORMS: Mapping[Form, Callable[[Any], JsonValue]] = {
    Form.WEEK: _week,
    Form.MONTH: _month,
    Form.QUARTER: _quarter,
    Form.DAY_OF_WEEK: _day_of_week,
    Form.HOUR: _hour,
    Form.DAY_PART: _day_part,
    Form.NTE_PEAK: _nte_peak,
}


# --- band and group declarations ----------------------------------------------------------------

_BAND_RE = re.compile(r"^(\d{1,3})(?:-(\d{1,3})|\+)$")


def parse_bands(labels: Any, key: str) -> tuple[Band, ...]:
    """``["0-10", "11-17", "65+"]`` -> bands, refusing malformed and overlapping ones.

    Overlap is refused (not resolved by order): a value in two bands would be released under
    whichever came first, and an IG lead reading the file could not tell which.
    """
    if not isinstance(labels, list) or not labels:
        raise SpecError(C.BAD_BAND, 'a band set must be a non-empty list of labels like "11-17" or "65+"', key)
    bands: list[Band] = []
    for i, label in enumerate(labels):
        match = _BAND_RE.fullmatch(label) if isinstance(label, str) else None
        if match is None:
            raise SpecError(C.BAD_BAND, f'band {label!r} is not "LOW-HIGH" or "LOW+"', f"{key}[{i}]")
        low = int(match.group(1))
        high = None if match.group(2) is None else int(match.group(2))
        if high is not None and high < low:
            raise SpecError(C.BAD_BAND, f"band {label!r} ends before it starts", f"{key}[{i}]")
        bands.append(Band(label, low, high))
    ordered = sorted(bands, key=lambda b: b.low)
    for a, b in itertools.pairwise(ordered):
        if a.high is None or a.high >= b.low:
            raise SpecError(C.OVERLAPPING_BANDS, f"bands {a.label!r} and {b.label!r} overlap", key)
    return tuple(bands)


def parse_groups(table: Any, key: str) -> dict[str, str]:
    """``{violence = ["PP", "PA"], ...}`` -> code -> group label, refusing a code in two groups."""
    if not isinstance(table, dict) or not table:
        raise SpecError(C.BAD_GROUP, "a group set must be a table of label = [codes]", key)
    out: dict[str, str] = {}
    for label, codes in table.items():
        if not isinstance(codes, list) or not codes or not all(isinstance(c, str) for c in codes):
            raise SpecError(C.BAD_GROUP, f"group {label!r} must be a non-empty list of code strings", f"{key}.{label}")
        for code in codes:
            if code in out:
                raise SpecError(
                    C.BAD_GROUP, f"code {code!r} is in groups {out[code]!r} and {label!r}", f"{key}.{label}"
                )
            out[code] = label
    return out


def check_groups_fit(mapping: Mapping[str, str], spec: FieldSpec, set_name: str, key: str) -> None:
    """A group set must map exactly the field's code list: an unknown code is a typo, and a code
    left out would have no group (and so no defensible output)."""
    unknown = sorted(set(mapping) - spec.codes)
    if unknown:
        raise SpecError(
            C.BAD_GROUP, f"group set {set_name!r} names code(s) {unknown} not in the code list of {spec.name!r}", key
        )
    missing = sorted(spec.codes - set(mapping))
    if missing:
        raise SpecError(
            C.BAD_GROUP, f"group set {set_name!r} gives no group for code(s) {missing} of {spec.name!r}", key
        )


# --- compilation --------------------------------------------------------------------------------


def compile_keep(spec: FieldSpec) -> Transform:
    return KEEP[spec.kind]


def compile_generalise(
    form: Form,
    spec: FieldSpec,
    *,
    bands: tuple[Band, ...] | None = None,
    groups: Mapping[str, str] | None = None,
) -> Transform:
    """The callable for ``generalise`` to ``form``; the caller has checked the form fits the kind."""
    if form is Form.BAND:
        assert bands is not None
        frozen = bands

        def band(value: Any) -> JsonValue:
            return None if value is None else band_of(value, frozen)

        return band
    if form in _TIME_FORMS:
        fn = _TIME_FORMS[form]
        if spec.kind is FieldKind.DATETIME:

            def at_local_time(value: Any) -> JsonValue:
                return None if value is None else fn(value.astimezone(LONDON))

            return at_local_time

        def on_day(value: Any) -> JsonValue:
            return None if value is None else fn(value)

        return on_day
    if form in (Form.DISTRICT, Form.LSOA):
        # The field already is a location at the named level (the lint refused any other pairing):
        # the form records the level in the agreement, so a reviewer sees it without the schema.
        return KEEP[spec.kind]
    if form is Form.GROUP:
        assert groups is not None
        table = dict(groups)
        if spec.kind is FieldKind.CODE_LIST:

            def group_list(values: Any) -> JsonValue:
                return None if values is None else sorted({table[v._value_] for v in values})

            return group_list

        def group(value: Any) -> JsonValue:
            return None if value is None else table[value._value_]

        return group
    raise AssertionError(f"unhandled form {form}")


def compile_pseudonymise(spec: FieldSpec, secret: bytes, agreement_id: str) -> Transform:
    # Same construction as :func:`pseudonym`, with the keyed prefix absorbed once at load.
    prefix = b"sv-broker pseudonym v1\x00" + agreement_id.encode() + b"\x00" + spec.name.encode() + b"\x00"
    base = hmac.new(bytes(secret), prefix, hashlib.sha256)

    def apply(value: Any) -> JsonValue:
        if value is None:
            return None
        mac = base.copy()
        mac.update(str(value).encode())
        return PSEUDONYM_PREFIX + mac.hexdigest()[:32]

    return apply
