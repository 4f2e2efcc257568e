"""Recognise direct-identifier columns in a partner's export by their header.

The contract names the identifier fields (``schemas.events.common.DIRECT_IDENTIFIER_FIELDS``); a
partner's system names its columns its own way ("NHS No.", "D.O.B.", "Legal Surname", "Pupil
UPN").  Headers are normalised (lower case, punctuation and spaces folded) and compared with the
contract's list, a list of the common variants, and a few patterns.  Deliberately not flagged:
names and addresses of places, not people ("Premises Name", "School Name", "Premises Address").

What happens when one is found is decided in :mod:`adapters.push` (the file is refused) and, for
an event's field names, in the broker's validate stage (``direct_identifier``).

Values too (:func:`identifying_value`): NHS numbers (with a valid check digit), UPNs, National
Insurance numbers, e-mail addresses, UK phone numbers and full postcodes. The broker uses both to
decide whether a refused message's body may be kept for diagnosis (:func:`looks_identifying`).
Patterns are ASCII-only (``[0-9]``, never ``\\d``, which in Python also matches other scripts'
digits).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from schemas.events.common import DIRECT_IDENTIFIER_FIELDS


def normalise(header: str) -> str:
    """``"NHS No."`` -> ``"nhs_no"``; ``"D.O.B."`` -> ``"d_o_b"``."""
    return re.sub(r"[^a-z0-9]+", "_", header.strip().lower()).strip("_")


def compact(header: str) -> str:
    """``"NHS No."`` -> ``"nhsno"``: the form variants are compared in."""
    return normalise(header).replace("_", "")


# Variants beyond the contract's own field names, in compact form.
_VARIANTS: frozenset[str] = frozenset(
    {
        # NHS and hospital numbers
        "nhsnumber",
        "nhsno",
        "nhsnum",
        "newnhsnumber",
        "hospitalno",
        "hospitalnumber",
        "casenotenumber",
        "casenoteno",
        "districtnumber",
        "patientid",
        "pasnumber",
        "pasno",
        "mrn",
        # pupils and learners
        "upn",
        "formerupn",
        "pupilupn",
        "uniquepupilnumber",
        "uln",
        "uniquelearnernumber",
        # names
        "name",
        "names",
        "surname",
        "forename",
        "forenames",
        "fullname",
        "firstname",
        "lastname",
        "middlename",
        "middlenames",
        "givenname",
        "familyname",
        # birth
        "dob",
        "dateofbirth",
        "birthdate",
        "birthday",
        # contact and address
        "email",
        "emailaddress",
        "phone",
        "phoneno",
        "phonenumber",
        "tel",
        "telno",
        "telephone",
        "telephoneno",
        "telephonenumber",
        "mobile",
        "mobileno",
        "mobilenumber",
        # national and police identifiers
        "nino",
        "ninumber",
        "nationalinsurancenumber",
        "nationalinsuranceno",
        "pnc",
        "pncid",
        "pncno",
        "pncnumber",
        "cro",
        "crono",
        "cronumber",
        "siabadge",
        "siabadgeno",
        "siabadgenumber",
        "sialicence",
        "sialicenceno",
        "sialicencenumber",
        # precise coordinates (an injury's point location can be a home address)
        "lat",
        "latitude",
        "lon",
        "long",
        "lng",
        "longitude",
        "easting",
        "northing",
        "gridref",
        "gridreference",
    }
)

_KNOWN: frozenset[str] = frozenset({compact(f) for f in DIRECT_IDENTIFIER_FIELDS} | _VARIANTS)

# Whose name / postcode / address: a person's, unless the column says it is a place's.
_PERSON = (
    "patient|pupil|child|student|learner|victim|suspect|offender|witness|staff|doorstaff|doorsupervisor|"
    "customer|person|legal|preferred|first|last|middle|given|family|full|sur|fore|home|parent|carer|guardian|mother|father"
)
_PLACE_PREFIXES = ("premises", "school", "site", "venue", "establishment", "business", "licensee")
_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(rf"^({_PERSON})names?$"),
    re.compile(r"(surname|forenames?|firstname|lastname|givenname|familyname|middlenames?|fullname)$"),
    re.compile(r"nhs(number|no|num)"),
    re.compile(r"(dateofbirth|birthdate|dob)$"),
    re.compile(r"upn$"),
    re.compile(r"post(al)?codes?$"),
    re.compile(r"address(line)?[0-9]*$"),
    re.compile(r"(email|telephone|mobile|phone)(address|no|number)?$"),
    re.compile(r"^sia(badge|licence|license)"),
)


@dataclass(frozen=True, slots=True)
class IdentifierColumn:
    column: str  # as written in the export
    looks_like: str  # what it was recognised as, for the report


def looks_like_identifier(header: str) -> str | None:
    """What direct identifier ``header`` names, or None."""
    key = compact(header)
    if not key:
        return None
    if key in _KNOWN:
        return normalise(header)
    if key.startswith(_PLACE_PREFIXES):
        return None
    for pattern in _PATTERNS:
        if pattern.search(key):
            return normalise(header)
    return None


def identifier_columns(headers: Iterable[str]) -> list[IdentifierColumn]:
    found: list[IdentifierColumn] = []
    for header in headers:
        match = looks_like_identifier(header)
        if match is not None:
            found.append(IdentifierColumn(header, match))
    return found


# -- values -------------------------------------------------------------------------------------

# Bounded by "not part of a longer token" (letters, digits, "_", "-"): a hex id or a base64url
# signature holds digit runs that are no one's number.
_EDGE_BEFORE, _EDGE_AFTER = r"(?<![A-Za-z0-9_+-])", r"(?![A-Za-z0-9_-])"
_NHS = re.compile(_EDGE_BEFORE + r"([0-9]{3})[ -]?([0-9]{3})[ -]?([0-9]{4})" + _EDGE_AFTER)
_VALUE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # UPN: a check letter, 12 more characters (the last may be a letter: a temporary UPN).
    ("upn", re.compile(r"(?<![A-Za-z0-9])[A-HJ-NP-RT-Z][0-9]{11}[0-9A-HJ-NP-RT-Z](?![A-Za-z0-9])")),
    (
        "national_insurance_number",
        re.compile(r"(?<![A-Za-z0-9])[A-Z]{2} ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D](?![A-Za-z0-9])", re.IGNORECASE),
    ),
    ("email", re.compile(r"[^@\s\"<>]+@[^@\s\"<>]+\.[A-Za-z]{2,}")),
    ("phone", re.compile(_EDGE_BEFORE + r"(?:\+44 ?|0)(?:[0-9] ?){9,10}" + _EDGE_AFTER)),
    # A full postcode (outward and inward code) is an address; a district ("DE1") is not.
    (
        "postcode",
        re.compile(r"(?<![A-Za-z0-9])[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][ABD-HJLNP-UW-Z]{2}(?![A-Za-z0-9])", re.IGNORECASE),
    ),
)


def _nhs_check_digit_ok(digits: str) -> bool:
    """The NHS number's Modulus 11 check (weights 10..2; 11 -> 0; 10 is never valid)."""
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    return check != 10 and check == int(digits[9])


