"""``/metrics``: parsed with prometheus-client's own parser; the numbers agree with what the broker
did; no payload value (a canary planted in every free-text field and key) ever appears in it."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from adapters.synthetic import SyntheticGenerator
from broker.demo import DemoEnvironment
from broker.service import Broker

# HTTP ingest takes JSON only (415 otherwise).
JSON = {"Content-Type": "application/json"}

CANARY = "CANARY-7f3a9c"


async def scrape(broker: Broker) -> tuple[str, dict[str, dict[tuple[tuple[str, str], ...], float]]]:
    async with aiohttp.ClientSession() as session, session.get(broker.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return text, samples


def total(samples: dict[str, dict[Any, float]], name: str, **labels: str) -> float:
    return sum(v for k, v in samples.get(name, {}).items() if all((n, labels[n]) in k for n in labels))


async def test_metrics_count_what_happened_and_never_hold_a_payload_value(broker: Broker, env: DemoEnvironment) -> None:
    gen = SyntheticGenerator(seed=11)
    signer = env.signers["derby-pubwatch"]
    released = 0
    async with aiohttp.ClientSession() as session:
        for i in range(20):
            data = gen.nte_incident("derby-pubwatch").data() | {"premises_name": f"{CANARY} bar {i}"}
            body = signer.sign_bytes("nte_incident", data, source_key=f"{CANARY}-{i}")
            async with session.post(broker.url + "/v1/events", data=body, headers=JSON) as resp:
                assert resp.status == 202, await resp.text()
                released += (await resp.json())["records"]
            if i == 0:  # the same event again: a duplicate
                async with session.post(broker.url + "/v1/events", data=body, headers=JSON) as resp:
                    assert resp.status == 200
        bad = json.dumps({"type": CANARY, "payload": {"x": CANARY}}).encode()
        async with session.post(broker.url + "/v1/events", data=bad, headers=JSON) as resp:
            assert resp.status == 400
            reason = (await resp.json())["reason"]

    text, samples = await scrape(broker)
    assert CANARY not in text
    assert CANARY.lower() not in text.lower()
    assert total(samples, "sv_broker_messages_total", outcome="accepted") == 20
    assert total(samples, "sv_broker_messages_total", outcome="duplicate") == 1
    assert total(samples, "sv_broker_messages_total", outcome="rejected", reason=reason) == 1
    assert total(samples, "sv_broker_releases_total") == released > 0
    for labels in samples["sv_broker_releases_total"]:
        assert {name for name, _ in labels} == {"agreement", "consumer"}
        assert dict(labels)["agreement"] in broker.policy.agreements  # type: ignore[union-attr]
        assert dict(labels)["consumer"] in broker.registry.consumers  # type: ignore[union-attr]
    assert total(samples, "sv_broker_batch_size_count") >= 1
    assert total(samples, "sv_broker_batch_size_sum") == 22  # every message, in some batch
    assert total(samples, "sv_broker_commit_seconds_count") >= 1
    assert samples["sv_broker_store_up"][()] == 1
    assert samples["sv_broker_leader"][()] == 1
    assert broker.store is not None
    assert samples["sv_broker_audit_chain_head_seq"][()] == (await broker.store.current_head()).seq
    assert "sv_broker_rabbitmq_up" not in samples or samples["sv_broker_rabbitmq_up"][()] == 0
    # every label value is an id or a code: short, no spaces, from a known vocabulary
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for value in sample.labels.values():
                assert " " not in value
                assert len(value) <= 64
