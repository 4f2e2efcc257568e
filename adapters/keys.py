"""A partner's signing key, from the command line: ``adapter keys generate`` and ``keys generate``.

The partner owns its key pair (the private key never leaves its side), so the command that makes
one lives with the partner's tools; ``sv-broker keys generate`` (for operators setting up a
partner) registers the same arguments and handler from here, one code path for both. The key
files themselves (format, 0600 private key, registry entry) are the contract's:
``schemas.keyfile``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from schemas.envelope import KEY_ID_RE, PARTY_ID_RE
from schemas.keyfile import generate


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``keys generate`` (also ``adapter keys generate``: one code path)."""
    parser.add_argument("--partner", required=True, help="partner id, as in the broker's registry")
    parser.add_argument("--out", required=True, type=Path, help="directory for the key files")
    parser.add_argument("--kid", help="key id (default: <partner>-<UTC timestamp>)")
    parser.add_argument("--valid-days", type=int, default=365, help="validity period in days (default: %(default)s)")
    parser.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    if not PARTY_ID_RE.fullmatch(args.partner):
        print(f"error: {args.partner!r} is not a valid partner id (lower-case letters, digits, '-')", file=sys.stderr)
        return 2
    if args.kid is not None and not KEY_ID_RE.fullmatch(args.kid):
        print(f"error: {args.kid!r} is not a valid key id", file=sys.stderr)
        return 2
    try:
        _, entry, key_path = generate(args.partner, args.out, kid=args.kid, valid_days=args.valid_days)
    except FileExistsError as exc:
        print(f"error: {exc.filename} already exists; refusing to overwrite a private key", file=sys.stderr)
        return 2
    print(f"# private key written to {key_path} (mode 0600): keep it secret, never send it", file=sys.stderr)
    print(
        f"# message-id key: {args.out}/{args.partner}.idkey (mode 0600): keep it secret and keep it across key "
        "rotations",
        file=sys.stderr,
    )
    print("# registry entry: send this to the broker's operators", file=sys.stderr)
    sys.stdout.write(entry.to_toml())
    return 0
