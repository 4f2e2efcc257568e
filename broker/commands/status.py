"""``sv-broker status``: how the broker is doing, for a person (text) or a machine (``--json``).

Reads the store directly and read-only, like ``sv-broker audit`` (a SQLite file from the data
dir, or PostgreSQL with ``--store``), and the agreements from the policy directory: the store's
counts and chain head, every agreement's state and days to its end and review, every partner's
last authenticated message against the cadence its flows declare, the last week's rejected and
withheld shares against the four weeks before, and the alerts (``broker/monitor/alerts.py``)
grouped by severity. It writes nothing (the trail is extended only by the running broker), and
like every other surface it shows ids, codes and counts, never a payload.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from broker.cli import add_policy_args
from broker.commands.audit import _store_args, _with_store
from broker.errors import ConfigurationError, PolicyError
from broker.monitor.alerts import ALL_SOURCES, RECENT_DAYS, SEVERITY_ORDER, Rates
from broker.pipeline.status import StatusReport, status_report
from broker.policy.loader import PolicySet, compile_policy, read_documents, read_lock, uses_pseudonyms
from broker.policy.secrets import load_secrets
from broker.registry import Registry, load_registry


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser(
        "status",
        help="health, agreements, partners and alerts at a glance",
        description=(
            "A summary of the broker for a person, read from its store (read-only) and the agreements: store "
            "counts and chain head, each agreement's state and days to its end and review, each partner's last "
            "authenticated message against its declared cadence, the last 7 days' rejected and withheld shares "
            "against the 28 days before, and the alerts by severity (codes in the README, 'Alerts and status'). "
            "Exit 0 with no critical alert, 1 with one or more, 2 if the store or the agreements cannot be read."
        ),
    )
    _store_args(cmd)
    add_policy_args(cmd)
    cmd.add_argument("--secrets", type=Path, default=None, help="pseudonymisation secrets file (not needed here)")
    cmd.add_argument("--url", default=None, help="also ask a running broker's /readyz (e.g. http://127.0.0.1:8080)")
    cmd.add_argument("--json", action="store_true", help="machine-readable output")
    cmd.set_defaults(handler=run)


def _load(args: argparse.Namespace) -> tuple[Registry, PolicySet]:
    registry = load_registry(args.policy_dir, args.keys_dir)
    secrets = load_secrets(args.secrets, os.environ)
    documents, read_problems = read_documents(args.policy_dir)
    lock, lock_problems = read_lock(args.policy_dir)
    # Status reads dates, flows and cadences, and pseudonymises nothing: an agreement whose secret
    # is not at hand is compiled with a throwaway key (as ``policy explain`` does), never used.
    missing = [str(d.doc["id"]) for d in documents if uses_pseudonyms(d.doc) and d.doc.get("id") not in secrets]
    secrets = {**secrets, **{agreement_id: os.urandom(32) for agreement_id in missing}}
    policy, problems = compile_policy(documents, registry, secrets, lock)
    errors = [p for p in (*read_problems, *lock_problems, *problems) if p.severity == "error"]
    if errors:
        raise PolicyError(errors[0], errors)
    return registry, policy


def _ready(url: str) -> str:
    """``/readyz`` of a running broker: "ready", "not ready (503)" or "unreachable"."""
    # Asked directly, never through a proxy from the environment: it is this broker's own answer.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url.rstrip("/") + "/readyz", timeout=3) as resp:
            return "ready" if resp.status == 200 else f"not ready ({resp.status})"
    except urllib.error.HTTPError as exc:
        return f"not ready ({exc.code})"
    except (urllib.error.URLError, OSError, ValueError):
        return "unreachable"


def run(args: argparse.Namespace) -> int:
    try:
        registry, policy = _load(args)
    except ConfigurationError as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    now = datetime.now(UTC)
    try:
        report = _with_store(args, lambda store: status_report(store, policy, registry, now))
    except SystemExit as exc:  # no store, or unreadable: said by _with_store
        print(exc, file=sys.stderr)
        return 2
    ready = _ready(args.url) if args.url else None
    if args.json:
        doc = report.as_dict()
        if ready is not None:
            doc["broker"] = {"url": args.url, "readyz": ready}
        print(json.dumps(doc, indent=2))
    else:
        sys.stdout.write(render_text(report, ready))
    return 1 if any(a.severity.value == "critical" for a in report.alerts) else 0


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _rates_line(r: Rates) -> str:
    who = "all sources" if r.subject == ALL_SOURCES else r.subject
    return (
        f"  {who:<28} {r.recent.received:>7} received  rejected {_percent(r.recent.rejected_share):>6} "
        f"(before {_percent(r.baseline.rejected_share):>6})  withheld {_percent(r.recent.withheld_share):>6} "
        f"(before {_percent(r.baseline.withheld_share):>6})"
    )


def render_text(report: StatusReport, ready: str | None = None) -> str:
    lines = [f"sv-broker status at {report.now.isoformat(timespec='seconds')}", ""]
    lines.append("Broker")
    if ready is not None:
        lines.append(f"  running broker: {ready}")
    lines.append(f"  audit chain: {report.head_seq} entries, last at {report.head_at or '-'}")
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.counts.audit_by_kind.items())) or "none"
    lines.append(f"  entries by kind: {kinds}")
    records = ", ".join(f"{c} {n}" for c, n in sorted(report.counts.records_by_consumer.items())) or "none"
    lines.append(f"  records held by consumer: {records}")
    lines += ["", "Agreements"]
    for ag in report.agreements:
        d = ag.as_dict(report.now)
        lines.append(
            f"  {ag.id:<32} r{ag.revision:<3} {ag.state:<15} ends in {d['days_to_end']:>5} days, "
            f"review in {d['days_to_review']:>5} days"
        )
    lines += ["", "Partners (last authenticated message; cadence declared by their flows)"]
    for p in report.partners:
        seen = "never" if p.last_seen is None else p.last_seen.isoformat(timespec="seconds")
        if p.cadence is None:
            cadence = "no cadence declared"
        else:
            cadence = f"every {p.cadence.days} days ({p.cadence.agreement_id}/{p.cadence.flow_id})"
        flag = "  OVERDUE" if p.overdue else ""
        lines.append(f"  {p.id:<28} last seen {seen:<25} {cadence}{flag}")
    lines += ["", f"Refusals (last {RECENT_DAYS} days; before = the 28 days before)"]
    lines += [_rates_line(r) for r in report.rates]
    if report.held:
        lines += ["", "Held events"]
        lines += [f"  {h.agreement_id:<32} {h.count} held, first expires {h.earliest_expiry}" for h in report.held]
    lines += ["", f"Alerts ({len(report.alerts)})"]
    if not report.alerts:
        lines.append("  none")
    for severity in SEVERITY_ORDER:
        group = [a for a in report.alerts if a.severity is severity]
        if group:
            lines.append(f"  {severity.value.upper()} ({len(group)})")
            lines += [f"    {a.code.value}  {a.subject}: {a.message}" for a in group]
    return "\n".join(lines) + "\n"
