"""The AsyncAPI 3.0 document (``schemas/jsonschema/asyncapi.v1.json``) is the topology the code
declares: every exchange, queue and binding of ``topology_spec`` appears in it, with its type and
arguments, and it names nothing else; its references resolve; the key file schema accepts what
``keys generate`` writes and the registry loads, and refuses what the registry refuses."""

from __future__ import annotations

import json
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.errors import RegistryError
from broker.registry import load_registry
from broker.settings import REPO_POLICIES, Settings
from schemas.asyncapi import CONSUMER, DELIVERY_LIMIT, PARTNER, PARTY, asyncapi_document
from schemas.keyfile import KeyEntry, public_bytes
from schemas.schema_files import SCHEMA_DIR
from schemas.topology import Names, topology_spec

DOC: dict[str, Any] = json.loads((SCHEMA_DIR / "asyncapi.v1.json").read_text(encoding="utf-8"))
PARTNERS, CONSUMERS = ["derbyshire-police", "derby-pubwatch"], ["derbyshire-vru", "derby-csp-analysts"]


def resolve(ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = DOC
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def expand(text: str, partner: str, consumer: str, party: str) -> str:
    return text.replace(PARTNER, partner).replace(CONSUMER, consumer).replace(PARTY, party)


def declared_by_document() -> tuple[set[tuple[str, str]], set[tuple[str, str]], set[tuple[str, str, str]]]:
    """(exchanges, queues as (name, arguments JSON), bindings) the document describes, for the ids."""
    exchanges, queues, bindings = set(), set(), set()
    for channel in DOC["channels"].values():
        amqp = channel["bindings"]["amqp"]
        for partner in PARTNERS:
            for consumer in CONSUMERS:
                for party in PARTNERS + CONSUMERS:
                    if amqp["is"] == "routingKey":
                        exchanges.add((amqp["exchange"]["name"], amqp["exchange"]["type"]))
                        continue
                    name = expand(amqp["queue"]["name"], partner, consumer, party)
                    queues.add((name, json.dumps(channel["bindings"]["x-arguments"], sort_keys=True)))
                    for bound in channel["x-bound-to"]:
                        key = expand(bound["routingKey"], partner, consumer, party)
                        bindings.add((bound["exchange"], name, key))
    return exchanges, queues, bindings


def test_the_document_is_the_declared_topology() -> None:
    spec = topology_spec(Names("sv"), partners=PARTNERS, consumers=CONSUMERS, delivery_limit=DELIVERY_LIMIT)
    exchanges, queues, bindings = declared_by_document()
    assert exchanges == set(spec.exchanges)
    assert queues == {(name, json.dumps(args, sort_keys=True)) for name, args in spec.queues}
    assert bindings == set(spec.bindings)
    assert Settings().delivery_limit == DELIVERY_LIMIT


def test_the_committed_document_is_the_generated_one() -> None:
    assert asyncapi_document() == DOC


def test_asyncapi_3_structure_and_every_reference_resolves() -> None:
    assert DOC["asyncapi"] == "3.0.0"
    assert {"title", "version"} <= set(DOC["info"])
    for name, channel in DOC["channels"].items():
        params = set(re.findall(r"{([a-z_]+)}", channel["address"]))
        assert params == set(channel.get("parameters", {})), name  # every parameter declared, none extra
        assert channel["messages"], name
        assert channel["bindings"]["amqp"]["is"] in {"routingKey", "queue"}
        if channel["bindings"]["amqp"]["is"] == "routingKey":
            assert channel["bindings"]["amqp"]["exchange"]["type"] in {"topic", "direct", "fanout", "headers"}
    for name, operation in DOC["operations"].items():
        assert operation["action"] in {"send", "receive"}, name
        assert resolve(operation["channel"]["$ref"]) in DOC["channels"].values()
    for ref in refs(DOC):
        if ref.startswith("#/"):
            resolve(ref)
        else:
            assert (SCHEMA_DIR / ref).is_file(), ref  # a JSON Schema file shipped beside the document
    # every channel is used by an operation, every message by a channel
    used = {op["channel"]["$ref"] for op in DOC["operations"].values()}
    assert used == {f"#/channels/{c}" for c in DOC["channels"]}
    in_channels = {m["$ref"] for c in DOC["channels"].values() for m in c["messages"].values()}
    assert in_channels == {f"#/components/messages/{m}" for m in DOC["components"]["messages"]}


# -- the key file schema --------------------------------------------------------------------------

KEY_SCHEMA = json.loads((SCHEMA_DIR / "key_file.v1.json").read_text(encoding="utf-8"))


def as_json(toml_text: str) -> Any:
    def fix(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat().replace("+00:00", "Z")
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    return fix(tomllib.loads(toml_text))


def entry(**changes: Any) -> str:
    key = KeyEntry(
        "derbyshire-police-k1",
        "derbyshire-police",
        public_bytes(Ed25519PrivateKey.generate()),
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    text = key.to_toml()
    for name, value in changes.items():
        line = re.compile(rf"^{name} = .*$", re.M)
        text = line.sub(f"{name} = {value}", text) if line.search(text) else text + f"{name} = {value}\n"
    return text


@pytest.mark.parametrize(
    ("changes", "ok"),
    [
        ({}, True),
        ({"kid": '"has space"'}, False),
        ({"public_key": '"tooshort"'}, False),
        ({"revoke": "true"}, False),  # misspelt: the registry refuses unknown keys
        ({"partner": '"Not-Lower"'}, False),
    ],
    ids=["generated", "bad_kid", "short_key", "misspelt_field", "bad_partner"],
)
def test_the_key_file_schema_agrees_with_the_registry(tmp_path: Path, changes: dict[str, str], ok: bool) -> None:
    text = entry(**changes)
    valid = jsonschema.Draft202012Validator(KEY_SCHEMA).is_valid(as_json(text))
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "k.toml").write_text(text, encoding="utf-8")
    try:
        load_registry(REPO_POLICIES, keys)
        loads = True
    except RegistryError:
        loads = False
    assert (valid, loads) == (ok, ok)
