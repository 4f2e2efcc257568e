"""Audit and feed figures for IG leads and analysts, each beside a baseline from the same run.

Run: .venv/bin/python bench/bench_audit.py [--entries 1000000] [--records 200000]

  * audit query latency by message id and by record id over N entries (indexed), beside the same
    kind of lookup on an unindexed column (a full scan);
  * chain + signed-checkpoint verification rate (entries/s), beside bare SHA-256 over the bodies;
  * feed read rate (records/s, cursor pages of 1,000), beside a bare SELECT of the same rows.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.audit.chain import Draft, Kind
from broker.audit.checkpoints import sign_checkpoint
from broker.audit.trail import verify_trail
from broker.pipeline.trail import audit_pages
from broker.ports.sqlite_store import SqliteStore, connect
from broker.ports.store import AuditQuery, CommitUnit, StoredRecord


async def fill(store: SqliteStore, entries: int, key: Ed25519PrivateKey) -> tuple[list[str], list[str]]:
    message_ids, record_ids = [], []
    done = 0
    batch = 10_000
    while done < entries:
        drafts = []
        for i in range(done, min(done + batch, entries), 3):
            mid = f"derbyshire-police:{i:032x}"
            message_ids.append(mid)
            base = {"message_id": mid, "source": "derbyshire-police", "body_sha256": "0" * 64}
            drafts.append(Draft(Kind.RECEIVED, base | {"transport": "amqp", "verified": True}))
            for consumer in ("derby-csp-analysts", "derbyshire-vru"):
                rid = f"rec-{hashlib.sha256(f'{mid}{consumer}'.encode()).hexdigest()[:32]}"
                record_ids.append(rid)
                drafts.append(
                    Draft(
                        Kind.RELEASED,
                        base | {"consumer": consumer, "agreement_id": "dsa-police-sv-csp-2026", "record_id": rid},
                    )
                )
        await store.commit(CommitUnit(drafts=drafts))
        seq, head = store.head
        await store.commit(CommitUnit(checkpoints=[sign_checkpoint(key, "bench", seq, head, datetime.now(UTC))]))
        done += batch
    return message_ids, record_ids


async def timed_lookups(store: SqliteStore, queries: list[AuditQuery]) -> list[float]:
    out = []
    for query in queries:
        started = time.perf_counter()
        rows = await store.audit_page(query)
        out.append(time.perf_counter() - started)
        assert rows, query
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    key = Ed25519PrivateKey.generate()
    with tempfile.TemporaryDirectory(prefix="sv-bench-audit-") as tmp:
        path = Path(tmp) / "broker.db"
        store = SqliteStore(path, batch_max=64)
        await store.open()
        started = time.perf_counter()
        message_ids, record_ids = await fill(store, args.entries, key)
        fill_s = time.perf_counter() - started
        seq, _ = store.head
        print(
            f"audit store: {seq:,} entries written in {fill_s:.1f} s ({seq / fill_s:,.0f} entries/s, group-committed)"
        )

        conn = connect(path, readonly=True)
        rng = random.Random(1)
        by_message = await timed_lookups(store, [AuditQuery(message_id=m) for m in rng.sample(message_ids, 500)])
        by_record = await timed_lookups(store, [AuditQuery(record_id=r) for r in rng.sample(record_ids, 500)])
        # baseline: the same point lookup on a column with no index (body hash): a full scan
        scan = []
        for h in [row[0] for row in conn.execute("SELECT hash FROM audit ORDER BY random() LIMIT 5")]:
            t0 = time.perf_counter()
            conn.execute("SELECT seq, body FROM audit WHERE hash = ?", (h,)).fetchall()
            scan.append(time.perf_counter() - t0)
        print(
            f"query by message id: p50 {pct(by_message, 0.5):,.0f} us, p99 {pct(by_message, 0.99):,.0f} us; "
            f"by record id: p50 {pct(by_record, 0.5):,.0f} us, p99 {pct(by_record, 0.99):,.0f} us"
        )
        print(
            f"  baseline unindexed lookup (full scan): p50 {statistics.median(scan) * 1e6:,.0f} us "
            f"-> indexed is {statistics.median(scan) / statistics.median(by_message):,.0f}x faster"
        )

        rows = [(r.seq, r.body, r.hash) async for page in audit_pages(store, AuditQuery()) for r in page]
        checkpoints = await store.checkpoints()
        t0 = time.perf_counter()
        report = verify_trail(rows, checkpoints, {"bench": key.public_key()})
        verify_s = time.perf_counter() - t0
        assert report.ok, report.problem
        t0 = time.perf_counter()
        for _, body, _ in rows:
            hashlib.sha256(body).hexdigest()
        bare_s = time.perf_counter() - t0
        print(
            f"chain + {len(checkpoints)} checkpoints verified: {len(rows) / verify_s:,.0f} entries/s; "
            f"bare SHA-256 of the bodies {len(rows) / bare_s:,.0f} entries/s (ratio {bare_s / verify_s:.2f})"
        )

        now = datetime.now(UTC)
        body = b'{"agreement":{"id":"dsa-police-sv-csp-2026","revision":1},"consumer":"derby-csp-analysts",' + (
            b'"data":{"district":"E06000015","offence_group":"robbery","victim_age_band":"11-17"},"event_type":"police_sv_offence"}'
        )
        for start in range(0, args.records, 10_000):
            await store.commit(
                CommitUnit(
                    records=[
                        StoredRecord(
                            f"rec-feed-{i:012d}",
                            "derby-csp-analysts",
                            "dsa-police-sv-csp-2026",
                            1,
                            "police_sv_offence",
                            "derbyshire-police",
                            f"m{i}",
                            now,
                            now + timedelta(days=365),
                            body,
                        )
                        for i in range(start, min(start + 10_000, args.records))
                    ]
                )
            )
        t0 = time.perf_counter()
        after, read = 0, 0
        while page := await store.feed_page("derby-csp-analysts", after=after, limit=1000):
            read += len(page)
            after = page[-1].id
        feed_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        bare = sum(1 for _ in conn.execute("SELECT body FROM records WHERE consumer = ?", ("derby-csp-analysts",)))
        bare_feed_s = time.perf_counter() - t0
        assert read == bare == args.records
        print(
            f"feed read: {read / feed_s:,.0f} records/s in cursor pages of 1,000; "
            f"bare SELECT {bare / bare_feed_s:,.0f} records/s (ratio {bare_feed_s / feed_s:.2f})"
        )
        conn.close()
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
