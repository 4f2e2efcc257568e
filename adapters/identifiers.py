"""Recognise direct-identifier columns in a partner's export by their header.

The contract names the identifier fields (``schemas.events.common.DIRECT_IDENTIFIER_FIELDS``); a
partner's system names its columns its own way ("NHS No.", "D.O.B.", "Legal Surname", "Pupil
UPN").  Headers are normalised (lower case, punctuation and spaces folded) and compared with the
contract's list, a list of the common variants, and a few patterns.  Deliberately not flagged:
names and addresses of places, not people ("Premises Name", "School Name", "Premises Address").

What happens when one is found is decided in :mod:`adapters.push` (the file is refused).
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
    re.compile(r"address(line)?\d*$"),
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
