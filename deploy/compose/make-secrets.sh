#!/usr/bin/env bash
# Make the compose demo's secrets at run time (nothing secret is ever committed): demo partner
# keys (each partner's private key stays beside it, for the synthetic adapters), pseudonym secrets
# for every agreement, the one broker key both brokers share, and the Erlang cookie.
# Run from the repository root with the project installed: deploy/compose/make-secrets.sh [DIR]
set -euo pipefail
out="${1:-deploy/compose/secrets}"
if [ -e "$out" ]; then echo "$out exists: remove it first to make new secrets" >&2; exit 1; fi
mkdir -p "$out"
umask 077
python3 - "$out" <<'PY'
import secrets, sys
from pathlib import Path

from broker.auth.broker_key import load_or_create_broker_key
from broker.demo import prepare_environment

out = Path(sys.argv[1])
prepare_environment(out)  # keys/ and secrets.toml
load_or_create_broker_key(out / "broker-key.pem")
(out / "erlang-cookie").write_text(secrets.token_hex(20))
print(f"secrets written to {out}")
PY
