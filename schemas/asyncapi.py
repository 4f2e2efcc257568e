"""The AMQP side of the contract as an AsyncAPI 3.0 document (``schemas/jsonschema/asyncapi.v1.json``),
and the JSON Schema of a registry key file (``key_file.v1.json``).

Built from :mod:`schemas.topology` (the names, exchange types, queue arguments and bindings the
broker declares) and :mod:`schemas.messages` (the bodies and headers), so the document cannot say
one thing while the code declares another: ``tests/test_asyncapi.py`` walks the topology the code
declares and finds each exchange, queue, binding and message here, and nothing else.

Channel addresses use AsyncAPI parameters for the parts a deployment fills in: ``{partner}`` and
``{consumer}`` (registry ids) and ``{event_type}``. The prefix is the default ``sv``.
"""

from __future__ import annotations

from typing import Any

from schemas.envelope import KEY_ID_RE, PARTY_ID_RE, TYPE_RE
from schemas.events import EVENT_MODELS
from schemas.topology import CHECKPOINTS_QUEUE, DEFAULT_PREFIX, QUORUM, Names, ingest_queue_arguments

# Placeholders the document's parameters stand for (a test substitutes real ids for them).
PARTNER, CONSUMER, EVENT_TYPE, PARTY = "{partner}", "{consumer}", "{event_type}", "{party}"
DELIVERY_LIMIT = 5  # the broker's default x-delivery-limit (Settings.delivery_limit)
BINDING_VERSION = "0.3.0"
CONTENT_TYPE = "application/json"


