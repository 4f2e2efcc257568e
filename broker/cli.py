"""The ``sv-broker`` command line: one sub-command module per job, each with ``--help``.

Exit codes: 0 success; 1 a check found problems (rejected message, lint errors, broken audit
chain); 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from pathlib import Path

from broker.settings import REPO_POLICIES

COMMAND_MODULES = (
    "broker.commands.keys",
    "broker.commands.schemas",
    "broker.commands.verify_message",
    "broker.commands.policy",
    "broker.commands.serve",
    "broker.commands.audit",
    "broker.commands.demo",
    "broker.commands.token",
    "broker.commands.rabbitmq",
    "broker.commands.reload",
    "broker.commands.held",
    "broker.commands.status",
    "broker.commands.report",
    "adapters.cli",  # the partner side's commands: adapters/ imports nothing from broker/
)

Handler = Callable[[argparse.Namespace], int]


def add_policy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy-dir", type=Path, default=REPO_POLICIES, help="registry and agreements (default: %(default)s)"
    )
    parser.add_argument("--keys-dir", type=Path, default=None, help="partner key files (default: POLICY_DIR/keys)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sv-broker",
        description="Secure information-sharing broker for the Derby and Derbyshire Serious Violence partnership.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # a command module not present in this build
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
