"""JSON Schema export of the event models, the envelope and the broker's messages (receipts,
released records, quarantine headers: ``schemas.messages``), for partners in other languages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.asyncapi import asyncapi_document, checkpoint_schema, key_file_schema
from schemas.envelope import DATASCHEMA_RE, ID_RE, KEY_ID_RE, PARTY_ID_RE, SPECVERSION, TIME_RE, TYPE_RE
from schemas.events import EVENT_MODELS
from schemas.messages import MESSAGE_SCHEMAS

SCHEMA_DIR = Path(__file__).resolve().parent / "jsonschema"


def envelope_schema() -> dict[str, Any]:
    def pattern(regex: Any) -> dict[str, str]:
        return {"type": "string", "pattern": regex.pattern}

    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:sv-broker:schema:envelope:v1",
        "title": "sv-broker signed envelope (CloudEvents 1.0 structured JSON)",
        "description": (
            "signature = base64url(Ed25519(RFC 8785 canonical bytes of this object without 'signature')). "
            "Body limit 64 KiB by default; duplicate keys, NaN/Infinity, integers beyond +-(2^53-1), "
            "a BOM, lone surrogates and trailing data are refused."
        ),
        "type": "object",
        "additionalProperties": False,
        "required": ["specversion", "id", "source", "type", "dataschema", "time", "keyid", "signature", "data"],
        "properties": {
            "specversion": {"const": SPECVERSION},
            "id": pattern(ID_RE),
            "source": pattern(PARTY_ID_RE),
            "type": pattern(TYPE_RE),
            "dataschema": pattern(DATASCHEMA_RE),
            "time": pattern(TIME_RE) | {"format": "date-time"},
            "datacontenttype": {"const": "application/json"},
            "keyid": pattern(KEY_ID_RE),
            "signature": {"type": "string", "pattern": "^[A-Za-z0-9_-]{86}$"},
            "data": {"type": "object"},
        },
    }


def all_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema document, for every event model, the envelope and each message."""
    out = {"envelope.v1.json": envelope_schema()}
    for (event_type, version), model in sorted(EVENT_MODELS.items()):
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"urn:sv-broker:schema:{event_type}:v{version}"
        out[f"{event_type}.v{version}.json"] = schema
    for name, (message, title, adapter) in MESSAGE_SCHEMAS.items():
        schema = adapter.json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"urn:sv-broker:schema:{message}:v1"
        schema["title"] = title
        out[name] = schema
    # The registry key file and the AMQP interface (schemas/asyncapi.py).
    out["key_file.v1.json"] = key_file_schema()
    out["asyncapi.v1.json"] = asyncapi_document()
    out["checkpoint.v1.json"] = checkpoint_schema()
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schema_files(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in all_schemas().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written
