"""``sv-broker policy check|explain|lint``, ``policy map`` and ``policy register``: data sharing
agreements for the people who govern them (IG leads) and the people who write them; the map and
the register are the DPIA pack (``broker/dpia``), as files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, date, datetime
from pathlib import Path

from broker.cli import add_policy_args
from broker.errors import ConfigurationError, PolicyError
from broker.policy.explain import explain, read_event, render_text
from broker.policy.lint import WARN_DAYS, check_policy, hold_lines, holds, write_lock
from broker.policy.loader import compile_policy, read_documents, read_lock, uses_pseudonyms
from broker.policy.model import PolicySet
from broker.policy.secrets import env_name, load_secrets
from broker.registry import Registry, load_registry
from schemas.envelope import parse_time
from schemas.errors import ContractError


def _add_secrets_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--secrets",
        type=Path,
        default=None,
        metavar="FILE",
        help="pseudonymisation secrets file (TOML, outside the repository; see policies/secrets.example.toml). "
        "SV_BROKER_SECRET_<AGREEMENT_ID> environment variables are read too.",
    )


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-25") from None


def _moment(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError:
        pass
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 date-time with offset, or a date") from None
    return datetime(day.year, day.month, day.day, 12, 0, tzinfo=UTC)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = sub.add_parser(
        "policy",
        help="data sharing agreements: check, explain, map and register",
        description="Data sharing agreements (policies/agreements/*.toml): check them, and explain their effect.",
    )
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")

    check = policy_sub.add_parser(
        "check",
        help="lint every agreement file",
        description=(
            "Load every agreement and refuse, with file, line/key and reason code: fields not in the event "
            "schema, transforms that do not fit a field's type, unknown parties, overlapping bands, missing "
            "pseudonymisation secrets, a revision below the one in policies/revisions.lock, direct identifiers, "
            "free text or LSOA kept without a reason, unknown settings. Warns when an agreement's valid_to or "
            f"review_by is within {WARN_DAYS} days (or past). Exit 0 if no errors, 1 if any, 2 on configuration "
            "errors (registry, secrets file)."
        ),
    )
    add_policy_args(check)
    _add_secrets_arg(check)
    check.add_argument(
        "--update-lock",
        action="store_true",
        help="if there are no errors, record each agreement's revision in POLICY_DIR/revisions.lock (commit it)",
    )
    check.add_argument(
        "--as-of", type=_date, default=None, metavar="DATE", help="check dates as if today were DATE (YYYY-MM-DD)"
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(handler=run_check)

    exp = policy_sub.add_parser(
        "explain",
        help="show what each consumer would receive from an event",
        description=(
            "Show, field by field, what each consumer would receive from one event and which rule decided "
            "each field (including fields dropped by default). FILE is a signed envelope (its signature is NOT "
            "verified; the payload is validated against its schema) or an unsigned event file: "
            '{"type": "ae_assault", "version": 1, "source": "<partner id>", "data": {...}, "id": "<optional>"}. '
            "Pseudonymised fields of an agreement with no secret loaded are shown with a throwaway key (the "
            "output says so). Exit 0 on success, 1 if the broker would reject the event, 2 on configuration errors."
        ),
    )
    exp.add_argument("--event", required=True, type=Path, metavar="FILE", help="envelope or unsigned event file (JSON)")
    exp.add_argument("--consumer", metavar="ID", help="only this consumer")
    exp.add_argument("--json", action="store_true", help="machine-readable output")
    exp.add_argument(
        "--at", type=_moment, default=None, metavar="TIME", help="evaluate agreements at TIME (default: now)"
    )
    add_policy_args(exp)
    _add_secrets_arg(exp)
    exp.set_defaults(handler=run_explain)

    flow_map = policy_sub.add_parser(
        "map",
        help="the flow map (partners -> agreements' flows -> consumers) as a file, for a DPIA",
        description=(
            "Draw every flow of every agreement: partners on the left, each agreement's flows (what each "
            "releases, kept / generalised / pseudonymised, and the fields dropped) in the middle, consumers on "
            "the right; a lapsed agreement's flows dashed and marked. svg, dot and mermaid are text (stdout "
            "unless --out); png needs --out. Reads no pseudonymisation secret. Exit 0, or 2 if the agreements "
            "do not load."
        ),
    )
    add_policy_args(flow_map)
    flow_map.add_argument("--format", choices=("svg", "png", "dot", "mermaid"), default="svg")
    flow_map.add_argument("--out", type=Path, default=None, metavar="FILE", help="write here (default: stdout)")
    flow_map.add_argument("--dpi", type=int, default=150, help="png resolution (default: %(default)s)")
    flow_map.add_argument(
        "--at", type=_moment, default=None, metavar="TIME", help="agreements' state as at TIME (default: now)"
    )
    flow_map.set_defaults(handler=run_map)

    reg = policy_sub.add_parser(
        "register",
        help="the agreements register with each flow's field inventory and the ICO checklist, for a DPIA",
        description=(
            "Per agreement: id, title, revision and history, state and warnings, purpose, lawful basis, parties, "
            "dates, retention, hold; per flow every field of the event type, released as what and how, or not "
            "released; and the ICO data sharing code's checklist (items the agreement does not record are "
            "marked so). html is one self-contained printable page; csv one row per agreement, flow and field. "
            "Reads no pseudonymisation secret. Exit 0, or 2 if the agreements do not load."
        ),
    )
    add_policy_args(reg)
    reg.add_argument("--format", choices=("html", "csv", "md"), default="html")
    reg.add_argument("--out", type=Path, default=None, metavar="FILE", help="write here (default: stdout)")
    reg.add_argument(
        "--at", type=_moment, default=None, metavar="TIME", help="agreements' state as at TIME (default: now)"
    )
    reg.set_defaults(handler=run_register)


def _registry_and_secrets(args: argparse.Namespace) -> tuple[Registry, dict[str, bytes]]:
    registry = load_registry(args.policy_dir, args.keys_dir)
    secrets = load_secrets(args.secrets, os.environ)
    return registry, secrets


def run_check(args: argparse.Namespace) -> int:
    try:
        registry, secrets = _registry_and_secrets(args)
    except ConfigurationError as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    today = args.as_of or datetime.now(UTC).date()
    report = check_policy(args.policy_dir, registry, secrets, today)
    lock_path: Path | None = None
    if args.update_lock and not report.errors:
        lock_path = write_lock(args.policy_dir, report)
    if args.json:
        print(
            json.dumps(
                {
                    "files": report.files,
                    "agreements": sorted(report.policy.agreements),
                    "errors": len(report.errors),
                    "warnings": len(report.warnings),
                    "problems": [p.as_dict() for p in report.problems],
                    "holds": holds(report.policy),
                    "lock_updated": str(lock_path) if lock_path else None,
                },
                indent=2,
            )
        )
    else:
        for problem in report.problems:
            print(f"{problem.severity}: {problem}")
        for line in hold_lines(report.policy):
            print(line)
        print(
            f"checked {report.files} agreement file(s) in {args.policy_dir}: "
            f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"
        )
        if lock_path is not None:
            print(f"revision lock updated: {lock_path}")
        elif args.update_lock:
            print("revision lock NOT updated: fix the errors first", file=sys.stderr)
    return 1 if report.errors else 0


def run_explain(args: argparse.Namespace) -> int:
    now = args.at or datetime.now(UTC)
    try:
        registry, secrets = _registry_and_secrets(args)
        documents, read_problems = read_documents(args.policy_dir)
        lock, lock_problems = read_lock(args.policy_dir)
    except ConfigurationError as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    if args.consumer is not None and args.consumer not in registry.consumers:
        print(f"error: {args.consumer!r} is not a registered consumer", file=sys.stderr)
        return 2
    # A what-if needs no production secret: an agreement without one is explained with a
    # throwaway key (the pseudonyms show their form, never a production value). The broker
    # itself (load_policy) still refuses to start such an agreement.
    throwaway = sorted(str(d.doc["id"]) for d in documents if uses_pseudonyms(d.doc) and d.doc.get("id") not in secrets)
    secrets = {**secrets, **{agreement_id: os.urandom(32) for agreement_id in throwaway}}
    policy, problems = compile_policy(documents, registry, secrets, lock)
    errors = [p for p in (*read_problems, *lock_problems, *problems) if p.severity == "error"]
    if errors:
        error = PolicyError(errors[0], errors)
        print(f"error: the agreements do not load ({len(errors)} error(s)); first: {error}", file=sys.stderr)
        print("run `sv-broker policy check` for all of them", file=sys.stderr)
        return 2
    try:
        body = args.event.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.event}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        event = read_event(body, now, registry)
    except ContractError as exc:
        if args.json:
            print(json.dumps({"file": str(args.event), "verdict": "rejected", **exc.as_dict()}, indent=2))
        else:
            print(f"rejected: the broker would refuse this event: {exc.reason.value}: {exc.message}")
        return 1
    report = explain(event, policy, registry, now, args.consumer)
    shown = {r["agreement_id"] for c in report["consumers"] for r in c["releases"]}
    throwaway = [agreement_id for agreement_id in throwaway if agreement_id in shown]
    report["throwaway_secrets"] = throwaway
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(render_text(report))
        for agreement_id in throwaway:
            print(
                f"\nNote: no secret loaded for {agreement_id} ({env_name(agreement_id)} or --secrets): its "
                "pseudonyms above come from a throwaway key and differ from the broker's."
            )
    return 0


def _policy_for_reading(args: argparse.Namespace) -> tuple[Registry, PolicySet, dict[str, int] | None] | None:
    """The agreements compiled for reading them (the map, the register), or None (said why).

    No secret is read. The map and register say *that* a field is pseudonymised, never a pseudonym,
    so an agreement that pseudonymises is compiled with a random key made here, used by nothing and
    gone with the process: the command then needs no access to the secrets file (least privilege: the
    person drawing a DPIA's map need not be able to test a guessed URN against a pseudonym), and the
    compiled rules are exactly the broker's (the loader insists on a key to compile one)."""
    try:
        registry = load_registry(args.policy_dir, args.keys_dir)
        documents, read_problems = read_documents(args.policy_dir)
        lock, lock_problems = read_lock(args.policy_dir)
    except ConfigurationError as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return None
    unused_keys = {str(d.doc["id"]): os.urandom(32) for d in documents if uses_pseudonyms(d.doc) and "id" in d.doc}
    policy, problems = compile_policy(documents, registry, unused_keys, lock)
    errors = [p for p in (*read_problems, *lock_problems, *problems) if p.severity == "error"]
    if errors:
        print(f"error: the agreements do not load ({len(errors)} error(s)); first: {errors[0]}", file=sys.stderr)
        print("run `sv-broker policy check` for all of them", file=sys.stderr)
        return None
    return registry, policy, lock


def _write(out: Path | None, data: str | bytes) -> int:
    if out is None:
        if isinstance(data, bytes):
            sys.stdout.buffer.write(data)
        else:
            sys.stdout.write(data)
        return 0
    try:
        if isinstance(data, bytes):
            out.write_bytes(data)
        else:
            out.write_text(data, encoding="utf-8")
    except OSError as exc:
        print(f"error: cannot write {out}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(data if isinstance(data, bytes) else data.encode())} bytes)", file=sys.stderr)
    return 0


def run_map(args: argparse.Namespace) -> int:
    from broker.dpia.flowmap import build_flow_map
    from broker.dpia.render_map import to_dot, to_mermaid, to_svg

    if args.format == "png" and args.out is None:
        print("error: --format png needs --out FILE (a PNG is not for a terminal)", file=sys.stderr)
        return 2
    loaded = _policy_for_reading(args)
    if loaded is None:
        return 2
    registry, policy, _lock = loaded
    flow_map = build_flow_map(policy, registry, args.at or datetime.now(UTC))
    if args.format == "png":
        from broker.dpia.render_png import to_png  # matplotlib: loaded only when a PNG is asked for

        return _write(args.out, to_png(flow_map, dpi=args.dpi))
    render = {"svg": to_svg, "dot": to_dot, "mermaid": to_mermaid}[args.format]
    return _write(args.out, render(flow_map))


def run_register(args: argparse.Namespace) -> int:
    from broker.dpia.register import build_register
    from broker.dpia.render_register import to_csv, to_html, to_markdown

    loaded = _policy_for_reading(args)
    if loaded is None:
        return 2
    registry, policy, lock = loaded
    register = build_register(policy, registry, args.at or datetime.now(UTC), lock)
    render = {"html": to_html, "csv": to_csv, "md": to_markdown}[args.format]
    return _write(args.out, render(register))