def identifying_value(text: str) -> str | None:
    """What kind of direct identifier ``text`` holds somewhere in it, or None."""
    for match in _NHS.finditer(text):
        if _nhs_check_digit_ok("".join(match.groups())):
            return "nhs_number"
    for kind, pattern in _VALUE_PATTERNS:
        if pattern.search(text):
            return kind
    return None


def looks_identifying(document: object, skip_values: frozenset[str] = frozenset()) -> str | None:
    """Whether any member name (at any depth) or any string value of ``document`` looks like a
    direct identifier: what it looks like, or None. Pure; bounded by the document's size.
    ``skip_values``: top-level members whose values are not scanned (their names still are),
    e.g. an envelope's own attributes, whose shapes the contract fixes."""
    stack: list[object] = []
    if isinstance(document, dict):
        for key, value in document.items():
            named = looks_like_identifier(str(key))
            if named is not None:
                return named
            if key not in skip_values:
                stack.append(value)
    else:
        stack.append(document)
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                named = looks_like_identifier(str(key))
                if named is not None:
                    return named
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            found = identifying_value(item)
            if found is not None:
                return found
    return None


_MEMBER_NAME = re.compile(r'"((?:[^"\\]|\\.){1,200})"\s*:')


def looks_identifying_text(text: str) -> str | None:
    """:func:`looks_identifying` for a body that is not readable JSON: every ``"name":`` in it is
    taken as a member name, and the whole text as a value."""
    for match in _MEMBER_NAME.finditer(text):
        named = looks_like_identifier(match.group(1))
        if named is not None:
            return named
    return identifying_value(text)
