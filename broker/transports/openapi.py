"""The OpenAPI 3.1 document of the whole HTTP API, served at ``/openapi.json``.

Written by hand (aiohttp has no schema of its own) and held to the running app by the tests:
every route the app serves is here, and schemathesis checks that responses match it.
"""

from __future__ import annotations

from typing import Any

from broker.monitor.alerts import AlertCode, Severity
from schemas.events import EVENT_TYPES
from schemas.schema_files import envelope_schema

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _problem(description: str) -> dict[str, Any]:
    return _json(_ref("Problem"), description)


AUTH_ERRORS = {
    "401": _problem("No token, or a token refused (reason code says why); audited."),
    "403": _problem("The caller's role or consumer does not allow this; audited."),
}
TIME_PARAM = {"type": "string", "format": "date-time"}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


AUDIT_FILTERS = [
    _query("message_id", {"type": "string"}, "entries about this message"),
    _query("record_id", {"type": "string"}, "entries about this record (releases, reads, purges)"),
    _query("source", {"type": "string"}, "entries about this partner's messages"),
    _query("consumer", {"type": "string"}, "entries about this consumer"),
    _query("agreement_id", {"type": "string"}, "entries under this agreement"),
    _query("kind", {"type": "string"}, "entry kind: received, rejected, released, accessed, ..."),
    _query("since", TIME_PARAM, "at or after this time"),
    _query("until", TIME_PARAM, "before this time"),
]


