"""``sv-broker rabbitmq definitions``: the RabbitMQ vhost, users, permissions and topology to import."""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from broker.cli import add_policy_args
from broker.errors import RegistryError
from broker.rabbitmq_definitions import DEFAULT_BROKER_USER, DEFAULT_VHOST, build_definitions, write_definitions
from broker.registry import load_registry


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("rabbitmq", help="RabbitMQ deployment files", description="RabbitMQ deployment files.")
    rabbit_sub = cmd.add_subparsers(dest="rabbitmq_command", required=True, metavar="ACTION")
    defs = rabbit_sub.add_parser(
        "definitions",
        help="write a definitions file for rabbitmqctl import_definitions",
        description=(
            "Write a RabbitMQ definitions file (for `rabbitmqctl import_definitions FILE`) with the vhost; a user "
            "per partner and per consumer (user name = party id) and one for the broker, each with a newly "
            "generated password (or its earlier one, with --keep-passwords) stored only as a salted SHA-256 "
            "hash; least-privilege permissions (a partner may "
            "publish to the ingest exchange under its own routing key and read its own receipts queue; a consumer "
            "may read its own queue; the broker owns everything under the prefix); and the exchanges, queues and "
            "bindings the broker declares. The plain passwords go to --passwords-out (mode 0600) for the operator "
            "to distribute; never commit either file. Neither file is overwritten. Importing sets the password of "
            "every listed user, including existing ones. Exit 0 on success, 2 on usage or configuration errors."
        ),
    )
    defs.add_argument("--out", required=True, type=Path, metavar="FILE", help="definitions JSON to write")
    defs.add_argument(
        "--passwords-out", required=True, type=Path, metavar="FILE", help="plain passwords (TOML, mode 0600) to write"
    )
    defs.add_argument("--vhost", default=DEFAULT_VHOST, help="virtual host (default: %(default)s)")
    defs.add_argument("--prefix", default="sv", help="exchange and queue name prefix, as serve --amqp-prefix")
    defs.add_argument(
        "--delivery-limit", type=int, default=5, help="x-delivery-limit of the ingest queue, as serve --delivery-limit"
    )
    defs.add_argument(
        "--broker-user", default=DEFAULT_BROKER_USER, help="the broker's RabbitMQ user (default: %(default)s)"
    )
    defs.add_argument(
        "--keep-passwords",
        type=Path,
        default=None,
        metavar="FILE",
        help="an earlier --passwords-out file: users listed there keep their password (only new users get one)",
    )
    defs.add_argument(
        "--quarantine-retention-days",
        type=int,
        default=30,
        help="message TTL of the quarantine queue, as serve --quarantine-retention-days (default: %(default)s)",
    )
    add_policy_args(defs)
    defs.set_defaults(handler=run_definitions)


def _kept_passwords(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    with path.open("rb") as fh:
        doc = tomllib.load(fh)
    users = doc.get("user", [])
    if not isinstance(users, list) or not all(
        isinstance(u, dict) and isinstance(u.get("name"), str) and isinstance(u.get("password"), str) for u in users
    ):
        raise ValueError(f"{path} is not a passwords file written by this command")
    return {u["name"]: u["password"] for u in users}


def run_definitions(args: argparse.Namespace) -> int:
    try:
        registry = load_registry(args.policy_dir, args.keys_dir)
    except RegistryError as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    try:
        kept = _kept_passwords(args.keep_passwords)
        definitions = build_definitions(
            registry,
            vhost=args.vhost,
            prefix=args.prefix,
            delivery_limit=args.delivery_limit,
            broker_user=args.broker_user,
            passwords=kept,
            quarantine_retention_days=args.quarantine_retention_days,
        )
        write_definitions(definitions, args.out, args.passwords_out)
    except FileExistsError as exc:
        print(f"error: {exc.filename} already exists; refusing to overwrite (nothing written)", file=sys.stderr)
        return 2
    except (ValueError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kinds = [c.kind for c in definitions.credentials]
    print(
        f"wrote {args.out}: vhost {args.vhost!r}, {kinds.count('partner')} partner, {kinds.count('consumer')} "
        f"consumer and {kinds.count('broker')} broker user(s), {len(definitions.document['queues'])} queues",
        file=sys.stderr,
    )
    if kept:
        reused = sum(1 for c in definitions.credentials if kept.get(c.user) == c.password)
        print(f"kept the password of {reused} existing user(s) from {args.keep_passwords}", file=sys.stderr)
    print(f"wrote {args.passwords_out} (mode 0600): the plain passwords; distribute, then delete it", file=sys.stderr)
    print(f"import with: rabbitmqctl import_definitions {args.out}", file=sys.stderr)
    return 0
