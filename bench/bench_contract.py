"""Per-message cost of the wire contract: strict parse + verify + validate, against a bare baseline.

Run: .venv/bin/python bench/bench_contract.py [--count 10000] [--repeats 5] [--seed 2026]

Signs ``--count`` synthetic messages (SyntheticGenerator.mixed: all seven partners, all four event
types), then, over the same messages in one run:

  ours      broker.stages: parse (size limit, BOM / UTF-8 / surrogate checks, duplicate keys,
            number ranges, depth, envelope shape, RFC 8785 canonical bytes) -> verify (registry
            lookup, key state, strict base64url, S < L, Ed25519) -> validate (direct-identifier
            screen, pydantic strict model);
  baseline  what a bare implementation does: ``json.loads`` of the body and an Ed25519 verify with
            ``cryptography`` (public key objects cached), over the unsigned body bytes as if the
            signature came detached in a header. No canonicalisation, strictness or validation.

Prints the median microseconds per message over the repeats, a per-stage breakdown of our path,
and the ratio. Figures are for information only (tests never assert on time).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.signer import generate_keyring
from adapters.synthetic import SyntheticGenerator
from broker.demo import partner_ids
from broker.registry import Registry, load_registry
from broker.settings import REPO_POLICIES
from broker.stages.parse import parse
from broker.stages.types import Fresh, Received, Verified
from broker.stages.validate import validate
from broker.stages.verify import verify
from schemas.envelope import SIGNATURE_ATTR, encode
from schemas.signing import b64u_decode
from schemas.strictjson import DEFAULT_MAX_BYTES


def timed(fn: Callable[[], object], count: int) -> float:
    """Microseconds per message for one pass of ``fn`` over ``count`` messages."""
    gc.collect()
    start = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - start) / 1000 / count


def prepare(count: int, seed: int, keys_dir: Path) -> tuple[Registry, list[bytes], list[tuple[bytes, bytes, str]]]:
    signers = generate_keyring(partner_ids(), keys_dir)
    registry = load_registry(REPO_POLICIES, keys_dir)
    bodies: list[bytes] = []
    detached: list[tuple[bytes, bytes, str]] = []  # (unsigned body, signature, kid) for the baseline
    for record in SyntheticGenerator(seed=seed).mixed(count):
        doc = signers[record.partner].sign(record.event.EVENT_TYPE, record.data(), source_key=record.source_key)
        bodies.append(encode(doc))
        unsigned = {k: v for k, v in doc.items() if k != SIGNATURE_ATTR}
        detached.append((encode(unsigned), b64u_decode(doc[SIGNATURE_ATTR]), doc["keyid"]))
    return registry, bodies, detached


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10_000, help="messages to sign (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes over all messages (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-contract-") as tmp:
        t0 = time.perf_counter()
        registry, bodies, detached = prepare(args.count, args.seed, Path(tmp))
        sign_s = time.perf_counter() - t0
    now = datetime.now(UTC)
    count = len(bodies)
    mean_bytes = statistics.fmean(len(b) for b in bodies)

    # Correctness first: every message must pass our path, or the timing means nothing.
    events = [
        validate(Fresh(verify(parse(b, max_bytes=DEFAULT_MAX_BYTES, now=now), registry), now)).event for b in bodies
    ]
    types = sorted({type(e).__name__ for e in events})

    def ours() -> None:
        for body in bodies:
            validate(Fresh(verify(parse(body, max_bytes=DEFAULT_MAX_BYTES, now=now), registry), now))

    key_objects = {kid: Ed25519PublicKey.from_public_bytes(k.public_key) for kid, k in registry.keys.items()}

    def baseline() -> None:
        for body, signature, kid in detached:
            json.loads(body)
            key_objects[kid].verify(signature, body)

    baseline()  # raises if any baseline verify fails

    received: list[Received] = []
    verified: list[Verified] = []
    stage_results: dict[str, list[float]] = {"parse": [], "verify": [], "validate": []}

    def stage_parse() -> None:
        received[:] = [parse(b, max_bytes=DEFAULT_MAX_BYTES, now=now) for b in bodies]

    def stage_verify() -> None:
        verified[:] = [verify(r, registry) for r in received]

    def stage_validate() -> None:
        for v in verified:
            validate(Fresh(v, now))

    ours_us: list[float] = []
    base_us: list[float] = []
    for _ in range(args.repeats):
        ours_us.append(timed(ours, count))
        base_us.append(timed(baseline, count))
        stage_results["parse"].append(timed(stage_parse, count))
        stage_results["verify"].append(timed(stage_verify, count))
        stage_results["validate"].append(timed(stage_validate, count))

    ours_med = statistics.median(ours_us)
    base_med = statistics.median(base_us)
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "messages": count,
        "event types": ", ".join(types),
        "mean body bytes": round(mean_bytes),
        "signing (setup) s": round(sign_s, 2),
        "repeats": args.repeats,
    }
    for key, value in out.items():
        print(f"{key:>22}: {value}")
    print()
    print(f"{'ours (parse+verify+validate)':>36}: median {ours_med:8.1f} µs/message   runs {_runs(ours_us)}")
    for stage, values in stage_results.items():
        print(f"{'  of which ' + stage:>36}: median {statistics.median(values):8.1f} µs/message")
    print(f"{'baseline (json.loads + Ed25519)':>36}: median {base_med:8.1f} µs/message   runs {_runs(base_us)}")
    print(f"{'ratio ours / baseline':>36}: {ours_med / base_med:.2f}x")
    print(f"{'ours throughput (one core)':>36}: {1e6 / ours_med:,.0f} messages/s")
    return 0


def _runs(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in values) + "]"


if __name__ == "__main__":
    sys.exit(main())
