"""Sample agreements that work on any date: a renewed copy for demos and tests.

The shipped agreements in ``policies/agreements/`` are samples with real-looking dates (valid
from 2026-04-01, review by 2027-03-31, ...). After their review date the broker, correctly,
releases nothing under them: an agreement past review is not being governed. A demo or a test
suite that used them with today's clock would therefore stop working on a fixed day (the "time
bomb" of issue 11).

The fix is not to push the sample dates further out (that only moves the day), nor to give the
broker a fake clock (a demo should show the broker as it runs, on the real date). Instead a demo
or test run works on a *copy* of the policy directory in which every sample agreement that would
not be comfortably in force today has all of its dates moved by the same number of days, so that
it started ``LEAD_DAYS`` ago and keeps its own lengths (validity, time to review). Everything
else (flows, rules, revisions, ``revisions.lock``) is copied unchanged, and each renewal is
returned so the demo can say, honestly, what it moved and why. The production broker never calls
this: ``sv-broker serve`` reads the operator's policy directory as it is.
"""

from __future__ import annotations

import re
import shutil
import tomllib
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

# A renewed agreement starts this many days before today, so events of the last weeks fall
# inside it, and is renewed whenever fewer than MARGIN_DAYS remain before its review date (so a
# run never lands in the "review due soon" warning window or crosses the review date midway).
LEAD_DAYS = 30
MARGIN_DAYS = 45

_DATE_LINE = re.compile(
    r"^(?P<head>[ \t]*(?:valid_from|valid_to|review_by)[ \t]*=[ \t]*)(?P<day>[0-9]{4}-[0-9]{2}-[0-9]{2})", re.M
)


@dataclass(frozen=True, slots=True)
class Renewal:
    """One sample agreement whose dates were moved in the copy."""

    agreement_id: str
    file: str
    shift_days: int
    was: tuple[date, date, date]  # valid_from, valid_to, review_by as shipped
    now: tuple[date, date, date]  # the same, as renewed

    def describe(self) -> str:
        (f0, t0, r0), (f1, t1, r1) = self.was, self.now
        return (
            f"{self.agreement_id}: shipped {f0}..{t0} (review by {r0}), renewed for this run to "
            f"{f1}..{t1} (review by {r1})"
        )


def renewal_shift(valid_from: date, valid_to: date, review_by: date, today: date) -> int:
    """Days to move an agreement's dates so it is comfortably in force on ``today`` (0: leave it).

    Pure.  Comfortably in force: started, and more than MARGIN_DAYS before both its review date
    and its end.  Otherwise every date moves by the same amount, so that it starts LEAD_DAYS
    before today: its lengths, and so its own checks (review before end), are kept.
    """
    last_day = min(review_by, valid_to)
    if valid_from <= today and (last_day - today).days > MARGIN_DAYS:
        return 0
    return (today - timedelta(days=LEAD_DAYS) - valid_from).days


def renew_text(text: str, shift_days: int) -> str:
    """``text`` (an agreement's TOML) with every validity and review date moved by ``shift_days``."""

    def move(match: re.Match[str]) -> str:
        day = date.fromisoformat(match["day"]) + timedelta(days=shift_days)
        return match["head"] + day.isoformat()

    return _DATE_LINE.sub(move, text)


def renewed_copy(source: Path, dest: Path, today: date) -> list[Renewal]:
    """Copy the policy directory ``source`` to ``dest``, renewing sample agreements for ``today``."""
    shutil.copytree(source, dest, dirs_exist_ok=True)
    renewals = []
    for path in sorted((dest / "agreements").glob("*.toml")):
        text = path.read_text(encoding="utf-8")
        doc = tomllib.loads(text)
        try:
            dates = (doc["valid_from"], doc["valid_to"], doc["review_by"])
        except KeyError:
            continue  # not a complete agreement: leave it for the loader to report
        if not all(isinstance(d, date) for d in dates):
            continue
        shift = renewal_shift(*dates, today)
        if shift == 0:
            continue
        note = (
            f"# Renewed for a run on {today}: every date below moved {shift:+d} days from the shipped\n"
            f"# sample ({path.name}), which would not be in force today. See broker/policy/renewal.py.\n"
        )
        path.write_text(note + renew_text(text, shift), encoding="utf-8")
        first, last, review = (d + timedelta(days=shift) for d in dates)
        renewals.append(Renewal(str(doc.get("id", path.stem)), path.name, shift, dates, (first, last, review)))
    return renewals
