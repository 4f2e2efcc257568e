"""RabbitMQ definitions for a deployment: vhost, users, least-privilege permissions and the topology.

The output is a definitions file for ``rabbitmqctl import_definitions`` (RabbitMQ 3.10). The
topology comes from :func:`schemas.topology.topology_spec`, the same data the broker declares at
start, so the two cannot drift (a queue declared with other arguments than imported would make the
broker fail with PRECONDITION_FAILED at start).

Passwords are generated here and leave this module twice: as salted SHA-256 hashes in the
definitions (RabbitMQ's ``rabbit_password_hashing_sha256`` format) and in plain text in a separate
0600 file for the operator to hand to each party. Neither file belongs in version control.

Permissions (RabbitMQ matches each regex against a resource name; we anchor ``^...$`` and escape
the name so a "." or "-" in an id matches only itself):

* a partner: configure nothing; write only the ingest exchange, and (topic permission) only with a
  routing key starting ``<partner>.`` so it cannot file events under another partner's route; read
  only its own receipts queue. The AMQP ``user_id`` check (built into RabbitMQ) stops it from
  publishing as another partner.
* a consumer: read only its own delivery queue; nothing else.
* the broker: configure, write and read everything under the prefix.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from broker.registry import Registry
from schemas.topology import Names, topology_spec

HASHING_ALGORITHM = "rabbit_password_hashing_sha256"
DEFAULT_BROKER_USER = "sv-broker"
DEFAULT_VHOST = "sv-broker"
NOTHING = "^$"  # matches no resource name: RabbitMQ's idiom for "no permission"

Kind = Literal["partner", "consumer", "broker"]


@dataclass(frozen=True, slots=True)
class Credential:
    user: str
    kind: Kind
    password: str


@dataclass(frozen=True, slots=True)
class Definitions:
    document: dict[str, Any]  # the JSON for rabbitmqctl import_definitions
    credentials: tuple[Credential, ...]  # plain passwords: for the operator's 0600 file only
    vhost: str


def hash_password(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's SHA-256 password hash: base64(salt[4] + sha256(salt[4] + utf8(password)))."""
    salt = os.urandom(4) if salt is None else salt
    if len(salt) != 4:
        raise ValueError("RabbitMQ password salts are 4 bytes")
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode("utf-8")).digest()).decode("ascii")


def check_password(password: str, password_hash: str) -> bool:
    raw = base64.b64decode(password_hash, validate=True)
    return secrets.compare_digest(hash_password(password, raw[:4]), password_hash)


def exactly(name: str) -> str:
    """A permission regex matching ``name`` and nothing else (not a longer name that contains it)."""
    return f"^{re.escape(name)}$"


def one_of(*names: str) -> str:
    """A permission regex matching exactly these names and nothing else."""
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def generate_password() -> str:
    # 256 bits from the OS CSPRNG; URL-safe so it can sit in an amqp:// URL without escaping.
    return secrets.token_urlsafe(32)