def document() -> dict[str, Any]:
    envelope = envelope_schema()
    envelope.pop("$schema", None)
    envelope.pop("$id", None)
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sv-broker",
            "version": "1",
            "description": (
                "Secure information-sharing broker for the Derby and Derbyshire Serious Violence partnership: "
                "partner ingest, analysts' feeds, the IG audit API. Every read and refusal is audited."
            ),
        },
        "paths": {
            "/v1/events": {
                "post": {
                    "summary": "Send one signed envelope (embedded ingest)",
                    "requestBody": {
                        "required": True,
                        "content": {JSON: {"schema": envelope}, "application/cloudevents+json": {"schema": envelope}},
                    },
                    "responses": {
                        "202": _json(_ref("Receipt"), "Accepted; audit entries and records are durable."),
                        "200": _json(_ref("Receipt"), "A duplicate of a message already processed."),
                        "400": _json(_ref("Receipt"), "Refused: malformed, stale or replayed (reason code)."),
                        "401": _json(_ref("Receipt"), "Refused: signature or key (reason code)."),
                        "403": _json(_ref("Receipt"), "Refused: the partner may not send this type."),
                        "413": _json(_ref("Receipt"), "Refused: body over the limit."),
                        "408": _problem("The body did not arrive within the read timeout; nothing was kept."),
                        "415": _problem("Not application/json or application/cloudevents+json (UTF-8)."),
                        "422": _json(_ref("Receipt"), "Refused: schema invalid or a direct identifier present."),
                        "500": _problem("Our fault; nothing was kept. Retry."),
                    },
                }
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json(_ref("Health"), "Alive.")}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness: the store (and RabbitMQ) answer",
                    "responses": {"200": _json(_ref("Ready"), "Ready."), "503": _json(_ref("Ready"), "Not ready.")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics: counts and latencies by id and code, never a payload value",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format 0.0.4.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1.")}}
            },
            "/v1/feeds/{consumer}/records": {
                "get": {
                    "summary": "A page of the caller's own consumer feed (analyst role)",
                    "security": secured,
                    "parameters": [
                        _path("consumer", "consumer id; must be the analyst's own"),
                        _query("after", {"type": "string"}, "cursor from the previous page's next_cursor"),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size"),
                        _query("event_type", {"type": "string", "enum": sorted(EVENT_TYPES)}, "only this type"),
                        _query("since", TIME_PARAM, "released at or after"),
                        _query("until", TIME_PARAM, "released before"),
                        _query(
                            "period",
                            {"type": "string", "pattern": "^[0-9]{4}-Q[1-4]$"},
                            "only records (and figures) whose event date is in this calendar quarter",
                        ),
                        _query(
                            "history",
                            {"type": "string", "enum": ["true", "false"]},
                            "true: every revision and notice; default: each record's latest only",
                        ),
                        _query("format", {"type": "string", "enum": ["json", "csv"]}, "response format"),
                    ],
                    "responses": {
                        "200": {
                            "description": (
                                "Records (and withdrawal or deletion notices) in release order; the cursor never "
                                "skips or repeats. By default each record id's latest row: its latest revision, "
                                "or the notice that withdrew or deleted it."
                            ),
                            "content": {JSON: {"schema": _ref("FeedPage")}, "text/csv": {"schema": {"type": "string"}}},
                        },
                        "400": _problem("A bad parameter (reason code)."),
                        **AUTH_ERRORS,
                    },
                }
            },
            "/v1/feeds/{consumer}/board": {
                "get": {
                    "summary": "The quarterly board pack of the caller's own consumer (analyst role)",
                    "security": secured,
                    "parameters": [
                        _path("consumer", "consumer id; must be the analyst's own"),
                        {
                            "name": "quarter",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9]{4}-Q[1-4]$"},
                            "description": "calendar quarter, by event date",
                        },
                        _query("format", {"type": "string", "enum": ["json", "html"]}, "response format"),
                    ],
                    "responses": {
                        "200": {
                            "description": (
                                "What, when, who and where for the quarter, every table disclosure-controlled "
                                "(suppressed entries [c]): a figures-only consumer's released figures as released, "
                                "or built from the consumer's released records. HTML: one printable page."
                            ),
                            "content": {
                                JSON: {"schema": {"type": "object"}},
                                "text/html": {"schema": {"type": "string"}},
                            },
                        },
                        "400": _problem("A bad parameter (reason code)."),
                        "422": _problem("The tables cannot be protected from disclosure (figures_unprotected)."),
                        **AUTH_ERRORS,
                    },
                }
            },
            "/v1/feeds/{consumer}/stream": {
                "get": {
                    "summary": "Server-Sent Events of new records; resumes after Last-Event-ID (analyst role)",
                    "security": secured,
                    "parameters": [
                        _path("consumer", "consumer id; must be the analyst's own"),
                        {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
                        _query("event_type", {"type": "string", "enum": sorted(EVENT_TYPES)}, "only this type"),
                    ],
                    "responses": {
                        "200": {
                            "description": "An event stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "400": _problem("A bad parameter."),
                        **AUTH_ERRORS,
                    },
                }
            },
            "/v1/audit/entries": {
                "get": {
                    "summary": "Query the audit trail (ig or admin role)",
                    "security": secured,
                    "parameters": [
                        *AUDIT_FILTERS,
                        _query("after", {"type": "string", "pattern": "^[0-9]+$"}, "sequence number to page after"),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size"),
                    ],
                    "responses": {
                        "200": _json(_ref("AuditPage"), "Matching entries."),
                        "400": _problem("A bad parameter."),
                        **AUTH_ERRORS,
                    },
                }
            },
            "/v1/audit/export": {
                "get": {
                    "summary": "Export matching entries: JSONL (verifiable offline) or CSV (ig or admin role)",
                    "security": secured,
                    "parameters": [
                        *AUDIT_FILTERS,
                        _query("format", {"type": "string", "enum": ["jsonl", "csv"]}, "format"),
                    ],
                    "responses": {
                        "200": {
                            "description": "The export",
                            "content": {
                                "application/x-ndjson": {"schema": {"type": "string"}},
                                "text/csv": {"schema": {"type": "string"}},
                            },
                        },
                        "400": _problem("A bad parameter."),
                        **AUTH_ERRORS,
                    },
                }
            },
            "/v1/audit/trace/{record_id}": {
                "get": {
                    "summary": "Everything that happened to one record (ig or admin role)",
                    "security": secured,
                    "parameters": [_path("record_id", "record id")],
                    "responses": {
                        "200": _json(_ref("Trace"), "The trace."),
                        "404": _problem("Unknown record."),
                        **AUTH_ERRORS,
                    },
                }
            },
            "/v1/audit/checkpoints": {
                "get": {
                    "summary": "The signed checkpoints and the broker's public key (ig or admin role)",
                    "security": secured,
                    "responses": {"200": _json(_ref("Checkpoints"), "Checkpoints."), **AUTH_ERRORS},
                }
            },
            "/v1/audit/verify": {
                "get": {
                    "summary": (
                        "Verify the chain against the checkpoints the store holds (ig or admin role); "
                        "POST the checkpoints you kept for evidence against a rewritten store"
                    ),
                    "security": secured,
                    "responses": {"200": _json(_ref("VerifyReport"), "The report."), **AUTH_ERRORS},
                },
                "post": {
                    "summary": "Verify the chain against checkpoints kept outside the store (ig or admin role)",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {
                            JSON: {"schema": _ref("CheckpointsIn")},
                            "application/x-ndjson": {
                                "schema": {
                                    "type": "array",
                                    "items": {"type": "object"},
                                    "description": "a checkpoint log: one checkpoint object per line",
                                }
                            },
                        },
                    },
                    "responses": {
                        "200": _json(_ref("VerifyReport"), "The report (ok false names the first bad entry)."),
                        "400": _problem("Not a checkpoints document or log (checkpoints_invalid)."),
                        "408": _problem("The body did not arrive within the read timeout."),
                        "413": _problem("Over 4 MiB of checkpoints: send the latest ones."),
                        "415": _problem("Not application/json or application/x-ndjson."),
                        **AUTH_ERRORS,
                    },
                },
            },
            "/v1/held": {
                "get": {
                    "summary": "Events held for agreements not in force, never their bodies (ig or admin role)",
                    "security": secured,
                    "parameters": [
                        _query("agreement_id", {"type": "string"}, "only events held for this agreement"),
                        _query("source", {"type": "string"}, "only this partner's events"),
                        _query("after", {"type": "string", "pattern": "^[0-9]+$"}, "position to page after"),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size"),
                    ],
                    "responses": {
                        "200": _json(_ref("HeldPage"), "Held events in the order they were held."),
                        "400": _problem("A bad parameter."),
                        **AUTH_ERRORS,
                    },
                }
            },
            "/v1/held/release": {
                "post": {
                    "summary": (
                        "Decide held events again under the agreements in force now and release what they allow "
                        "(ig or admin role); never overrides an agreement"
                    ),
                    "security": secured,
                    "requestBody": {"required": True, "content": {JSON: {"schema": _ref("HeldRequest")}}},
                    "responses": {
                        "200": _json(_ref("HeldReleased"), "What became of them, by count."),
                        "400": _problem("Not {agreement_id, ids?} (bad_held_request)."),
                        "408": _problem("The body did not arrive within the read timeout."),
                        **AUTH_ERRORS,
                    },
                }
            },
            "/v1/held/discard": {
                "post": {
                    "summary": "Delete held events unreleased, audited with who and why (ig or admin role)",
                    "security": secured,
                    "requestBody": {"required": True, "content": {JSON: {"schema": _ref("HeldDiscard")}}},
                    "responses": {
                        "200": _json(_ref("HeldDiscarded"), "How many were discarded."),
                        "400": _problem("Not {agreement_id, ids?, reason} (bad_held_request)."),
                        "408": _problem("The body did not arrive within the read timeout."),
                        **AUTH_ERRORS,
                    },
                }
            },
            "/v1/agreements": {
                "get": {
                    "summary": "The agreements, their state, warnings and alerts (any role)",
                    "security": secured,
                    "responses": {"200": _json(_ref("Agreements"), "Agreements."), **AUTH_ERRORS},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA, typ at+jwt)"}
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["reason", "message"],
                    "properties": {"reason": {"type": "string"}, "message": {"type": "string"}},
                },
                "Receipt": {
                    "type": "object",
                    "required": ["status", "body_sha256", "at"],
                    "properties": {
                        "status": {"enum": ["accepted", "duplicate", "rejected"]},
                        "message_id": {"type": ["string", "null"]},
                        "source": {"type": ["string", "null"]},
                        "body_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        "at": {"type": "string"},
                        "records": {"type": "integer", "minimum": 0},
                        "withdrawn": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "withdrawal notices sent to consumers that held an earlier revision",
                        },
                        "withheld": {
                            "type": "array",
                            "description": "only with records 0: why nothing was released, per agreement and reason",
                            "items": {
                                "type": "object",
                                "required": ["reason", "agreement_id", "message"],
                                "properties": {
                                    "reason": {"type": "string"},
                                    "agreement_id": {"type": ["string", "null"]},
                                    "message": {"type": "string"},
                                    "held_until": {
                                        "type": "string",
                                        "description": "the agreement holds the event (its [hold]) until then",
                                    },
                                },
                            },
                        },
                        "reason": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
                "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
                "Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
                "Record": {
                    "type": "object",
                    "required": ["record_id", "consumer", "event_type", "agreement", "revision", "data", "released_at"],
                    "properties": {
                        "record_id": {"type": "string"},
                        "revision": {"type": "integer", "minimum": 1},
                        "consumer": {"type": "string"},
                        "event_type": {"type": "string"},
                        "source": {"type": ["string", "null"]},
                        "produced_at": {"type": ["string", "null"]},
                        "released_at": {"type": "string"},
                        "agreement": {
                            "type": "object",
                            "required": ["id", "revision"],
                            "properties": {"id": {"type": "string"}, "revision": {"type": "integer"}},
                        },
                        "data": {"type": "object"},
                    },
                },
                "FeedPage": {
                    "type": "object",
                    "required": ["consumer", "count", "next_cursor", "records"],
                    "properties": {
                        "consumer": {"type": "string"},
                        "count": {"type": "integer"},
                        "next_cursor": {"type": "string"},
                        "records": {"type": "array", "items": {"oneOf": [_ref("Record"), _ref("Notice")]}},
                    },
                },
                "Notice": {
                    "type": "object",
                    "description": "consumer_notice.v1.json, with released_at: delete your copy of record_id",
                    "required": ["notice", "record_id", "consumer", "agreement_id", "revision", "reason", "at"],
                    "properties": {
                        "notice": {"type": "string", "enum": ["withdrawn", "deleted"]},
                        "record_id": {"type": "string"},
                        "consumer": {"type": "string"},
                        "agreement_id": {"type": "string"},
                        "revision": {"type": "integer", "minimum": 1},
                        "reason": {"type": "string"},
                        "at": {"type": "string"},
                        "released_at": {"type": "string"},
                    },
                },
                "AuditEntry": {
                    "type": "object",
                    "required": ["seq", "prev", "at", "kind"],
                    "properties": {
                        "seq": {"type": "integer", "minimum": 1},
                        "prev": {"type": "string"},
                        "at": {"type": "string"},
                        "kind": {"type": "string"},
                    },
                },
                "AuditPage": {
                    "type": "object",
                    "required": ["count", "next_after", "entries"],
                    "properties": {
                        "count": {"type": "integer"},
                        "next_after": {"type": "integer"},
                        "entries": {"type": "array", "items": _ref("AuditEntry")},
                    },
                },
                "Trace": {
                    "type": "object",
                    "required": ["record_id", "message_id", "entries"],
                    "properties": {
                        "record_id": {"type": "string"},
                        "message_id": {"type": "string"},
                        "entries": {"type": "array", "items": _ref("AuditEntry")},
                    },
                },
                "Checkpoints": {
                    "type": "object",
                    "required": ["format", "checkpoints", "public_keys"],
                    "properties": {
                        "format": {"type": "string"},
                        "public_keys": {"type": "object"},
                        "checkpoints": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["seq", "head_hash", "at", "kid", "signature"],
                                "properties": {
                                    "seq": {"type": "integer"},
                                    "head_hash": {"type": "string"},
                                    "at": {"type": "string"},
                                    "kid": {"type": "string"},
                                    "signature": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "CheckpointsIn": {
                    "type": "object",
                    "description": "What GET /v1/audit/checkpoints or `sv-broker audit checkpoints` wrote",
                    "required": ["format", "checkpoints"],
                    "properties": {
                        "format": {"const": "sv-broker-checkpoints/1"},
                        "checkpoints": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "VerifyReport": {
                    "type": "object",
                    "required": ["ok", "entries", "head_seq", "head_hash"],
                    "properties": {
                        "ok": {"type": "boolean"},
                        "entries": {"type": "integer"},
                        "head_seq": {"type": "integer"},
                        "head_hash": {"type": "string"},
                        "checkpoints_checked": {"type": "integer"},
                        "checkpoints_source": {"enum": ["store", "external"]},
                        "first_bad_seq": {"type": ["integer", "null"]},
                        "problem": {"type": ["string", "null"]},
                    },
                },
                "HeldPage": {
                    "type": "object",
                    "required": ["count", "next_after", "held"],
                    "properties": {
                        "count": {"type": "integer"},
                        "next_after": {"type": "integer"},
                        "held": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": [
                                    "id",
                                    "agreement_id",
                                    "held_under_revision",
                                    "reason",
                                    "source",
                                    "message_id",
                                    "event_type",
                                    "held_at",
                                    "expires_at",
                                ],
                                "properties": {
                                    "id": {"type": "string"},
                                    "agreement_id": {"type": "string"},
                                    "held_under_revision": {"type": "integer"},
                                    "reason": {"enum": ["not_yet_valid", "review_overdue", "expired"]},
                                    "source": {"type": "string"},
                                    "message_id": {"type": "string"},
                                    "event_type": {"type": "string"},
                                    "held_at": {"type": "string"},
                                    "expires_at": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "HeldRequest": {
                    "type": "object",
                    "required": ["agreement_id"],
                    "additionalProperties": False,
                    "properties": {
                        "agreement_id": {"type": "string"},
                        "ids": {"type": "array", "items": {"type": "string"}, "maxItems": 1000},
                    },
                },
                "HeldDiscard": {
                    "type": "object",
                    "required": ["agreement_id", "reason"],
                    "additionalProperties": False,
                    "properties": {
                        "agreement_id": {"type": "string"},
                        "ids": {"type": "array", "items": {"type": "string"}, "maxItems": 1000},
                        "reason": {"type": "string", "description": "kept in the audit as a digest"},
                    },
                },
                "HeldReleased": {
                    "type": "object",
                    "required": ["agreement_id", "released", "held", "discarded", "unreadable"],
                    "properties": {
                        "agreement_id": {"type": "string"},
                        "released": {"type": "integer"},
                        "held": {"type": "integer"},
                        "discarded": {"type": "integer"},
                        "unreadable": {"type": "integer"},
                    },
                },
                "HeldDiscarded": {
                    "type": "object",
                    "required": ["agreement_id", "discarded"],
                    "properties": {"agreement_id": {"type": "string"}, "discarded": {"type": "integer"}},
                },
                "Agreements": {
                    "type": "object",
                    "required": ["agreements", "alerts"],
                    "properties": {
                        "agreements": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["id", "revision", "state", "warnings"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "revision": {"type": "integer"},
                                    "state": {"enum": ["in_force", "not_yet_valid", "expired", "review_overdue"]},
                                    "warnings": {"type": "array", "items": {"type": "string"}},
                                },
                            },
                        },
                        "alerts": {
                            "description": "alerts now, most severe first (an analyst sees only those of its "
                            "agreements); codes in the README, 'Alerts and status'",
                            "type": "array",
                            "items": _ref("Alert"),
                        },
                    },
                },
                "Alert": {
                    "type": "object",
                    "required": ["code", "severity", "subject", "message", "due"],
                    "properties": {
                        "code": {"enum": [c.value for c in AlertCode]},
                        "severity": {"enum": [s.value for s in Severity]},
                        "subject": {"type": "string", "description": "an agreement id, a partner id, or * (all)"},
                        "message": {"type": "string"},
                        "due": {"type": ["string", "null"], "format": "date-time"},
                    },
                },
            },
        },
    }
