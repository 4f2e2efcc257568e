"""Dates and times as partners' systems write them, read strictly and fast.

Why not ``datetime.strptime``: it costs ~8 us a call (a bulk import calls it twice a row), and
it accepts things we do not want (``%y`` pivots at 1969, ``%d`` takes " 1").  A mapping's format
uses a small strptime subset that is compiled once into a regular expression.

Local times (an ED system's "Arrival Time") are read in the mapping's time zone (Europe/London
by default).  Two hazards of local time, each decided here once:

* a time that does not exist (the spring-forward gap, 01:00-01:59 on the last Sunday of March)
  is refused: it can only be a keying error, and guessing would move the event by an hour;
* a time that exists twice (01:00-01:59 on the last Sunday of October) is read as the first
  occurrence (``fold=0``, still BST).  Refusing it would drop real assaults for a clock
  artefact; the error is at most one hour and only inside that one hour a year.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo

MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}

# The directives a mapping may use, each as a named group.  One or two digits for day, month,
# hour (exports from spreadsheets drop leading zeros); exactly two for minutes and seconds.
_DIRECTIVES: dict[str, str] = {
    "d": r"(?P<d>\d{1,2})",
    "m": r"(?P<m>\d{1,2})",
    "b": r"(?P<b>[A-Za-z]{3})",
    "Y": r"(?P<Y>\d{4})",
    "y": r"(?P<y>\d{2})",
    "H": r"(?P<H>\d{1,2})",
    "M": r"(?P<M>\d{2})",
    "S": r"(?P<S>\d{2})",
}

ISO = "iso"


class FormatError(ValueError):
    """A mapping's date or time format is not one we can read."""


class ValueFormatError(ValueError):
    """A cell does not match its format, or names an impossible date or time."""


@dataclass(frozen=True, slots=True)
class Format:
    """A compiled date / time / date-time format (``%d/%m/%Y``, ``%H:%M``, or ``iso``)."""

    text: str
    regex: re.Pattern[str] | None  # None: ISO 8601
    has_date: bool
    has_time: bool

    def parts(self, value: str) -> dict[str, str]:
        assert self.regex is not None
        match = self.regex.fullmatch(value)
        if match is None:
            raise ValueFormatError(f"{_show(value)} does not match the format {self.text!r}")
        return {k: v for k, v in match.groupdict().items() if v is not None}


def compile_format(text: str, *, need_date: bool, need_time: bool) -> Format:
    """Compile a format; ``need_*`` says what the field needs from it (a date field needs a day,
    month and year; a time column needs an hour and minute)."""
    if text == ISO:
        return Format(text, None, need_date, need_time)
    pattern: list[str] = []
    seen: set[str] = set()
    i = 0
    while i < len(text):
        char = text[i]
        if char == "%":
            if i + 1 >= len(text):
                raise FormatError(f"format {text!r} ends with a lone '%'")
            directive = text[i + 1]
            if directive == "%":
                pattern.append("%")
            elif directive in _DIRECTIVES:
                if directive in seen:
                    raise FormatError(f"format {text!r} uses %{directive} twice")
                seen.add(directive)
                pattern.append(_DIRECTIVES[directive])
            else:
                raise FormatError(
                    f"format {text!r}: %{directive} is not supported (use %d %m %b %Y %y %H %M %S, or 'iso')"
                )
            i += 2
            continue
        pattern.append(r"\s+" if char == " " else re.escape(char))
        i += 1
    has_date = bool(seen & {"d", "m", "b", "Y", "y"})
    has_time = bool(seen & {"H", "M", "S"})
    if has_date and not ({"d"} <= seen and seen & {"m", "b"} and seen & {"Y", "y"}):
        raise FormatError(f"format {text!r} needs a day (%d), a month (%m or %b) and a year (%Y or %y)")
    if ("m" in seen and "b" in seen) or ("Y" in seen and "y" in seen):
        raise FormatError(f"format {text!r} gives the month or the year twice")
    if has_time and not {"H", "M"} <= seen:
        raise FormatError(f"format {text!r} needs an hour (%H) and minutes (%M)")
    if need_date and not has_date:
        raise FormatError(f"format {text!r} has no date in it")
    if need_time and not has_time:
        raise FormatError(f"format {text!r} has no time in it")
    return Format(text, re.compile("".join(pattern)), has_date, has_time)


def _show(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


def _date_from(parts: dict[str, str], value: str) -> date:
    year = int(parts["Y"]) if "Y" in parts else 2000 + int(parts["y"])  # event dates are this century
    month = int(parts["m"]) if "m" in parts else MONTHS.get(parts["b"].lower(), 0)
    try:
        return date(year, month, int(parts["d"]))
    except ValueError:
        raise ValueFormatError(f"{_show(value)} is not a real date") from None


def _time_from(parts: dict[str, str], value: str) -> tuple[int, int, int]:
    hour, minute, second = int(parts["H"]), int(parts["M"]), int(parts.get("S", "0"))
    if hour > 23 or minute > 59 or second > 59:
        raise ValueFormatError(f"{_show(value)} is not a real time of day")
    return hour, minute, second


def parse_date(fmt: Format, value: str) -> date:
    if fmt.regex is None:
        # ISO dates only (YYYY-MM-DD): a date-time in a date column is a mapping mistake.
        if len(value) == 10:
            with contextlib.suppress(ValueError):
                return date.fromisoformat(value)
        raise ValueFormatError(f"{_show(value)} is not an ISO date (YYYY-MM-DD)")
    return _date_from(fmt.parts(value), value)


def parse_time(fmt: Format, value: str) -> tuple[int, int, int]:
    if fmt.regex is None:
        match = re.fullmatch(r"(\d{2}):(\d{2})(?::(\d{2}))?", value)
        if match is None:
            raise ValueFormatError(f"{_show(value)} is not an ISO time (HH:MM or HH:MM:SS)")
        return _time_from({"H": match[1], "M": match[2], "S": match[3] or "0"}, value)
    return _time_from(fmt.parts(value), value)


def localise(moment: datetime, zone: tzinfo) -> datetime:
    """Attach ``zone`` to a naive local time; refuse a time the clocks skipped (see the module note)."""
    aware = moment.replace(tzinfo=zone, fold=0)
    if aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != moment:
        raise ValueFormatError(
            f"{moment:%d/%m/%Y %H:%M} does not exist in local time (the clocks went forward); check the time"
        )
    return aware


def parse_datetime(fmt: Format, value: str, zone: tzinfo, time_fmt: Format | None = None, time: str = "") -> datetime:
    """A date-time from one cell (``fmt`` has date and time), or a date cell plus a time cell."""
    if fmt.regex is None and time_fmt is None:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueFormatError(f"{_show(value)} is not an ISO 8601 date-time") from None
        return moment if moment.tzinfo is not None else localise(moment, zone)
    if time_fmt is None:
        parts = fmt.parts(value)
        day = _date_from(parts, value)
        hour, minute, second = _time_from(parts, value)
    else:
        day = parse_date(fmt, value)
        hour, minute, second = parse_time(time_fmt, time)
    return localise(datetime(day.year, day.month, day.day, hour, minute, second), zone)
