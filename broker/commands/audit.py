"""``sv-broker audit``: verify, query, trace and export the tamper-evident audit trail.

These commands read the store directly (read-only: a SQLite file, or the PostgreSQL database with
``--store postgresql://…``), for operators and for IG leads working offline from an export.
They do not append to the trail (only the running broker extends the chain); the audited way for
an IG lead to read is the HTTP API (``/v1/audit/...``). Both read through the store contract
(``broker/pipeline/trail.py``), so they answer the same on either backend.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from broker.audit.checkpoints import checkpoints_document, export_line, parse_checkpoints_document, rows_from_export
from broker.audit.trail import AuditReport, verify_trail
from broker.errors import StoreUnavailable
from broker.pipeline.trail import audit_pages, trace_entries, verify_store
from broker.ports.store import AuditQuery, Store
from broker.ports.stores import is_postgres, redacted, store_for

T = TypeVar("T")
STORE_ENV = "SV_BROKER_STORE_URL"


def _store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=Path("var"), help="store directory (default: %(default)s)")
    parser.add_argument("--db", type=Path, default=None, help="SQLite store file (default: DATA_DIR/broker.db)")
    parser.add_argument(
        "--store",
        default=None,
        help=f"a PostgreSQL store (postgresql://...) or a SQLite file; default: ${STORE_ENV}, else --db",
    )


def _location(args: argparse.Namespace) -> str | Path:
    location: str | Path | None = args.store or os.environ.get(STORE_ENV) or None
    if location is None:
        location = args.db or args.data_dir / "broker.db"
    if not is_postgres(location) and not Path(location).is_file():
        raise SystemExit(f"error: no audit store at {location}")
    return location


def _with_store(args: argparse.Namespace, work: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store read-only, run ``work`` on it, close it."""

    async def run() -> T:
        store = store_for(_location(args), readonly=True)
        try:
            await store.open()
        except StoreUnavailable as exc:
            raise SystemExit(f"error: cannot read {redacted(_location(args))}: {exc}") from None
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _filter_args(parser: argparse.ArgumentParser) -> None:
    for name in ("message-id", "record-id", "source", "consumer", "agreement-id", "kind"):
        parser.add_argument(f"--{name}", default=None, help=f"only entries with this {name.replace('-', ' ')}")
    parser.add_argument("--since", default=None, help="only entries at or after this RFC 3339 time")
    parser.add_argument("--until", default=None, help="only entries before this RFC 3339 time")


def _query(args: argparse.Namespace, after: int, limit: int) -> AuditQuery:
    return AuditQuery(
        after=after,
        limit=limit,
        message_id=args.message_id,
        record_id=args.record_id,
        source=args.source,
        consumer=args.consumer,
        agreement_id=args.agreement_id,
        kind=args.kind,
        since=args.since,
        until=args.until,
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("audit", help="the tamper-evident audit trail", description="Audit trail tools.")
    audit_sub = cmd.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    verify = audit_sub.add_parser(
        "verify",
        help="verify the hash chain (and signed checkpoints)",
        description=(
            "Recompute every entry's hash and link, from the store or offline from an export (--export). With "
            "--checkpoints and --public-key, also check the broker's signed checkpoints, which detect a truncated "
            "or rebuilt chain that the bare hash chain cannot. Exit 0 if intact, 1 naming the first bad sequence "
            "number if not, 2 if the input cannot be read."
        ),
    )
    _store_args(verify)
    verify.add_argument("--export", type=Path, default=None, help="verify this JSONL export instead of a store")
    verify.add_argument("--checkpoints", type=Path, default=None, help="checkpoints file kept outside the broker")
    verify.add_argument("--public-key", type=Path, default=None, help="the broker's public key (JWKS JSON)")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(handler=run_verify)

    query = audit_sub.add_parser(
        "query", help="find audit entries", description="Print matching entries as JSON lines."
    )
    _store_args(query)
    _filter_args(query)
    query.add_argument("--limit", type=int, default=100, help="at most this many entries (default: %(default)s)")
    query.set_defaults(handler=run_query)

    trace = audit_sub.add_parser(
        "trace", help="everything that happened to one record", description="received -> releases -> reads -> purge."
    )
    _store_args(trace)
    trace.add_argument("record_id", help="record id (rec-...)")
    trace.set_defaults(handler=run_trace)

    export = audit_sub.add_parser(
        "export",
        help="export entries (JSONL verifiable offline, or CSV)",
        description="Write matching entries to --out (JSONL: seq, hash and entry per line; or CSV).",
    )
    _store_args(export)
    _filter_args(export)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--out", type=Path, required=True, help="output file")
    export.set_defaults(handler=run_export)

    checkpoints = audit_sub.add_parser(
        "checkpoints",
        help="export the signed checkpoints",
        description="Write the broker's signed checkpoints (and optionally its public key) for safekeeping elsewhere.",
    )
    _store_args(checkpoints)
    checkpoints.add_argument("--out", type=Path, required=True, help="checkpoints file")
    checkpoints.add_argument("--public-key-out", type=Path, default=None, help="also write the broker's public JWKS")
    checkpoints.set_defaults(handler=run_checkpoints)


def _report(report: AuditReport, as_json: bool) -> int:
    if as_json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "entries": report.chain.entries,
                    "head_seq": report.chain.head_seq,
                    "head_hash": report.chain.head_hash,
                    "checkpoints_checked": report.checkpoints.checked if report.checkpoints else None,
                    "first_bad_seq": report.first_bad_seq,
                    "problem": report.problem,
                }
            )
        )
    elif report.ok:
        extra = f", {report.checkpoints.checked} signed checkpoints match" if report.checkpoints else ""
        print(
            f"audit chain intact: {report.chain.entries} entries, head #{report.chain.head_seq} "
            f"{report.chain.head_hash[:16]}…{extra}"
        )
    else:
        print(f"audit chain BROKEN at sequence {report.first_bad_seq}: {report.problem}")
        print(f"  {report.chain.entries} entries verified before it")
    return 0 if report.ok else 1


