"""``sv-broker schemas export``: write the JSON Schema files partners build adapters against."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from schemas.schema_files import SCHEMA_DIR, all_schemas, render, write_schema_files


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    schemas = sub.add_parser("schemas", help="the wire contract's JSON Schema files", description="JSON Schemas.")
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True, metavar="ACTION")
    exp = schemas_sub.add_parser(
        "export", help="write JSON Schema files", description="Write the envelope, event and message JSON Schemas."
    )
    exp.add_argument("--out", type=Path, default=SCHEMA_DIR, help="directory (default: %(default)s)")
    exp.add_argument("--check", action="store_true", help="only check the files in --out are up to date")
    exp.set_defaults(handler=run_export)
    vec = schemas_sub.add_parser(
        "vectors",
        help="write the contract test vectors",
        description=(
            "Write schemas/testvectors/contract.v1.json: keys, record keys, message ids, envelopes, canonical "
            "bytes, signatures and the broker's receipts, for other implementations to check themselves against."
        ),
    )
    vec.add_argument("--out", type=Path, default=None, help="file (default: the repository's vector file)")
    vec.add_argument("--check", action="store_true", help="only check the file is what this code derives")
    vec.set_defaults(handler=run_vectors)


def run_export(args: argparse.Namespace) -> int:
    if args.check:
        stale = [
            name
            for name, schema in all_schemas().items()
            if not (args.out / name).is_file() or (args.out / name).read_text(encoding="utf-8") != render(schema)
        ]
        for name in stale:
            print(f"out of date: {args.out / name}", file=sys.stderr)
        return 1 if stale else 0
    for path in write_schema_files(args.out):
        print(path)
    return 0


def run_vectors(args: argparse.Namespace) -> int:
    from broker.contract_vectors import VECTOR_FILE, build_vectors, render

    path: Path = args.out or VECTOR_FILE
    text = render(build_vectors())
    if args.check:
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            print(f"out of date: {path} (sv-broker schemas vectors rewrites it)", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(path)
    return 0