def build_definitions(
    registry: Registry,
    *,
    vhost: str = DEFAULT_VHOST,
    prefix: str = "sv",
    delivery_limit: int = 5,
    broker_user: str = DEFAULT_BROKER_USER,
    passwords: Mapping[str, str] | None = None,
    quarantine_retention_days: int = 30,
) -> Definitions:
    """Definitions for ``registry``; ``passwords`` (user -> password) overrides generated ones."""
    if not vhost or not vhost.isprintable():
        raise ValueError("the vhost name must be a non-empty printable string")
    if not prefix or not prefix.isprintable():
        raise ValueError("the prefix must be a non-empty printable string")
    if delivery_limit < 1:
        raise ValueError("the delivery limit must be at least 1")
    if quarantine_retention_days < 1:
        raise ValueError("the quarantine retention must be at least 1 day")
    if broker_user in registry.partners or broker_user in registry.consumers:
        # One account for two parties would give a partner or consumer the broker's rights.
        raise ValueError(f"the broker user {broker_user!r} is also a party id in the registry")
    names = Names(prefix)
    spec = topology_spec(names, partners=registry.partners, consumers=registry.consumers, delivery_limit=delivery_limit)
    chosen = dict(passwords or {})

    credentials: list[Credential] = []
    permissions: list[dict[str, str]] = []
    topic_permissions: list[dict[str, str]] = []

    def add(user: str, kind: Kind, configure: str, write: str, read: str) -> None:
        credentials.append(Credential(user, kind, chosen.get(user) or generate_password()))
        permissions.append({"user": user, "vhost": vhost, "configure": configure, "write": write, "read": read})

    for partner in sorted(registry.partners):
        add(
            partner,
            "partner",
            configure=NOTHING,  # no declaring, deleting or re-binding: the topology is the operator's
            write=exactly(names.ingest_exchange),  # publish events, nowhere else (not deliver/receipts)
            # its own receipts (never another partner's) and its own copy of the audit checkpoints
            read=one_of(names.receipts_queue(partner), names.checkpoints_queue(partner)),
        )
        topic_permissions.append(
            {
                "user": partner,
                "vhost": vhost,
                "exchange": names.ingest_exchange,
                # Routing key <partner>.<event_type>: the broker reads the route's partner, so a
                # partner must not publish under another partner's route.
                "write": f"^{re.escape(partner + '.')}[^.]+$",
                "read": NOTHING,
            }
        )
    for consumer in sorted(registry.consumers):
        # Only its own minimised records: another consumer's queue holds records its agreement
        # does not cover.
        read = one_of(names.consumer_queue(consumer), names.checkpoints_queue(consumer))
        add(consumer, "consumer", configure=NOTHING, write=NOTHING, read=read)
    everything = f"^{re.escape(prefix + '.')}.*$"  # every name the broker owns, nothing outside the prefix
    add(broker_user, "broker", configure=everything, write=everything, read=everything)

    document: dict[str, Any] = {
        "rabbit_version": "3.10.0",
        "rabbitmq_version": "3.10.0",
        "users": [
            {
                "name": c.user,
                "password_hash": hash_password(c.password),
                "hashing_algorithm": HASHING_ALGORITHM,
                "tags": [],  # no management UI, no policymaker, no administrator
                "limits": {},
            }
            for c in credentials
        ],
        "vhosts": [{"name": vhost}],
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "parameters": [],
        "global_parameters": [],
        # The quarantine queue keeps refused messages as long as the store's quarantine does (serve
        # --quarantine-retention-days), then RabbitMQ drops them: a policy, not a queue argument,
        # so a changed period applies to the existing queue (arguments cannot change once declared).
        "policies": [
            {
                "vhost": vhost,
                "name": f"{prefix}-quarantine-retention",
                "pattern": f"^{re.escape(names.quarantine_queue)}$",
                "apply-to": "queues",
                "priority": 0,
                "definition": {"message-ttl": quarantine_retention_days * 86_400_000},
            }
        ],
        "exchanges": [
            {
                "name": name,
                "vhost": vhost,
                "type": kind,
                "durable": True,
                "auto_delete": False,
                "internal": False,  # as declared by the broker (declare_topology): must be equal
                "arguments": {},
            }
            for name, kind in spec.exchanges
        ],
        "queues": [
            {"name": name, "vhost": vhost, "durable": True, "auto_delete": False, "arguments": dict(arguments)}
            for name, arguments in spec.queues
        ],
        "bindings": [
            {
                "source": exchange,
                "vhost": vhost,
                "destination": queue,
                "destination_type": "queue",
                "routing_key": key,
                "arguments": {},
            }
            for exchange, queue, key in spec.bindings
        ],
    }
    return Definitions(document, tuple(credentials), vhost)


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    if not escaped.isprintable():
        raise ValueError("names must be printable")
    return f'"{escaped}"'


def passwords_toml(definitions: Definitions) -> str:
    lines = [
        "# RabbitMQ credentials generated by `sv-broker rabbitmq definitions`.",
        "# SECRET: give each party only its own entry, over a secure channel; then delete this file.",
        "# Never commit it. The definitions file holds only salted hashes of these passwords.",
        f"vhost = {_toml_string(definitions.vhost)}",
        "",
    ]
    for credential in definitions.credentials:
        lines += [
            "[[user]]",
            f"name = {_toml_string(credential.user)}",
            f'kind = "{credential.kind}"',
            f"password = {_toml_string(credential.password)}",
            "",
        ]
    return "\n".join(lines)


def _write_new(path: Path, data: bytes) -> None:
    # O_EXCL: never overwrite (an old passwords file may be the only copy of what was handed
    # out); 0600 from the first byte, so there is no window in which others could read it.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_definitions(definitions: Definitions, out: Path, passwords_out: Path) -> None:
    """Write both files (mode 0600), refusing to overwrite either; nothing is written if either
    exists. The passwords file is written first, so a definitions file never exists whose
    passwords were lost."""
    for path in (out, passwords_out):
        if path.exists():
            raise FileExistsError(errno.EEXIST, "refusing to overwrite", str(path))
    _write_new(passwords_out, passwords_toml(definitions).encode("utf-8"))
    try:
        _write_new(out, (json.dumps(definitions.document, indent=2) + "\n").encode("utf-8"))
    except BaseException:
        passwords_out.unlink(missing_ok=True)
        raise