def run_verify(args: argparse.Namespace) -> int:
    from broker.auth.tokens import load_jwks
    from broker.errors import JwksError

    try:
        checkpoints = (
            parse_checkpoints_document(args.checkpoints.read_text(encoding="utf-8")) if args.checkpoints else None
        )
        if checkpoints is not None and args.public_key is None:
            print(
                "error: --checkpoints needs --public-key (the broker's public key, obtained out of band)",
                file=sys.stderr,
            )
            return 2
        keys = load_jwks(args.public_key) if args.public_key else None
        if args.export is not None:
            with args.export.open(encoding="utf-8") as fh:
                return _report(verify_trail(rows_from_export(fh), checkpoints, keys), args.json)
        return _report(_with_store(args, lambda store: verify_store(store, checkpoints, keys)), args.json)
    except (OSError, ValueError, KeyError, JwksError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _print_entries(bodies: list[bytes]) -> None:
    for body in bodies:
        sys.stdout.write(body.decode() + "\n")


def run_query(args: argparse.Namespace) -> int:
    rows = _with_store(args, lambda store: store.audit_page(_query(args, 0, args.limit)))
    _print_entries([row.body for row in rows])
    return 0


def run_trace(args: argparse.Namespace) -> int:
    async def trace(store: Store) -> dict[int, bytes] | None:
        message_id = await store.record_message(args.record_id)
        return None if message_id is None else await trace_entries(store, args.record_id, message_id)

    seen = _with_store(args, trace)
    if seen is None:
        print(f"no release of {args.record_id} is in the audit trail", file=sys.stderr)
        return 1
    _print_entries([seen[seq] for seq in sorted(seen)])
    return 0


def run_export(args: argparse.Namespace) -> int:
    import csv

    from broker.spreadsheet import csv_cell

    columns = ["seq", "at", "kind", "message_id", "source", "consumer", "agreement_id", "record_id", "reason"]

    async def export(store: Store) -> int:
        count = 0
        with args.out.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh) if args.format == "csv" else None
            if writer is not None:
                writer.writerow(columns)
            async for rows in audit_pages(store, _query(args, 0, 0)):
                for row in rows:
                    if writer is None:
                        fh.write(export_line(row.seq, row.body, row.hash) + "\n")
                    else:
                        entry = json.loads(row.body)
                        # csv_cell: no spreadsheet formulas from audited values (CSV injection)
                        writer.writerow([csv_cell(entry.get(c)) if c != "seq" else row.seq for c in columns])
                count += len(rows)
        return count

    count = _with_store(args, export)
    print(f"{count} entries written to {args.out}")
    return 0


def run_checkpoints(args: argparse.Namespace) -> int:
    checkpoints = _with_store(args, lambda store: store.checkpoints())
    args.out.write_text(json.dumps(checkpoints_document(checkpoints), indent=2) + "\n", encoding="utf-8")
    print(f"{len(checkpoints)} checkpoints written to {args.out}")
    if args.public_key_out is not None:
        from broker.auth.broker_key import broker_public_jwks, load_or_create_broker_key

        key_path = (args.db.parent if args.db else args.data_dir) / "broker-key.pem"
        if not key_path.is_file():
            print(f"error: no broker key at {key_path}", file=sys.stderr)
            return 2
        kid, private_key = load_or_create_broker_key(key_path)
        args.public_key_out.write_text(json.dumps(broker_public_jwks(kid, private_key), indent=2) + "\n")
        print(f"public key written to {args.public_key_out}")
    return 0
