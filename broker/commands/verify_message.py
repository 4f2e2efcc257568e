"""``sv-broker verify FILE``: parse -> verify -> validate a saved envelope (incident response)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from broker.cli import add_policy_args
from broker.errors import RegistryError
from broker.registry import load_registry
from broker.stages.freshness import FreshnessWindow, check_freshness
from broker.stages.parse import parse
from broker.stages.validate import validate_payload
from broker.stages.verify import verify
from schemas.errors import ContractError
from schemas.strictjson import DEFAULT_MAX_BYTES


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser(
        "verify",
        help="check a saved envelope: parse, signature, schema",
        description=(
            "Run the broker's parse -> verify -> validate stages on a saved envelope and print the verdict "
            "with its reason code. Exit 0 if it would be accepted, 1 if rejected, 2 on configuration errors. "
            "Freshness is reported but only enforced with --enforce-freshness (saved messages are often old)."
        ),
    )
    cmd.add_argument("file", type=Path, help="envelope file (JSON)")
    add_policy_args(cmd)
    cmd.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="body limit (default: %(default)s)")
    cmd.add_argument("--enforce-freshness", action="store_true", help="reject stale / future messages too")
    cmd.add_argument("--json", action="store_true", help="machine-readable output")
    cmd.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        registry = load_registry(args.policy_dir, args.keys_dir)
        body = args.file.read_bytes()
    except RegistryError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    now = datetime.now(UTC)
    verdict: dict[str, object] = {"file": str(args.file)}
    stage = "parse"
    try:
        received = parse(body, max_bytes=args.max_bytes, now=now)
        verdict.update(message_id=received.envelope.id, source=received.envelope.source, type=received.envelope.type)
        stage = "verify"
        verified = verify(received, registry)
        verdict["kid"] = verified.kid
        stage = "validate"
        validate_payload(verified.envelope)  # freshness is reported, not gated, below
        stage = "freshness"
        try:
            check_freshness(verified, now, FreshnessWindow())
            verdict["freshness"] = "ok"
        except ContractError as exc:
            verdict["freshness"] = exc.reason.value
            if args.enforce_freshness:
                raise
        verdict.update(verdict="accepted")
    except ContractError as exc:
        verdict.update(verdict="rejected", stage=stage, **exc.as_dict())
    if args.json:
        print(json.dumps(verdict, indent=2))
    else:
        for key, value in verdict.items():
            print(f"{key:>12}: {value}")
    return 0 if verdict["verdict"] == "accepted" else 1