def _ref(section: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{section}/{name}"}


def _exchange(name: str, kind: str) -> dict[str, Any]:
    return {
        "amqp": {
            "is": "routingKey",
            "exchange": {"name": name, "type": kind, "durable": True, "autoDelete": False, "vhost": "/"},
            "bindingVersion": BINDING_VERSION,
        }
    }


def _queue(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "amqp": {
            "is": "queue",
            "queue": {"name": name, "durable": True, "exclusive": False, "autoDelete": False, "vhost": "/"},
            "bindingVersion": BINDING_VERSION,
        },
        "x-arguments": dict(arguments),  # AMQP queue arguments (the binding has no field for them)
    }


def _params(*names: str) -> dict[str, Any]:
    text = {
        "partner": f"A partner id of the registry (policies/parties.toml), pattern {PARTY_ID_RE.pattern}",
        "consumer": f"A consumer id of the registry (policies/parties.toml), pattern {PARTY_ID_RE.pattern}",
        "event_type": f"An event type (schemas/events), pattern {TYPE_RE.pattern}",
        "party": f"A partner or consumer id of the registry, pattern {PARTY_ID_RE.pattern}",
    }
    out: dict[str, Any] = {}
    for name in names:
        out[name] = {"description": text[name]}
        if name == "event_type":
            out[name]["enum"] = sorted({t for t, _ in EVENT_MODELS})
    return out


def asyncapi_document(prefix: str = DEFAULT_PREFIX) -> dict[str, Any]:
    names = Names(prefix)
    n = names
    ingest_key = f"{PARTNER}.{EVENT_TYPE}"
    channels: dict[str, Any] = {
        "ingest": {
            "address": ingest_key,
            "title": "Signed events, published by partners",
            "description": (
                f"Publish to the topic exchange {n.ingest_exchange} with routing key <partner>.<event_type>: the "
                "envelope's own source and type (any other key is refused, reason routing_key_mismatch). "
                "Properties: content_type application/json, delivery_mode 2, message_id = the envelope id, "
                "user_id = the partner's RabbitMQ user (RabbitMQ refuses any other). The body is the signed "
                "envelope (any JSON serialisation; the signature covers its RFC 8785 form), at most 64 KiB."
            ),
            "parameters": _params("partner", "event_type"),
            "messages": {"envelope": _ref("messages", "envelope")},
            "bindings": _exchange(n.ingest_exchange, "topic"),
        },
        "ingestQueue": {
            "address": n.ingest_queue,
            "title": "The broker's ingest queue (binding '#' from the ingest exchange)",
            "description": (
                f"Quorum queue; a message the broker fails on x-delivery-limit times is dead-lettered to "
                f"{n.dead_letter_exchange}."
            ),
            "messages": {"envelope": _ref("messages", "envelope")},
            "bindings": _queue(n.ingest_queue, ingest_queue_arguments(names, DELIVERY_LIMIT)),
            "x-bound-to": [{"exchange": n.ingest_exchange, "routingKey": "#"}],
        },
        "deadLetters": {
            "address": n.dead_letter_exchange,
            "title": "Messages the broker failed on repeatedly",
            "messages": {"envelope": _ref("messages", "envelope")},
            "bindings": _exchange(n.dead_letter_exchange, "fanout"),
        },
        "deadLetterQueue": {
            "address": n.dead_letter_queue,
            "title": "Dead letters, audited and moved to quarantine by the broker",
            "messages": {"envelope": _ref("messages", "envelope")},
            "bindings": _queue(n.dead_letter_queue, QUORUM),
            "x-bound-to": [{"exchange": n.dead_letter_exchange, "routingKey": ""}],
        },
        "deliver": {
            "address": CONSUMER,
            "title": "Released records, routed by consumer id",
            "parameters": _params("consumer"),
            "messages": {"record": _ref("messages", "consumerRecord"), "notice": _ref("messages", "consumerNotice")},
            "bindings": _exchange(n.deliver_exchange, "direct"),
        },
        "consumerQueue": {
            "address": n.consumer_queue(CONSUMER),
            "title": "One consumer's released records",
            "description": (
                "Each body is one minimised record (consumer_record.v1.json), RFC 8785 canonical JSON, or a "
                "notice (consumer_notice.v1.json: a 'notice' member instead of 'data') that a record this "
                "consumer holds was withdrawn or deleted. A record's later revisions come under the same "
                "record_id with a higher revision: keep the highest. message_id = the record id (revision 1), "
                "'<record id>:r<n>' (revision n), '<record id>:w<n>' (withdrawn at revision n) or "
                "'<record id>:deleted'; a redelivered message has the same id and the same bytes."
            ),
            "parameters": _params("consumer"),
            "messages": {"record": _ref("messages", "consumerRecord"), "notice": _ref("messages", "consumerNotice")},
            "bindings": _queue(n.consumer_queue(CONSUMER), QUORUM),
            "x-bound-to": [{"exchange": n.deliver_exchange, "routingKey": CONSUMER}],
        },
        "receipts": {
            "address": PARTNER,
            "title": "Receipts, routed by partner id",
            "parameters": _params("partner"),
            "messages": {"receipts": _ref("messages", "receipts")},
            "bindings": _exchange(n.receipts_exchange, "direct"),
        },
        "receiptsQueue": {
            "address": n.receipts_queue(PARTNER),
            "title": "One partner's receipts",
            "description": (
                "One message per broker batch holding that batch's receipts for this partner "
                "(receipts.v1.json), canonical JSON. message_id = 'receipts:<n>', unique per publish only: "
                "match a receipt to your message by its message_id or body_sha256 field, never by the AMQP id."
            ),
            "parameters": _params("partner"),
            "messages": {"receipts": _ref("messages", "receipts")},
            "bindings": _queue(n.receipts_queue(PARTNER), QUORUM),
            "x-bound-to": [{"exchange": n.receipts_exchange, "routingKey": PARTNER}],
        },
        "quarantine": {
            "address": n.quarantine_exchange,
            "title": "Refused messages, for the operators",
            "messages": {"quarantined": _ref("messages", "quarantined")},
            "bindings": _exchange(n.quarantine_exchange, "fanout"),
        },
        "quarantineQueue": {
            "address": n.quarantine_queue,
            "title": "Refused messages, for the operators",
            "description": (
                "Headers say why (quarantine_headers.v1.json). The body is the message as received when "
                "body_kept is true, else empty: kept only for reasons a person must read it to diagnose, "
                "and never when it looks like it holds a direct identifier. message_id = 'quarantine:<n>'."
            ),
            "messages": {"quarantined": _ref("messages", "quarantined")},
            "bindings": _queue(n.quarantine_queue, QUORUM),
            "x-bound-to": [{"exchange": n.quarantine_exchange, "routingKey": ""}],
        },
        "checkpoints": {
            "address": n.checkpoints_exchange,
            "title": "The broker's signed audit checkpoints",
            "messages": {"checkpoint": _ref("messages", "checkpoint")},
            "bindings": _exchange(n.checkpoints_exchange, "fanout"),
        },
        "checkpointsQueue": {
            "address": n.checkpoints_queue(PARTY),
            "title": "One party's copy of every checkpoint (the latest 10,080)",
            "description": (
                "Every partner and consumer has one: a copy of the audit trail's signed checkpoints outside the "
                "broker's store. Keep them; send them to POST /v1/audit/verify or `sv-broker audit verify "
                "--checkpoints` (one body per line) to prove the trail was not truncated or rebuilt."
            ),
            "parameters": _params("party"),
            "messages": {"checkpoint": _ref("messages", "checkpoint")},
            "bindings": _queue(n.checkpoints_queue(PARTY), CHECKPOINTS_QUEUE),
            "x-bound-to": [{"exchange": n.checkpoints_exchange, "routingKey": ""}],
        },
    }

    def op(action: str, channel: str, summary: str) -> dict[str, Any]:
        return {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": summary,
        }

    operations = {
        "publishEvent": op("send", "ingest", "A partner publishes a signed event."),
        "consumeIngest": op("receive", "ingestQueue", "The broker consumes events."),
        "deadLetter": op(
            "send",
            "deadLetters",
            "RabbitMQ dead-letters an ingest message the broker failed on x-delivery-limit times.",
        ),
        "consumeDeadLetters": op("receive", "deadLetterQueue", "The broker audits and quarantines dead letters."),
        "releaseRecord": op("send", "deliver", "The broker publishes each released record to its consumer."),
        "consumeRecords": op("receive", "consumerQueue", "A consumer reads its records."),
        "sendReceipts": op("send", "receipts", "The broker publishes each batch's receipts to their partner."),
        "consumeReceipts": op("receive", "receiptsQueue", "A partner reads its receipts."),
        "quarantineMessage": op("send", "quarantine", "The broker sets a refused message aside."),
        "consumeQuarantine": op("receive", "quarantineQueue", "The operators read refused messages."),
        "publishCheckpoint": op("send", "checkpoints", "The broker publishes each signed checkpoint as it signs it."),
        "consumeCheckpoints": op("receive", "checkpointsQueue", "A partner or consumer keeps the checkpoints."),
    }

    def message(name: str, title: str, schema_file: str, headers: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": name,
            "title": title,
            "contentType": CONTENT_TYPE,
            "payload": {"$ref": schema_file},
            "bindings": {"amqp": {"deliveryMode": 2, "bindingVersion": BINDING_VERSION}},
        }
        if headers is not None:
            out["headers"] = {"$ref": headers}
        return out

    return {
        "asyncapi": "3.0.0",
        "id": "urn:sv-broker:asyncapi:v1",
        "info": {
            "title": "sv-broker AMQP interface",
            "version": "1.0.0",
            "description": (
                "Exchanges, routing keys, queues, headers and bodies of the Derby and Derbyshire Serious "
                "Violence information-sharing broker on RabbitMQ. Every queue is a durable quorum queue. "
                "Schemas: the JSON Schema files beside this document."
            ),
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "rabbitmq": {
                "host": "rabbitmq.example:5671",
                "protocol": "amqps",
                "description": "Each partner and consumer has its own user (sv-broker rabbitmq definitions).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {
                "envelope": message("envelope", "Signed event (CloudEvents 1.0 structured JSON)", "envelope.v1.json"),
                "consumerRecord": message("consumerRecord", "Released record", "consumer_record.v1.json"),
                "consumerNotice": message(
                    "consumerNotice", "A record withdrawn or deleted: delete your copy", "consumer_notice.v1.json"
                ),
                "receipts": message("receipts", "Receipts of one batch", "receipts.v1.json"),
                "quarantined": message(
                    "quarantined",
                    "Refused message (body as received, or empty)",
                    "envelope.v1.json",
                    headers="quarantine_headers.v1.json",
                ),
                "checkpoint": message("checkpoint", "Signed audit checkpoint", "checkpoint.v1.json"),
            }
        },
    }


def checkpoint_schema() -> dict[str, Any]:
    """One signed checkpoint: a line of the checkpoint log, a body on a checkpoints queue."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:sv-broker:schema:checkpoint:v1",
        "title": "sv-broker signed audit checkpoint",
        "description": (
            "signature = base64url(Ed25519 by the broker key (kid) over the RFC 8785 canonical bytes of "
            '{"purpose": "sv-broker audit checkpoint v1", "seq": seq, "head_hash": head_hash, "at": at}). '
            "The broker's public key: GET /v1/audit/checkpoints (public_keys) or /.well-known/jwks.json."
        ),
        "type": "object",
        "additionalProperties": False,
        "required": ["seq", "head_hash", "at", "kid", "signature"],
        "properties": {
            "seq": {"type": "integer", "minimum": 1, "description": "the audit entry the checkpoint covers"},
            "head_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "that entry's chain hash"},
            "at": {"type": "string", "format": "date-time"},
            "kid": {"type": "string"},
            "signature": {"type": "string", "pattern": "^[A-Za-z0-9_-]{85}[AQgw]$"},
        },
    }


def key_file_schema() -> dict[str, Any]:
    """A registry key file (TOML) as JSON Schema: what ``sv-broker keys generate`` prints, and what the
    broker's registry loader accepts (unknown keys and tables are refused). TOML date-times are
    shown as RFC 3339 strings; a bare date means midnight UTC."""
    moment = {"type": "string", "format": "date-time", "description": "TOML offset date-time (or a date: midnight UTC)"}
    entry = {
        "type": "object",
        "additionalProperties": False,
        "required": ["kid", "partner", "public_key", "valid_from"],
        "properties": {
            "kid": {"type": "string", "pattern": KEY_ID_RE.pattern, "description": "unique across the registry"},
            "partner": {"type": "string", "pattern": PARTY_ID_RE.pattern, "description": "a registered partner id"},
            "public_key": {
                "type": "string",
                "pattern": "^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$",
                "description": (
                    "32-byte Ed25519 public key, base64url without padding; canonical encoding, not small-order "
                    "or mixed-order, and not registered for any other partner"
                ),
            },
            "valid_from": moment,
            "valid_until": moment | {"description": "after valid_from; absent: no end"},
            "revoked": {"type": "boolean", "default": False},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:sv-broker:schema:key_file:v1",
        "title": "sv-broker registry key file ([[key]] entries, TOML)",
        "type": "object",
        "additionalProperties": False,
        "properties": {"key": {"type": "array", "items": entry}},
    }
