"""``sv-broker demo``: the whole system end to end on this machine (the README's first command)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser(
        "demo",
        help="run the end-to-end demo",
        description=(
            "Start a broker (embedded by default, or over RabbitMQ with --amqp-url) with partner keys and "
            "pseudonym secrets generated at run time, send synthetic events of every type plus a few bad ones, "
            "and show what each consumer received, what was refused and why, and the audit verification."
        ),
    )
    cmd.add_argument("--events", type=int, default=1000, help="synthetic events to send (default: %(default)s)")
    cmd.add_argument("--amqp-url", default=None, help="run over RabbitMQ, e.g. amqp://guest:guest@127.0.0.1/")
    cmd.add_argument("--keep", type=Path, default=None, help="keep keys, secrets and store in this directory")
    cmd.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from broker import demo
    from broker.logs import configure

    configure("WARNING")
    return demo.run(args.events, args.amqp_url, args.keep)
