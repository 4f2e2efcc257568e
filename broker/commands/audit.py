"""``sv-broker audit verify``: recompute the audit hash chain and name the first bad entry."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from broker.ports.sqlite_store import verify_audit_file


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("audit", help="the tamper-evident audit trail", description="Audit trail tools.")
    audit_sub = cmd.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_sub.add_parser(
        "verify",
        help="verify the hash chain",
        description=(
            "Recompute every entry's hash and link. Exit 0 if the chain is intact, 1 naming the first bad "
            "sequence number if not, 2 if the store cannot be read."
        ),
    )
    verify.add_argument("--data-dir", type=Path, default=Path("var"), help="store directory (default: %(default)s)")
    verify.add_argument("--db", type=Path, default=None, help="store file (default: DATA_DIR/broker.db)")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(handler=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    path: Path = args.db or args.data_dir / "broker.db"
    if not path.is_file():
        print(f"error: no audit store at {path}", file=sys.stderr)
        return 2
    try:
        report = verify_audit_file(path)
    except Exception as exc:
        print(f"error: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "entries": report.entries,
                    "head_seq": report.head_seq,
                    "head_hash": report.head_hash,
                    "first_bad_seq": report.first_bad_seq,
                    "problem": report.problem,
                }
            )
        )
    elif report.ok:
        print(f"audit chain intact: {report.entries} entries, head #{report.head_seq} {report.head_hash[:16]}…")
    else:
        print(f"audit chain BROKEN at sequence {report.first_bad_seq}: {report.problem}")
        print(f"  {report.entries} entries verified before it")
    return 0 if report.ok else 1
