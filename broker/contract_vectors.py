"""Contract test vectors: ``schemas/testvectors/contract.v1.json``.

What a partner writing its own client (in any language) checks itself against: the key files,
record keys and message ids, envelopes with their canonical bytes and signatures, and the receipt
the broker answers each with. Every value in the file is derived here from fixed inputs by the
same code the broker and the adapters run, and ``tests/test_contract_vectors.py`` re-derives
every one of them from the file's inputs, so the file and the code cannot drift apart.

The keys are test-vector keys: derived from public labels (like RFC 8032's), published in the
file, never registered for a real partner. The receipts come from the real pipeline (the shipped
policies, a SQLite store in a temporary directory, the clock fixed at ``BROKER_CLOCK``), in the
order the envelopes are listed: a receipt depends on what came before (a resend, a replay).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from broker.pipeline import Pipeline
from broker.policy.loader import load_policy
from broker.policy.secrets import load_secrets
from broker.ports.delivery import StoreDelivery
from broker.ports.sqlite_store import SqliteStore
from broker.registry import load_registry
from broker.settings import REPO_POLICIES, Settings
from broker.stages.outcome import Failed, receipt
from broker.stages.types import Inbound
from schemas import envelope
from schemas.canonical import canonicalize
from schemas.keyfile import KeyEntry, public_bytes
from schemas.messages import Receipt, receipts_message
from schemas.signing import b64u_encode
from schemas.topology import ingest_routing_key

VECTOR_FILE = Path(__file__).resolve().parent.parent / "schemas" / "testvectors" / "contract.v1.json"
PRODUCED_AT = datetime(2026, 11, 21, 23, 45, 0, tzinfo=UTC)
BROKER_CLOCK = datetime(2026, 11, 21, 23, 46, 0, tzinfo=UTC)
KEY_VALID_FROM = datetime(2026, 1, 1, tzinfo=UTC)
KEY_VALID_UNTIL = datetime(2036, 1, 1, tzinfo=UTC)

PARTNERS = {
    "uhdb-royal-derby-ed": "ae_assault",
    "derby-city-education": "school_exclusion",
    "derby-pubwatch": "nte_incident",
    "derbyshire-police": "police_sv_offence",
}

# One valid payload per event type (synthetic: no real person, place or incident).
PAYLOADS: dict[str, dict[str, Any]] = {
    "ae_assault": {
        "site_code": "RTG01",
        "reporting_period_start": "2026-11-01",
        "reporting_period_end": "2026-11-30",
        "arrival_datetime": "2026-11-21T23:40:00+00:00",
        "assault_datetime": "2026-11-21T23:05:00+00:00",
        "assault_method": "body_part",
        "assault_location_type": "licensed_premises",
        "assault_location_text": "bus station",
        "patient_age": 19,
        "patient_sex": "male",
        "patient_lsoa": "E01019434",
        "district": "E07000034",
    },
    "school_exclusion": {
        "exclusion_type": "suspension",
        "start_date": "2026-11-19",
        "sessions": 2,
        "reason_codes": ["PA", "VA"],
        "year_group": "9",
        "term": "autumn",
        "academic_year": "2026/27",
        "school_urn": "112999",
        "la_code": "831",
        "district": "E06000015",
        "weapon_involved": False,
        "pupil_age": 13,
    },
    "nte_incident": {
        "incident_datetime": "2026-11-21T23:30:00+00:00",
        "category": "assault",
        "premises_licence_ref": "DCC/PL/0588",
        "premises_name": "Friar Gate Social",
        "location_in_premises": "dance_floor",
        "district": "E06000015",
        "lsoa": "E01019573",
        "injury": True,
        "weapon_involved": False,
        "action_taken": ["first_aid"],
        "police_called": True,
        "police_reference": "DP/709851/26",
        "cctv_available": True,
    },
    "police_sv_offence": {
        "ho_offence_code": "10D",
        "sv_group": "possession_of_weapons",
        "offence_datetime": "2026-11-21T23:10:00+00:00",
        "district": "E06000015",
        "lsoa": "E01019210",
        "knife_involved": True,
        "victim_age_band": "18-24",
        "victim_sex": "male",
        "suspect_age_band": "18-24",
        "suspect_sex": "male",
        "outcome_status": "suspect_not_identified",
    },
}

# (partner, record-key column values, what they show)
RECORD_KEYS: list[tuple[str, list[Any], str]] = [
    ("uhdb-royal-derby-ed", ["ED-0001"], "one column: the record key is the value"),
    ("uhdb-royal-derby-ed", [" \tED-0001\r\n"], "leading and trailing ASCII whitespace is trimmed"),
    ("uhdb-royal-derby-ed", ["\u00a0ED-0001\u00a0"], "NO-BREAK SPACE is not trimmed (only ASCII whitespace)"),
    ("uhdb-royal-derby-ed", [20261121], "an integer cell: its decimal digits"),
    ("derbyshire-police", ["CR/51-0000039/26"], "one column: '/' and '\\' are kept as they are"),
    ("derbyshire-police", ["RTG01", "2026-000123"], "two columns, joined by '/'"),
    ("derbyshire-police", ["a/b", "c"], "'/' in a value is escaped as '\\/'"),
    ("derbyshire-police", ["a", "b/c"], "...so these two rows do not share a key"),
    ("derbyshire-police", ["a\\", "b"], "'\\' in a value is escaped as '\\\\'"),
    ("derby-city-education", ["Ñandú-ØÆ", "٣"], "non-ASCII: UTF-8, no normalisation, no case folding"),
    ("derby-city-education", ["X", "  "], "an empty value (after trimming): the row has no record key"),
]


@dataclass(frozen=True)
class VectorKey:
    partner: str
    kid: str
    private_key: Ed25519PrivateKey
    id_key: bytes

    @classmethod
    def for_partner(cls, partner: str) -> VectorKey:
        seed = hashlib.sha256(f"sv-broker contract vector signing key {partner}".encode()).digest()
        id_key = hashlib.sha256(f"sv-broker contract vector message-id key {partner}".encode()).digest()
        return cls(partner, f"{partner}-vector", Ed25519PrivateKey.from_private_bytes(seed), id_key)

    @property
    def entry(self) -> KeyEntry:
        return KeyEntry(self.kid, self.partner, public_bytes(self.private_key), KEY_VALID_FROM, KEY_VALID_UNTIL)

    def describe(self) -> dict[str, Any]:
        seed = self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return {
            "partner": self.partner,
            "kid": self.kid,
            "ed25519_seed_hex": seed.hex(),
            "public_key_b64u": b64u_encode(public_bytes(self.private_key)),
            "registry_entry": self.entry.to_toml(),
            "id_key_file": self.id_key.hex() + "\n",
        }


def record_key_of(values: list[Any]) -> str | None:
    """What ``adapters.mapping.Mapping.key_of`` computes (no configured empty values)."""
    parts = [envelope.record_key_part(v) for v in values]
    return None if any(p == "" for p in parts) else envelope.join_record_key(parts)


def _sign(
    key: VectorKey,
    event_type: str,
    record_key: str,
    data: dict[str, Any],
    *,
    keyid: str | None = None,
    produced_at: datetime = PRODUCED_AT,
    revision: int = 1,
    withdrawn: str | None = None,
) -> dict[str, Any]:
    first = envelope.message_id(key.partner, record_key, key.id_key)
    return envelope.build_signed(
        private_key=key.private_key,
        partner_id=key.partner,
        keyid=keyid or key.kid,
        event_type=event_type,
        version=1,
        message_id=first,
        data=data,
        produced_at=produced_at,
        supersedes=first if revision > 1 else None,
        revision=revision,
        withdrawn=withdrawn,
    )


def _canonical_unsigned(doc: dict[str, Any]) -> str:
    return canonicalize({k: v for k, v in doc.items() if k != envelope.SIGNATURE_ATTR}).decode("utf-8")


def envelope_cases(keys: dict[str, VectorKey]) -> list[dict[str, Any]]:
    """The envelopes in the order the broker receives them: name, note, body, document."""
    cases: list[dict[str, Any]] = []

    def add(name: str, note: str, doc: dict[str, Any] | None, routing_key: str, body: str | None = None) -> None:
        """One case; its body is the document's canonical form unless given."""
        if body is None:
            assert doc is not None
            body = canonicalize(doc).decode()
        cases.append({"name": name, "note": note, "document": doc, "body": body, "routing_key": routing_key})

    for partner, event_type in PARTNERS.items():
        doc = _sign(keys[partner], event_type, "VEC-0001", PAYLOADS[event_type])
        add(
            f"{event_type}_accepted",
            "a valid envelope; body = its RFC 8785 canonical form (any JSON serialisation would do)",
            doc,
            ingest_routing_key(partner, event_type),
        )
    school = keys["derby-city-education"]
    young = _sign(school, "school_exclusion", "VEC-0002", PAYLOADS["school_exclusion"] | {"pupil_age": 9})
    add(
        "accepted_nothing_released",
        "valid, but no flow's conditions hold (pupil_age 9): records 0, and the receipt says why (withheld)",
        young,
        ingest_routing_key(school.partner, "school_exclusion"),
    )
    ed, police = keys["uhdb-royal-derby-ed"], keys["derbyshire-police"]
    first = cases[0]["document"]
    ae_key = ingest_routing_key(ed.partner, "ae_assault")
    add("resend_duplicate", "the first envelope again, byte for byte: a duplicate", first, ae_key)
    other = _sign(ed, "ae_assault", "VEC-0001", PAYLOADS["ae_assault"] | {"assault_method": "knife_or_sharp"})
    add(
        "same_id_other_content",
        "the first envelope's id with other content: replayed",
        other,
        ae_key,
    )
    spaced = _sign(ed, "ae_assault", "VEC-0002", PAYLOADS["ae_assault"] | {"patient_age": 27})
    add(
        "pretty_printed_body",
        "a body that is not canonical (indented, keys unsorted): accepted; the signature covers the canonical form",
        spaced,
        ae_key,
        body=json.dumps(dict(reversed(list(spaced.items()))), indent=2, ensure_ascii=False),
    )
    tampered = _sign(police, "police_sv_offence", "VEC-0002", PAYLOADS["police_sv_offence"])
    tampered["data"] = tampered["data"] | {"knife_involved": False}
    key = ingest_routing_key(police.partner, "police_sv_offence")
    add(
        "tampered_after_signing",
        "data changed after signing: bad_signature",
        tampered,
        key,
    )
    unknown = _sign(
        police, "police_sv_offence", "VEC-0003", PAYLOADS["police_sv_offence"], keyid="derbyshire-police-nokey"
    )
    add("unknown_key", "a keyid the registry does not hold", unknown, key)
    old = _sign(
        police,
        "police_sv_offence",
        "VEC-0004",
        PAYLOADS["police_sv_offence"],
        produced_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    add("stale", "signed 20 days before the broker's clock (window 7 days)", old, key)
    ident = _sign(ed, "ae_assault", "VEC-0005", PAYLOADS["ae_assault"] | {"nhs_number": "9434765919"})
    add(
        "direct_identifier",
        "a field for a direct identifier: refused, the body is not kept",
        ident,
        ae_key,
    )
    body = canonicalize(first).decode().replace('{"data":', '{"id":"x","data":', 1)
    add("duplicate_member", "a member given twice: refused before anything else", None, ae_key, body=body)
    corrected = _sign(
        police, "police_sv_offence", "VEC-0001", PAYLOADS["police_sv_offence"] | {"knife_involved": False}, revision=2
    )
    add(
        "correction_revision_2",
        "a correction of the police vector's record (one field changed): supersedes = its first message id, "
        "revision 2, id = '<supersedes>:r2'; each consumer gets revision 2 under the record id it holds",
        corrected,
        key,
    )
    withdrawal = _sign(ed, "ae_assault", "VEC-0002", {}, revision=3, withdrawn="sent_in_error")
    add(
        "withdrawal",
        "the pretty-printed A&E record withdrawn (sent in error) at revision 3: data {}, every consumer that "
        "held it is told (receipt: withdrawn = how many)",
        withdrawal,
        ae_key,
    )
    add(
        "older_revision_after_newer",
        "revision 2 of that record after its withdrawal at revision 3: refused as revision_superseded",
        _sign(ed, "ae_assault", "VEC-0002", PAYLOADS["ae_assault"] | {"patient_age": 28}, revision=2),
        ae_key,
    )
    wrong = _sign(police, "police_sv_offence", "VEC-0006", PAYLOADS["police_sv_offence"])
    add(
        "routing_key_not_its_own",
        "a valid envelope under a routing key that is not its <source>.<type> (the publisher's own prefix)",
        wrong,
        ingest_routing_key(police.partner, "ae_assault"),
    )
    return cases


async def broker_receipts(cases: list[dict[str, Any]], keys: dict[str, VectorKey]) -> list[Receipt]:
    """The receipt the real pipeline answers each case with, in order, at ``BROKER_CLOCK``."""
    with tempfile.TemporaryDirectory(prefix="sv-vectors-") as tmp:
        work = Path(tmp)
        keys_dir = work / "keys"
        keys_dir.mkdir()
        (keys_dir / "vectors.toml").write_text("\n".join(k.entry.to_toml() for k in keys.values()), encoding="utf-8")
        secrets_file = work / "secrets.toml"
        registry = load_registry(REPO_POLICIES, keys_dir)
        agreements = sorted(p.stem for p in (REPO_POLICIES / "agreements").glob("*.toml"))
        lines = [f'"{a}" = "{secrets.token_hex(32)}"' for a in agreements]
        secrets_file.write_text("[pseudonym_secrets]\n" + "\n".join(lines) + "\n", encoding="utf-8")
        os.chmod(secrets_file, 0o600)
        policy = load_policy(REPO_POLICIES, registry, load_secrets(secrets_file, os.environ))
        settings = Settings(policy_dir=REPO_POLICIES, keys_dir=keys_dir, secrets_file=secrets_file, data_dir=work)
        store = SqliteStore(work / "broker.db")
        await store.open()
        try:
            pipeline = Pipeline(settings, registry, policy, store, StoreDelivery(), clock=lambda: BROKER_CLOCK)
            out: list[Receipt] = []
            for case in cases:
                inbound = Inbound(
                    case["body"].encode(),
                    publisher=case["routing_key"].split(".")[0],
                    routing_key=case["routing_key"],
                    transport="amqp",
                )
                [outcome] = await pipeline.process([inbound])
                if isinstance(outcome, Failed):
                    raise RuntimeError(f"vector {case['name']} failed inside the broker")
                out.append(receipt(outcome, BROKER_CLOCK))
            return out
        finally:
            await store.close()


def build_vectors() -> dict[str, Any]:
    keys = {p: VectorKey.for_partner(p) for p in PARTNERS}
    message_ids = []
    for partner, values, note in RECORD_KEYS:
        key = keys[partner]
        rk = record_key_of(values)
        message_ids.append(
            {
                "partner": partner,
                "id_key_hex": key.id_key.hex(),
                "record_key_values": values,
                "record_key": rk,
                "message_id": None if rk is None else envelope.message_id(partner, rk, key.id_key),
                "note": note,
            }
        )
    cases = envelope_cases(keys)
    receipts = asyncio.run(broker_receipts(cases, keys))
    envelopes = []
    for case, answer in zip(cases, receipts, strict=True):
        doc = case["document"]
        envelopes.append(
            {
                **case,
                "canonical_unsigned": None if doc is None else _canonical_unsigned(doc),
                "body_sha256": hashlib.sha256(case["body"].encode()).hexdigest(),
                "receipt": answer,
            }
        )
    by_partner = [r for r in receipts if r["source"] == "uhdb-royal-derby-ed"]
    return {
        "description": (
            "sv-broker contract test vectors v1. Every value here is reproducible from the README's wire "
            "contract: check your client against them. Strings stand for their UTF-8 bytes (body, "
            "canonical_unsigned, receipts_message.body). The envelopes are received in this order by one broker "
            "(a resend and a replay depend on what came before) with its clock at broker_clock; publisher = the "
            "first label of routing_key. Test-vector keys only, never registered for a partner."
        ),
        "broker_clock": envelope.format_time(BROKER_CLOCK),
        "keys": [k.describe() for k in keys.values()],
        "message_ids": message_ids,
        "envelopes": envelopes,
        "receipts_message": {
            "note": "one AMQP message on uhdb-royal-derby-ed's receipts queue, had these been one batch",
            "body": receipts_message(by_partner).decode(),
        },
    }


def render(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


def write_vectors(path: Path = VECTOR_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(build_vectors()), encoding="utf-8")
    return path
