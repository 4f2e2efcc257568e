"""``sv-broker token issue`` and ``sv-broker token jwks``: access tokens signed with the broker's key."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.auth.broker_key import DEFAULT_KEY_FILE, broker_public_jwks, load_or_create_broker_key
from broker.auth.tokens import DEFAULT_AUDIENCE, DEFAULT_ISSUER, ROLES, issue_token
from broker.cli import add_policy_args
from broker.errors import RegistryError
from broker.registry import load_registry

# Tokens cannot be revoked one by one (only by rotating the broker key), so their lifetime is what
# bounds the harm of a leaked one: keep it short, and never beyond this.
MAX_TTL = timedelta(days=30)
_TTL_RE = re.compile(r"([1-9][0-9]{0,6})([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _ttl(text: str) -> timedelta:
    match = _TTL_RE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a lifetime like 30m, 8h or 7d")
    ttl = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if ttl > MAX_TTL:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than the maximum of {MAX_TTL.days} days")
    return ttl


def _add_key_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=Path("var"), help="data directory (default: %(default)s)")
    parser.add_argument(
        "--key",
        type=Path,
        default=None,
        metavar="FILE",
        help="the broker's token-signing key, created (mode 0600) if missing (default: DATA_DIR/broker-key.pem)",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser(
        "token", help="access tokens for the HTTP API", description="Access tokens (EdDSA JWTs) for the HTTP API."
    )
    token_sub = cmd.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    issue = token_sub.add_parser(
        "issue",
        help="sign an access token with the broker's key",
        description=(
            "Sign an access token (typ at+jwt, EdDSA) with the broker's key and print it on stdout. Role analyst "
            "reads exactly one consumer's feed and needs --consumer (a consumer id of the registry); ig and admin "
            "take no consumer. Treat the printed token as a password: hand it over by a secure channel. "
            "Exit 0 on success, 2 on usage or configuration errors."
        ),
    )
    issue.add_argument("--sub", required=True, help="who the token is for (a person or service account id)")
    issue.add_argument("--role", required=True, choices=ROLES, help="analyst, ig or admin")
    issue.add_argument("--consumer", metavar="ID", help="the consumer an analyst token reads (analyst only)")
    issue.add_argument(
        "--ttl", required=True, type=_ttl, help=f"lifetime, e.g. 30m, 8h, 7d (at most {MAX_TTL.days} days)"
    )
    issue.add_argument("--issuer", default=DEFAULT_ISSUER, help="iss claim (default: %(default)s)")
    issue.add_argument("--audience", default=DEFAULT_AUDIENCE, help="aud claim (default: %(default)s)")
    _add_key_args(issue)
    add_policy_args(issue)
    issue.set_defaults(handler=run_issue)

    jwks = token_sub.add_parser(
        "jwks",
        help="print the broker's public key as a JWK Set",
        description="Print the JWK Set (RFC 7517) of the broker's token-signing public key, for token verifiers.",
    )
    _add_key_args(jwks)
    jwks.set_defaults(handler=run_jwks)


def _load_key(args: argparse.Namespace) -> tuple[str, Ed25519PrivateKey] | None:
    path: Path = args.key or args.data_dir / DEFAULT_KEY_FILE
    existed = path.exists()
    try:
        kid, key = load_or_create_broker_key(path)
    except (OSError, ValueError) as exc:
        print(f"error: cannot use the broker key {path}: {exc}", file=sys.stderr)
        return None
    if not existed:
        print(f"# created the broker's token-signing key {path} (mode 0600, kid {kid})", file=sys.stderr)
    return kid, key


def run_issue(args: argparse.Namespace) -> int:
    if args.role == "analyst" and args.consumer is None:
        print("error: --role analyst needs --consumer ID: an analyst token reads exactly one consumer", file=sys.stderr)
        return 2
    if args.role != "analyst" and args.consumer is not None:
        print(f"error: --consumer is for analyst tokens only; an {args.role} token names no consumer", file=sys.stderr)
        return 2
    if args.consumer is not None:
        try:
            registry = load_registry(args.policy_dir, args.keys_dir)
        except RegistryError as exc:
            print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
            return 2
        if args.consumer not in registry.consumers:
            print(f"error: {args.consumer!r} is not a consumer in {args.policy_dir / 'parties.toml'}", file=sys.stderr)
            return 2
    loaded = _load_key(args)
    if loaded is None:
        return 2
    kid, key = loaded
    now = datetime.now(UTC)
    try:
        token = issue_token(
            key,
            kid,
            sub=args.sub,
            role=args.role,
            consumer=args.consumer,
            ttl=args.ttl,
            issuer=args.issuer,
            audience=args.audience,
            now=now,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    expires = (now + args.ttl).strftime("%Y-%m-%dT%H:%M:%SZ")
    bound = f" for consumer {args.consumer}" if args.consumer else ""
    print(f"# {args.role} token for {args.sub}{bound}, expires {expires}: treat it as a password", file=sys.stderr)
    print(token)
    return 0


def run_jwks(args: argparse.Namespace) -> int:
    loaded = _load_key(args)
    if loaded is None:
        return 2
    kid, key = loaded
    print(json.dumps(broker_public_jwks(kid, key), indent=2))
    return 0
