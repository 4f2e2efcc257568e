"""Decisions per second of the policy engine, beside a bare baseline in the same run.

Run: .venv/bin/python bench/bench_policy.py [--count 20000] [--repeats 7] [--seed 2026]

The typical event: a Royal Derby A&E assault in Derby, which the shipped agreements release to
two consumers (derby-csp-analysts weekly at district level, derbyshire-vru monthly), with one more
flow considered and refused by its row condition (derbyshire-csp-analysts).

  ours      broker.policy.engine.decide: plan lookup, agreement window checks, row conditions, every
            rule's transform (ISO week, day of week, day part and night-time-economy peak in
            Europe/London time, age band, ...), a record id (SHA-256) per consumer, and the
            Decision with its Release and Refusal values;
  baseline  a bare dict comprehension per entitled consumer copying the same source fields the two
            flows name (``{f: getattr(event, f) for f in fields}``): no transforms, no checks, no ids.

Also prints ours over a realistic mixed stream of all four event types. Prints medians over the
repeats; figures are for information only (tests never assert on time).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.synthetic import SyntheticGenerator, SyntheticRecord
from broker.policy.engine import decide
from broker.policy.loader import load_policy, read_documents
from broker.policy.model import PolicySet
from broker.registry import load_registry
from broker.settings import REPO_POLICIES
from broker.stages.types import Fresh, Received, Validated, Verified
from broker.stages.validate import content_sha256
from schemas.envelope import Envelope

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def validated(record: SyntheticRecord, n: int) -> Validated:
    envelope = Envelope(
        id=f"bench-message-{n:08d}",
        source=record.partner,
        type=record.event.EVENT_TYPE,
        version=record.event.VERSION,
        time=NOW,
        keyid="bench",
        signature="",
        data=record.data(),
        signed_bytes=b"",
    )
    return Validated(
        Fresh(Verified(Received(envelope, "0" * 64, NOW), "bench"), NOW), record.event, content_sha256(envelope)
    )


def typical(policy: PolicySet, seed: int) -> Validated:
    gen = SyntheticGenerator(seed=seed)
    for n in range(10_000):
        candidate = validated(gen.ae_assault("uhdb-royal-derby-ed"), n)
        decision = decide(candidate, policy, NOW)
        if len(decision.releases) == 2 and getattr(candidate.event, "district", None) == "E06000015":
            return candidate
    raise SystemExit("no typical event found")


def per_second(fn: Callable[[], object], count: int) -> float:
    gc.collect()
    start = time.perf_counter_ns()
    fn()
    return count / ((time.perf_counter_ns() - start) / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20_000, help="decisions per run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=7, help="runs; the median is reported (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()

    registry = load_registry(REPO_POLICIES, REPO_POLICIES / "keys")
    documents, _ = read_documents(REPO_POLICIES)
    secrets = {str(d.doc["id"]): os.urandom(32) for d in documents}  # generated for this run only
    policy = load_policy(REPO_POLICIES, registry, secrets)

    event = typical(policy, args.seed)
    decision = decide(event, policy, NOW)
    flows = [policy.flow(r.agreement_id, r.flow_id) for r in decision.releases]
    fields = [tuple(dict.fromkeys(rule.field for rule in flow.rules)) for flow in flows if flow is not None]
    model = event.event
    count = args.count
    mixed = [validated(r, n) for n, r in enumerate(SyntheticGenerator(seed=args.seed).mixed(2_000))]
    rounds = range(count // len(mixed) or 1)

    def ours() -> None:
        for _ in range(count):
            decide(event, policy, NOW)

    def baseline() -> None:
        for _ in range(count):
            [{f: getattr(model, f) for f in names} for names in fields]

    def ours_mixed() -> None:
        for _ in rounds:
            for item in mixed:
                decide(item, policy, NOW)

    mixed_count = len(mixed) * len(rounds)
    runs: dict[str, list[float]] = {"ours": [], "baseline": [], "mixed": []}
    for _ in range(args.repeats):
        runs["ours"].append(per_second(ours, count))
        runs["baseline"].append(per_second(baseline, count))
        runs["mixed"].append(per_second(ours_mixed, mixed_count))
    med = {k: statistics.median(v) for k, v in runs.items()}

    print(f"python {platform.python_version()} on {platform.machine()}; {args.repeats} runs of {count} decisions")
    print(
        f"typical event: {event.envelope.type} from {event.envelope.source} -> "
        f"{', '.join(r.consumer for r in decision.releases)} "
        f"({sum(len(r.fields) for r in decision.releases)} fields released, {len(decision.refusals)} refusal)"
    )
    print(f"  ours      {med['ours']:>12,.0f} decisions/s  ({1e6 / med['ours']:.2f} us per decision)")
    print(f"  baseline  {med['baseline']:>12,.0f} decisions/s  ({1e6 / med['baseline']:.2f} us; bare dict copies)")
    print(f"  ratio     {med['baseline'] / med['ours']:>12.1f}x  (baseline / ours)")
    print(f"mixed stream (all four event types): {med['mixed']:,.0f} decisions/s")


if __name__ == "__main__":
    main()
