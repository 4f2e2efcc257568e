"""``sv-broker serve``: run the broker (embedded by default; RabbitMQ with --amqp-url)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import timedelta
from pathlib import Path

from broker.cli import add_policy_args
from broker.logs import configure
from broker.settings import Settings
from broker.stages.freshness import FreshnessWindow
from schemas.strictjson import DEFAULT_MAX_BYTES


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    add_policy_args(parser)
    parser.add_argument("--secrets", type=Path, default=None, help="pseudonymisation secrets file (TOML, not in git)")
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("SV_BROKER_AMQP_URL"),
        help=(
            "RabbitMQ URL, or several nodes of a cluster comma-separated (failover in turn); "
            "without it the broker runs embedded (HTTP ingest)"
        ),
    )
    parser.add_argument("--amqp-prefix", default="sv", help="prefix of exchange and queue names (default: %(default)s)")
    parser.add_argument("--amqp-user-map", type=Path, default=None, help="TOML [users] AMQP user -> partner id")
    parser.add_argument(
        "--no-user-id-check",
        action="store_true",
        help="do not require the AMQP user_id to match the envelope's partner (on by default)",
    )
    parser.add_argument("--delivery-limit", type=int, default=5, help="x-delivery-limit of the ingest queue")
    parser.add_argument("--prefetch", type=int, default=768, help="AMQP prefetch (default: %(default)s)")
    parser.add_argument("--batch-max", type=int, default=256, help="largest batch (default: %(default)s)")
    parser.add_argument(
        "--batches-in-flight", type=int, default=3, help="batches processed concurrently (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-linger-ms",
        type=float,
        default=2.0,
        help="while a batch is in flight, wait this long to fill the next one (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="broker processes consuming the ingest queue, this one included (RabbitMQ mode; "
        "about one per core: each is bound to one core by Python's GIL) (default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("var"),
        help="this process's directory: its lock, its broker key, and the SQLite store (default: %(default)s)",
    )
    parser.add_argument(
        "--store",
        default=os.environ.get("SV_BROKER_STORE_URL"),
        help="the store: postgresql://user@host/db for several processes on several hosts "
        "(env SV_BROKER_STORE_URL); default: SQLite at DATA_DIR/broker.db",
    )
    parser.add_argument(
        "--broker-key",
        type=Path,
        default=None,
        help="the broker's Ed25519 key (checkpoints, tokens); several hosts share one, mounted from a "
        "secret (default: DATA_DIR/broker-key.pem, made on first start)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=1000,
        help="sign the audit chain head after this many new entries (default: %(default)s)",
    )
    parser.add_argument(
        "--checkpoint-interval",
        type=float,
        default=60.0,
        help="... or after this many seconds if the head moved (default: %(default)s)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port, 0 for any free port (default: %(default)s)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BYTES, help="body limit in bytes")
    parser.add_argument("--max-age-hours", type=float, default=168.0, help="freshness: oldest accepted message time")
    parser.add_argument("--token-jwks", type=Path, default=None, help="an identity provider's EdDSA public keys (JWKS)")
    parser.add_argument("--token-issuer", default="urn:sv-broker", help="accepted token issuer (exact match)")
    parser.add_argument("--token-audience", default="sv-broker-api", help="required token audience")
    parser.add_argument("--max-future-seconds", type=float, default=300.0, help="freshness: allowed clock skew ahead")
    parser.add_argument(
        "--checkpoint-log",
        type=Path,
        default=None,
        help=(
            "append every signed audit checkpoint here (default: DATA_DIR/checkpoints.jsonl); put it where whoever "
            "can rewrite the store cannot (another disk, an append-only mount, a shipped log)"
        ),
    )
    parser.add_argument(
        "--hold-keys",
        type=Path,
        default=None,
        help=(
            "directory of the per-agreement keys sealing held events (agreements' [hold]); kept outside the store; "
            "several hosts sharing a store must share its files (default: DATA_DIR/hold-keys)"
        ),
    )
    parser.add_argument(
        "--console-behind-tls",
        action="store_true",
        help="the broker is behind a TLS-terminating proxy: the IG console's cookie is Secure and its origin https",
    )
    parser.add_argument(
        "--id-keys-dir",
        type=Path,
        default=None,
        help=(
            "partners' message-id keys (a 0700 directory of <partner>.idkey files), so the IG console's record "
            "trace can start from a partner's record key; without it the partner gives the message id"
        ),
    )
    parser.add_argument(
        "--quarantine-retention-days",
        type=positive_int,
        default=30,
        help="refused messages are deleted (and the deletion audited) after this many days (default: %(default)s)",
    )


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        policy_dir=args.policy_dir,
        keys_dir=args.keys_dir,
        secrets_file=args.secrets,
        data_dir=args.data_dir,
        store_url=getattr(args, "store", None) or None,
        max_body_bytes=args.max_body_bytes,
        freshness=FreshnessWindow(
            max_age=timedelta(hours=args.max_age_hours), max_future=timedelta(seconds=args.max_future_seconds)
        ),
        token_jwks_file=args.token_jwks,
        broker_key_file=getattr(args, "broker_key", None),
        checkpoint_every=getattr(args, "checkpoint_every", 1000),
        checkpoint_interval=timedelta(seconds=getattr(args, "checkpoint_interval", 60.0)),
        token_issuer=args.token_issuer,
        token_audience=args.token_audience,
        amqp_url=args.amqp_url,
        amqp_prefix=args.amqp_prefix,
        check_user_id=not args.no_user_id_check,
        delivery_limit=args.delivery_limit,
        prefetch=args.prefetch,
        batch_max=args.batch_max,
        batches_in_flight=args.batches_in_flight,
        batch_linger=timedelta(milliseconds=getattr(args, "batch_linger_ms", 2.0)),
        workers=getattr(args, "workers", 1),
        log_level=getattr(args, "log_level", "INFO"),
        http_host=args.host,
        http_port=args.port,
        quarantine_retention=timedelta(days=getattr(args, "quarantine_retention_days", 30)),
        checkpoint_log=getattr(args, "checkpoint_log", None),
        hold_keys_dir=getattr(args, "hold_keys", None),
        console_behind_tls=getattr(args, "console_behind_tls", False),
        id_keys_dir=getattr(args, "id_keys_dir", None),
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser(
        "serve",
        help="run the broker",
        description=(
            "Run the broker. Embedded (default): partners POST signed envelopes to /v1/events; records, "
            "replay guard and audit live in SQLite under --data-dir. With --amqp-url: consume the RabbitMQ "
            "ingest queue and deliver to per-consumer queues. SIGTERM finishes in-flight messages and exits."
        ),
    )
    add_runtime_args(cmd)
    cmd.add_argument("--ready-file", type=Path, default=None, help="write the HTTP URL here once ready")
    cmd.add_argument("--log-level", default="INFO", help="log level (default: %(default)s)")
    cmd.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from broker.errors import ConfigurationError
    from broker.service import config_problems, load_user_map, serve_forever

    configure(args.log_level)
    # Everything the serving process creates (store, checkpoints, exports, its key) is private to
    # its user unless a step says otherwise: the second wall behind the explicit 0600/0700 modes.
    os.umask(0o077)
    try:
        asyncio.run(serve_forever(settings_from(args), load_user_map(args.amqp_user_map), args.ready_file))
    except ConfigurationError as exc:
        problems, _ = config_problems(exc)  # every problem of every file, not only the first
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        if len(problems) > 1:
            print(f"{len(problems)} problem(s): the broker did not start", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
