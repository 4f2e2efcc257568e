"""Synthetic partner exports, in each partner system's own columns and codes; never real data.

Each export kind writes rows from :class:`adapters.synthetic.SyntheticGenerator` the way that
partner's system would (an ED extract's "Attendance No", dd/mm/yyyy dates, local method codes;
a census extract's "Reason 1..3"; an incident-log app's JSON lines; a crime extract's ages and
Home Office outcome numbers), so that pushing it through the matching mapping in
``adapters/mappings/`` exercises every translation. The repository keeps a few hundred rows of
each in ``adapters/samples/``; large files are made at run time (``sv-broker adapter sample``).
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from adapters.synthetic import SyntheticGenerator, SyntheticRecord
from schemas.events.common import DISTRICT_NAMES

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
LONDON = ZoneInfo("Europe/London")

RowWriter = Callable[[SyntheticRecord, random.Random], dict[str, Any]]


def _local(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(LONDON)


def _inverse(table: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in table.items()}


# -- A&E: ED system ISTV extract ------------------------------------------------------------------------

AE_METHOD = _inverse(
    {
        "01": "body_part",
        "02": "blunt_object",
        "03": "knife_or_sharp",
        "04": "glass_or_bottle",
        "05": "firearm",
        "06": "corrosive",
        "07": "other",
        "99": "unknown",
    }
)
AE_LOCATION = _inverse(
    {
        "HOME": "home",
        "STREET": "street_public_place",
        "PUB": "licensed_premises",
        "WORK": "workplace",
        "SCHOOL": "school_or_education",
        "TRANSPORT": "transport",
        "OTHER": "other",
        "UNK": "unknown",
    }
)
AE_GENDER = {"male": "1", "female": "2", "other": "9", "not_known": "X"}
AE_COLUMNS = (
    "Attendance No",
    "Site Code",
    "Arrival Date",
    "Arrival Time",
    "Incident Date",
    "Incident Time",
    "Triage Category",
    "Assault Method",
    "Method Other",
    "Location Type",
    "Location Desc",
    "Age at Arrival",
    "Gender",
    "Patient LSOA",
    "Resident LA",
)


def ae_row(record: SyntheticRecord, rng: random.Random) -> dict[str, Any]:
    data = record.data()
    arrival = _local(data["arrival_datetime"])
    assault = _local(data["assault_datetime"]) if "assault_datetime" in data else None
    return {
        "Attendance No": record.source_key.replace("ATT-", "RD"),
        "Site Code": data["site_code"],
        "Arrival Date": f"{arrival:%d/%m/%Y}",
        "Arrival Time": f"{arrival:%H:%M}",
        "Incident Date": f"{assault:%d/%m/%Y}" if assault else "",
        "Incident Time": f"{assault:%H:%M}" if assault else "",
        "Triage Category": rng.choice(["2", "3", "3", "4", "4", "5"]),  # in the extract, never mapped
        "Assault Method": AE_METHOD[data["assault_method"]],
        "Method Other": data.get("assault_method_other", ""),
        "Location Type": AE_LOCATION[data["assault_location_type"]],
        "Location Desc": data.get("assault_location_text", ""),
        "Age at Arrival": data.get("patient_age", ""),
        "Gender": AE_GENDER[data["patient_sex"]] if "patient_sex" in data else "",
        "Patient LSOA": data.get("patient_lsoa", ""),
        "Resident LA": data.get("district", ""),
    }


# -- education: LA exclusions extract -------------------------------------------------------------------

SCHOOL_CATEGORY = {"suspension": "FIXD", "permanent": "PERM"}
SCHOOL_TERM = {"autumn": "AUT", "spring": "SPR", "summer": "SUM"}
SCHOOL_COLUMNS = (
    "Exclusion ID",
    "LA",
    "Estab",
    "URN",
    "Academic Year",
    "Term",
    "Category",
    "Start Date",
    "Sessions",
    "Reason 1",
    "Reason 2",
    "Reason 3",
    "NC Year",
    "Age",
    "Offensive Weapon",
    "District",
)


def school_row(record: SyntheticRecord, rng: random.Random) -> dict[str, Any]:
    data = record.data()
    reasons = [*data["reason_codes"], "", ""][:3]
    weapon = data.get("weapon_involved")
    return {
        "Exclusion ID": record.source_key.replace("EXC-", "EX"),
        "LA": data["la_code"],
        "Estab": f"{rng.randint(2000, 4999)}",  # DfE establishment number: in the extract, never mapped
        "URN": data["school_urn"],
        "Academic Year": data["academic_year"],
        "Term": SCHOOL_TERM[data["term"]],
        "Category": SCHOOL_CATEGORY[data["exclusion_type"]],
        "Start Date": data["start_date"],
        "Sessions": data["sessions"],
        "Reason 1": reasons[0],
        "Reason 2": reasons[1],
        "Reason 3": reasons[2],
        "NC Year": data["year_group"],
        "Age": data.get("pupil_age", ""),
        "Offensive Weapon": "" if weapon is None else ("Y" if weapon else "N"),
        "District": DISTRICT_NAMES[data["district"]] if "district" in data else "",
    }


# -- licensed premises: incident-log app (JSON lines) --------------------------------------------------

NTE_CATEGORY = {
    "assault": "Assault",
    "disorder": "Disorder",
    "weapon_found": "Weapon found",
    "drugs": "Drugs",
    "sexual_harassment": "Sexual harassment",
    "theft": "Theft",
    "criminal_damage": "Criminal damage",
    "refused_entry_aggression": "Aggression after refused entry",
    "medical": "Medical",
    "other": "Other",
}
NTE_LOCATION = {
    "entrance": "Entrance",
    "bar": "Bar",
    "dance_floor": "Dance floor",
    "toilets": "Toilets",
    "smoking_area": "Smoking area",
    "outside_frontage": "Outside (frontage)",
    "car_park": "Car park",
    "other": "Other",
}
NTE_ACTION = {
    "refused_entry": "Refused entry",
    "ejected": "Ejected",
    "first_aid": "First aid",
    "ambulance": "Ambulance called",
    "searched": "Searched",
    "item_confiscated": "Item confiscated",
    "none": "None",
}
NTE_AUTHORITY = {
    "E06000015": "Derby City",
    "E07000034": "Chesterfield BC",
    "E07000032": "Amber Valley BC",
    "E07000036": "Erewash BC",
}
NTE_DETAILS = {
    "assault": "Two males fighting near the {where}; separated by door staff.",
    "disorder": "Group arguing loudly at the {where}; asked to leave.",
    "weapon_found": "Bladed article found on search at the {where}.",
    "drugs": "Suspected drugs found in the {where}.",
    "sexual_harassment": "Customer reported unwanted touching near the {where}.",
    "theft": "Phone reported stolen from the {where}.",
    "criminal_damage": "Glass door damaged at the {where}.",
    "refused_entry_aggression": "Customer became aggressive when refused entry at the {where}.",
    "medical": "Customer unwell at the {where}; first aid given.",
    "other": "Incident at the {where}.",
}


PREMISES_KEYS = (
    "incident_ref",
    "occurred_at",
    "premises_licence_no",
    "premises_name",
    "licensing_authority",
    "incident_type",
    "location",
    "injury",
    "weapon",
    "actions",
    "police_called",
    "police_ref",
    "cctv",
    "details",
    "logged_by",
)


def premises_row(record: SyntheticRecord, rng: random.Random) -> dict[str, Any]:
    data = record.data()
    where = NTE_LOCATION[data["location_in_premises"]].lower()
    return {
        "incident_ref": record.source_key,
        "occurred_at": _local(data["incident_datetime"]).isoformat(),
        "premises_licence_no": data["premises_licence_ref"],
        "premises_name": data["premises_name"],
        "licensing_authority": NTE_AUTHORITY[data["district"]],
        "incident_type": NTE_CATEGORY[data["category"]],
        "location": NTE_LOCATION[data["location_in_premises"]],
        "injury": data["injury"],
        "weapon": data["weapon_involved"],
        "actions": [NTE_ACTION[a] for a in data["action_taken"]],
        "police_called": data["police_called"],
        "police_ref": data.get("police_reference"),
        "cctv": data["cctv_available"],
        "details": NTE_DETAILS[data["category"]].format(where=where),  # free text: in the export, never mapped
        "logged_by": rng.choice(["Door supervisor", "Duty manager", "Bar staff"]),  # a role, not a name
    }


# -- police: recorded crime extract ---------------------------------------------------------------------

POLICE_GENDER = {"male": "M", "female": "F", "other": "X", "not_known": "U"}
POLICE_OUTCOME = {
    "under_investigation": "",
    "charged_summonsed": "1",
    "caution": "3",
    "community_resolution": "8",
    "evidential_difficulties": "15",
    "suspect_not_identified": "18",
    "no_further_action": "21",
}
POLICE_BANDS = {
    "0-10": (0, 10),
    "11-17": (11, 17),
    "18-24": (18, 24),
    "25-34": (25, 34),
    "35-49": (35, 49),
    "50-64": (50, 64),
    "65+": (65, 90),
}
POLICE_DESCRIPTION = {
    "1": "Murder",
    "2": "Attempted murder",
    "4/1": "Manslaughter",
    "5A": "Wounding with intent to do GBH",
    "8N": "Wounding or inflicting GBH without intent",
    "8N/1": "Assault occasioning actual bodily harm",
    "34A": "Robbery of business property",
    "34B": "Robbery of personal property",
    "10C": "Possession of other weapons",
    "10D": "Possession of article with blade or point",
    "81": "Possession of firearms offences",
    "8M": "Threats to kill with a blade",
}
POLICE_COLUMNS = (
    "Crime Reference",
    "Recorded Date",
    "HO Class",
    "Offence Description",
    "Committed Date",
    "Committed Time",
    "LA Code",
    "LSOA Code",
    "Knife Flag",
    "Victim Age",
    "Victim Gender",
    "Suspect Age",
    "Suspect Gender",
    "Outcome",
)


def _age_in(band: str, rng: random.Random) -> Any:
    bounds = POLICE_BANDS.get(band)
    return rng.randint(*bounds) if bounds else ""


def police_row(record: SyntheticRecord, rng: random.Random) -> dict[str, Any]:
    data = record.data()
    committed = _local(data["offence_datetime"])
    return {
        "Crime Reference": f"CR/{record.source_key.removeprefix('CRM-')}/26",
        "Recorded Date": f"{committed:%d/%m/%Y}",  # in the extract, never mapped
        "HO Class": data["ho_offence_code"],
        "Offence Description": POLICE_DESCRIPTION[data["ho_offence_code"]],  # never mapped
        "Committed Date": f"{committed:%d/%m/%Y}",
        "Committed Time": f"{committed:%H:%M}",
        "LA Code": data["district"],
        "LSOA Code": data.get("lsoa", ""),
        "Knife Flag": "Y" if data["knife_involved"] else "N",
        "Victim Age": _age_in(data["victim_age_band"], rng),
        "Victim Gender": POLICE_GENDER[data["victim_sex"]],
        "Suspect Age": _age_in(data["suspect_age_band"], rng),
        "Suspect Gender": POLICE_GENDER[data["suspect_sex"]] if data["suspect_sex"] != "not_known" else "",
        "Outcome": POLICE_OUTCOME[data["outcome_status"]],
    }


# -- the kinds ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportKind:
    name: str  # also the name of its mapping in adapters/mappings/
    title: str
    partner: str
    event_type: str
    format: str  # csv | jsonl
    columns: tuple[str, ...]  # CSV header (JSON lines: informative)
    row: RowWriter

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.format}"


KINDS: dict[str, ExportKind] = {
    kind.name: kind
    for kind in (
        ExportKind(
            "ae-istv", "A&E ISTV assault extract", "uhdb-royal-derby-ed", "ae_assault", "csv", AE_COLUMNS, ae_row
        ),
        ExportKind(
            "school-exclusions",
            "school census exclusions extract",
            "derbyshire-cc-education",
            "school_exclusion",
            "csv",
            SCHOOL_COLUMNS,
            school_row,
        ),
        ExportKind(
            "premises-incidents",
            "licensed premises incident log",
            "derby-pubwatch",
            "nte_incident",
            "jsonl",
            PREMISES_KEYS,
            premises_row,
        ),
        ExportKind(
            "police-crime",
            "police recorded crime extract",
            "derbyshire-police",
            "police_sv_offence",
            "csv",
            POLICE_COLUMNS,
            police_row,
        ),
    )
}


def sample_records(
    kind: ExportKind, rows: int, *, seed: int = 2026, partner: str | None = None, days: int = 28
) -> list[SyntheticRecord]:
    gen = SyntheticGenerator(seed=seed, days=days)
    return [gen.for_partner(partner or kind.partner, kind.event_type) for _ in range(rows)]


def export_rows(kind: ExportKind, records: list[SyntheticRecord], *, seed: int = 2026) -> list[dict[str, Any]]:
    rng = random.Random(seed + 1)
    return [kind.row(record, rng) for record in records]


def write_rows(kind: ExportKind, rows: list[dict[str, Any]], path: Path) -> None:
    """Write an export file; ``rows`` may carry extra columns (tests add bad ones)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        if kind.format == "csv":
            columns = list(kind.columns)
            for row in rows:
                columns.extend(c for c in row if c not in columns)
            writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\r\n")  # as Windows systems write it
            writer.writeheader()
            writer.writerows(rows)
        else:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def write_sample(
    kind_name: str, path: Path, rows: int, *, seed: int = 2026, partner: str | None = None, days: int = 28
) -> int:
    """Write ``rows`` synthetic rows of one export kind to ``path``; returns the row count."""
    kind = KINDS[kind_name]
    records = sample_records(kind, rows, seed=seed, partner=partner, days=days)
    write_rows(kind, export_rows(kind, records, seed=seed), path)
    return len(records)
