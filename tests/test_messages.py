"""The messages of ``schemas.messages``: the broker sends exactly the bytes they define.

The expected bytes below were produced by the broker's own builders (``Outcome.receipt``,
``record_body``, ``AmqpDelivery.receipts``/``deliver``, ``DeadLetterAuditor``) before the
definitions moved to ``schemas/`` (two inputs changed since, as the outcome types can no longer
hold them: a refusal always has a registered reason and a sentence, and a failed message gets
no receipt); they must never change: the audit trail holds the SHA-256 of
every record body (``record_sha256``), and partners' programs read receipts.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError

from broker.pipeline.dead_letters import DeadLetterFlow
from broker.policy.decision import Decision, Release
from broker.ports.delivery import Deliverable
from broker.ports.rabbitmq.fast_publish import Publish
from broker.ports.rabbitmq.publisher import AmqpDelivery
from broker.stages.outcome import Accepted, Duplicate, Rejected, Settled, receipt
from broker.stages.records import accept, record_body
from broker.stages.types import Admitted, Fresh, Inbound, Received, Validated, Verified
from broker.transports.amqp_dead_letters import DeadLetterConsumer
from schemas.canonical import canonicalize
from schemas.envelope import Envelope
from schemas.errors import Reason
from schemas.messages import (
    CONSUMER_RECORD,
    QUARANTINE_HEADERS,
    RECEIPT,
    RECEIPTS_MESSAGE,
    consumer_record,
    dead_letter_headers,
    quarantine_headers,
    receipt_for,
    receipts_message,
)

AT = datetime(2026, 10, 3, 22, 15, 7, 123456, tzinfo=UTC)
PRODUCED = datetime(2026, 10, 3, 23, 1, 2, 500000, tzinfo=timezone(timedelta(hours=1)))
SHA = "ab" * 32

RELEASE = Release(
    consumer="derby-csp-analysts",
    agreement_id="isa-ae-csp",
    agreement_revision=3,
    flow_id="ae-to-csp",
    record_id="rec-0001",
    record={"district": "Derby", "age_band": "18-24", "weapon": True, "count": 2, "note": 'caf\u00e9 \u2603 "q"'},
    fields=("age_band", "count", "district", "note", "weapon"),
    rules=("r1", "r2", "r3", "r4", "r5"),
    purpose="Serious Violence Duty: strategic needs assessment",
    lawful_basis=("UK GDPR 6(1)(e)", "DPA 2018 Sch1 Pt2 para 6"),
    retention_days=365,
)
RELEASE_2 = Release(
    consumer="derbyshire-police-licensing",
    agreement_id="isa-nte",
    agreement_revision=1,
    flow_id="nte",
    record_id="rec-0002",
    record={},
    fields=(),
    rules=(),
    purpose="licensing",
    lawful_basis=(),
    retention_days=30,
)


def _validated(message_id: str, source: str, event_type: str = "ae_assault") -> Validated:
    envelope = Envelope(
        id=message_id,
        source=source,
        type=event_type,
        version=1,
        time=PRODUCED,
        keyid="k",
        signature="",
        data={},
        signed_bytes=b"",
    )
    received = Received(envelope, SHA, AT)
    return Validated(Fresh(Verified(received, "k"), AT), None, "c" * 64)  # type: ignore[arg-type]


def _accepted(message_id: str, source: str, releases: tuple[Release, ...]) -> Accepted:
    admitted = Admitted(_validated(message_id, source))
    return accept(Inbound(b"original body"), Decision(admitted, releases, ()))


def _rejected(reason: Reason, message: str, **claims: Any) -> Rejected:
    return Rejected(Inbound(b"original body"), SHA, reason, message, **claims)


ACCEPTED = _accepted("m-accepted", "uhdb-royal-derby-ed", (RELEASE, RELEASE_2))
ACCEPTED_NOTHING = _accepted("m0", "p", ())
DUPLICATE = Duplicate(Inbound(b"original body"), _validated("m-dup", "p"))
REJECTED = _rejected(
    Reason.BAD_SIGNATURE, "The signature…", verified=False, source="p", message_id="m-rej", receipt_to="p"
)
REJECTED_ANON = _rejected(Reason.MALFORMED_JSON, "Not JSON.", verified=False, receipt_to="p")
DIRECT_ID = _rejected(Reason.DIRECT_IDENTIFIER, "No.", verified=True, source="p", message_id="m-nhs")

# receipt(outcome, AT) of each, as json.dumps (order-sensitive: the HTTP response body).
RECEIPTS_JSON = {
    "accepted": (
        ACCEPTED,
        '{"status": "accepted", "message_id": "m-accepted", "source": "uhdb-royal-derby-ed", '
        f'"body_sha256": "{SHA}", "at": "2026-10-03T22:15:07.123Z", "records": 2}}',
    ),
    "accepted_nothing": (
        ACCEPTED_NOTHING,
        f'{{"status": "accepted", "message_id": "m0", "source": "p", "body_sha256": "{SHA}", '
        '"at": "2026-10-03T22:15:07.123Z", "records": 0}',
    ),
    "duplicate": (
        DUPLICATE,
        f'{{"status": "duplicate", "message_id": "m-dup", "source": "p", "body_sha256": "{SHA}", '
        '"at": "2026-10-03T22:15:07.123Z"}',
    ),
    "rejected": (
        REJECTED,
        f'{{"status": "rejected", "message_id": "m-rej", "source": "p", "body_sha256": "{SHA}", '
        '"at": "2026-10-03T22:15:07.123Z", "reason": "bad_signature", "message": "The signature\\u2026"}',
    ),
    "rejected_anon": (
        REJECTED_ANON,
        f'{{"status": "rejected", "message_id": null, "source": null, "body_sha256": "{SHA}", '
        '"at": "2026-10-03T22:15:07.123Z", "reason": "malformed_json", "message": "Not JSON."}',
    ),
}

RECORD_1 = (
    b'{"agreement":{"flow":"ae-to-csp","id":"isa-ae-csp","lawful_basis":["UK GDPR 6(1)(e)",'
    b'"DPA 2018 Sch1 Pt2 para 6"],"purpose":"Serious Violence Duty: strategic needs assessment",'
    b'"retention_days":365,"revision":3},"consumer":"derby-csp-analysts","data":{"age_band":"18-24",'
    b'"count":2,"district":"Derby","note":"caf\xc3\xa9 \xe2\x98\x83 \\"q\\"","weapon":true},'
    b'"event_type":"ae_assault","produced_at":"2026-10-03T22:01:02.500Z","record_id":"rec-0001",'
    b'"revision":1,"source":"uhdb-royal-derby-ed"}'
)
RECORD_1_SHA256 = "099989926afcf90919178aa611bfd9260353dab19e3251c039a09641195450c4"  # as audited
RECORD_2_NO_TIME = (
    b'{"agreement":{"flow":"nte","id":"isa-nte","lawful_basis":[],"purpose":"licensing",'
    b'"retention_days":30,"revision":1},"consumer":"derbyshire-police-licensing","data":{},'
    b'"event_type":null,"produced_at":null,"record_id":"rec-0002","revision":1,"source":null}'
)


def test_receipts_are_the_pinned_json() -> None:
    for name, (outcome, expected) in RECEIPTS_JSON.items():
        assert json.dumps(receipt(outcome, AT)) == expected, name


def test_record_bodies_are_the_pinned_bytes() -> None:
    assert record_body(ACCEPTED.decision, RELEASE) == RECORD_1
    assert ACCEPTED.records[0].body == RECORD_1
    assert hashlib.sha256(RECORD_1).hexdigest() == RECORD_1_SHA256 == ACCEPTED.records[0].sha256
    assert canonicalize(json.loads(RECORD_1)) == RECORD_1  # the fast path is RFC 8785


class _Exchange:
    def __init__(self, name: str) -> None:
        self.name = name


def _delivery() -> tuple[AmqpDelivery, list[Publish]]:
    topology: Any = SimpleNamespace(
        ingest=_Exchange("sv.ingest"),
        deliver=_Exchange("sv.deliver"),
        quarantine=_Exchange("sv.quarantine"),
        receipts=_Exchange("sv.receipts"),
    )
    registry: Any = SimpleNamespace(partners={"p": None, "uhdb-royal-derby-ed": None}, consumers={})
    delivery = AmqpDelivery(SimpleNamespace(), topology, registry, 1.0)  # type: ignore[arg-type]
    published: list[Publish] = []

    async def publish_all(publishes: list[Publish]) -> None:
        published.extend(publishes)

    delivery.publish_all = publish_all  # type: ignore[method-assign,assignment]
    return delivery, published


RECEIPTS_BODY_P = (
    b'{"receipts":[{"at":"2026-10-03T22:15:07.123Z","body_sha256":"' + SHA.encode() + b'","message_id":"m0",'
    b'"records":0,"source":"p","status":"accepted"},{"at":"2026-10-03T22:15:07.123Z","body_sha256":"'
    + SHA.encode()
    + b'","message_id":"m-dup","source":"p","status":"duplicate"},{"at":"2026-10-03T22:15:07.123Z",'
    b'"body_sha256":"' + SHA.encode() + b'","message":"The signature\xe2\x80\xa6","message_id":"m-rej",'
    b'"reason":"bad_signature","source":"p","status":"rejected"},{"at":"2026-10-03T22:15:07.123Z",'
    b'"body_sha256":"' + SHA.encode() + b'","message":"Not JSON.","message_id":null,"reason":"malformed_json",'
    b'"source":null,"status":"rejected"}]}'
)


async def test_amqp_delivery_publishes_the_pinned_messages() -> None:
    delivery, published = _delivery()
    outcomes = (ACCEPTED, ACCEPTED_NOTHING, DUPLICATE, REJECTED, REJECTED_ANON, DIRECT_ID)
    accepted = [o for o in outcomes if isinstance(o, Accepted)]
    rejected = [o for o in outcomes if isinstance(o, Rejected)]
    await delivery.deliver(Deliverable(AT, accepted, rejected, outcomes))
    records = [(p.exchange, p.routing_key, p.body, p.message_id, p.headers) for p in published[:2]]
    assert records == [
        ("sv.deliver", "derby-csp-analysts", RECORD_1, "rec-0001", None),
        ("sv.deliver", "derbyshire-police-licensing", ACCEPTED.records[1].body, "rec-0002", None),
    ]
    quarantined = [(p.exchange, p.routing_key, p.body, p.headers) for p in published if p.exchange == "sv.quarantine"]
    assert quarantined == [
        (
            "sv.quarantine",
            "",
            b"original body",
            {
                "reason": "bad_signature",
                "reason_message": "The signature…",
                "body_sha256": SHA,
                "source": "p",
                "message_id": "m-rej",
                "verified": False,
                "body_kept": True,
            },
        ),
        (
            "sv.quarantine",
            "",
            b"original body",
            {
                "reason": "malformed_json",
                "reason_message": "Not JSON.",
                "body_sha256": SHA,
                "source": "",
                "message_id": "",
                "verified": False,
                "body_kept": True,
            },
        ),
        (
            "sv.quarantine",
            "",
            b"",
            {
                "reason": "direct_identifier",
                "reason_message": "No.",
                "body_sha256": SHA,
                "source": "p",
                "message_id": "m-nhs",
                "verified": True,
                "body_kept": False,
            },
        ),
    ]
    receipts = {p.routing_key: p.body for p in published if p.exchange == "sv.receipts"}
    assert set(receipts) == {"uhdb-royal-derby-ed", "p"}  # DIRECT_ID has no receipt_to
    assert receipts["p"] == RECEIPTS_BODY_P
    assert json.loads(receipts["uhdb-royal-derby-ed"]) == {"receipts": [json.loads(RECEIPTS_JSON["accepted"][1])]}


async def test_dead_letter_auditor_publishes_the_pinned_messages() -> None:
    delivery, published = _delivery()
    committed: list[Any] = []

    class _Store:
        async def commit(self, unit: Any) -> None:
            committed.append(unit)

    acked: list[bool] = []

    class _Message:
        body = b"poison"
        headers: ClassVar[dict[str, Any]] = {"x-delivery-count": 5}
        user_id = "p"
        message_id = "amqp-1"
        routing_key = "p.ae_assault"

        async def ack(self) -> None:
            acked.append(True)

        async def nack(self, requeue: bool) -> None:
            raise AssertionError("nacked")

    auditor = DeadLetterConsumer(DeadLetterFlow(_Store(), delivery), SimpleNamespace(), {})  # type: ignore[arg-type]
    await auditor._on_message(_Message())  # type: ignore[arg-type]
    assert acked == [True]
    sentence = (
        "The broker failed to process this message 5 times; it was set aside for the operators and no record was "
        "released."
    )
    poison_sha = hashlib.sha256(b"poison").hexdigest()
    quarantine, receipt = published
    assert (quarantine.exchange, quarantine.body) == ("sv.quarantine", b"poison")
    # The dead letter is quarantined like any refusal now (the same headers; it was a subset).
    assert quarantine.headers == quarantine_headers(
        reason="dead_lettered",
        reason_message=sentence,
        body_sha256=poison_sha,
        source="p",
        message_id="amqp-1",
        verified=False,
        body_kept=True,
    )
    assert (receipt.exchange, receipt.routing_key) == ("sv.receipts", "p")
    doc = json.loads(receipt.body)
    assert doc["receipts"][0].pop("at")
    assert doc == {
        "receipts": [
            {
                "status": "rejected",
                "message_id": "amqp-1",
                "source": "p",
                "body_sha256": poison_sha,
                "reason": "dead_lettered",
                "message": sentence,
            }
        ]
    }


# --- the schemas builders give the same bytes ------------------------------------------------------


def _receipt(outcome: Settled) -> Any:
    rejected = isinstance(outcome, Rejected)
    return receipt_for(
        status=outcome.status.value,
        message_id=outcome.message_id,
        source=outcome.source,
        body_sha256=outcome.body_sha256,
        at=AT,
        records=len(outcome.releases) if isinstance(outcome, Accepted) else None,
        reason=outcome.reason.value if rejected else None,
        message=outcome.message if rejected else None,
    )


@pytest.mark.parametrize("name", sorted(RECEIPTS_JSON))
def test_receipt_for_gives_the_pinned_json(name: str) -> None:
    outcome, expected = RECEIPTS_JSON[name]
    assert json.dumps(_receipt(outcome)) == expected


def test_receipts_message_gives_the_pinned_bytes() -> None:
    body = receipts_message([_receipt(o) for o in (ACCEPTED_NOTHING, DUPLICATE, REJECTED, REJECTED_ANON)])
    assert body == RECEIPTS_BODY_P
    assert RECEIPTS_MESSAGE.validate_json(body) == json.loads(body)


def _record(outcome: Accepted | None, release: Release) -> bytes:
    return consumer_record(
        record_id=release.record_id,
        consumer=release.consumer,
        event_type=outcome.event_type if outcome else None,
        source=outcome.source if outcome else None,
        produced_at=outcome.produced_at if outcome else None,
        agreement_id=release.agreement_id,
        agreement_revision=release.agreement_revision,
        flow_id=release.flow_id,
        purpose=release.purpose,
        lawful_basis=release.lawful_basis,
        retention_days=release.retention_days,
        data=release.record,
    )


def test_consumer_record_gives_the_pinned_bytes() -> None:
    assert _record(ACCEPTED, RELEASE) == RECORD_1
    assert _record(None, RELEASE_2) == RECORD_2_NO_TIME
    for body in (RECORD_1, RECORD_2_NO_TIME):
        assert CONSUMER_RECORD.validate_json(body) == json.loads(body)


def test_quarantine_headers_give_the_pinned_headers() -> None:
    assert quarantine_headers(
        reason=None, reason_message=None, body_sha256=SHA, source=None, message_id=None, verified=False, body_kept=True
    ) == {
        "reason": "",
        "reason_message": "",
        "body_sha256": SHA,
        "source": "",
        "message_id": "",
        "verified": False,
        "body_kept": True,
    }
    headers = dead_letter_headers(reason_message="failed 5 times", body_sha256=SHA)
    assert headers == {"reason": "dead_lettered", "reason_message": "failed 5 times", "body_sha256": SHA}
    assert QUARANTINE_HEADERS.validate_python(headers) == headers


async def test_amqp_delivery_publishes_what_the_builders_build() -> None:
    delivery, published = _delivery()
    await delivery.deliver(Deliverable(AT, rejected=[REJECTED, DIRECT_ID], receipts=[REJECTED, DIRECT_ID]))
    quarantined = [p.headers for p in published if p.exchange == "sv.quarantine"]
    assert quarantined == [
        quarantine_headers(
            reason=o.reason.value,
            reason_message=o.message,
            body_sha256=o.body_sha256,
            source=o.source,
            message_id=o.message_id,
            verified=o.verified,
            body_kept=o.reason != "direct_identifier",
        )
        for o in (REJECTED, DIRECT_ID)
    ]
    receipts = [p.body for p in published if p.exchange == "sv.receipts"]
    assert receipts == [receipts_message([_receipt(REJECTED)])]


# --- the definitions refuse what the broker never sends ------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"extra": 1},
        {"status": "failed"},
        {"status": "maybe"},
        {"records": "2"},
        {"records": True},
        {"body_sha256": None},
    ],
)
def test_receipt_definition_is_strict(change: dict[str, Any]) -> None:
    good = json.loads(RECEIPTS_JSON["accepted"][1])
    assert RECEIPT.validate_json(json.dumps(good)) == good
    with pytest.raises(ValidationError):
        RECEIPT.validate_json(json.dumps(good | change))


def test_missing_receipt_keys_are_refused() -> None:
    good = json.loads(RECEIPTS_JSON["duplicate"][1])
    for key in ("status", "message_id", "source", "body_sha256", "at"):
        with pytest.raises(ValidationError):
            RECEIPT.validate_python({k: v for k, v in good.items() if k != key})
    with pytest.raises(ValidationError):
        RECEIPTS_MESSAGE.validate_json(b'{"receipts": [], "more": 1}')


def test_consumer_record_definition_is_strict() -> None:
    good = json.loads(RECORD_1)
    with pytest.raises(ValidationError):
        CONSUMER_RECORD.validate_python(good | {"extra": 1})
    with pytest.raises(ValidationError):
        CONSUMER_RECORD.validate_python(good | {"agreement": good["agreement"] | {"revision": "3"}})
