"""``sv-broker held``: list, release or discard the events held for agreements not in force.

Unlike ``sv-broker audit`` (which reads the store, read-only), these talk to the running broker's
API (``/v1/held``) with an IG lead's bearer token: a release must go through the broker's pipeline
(audit, records, delivery to consumers' queues) and a discard is itself audited, naming who; only
the running broker writes the trail. The token comes from ``--token-file`` or
``$SV_BROKER_TOKEN``, never the command line (it would sit in the shell history and ``ps``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

TOKEN_ENV = "SV_BROKER_TOKEN"  # noqa: S105 - the name of an environment variable


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("SV_BROKER_URL", "http://127.0.0.1:8080"),
        help="the broker (default: %(default)s)",
    )
    parser.add_argument("--token-file", type=Path, default=None, help=f"an ig or admin token (default: ${TOKEN_ENV})")
    parser.add_argument("--json", action="store_true", help="print the broker's answer as JSON")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser(
        "held",
        help="events held for agreements not in force",
        description="List, release or discard held events through the running broker's API (audited).",
    )
    held_sub = cmd.add_subparsers(dest="held_command", required=True, metavar="ACTION")
    listing = held_sub.add_parser("list", help="what is held (never the body)")
    _common(listing)
    listing.add_argument("--agreement-id", default=None)
    listing.add_argument("--source", default=None)
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(handler=run_list)
    release = held_sub.add_parser(
        "release", help="decide held events again now (releases only what the agreement in force allows)"
    )
    _common(release)
    release.add_argument("--agreement-id", required=True)
    release.add_argument("ids", nargs="*", help="held ids (held-...); default: all of the agreement's")
    release.set_defaults(handler=run_release)
    discard = held_sub.add_parser("discard", help="delete held events unreleased (audited, naming you)")
    _common(discard)
    discard.add_argument("--agreement-id", required=True)
    discard.add_argument("--reason", required=True, help="why (kept in the audit as a digest)")
    discard.add_argument("ids", nargs="*", help="held ids (held-...); default: all of the agreement's")
    discard.set_defaults(handler=run_discard)


def _token(args: argparse.Namespace) -> str:
    if args.token_file is not None:
        return str(args.token_file.read_text(encoding="utf-8").strip())
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise SystemExit(f"error: no token: pass --token-file or set ${TOKEN_ENV}")
    return token


def _call(
    args: argparse.Namespace, method: str, path: str, body: Any = None, params: dict[str, str] | None = None
) -> int:
    import aiohttp

    async def run() -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {_token(args)}"}
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, args.url.rstrip("/") + path, headers=headers, json=body, params=params) as resp,
        ):
            return resp.status, await resp.json(content_type=None)

    try:
        status, answer = asyncio.run(run())
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        print(f"error: cannot reach {args.url}: {type(exc).__name__}", file=sys.stderr)
        return 2
    if status != 200:
        print(f"error: {status} {answer.get('reason')}: {answer.get('message')}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
    elif "next_after" in answer:  # a page of held events
        for row in answer["held"]:
            print(
                f"{row['id']}  {row['agreement_id']} r{row['held_under_revision']}  {row['reason']}  "
                f"{row['source']}  {row['message_id']}  held {row['held_at']} until {row['expires_at']}"
            )
        print(f"{answer['count']} held (next page: --after {answer['next_after']})")
    else:
        print(", ".join(f"{k}: {v}" for k, v in answer.items()))
    return 0


def run_list(args: argparse.Namespace) -> int:
    params = {"limit": str(args.limit)}
    params |= {k: v for k, v in (("agreement_id", args.agreement_id), ("source", args.source)) if v}
    return _call(args, "GET", "/v1/held", params=params)


def run_release(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"agreement_id": args.agreement_id}
    if args.ids:
        body["ids"] = args.ids
    return _call(args, "POST", "/v1/held/release", body)


def run_discard(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"agreement_id": args.agreement_id, "reason": args.reason}
    if args.ids:
        body["ids"] = args.ids
    return _call(args, "POST", "/v1/held/discard", body)
