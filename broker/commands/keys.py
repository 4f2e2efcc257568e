"""``sv-broker keys generate``: a partner key pair and the registry entry for the operators.

The arguments and the handler are the partner's own command's (``adapters.keys``, also behind
``sv-broker adapter keys generate``): one code path. The CLI layer may import both sides; only
``adapters/`` must never import ``broker/``.
"""

from __future__ import annotations

import argparse

from adapters.keys import add_generate_arguments


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="partner signing keys", description="Partner signing keys.")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = keys_sub.add_parser(
        "generate",
        help="generate an Ed25519 key pair for a partner",
        description=(
            "Generate an Ed25519 key pair. The private key is written to OUT/<kid>.key.pem with mode 0600 "
            "(keep it on the partner's side); the registry entry to send to the broker's operators is "
            "printed and written to OUT/<kid>.pub.toml."
        ),
    )
    add_generate_arguments(gen)
