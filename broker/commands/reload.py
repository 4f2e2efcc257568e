"""``sv-broker reload``: check the registry, keys and agreements, then tell the running broker to
put them in force (SIGHUP) without a restart."""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from broker.cli import add_policy_args

    cmd = sub.add_parser(
        "reload",
        help="put changed registry, keys and agreements in force without a restart",
        description=(
            "Check the registry, keys and agreements the way the broker loads them (every problem is printed); "
            "if they are valid, send SIGHUP to the broker that holds DATA_DIR, which loads them again, puts them in "
            "force for its next batch and records config_changed in the audit trail (or, should they have become "
            "invalid meanwhile, keeps the running set and records config_rejected). Exit 0 signalled, 2 invalid "
            "configuration or no running broker (nothing signalled)."
        ),
    )
    add_policy_args(cmd)
    cmd.add_argument("--secrets", type=Path, default=None, help="pseudonymisation secrets file, as given to serve")
    cmd.add_argument("--data-dir", type=Path, default=Path("var"), help="the running broker's data directory")
    cmd.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from broker.errors import ConfigurationError
    from broker.service import config_problems, load_config

    try:
        # The check the broker makes (every problem of the registry, keys, secrets and agreements).
        load_config(args.policy_dir, args.keys_dir, args.secrets, os.environ)
    except ConfigurationError as exc:
        problems, codes = config_problems(exc)
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        print(
            f"{len(problems)} problem(s) ({', '.join(sorted(set(codes)))}): the running broker was not signalled",
            file=sys.stderr,
        )
        return 2
    lock = args.data_dir / "broker.lock"
    try:
        with lock.open("r", encoding="utf-8") as fh:
            # Threat: a stale pid (the broker exited, the number was reused) would get a SIGHUP,
            # whose default action ends the process. Only a pid whose broker still holds the lock
            # is signalled: if this process can take the lock, nobody holds it.
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = int(fh.read().strip())
            else:
                raise ValueError("not held")
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        print(f"error: no running broker holds {args.data_dir} ({lock} is not locked)", file=sys.stderr)
        return 2
    print(f"configuration valid; broker pid {pid} signalled (see its log and the audit's config_changed entry)")
    return 0
