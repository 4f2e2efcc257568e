"""``sv-broker adapter``: the partner side. Push an export, read receipts, make samples, keys.

    sv-broker adapter push EXPORT --mapping ae-istv --key KEY.pem --amqp-url URL [--withdraw-missing]
    sv-broker adapter withdraw KEY... --reason sent_in_error --mapping ae-istv --key KEY.pem --amqp-url URL
    sv-broker adapter receipts --partner ID --amqp-url URL [--out receipts.csv] [--wait 60]
    sv-broker adapter sample police-crime --rows 12000 --out crimes.csv
    sv-broker adapter mappings [NAME]
    sv-broker adapter keys generate --partner ID --out DIR

Exit codes of ``push`` (and ``withdraw``): 0 every row confirmed; 1 some rows not sent or refused
(see the report); 2 usage / configuration error; 3 the whole file refused, or its withdrawals
(nothing sent); 4 sending stopped or not confirmed (run the same command again to finish).

Registered by ``broker/cli.py`` (the ``sv-broker`` entry point, the one module that puts both
sides' commands together); nothing here imports ``broker``, so the partner's tools can ship alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from adapters.keys import add_generate_arguments
from adapters.state import StateFile
from schemas.envelope import KEY_ID_RE, PARTY_ID_RE, WithdrawalReason
from schemas.topology import DEFAULT_PREFIX

AMQP_ENV = "SV_ADAPTER_AMQP_URL"
STATE_ENV = "SV_ADAPTER_STATE_DIR"
EXIT_USAGE = 2
EXIT_NOT_CONFIRMED = 4


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    adapter = sub.add_parser(
        "adapter",
        help="partner side: push an export, read receipts, samples, keys",
        description=(
            "The partner side: turn your system's export (CSV or JSON lines) into signed events through a "
            "mapping file, publish them with confirms (RabbitMQ) or POST them (embedded broker), resumably; "
            "read the broker's receipts; make synthetic sample exports; generate your signing key."
        ),
    )
    actions = adapter.add_subparsers(dest="adapter_command", required=True, metavar="ACTION")
    _register_push(actions)
    _register_withdraw(actions)
    _register_receipts(actions)
    _register_sample(actions)
    _register_mappings(actions)
    _register_keys(actions)
    _register_message_id(actions)


# -- push ------------------------------------------------------------------------------------------------


def _add_amqp_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get(AMQP_ENV),
        help=f"RabbitMQ URL with your account (default: ${AMQP_ENV}; prefer it: argv is visible to other users)",
    )
    parser.add_argument(
        "--amqp-prefix", default=DEFAULT_PREFIX, help="the broker's exchange/queue prefix (default: %(default)s)"
    )


def _add_state_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state", type=Path, default=None, help="state file (default: STATE_DIR/<partner>.<event type>.state.jsonl)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get(STATE_ENV, "sv-adapter-state")),
        help=f"directory of state files (default: ${STATE_ENV} or ./sv-adapter-state)",
    )


def _register_push(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    push = actions.add_parser(
        "push",
        help="send an export file: map, sign, publish with confirms, resumable",
        description=(
            "Read EXPORT (CSV with a header row, or JSON lines), map each row to the event model through the "
            "mapping, sign it with your key and publish it to the broker's RabbitMQ ingest exchange with "
            "publisher confirms (--amqp-url) or POST it to the embedded broker (--http-url). Rows that do not "
            "map or validate are not sent: each is listed in the report with its row number, column and reason. "
            "A file with a direct-identifier column (NHS number, UPN, name, date of birth, postcode, ...) is "
            "refused whole. Confirmed rows are recorded in a state file, so running the same command again "
            "sends only what is missing (safe after a crash or kill). Exit: 0 all confirmed; 1 some rows not "
            "sent or refused; 2 usage error; 3 file refused, nothing sent; 4 not all confirmed, run again."
        ),
    )
    push.add_argument("export", type=Path, help="the export file (CSV or JSON lines)")
    _add_sending_args(push)
    push.add_argument("--report", type=Path, default=None, help="problem report CSV (default: EXPORT.report.csv)")
    push.add_argument(
        "--withdraw-missing",
        action="store_true",
        help="withdraw the records sent before that this export no longer has (only for an export that lists "
        "every record: a full extract, not an incremental one)",
    )
    _add_reason_arg(push, "--withdraw-reason", default=WithdrawalReason.REMOVED_FROM_SOURCE.value)
    push.add_argument(
        "--max-withdraw-share",
        type=_share,
        default=0.5,
        help="refuse (send nothing) when --withdraw-missing would withdraw more than this share of the records "
        "sent before: an empty or truncated export looks like that (default: %(default)s)",
    )
    push.add_argument("--force-withdraw", action="store_true", help="withdraw even beyond --max-withdraw-share")
    push.add_argument(
        "--resend",
        action="store_true",
        help="ignore the state and send every good row again (the broker records duplicates)",
    )
    push.add_argument("--dry-run", action="store_true", help="map and validate only: write the report, send nothing")
    push.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it is off anyway when stderr is not a terminal)"
    )
    push.set_defaults(handler=run_push)


def _add_sending_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mapping", required=True, help="mapping file, or a built-in mapping name (see: adapter mappings)"
    )
    parser.add_argument("--key", type=Path, help="your private signing key (PEM, mode 0600); not needed with --dry-run")
    parser.add_argument("--kid", help="key id registered with the broker (default: the key file name before .key.pem)")
    parser.add_argument("--partner", help="your partner id (default: the mapping's partner)")
    _add_amqp_args(parser)
    parser.add_argument(
        "--amqp-user-id",
        default=None,
        help="AMQP user_id property (default: the login user of the URL; RabbitMQ checks it)",
    )
    parser.add_argument("--no-user-id", action="store_true", help="do not set the AMQP user_id property")
    parser.add_argument("--http-url", default=None, help="the embedded broker's URL, e.g. https://broker.example:8080")
    _add_state_args(parser)
    parser.add_argument("--window", type=int, default=None, help="messages in flight (default: 256 RabbitMQ, 32 HTTP)")
    parser.add_argument(
        "--confirm-timeout", type=float, default=30.0, help="seconds without a confirm before giving up"
    )


def _add_reason_arg(parser: argparse.ArgumentParser, flag: str, *, default: str | None) -> None:
    parser.add_argument(
        flag,
        choices=[r.value for r in WithdrawalReason],
        default=default,
        required=default is None,
        help="why the records are withdrawn; consumers see it"
        + (" (default: %(default)s)" if default is not None else ""),
    )


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("a share from 0 to 1 (0.5 is half)")
    return value


def _register_withdraw(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    withdraw = actions.add_parser(
        "withdraw",
        help="withdraw records you sent: each consumer that received one is told to delete it",
        description=(
            "Withdraw records sent before, by record key (as KEY arguments, or one per line in --keys-file): "
            "each is sent as a withdrawal (the next revision of the record, no event, with --reason), and "
            "every consumer that holds it gets a withdrawn notice. The state file of the pushes that sent the "
            "records gives each its revision; a key it does not know is reported, not sent. Exit codes as push."
        ),
    )
    withdraw.add_argument("keys", nargs="*", metavar="KEY", help="record keys to withdraw")
    withdraw.add_argument("--keys-file", type=Path, default=None, help="a file of record keys, one per line")
    _add_reason_arg(withdraw, "--reason", default=None)
    _add_sending_args(withdraw)
    withdraw.add_argument(
        "--report", type=Path, default=None, help="report CSV (default: beside the state file, .withdraw.report.csv)"
    )
    withdraw.add_argument("--dry-run", action="store_true", help="check the keys only: send nothing")
    withdraw.add_argument("--no-progress", action="store_true", help="no progress bar")
    withdraw.set_defaults(handler=run_withdraw, resend=False)


def _kid_from(path: Path) -> str:
    name = path.name
    for suffix in (".key.pem", ".pem", ".key"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_push(args: argparse.Namespace) -> int:
    if not args.export.is_file():
        return _error(f"{args.export} is not a file")
    return _send(args, args.export, ())


def run_withdraw(args: argparse.Namespace) -> int:
    keys: list[str] = list(args.keys)
    if args.keys_file is not None:
        try:
            text = args.keys_file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            return _error(f"--keys-file {args.keys_file}: {exc}")
        keys += [line.strip() for line in text.splitlines()]
    keys = [key for key in keys if key]
    if not keys:
        return _error("give the record keys to withdraw (as arguments, or --keys-file)")
    return _send(args, None, tuple(keys))


def _send(args: argparse.Namespace, export: Path | None, withdraw_keys: tuple[str, ...]) -> int:
    """``push`` (an export) and ``withdraw`` (record keys): one path from arguments to a summary."""
    from adapters.mapping import MappingError, load_mapping
    from adapters.prepare import WorkerFailed
    from adapters.publish_amqp import AmqpSink, login_user
    from adapters.publish_http import HttpSink
    from adapters.push import PushOptions, default_report_path, default_state_path, default_withdraw_report_path, push
    from adapters.signer import Signer
    from adapters.sink import OnResult, Sink
    from adapters.state import StateError
    from schemas.keyfile import id_key_path, load_or_create_id_key, load_private_key

    try:
        mapping = load_mapping(args.mapping)
    except MappingError as exc:
        return _error(f"mapping: {exc}")
    partner = args.partner or mapping.partner
    if not partner or not PARTY_ID_RE.fullmatch(partner):
        return _error("give --partner (your partner id); the mapping names none")
    if not args.dry_run and bool(args.amqp_url) == bool(args.http_url):
        return _error(f"give one of --amqp-url (or ${AMQP_ENV}) and --http-url")
    if args.key is None:
        if not args.dry_run:
            return _error("give --key (your private signing key)")
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        signer = Signer.create(partner, "dry-run", Ed25519PrivateKey.generate())  # signs nothing
    else:
        try:
            private_key = load_private_key(args.key)
        except (OSError, ValueError) as exc:
            return _error(f"key {args.key}: {exc}")
        kid = args.kid or _kid_from(args.key)
        if not KEY_ID_RE.fullmatch(kid):
            return _error(f"{kid!r} is not a valid key id; give --kid")
        id_key_file = id_key_path(args.key.parent, partner)
        if not id_key_file.is_file():
            return _error(
                f"no message-id key at {id_key_file}: `sv-broker adapter keys generate` makes one beside the "
                "signing key; keep it across key rotations (it keeps resends recognisable as duplicates)"
            )
        try:
            id_key = load_or_create_id_key(args.key.parent, partner)
        except (OSError, ValueError) as exc:
            return _error(f"message-id key: {exc}")
        signer = Signer.create(partner, kid, private_key, id_key)

    state_path = args.state or default_state_path(args.state_dir, partner, mapping.event_type)
    if export is None and not state_path.is_file():
        # A withdrawal's revision comes from the state (which keys were sent, at which revision).
        return _error(f"no state file at {state_path}: give --state (the one the pushes used)")
    report_path = args.report or (
        default_report_path(export) if export is not None else default_withdraw_report_path(state_path)
    )
    user_id = None if args.no_user_id else (args.amqp_user_id or (login_user(args.amqp_url) if args.amqp_url else None))

    def make_sink(on_result: OnResult) -> Sink:
        if args.amqp_url:
            return AmqpSink(
                args.amqp_url,
                args.amqp_prefix,
                partner,
                mapping.event_type,
                on_result,
                window=args.window or 256,
                user_id=user_id,
                confirm_timeout=args.confirm_timeout,
            )
        return HttpSink(args.http_url, on_result, window=args.window or 32, timeout=args.confirm_timeout)

    withdrawing = export is None
    options = PushOptions(
        export=export,
        mapping=mapping,
        signer=signer,
        state_path=state_path if withdrawing or not args.dry_run else None,
        report_path=report_path,
        resend=args.resend,
        dry_run=args.dry_run,
        progress=False if args.no_progress else None,
        withdraw_missing=bool(getattr(args, "withdraw_missing", False)),
        withdraw_reason=args.reason if withdrawing else args.withdraw_reason,
        max_withdraw_share=getattr(args, "max_withdraw_share", 0.5),
        force_withdraw=bool(getattr(args, "force_withdraw", False)),
        withdraw_keys=withdraw_keys,
    )
    target = "(dry run: nothing is sent)" if args.dry_run else (args.http_url or _redacted(args.amqp_url))
    what = export.name if export is not None else f"withdraw {len(withdraw_keys)} record key(s)"
    print(
        f"{what}: mapping {mapping.name!r} -> {partner} {mapping.event_type} v{mapping.version} {target}",
        file=sys.stderr,
    )
    try:
        summary = asyncio.run(push(options, None if args.dry_run else make_sink))
    except StateError as exc:
        return _error(str(exc))
    except (ConnectionError, WorkerFailed) as exc:
        # Nothing unconfirmed was recorded as sent: the same command again picks up from here.
        print(f"error: {exc}; run the same command again to finish", file=sys.stderr)
        return EXIT_NOT_CONFIRMED
    for line in summary.lines():
        print(line)
    if summary.problems_by_reason or summary.corrections or summary.withdrawals:
        print(f"report: {report_path}", file=sys.stderr)
    if not args.dry_run:
        print(f"state: {state_path}", file=sys.stderr)
    return summary.exit_code


def _redacted(url: str) -> str:
    from adapters.publish_amqp import redact

    return redact(url)


# -- receipts ----------------------------------------------------------------------------------------------


def _register_receipts(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    receipts = actions.add_parser(
        "receipts",
        help="read the broker's receipts: which messages it accepted or rejected, and why",
        description=(
            "Read your receipts queue (<prefix>.receipts.<partner>) and show, for each message, the broker's "
            "verdict (accepted with its record count, duplicate, or rejected with the reason), mapped back to "
            "the export row and record key through the state file. The verdicts are written into the state, "
            "so the next push re-sends rejected rows once you have fixed them. Receipts are removed from the "
            "queue only after they are written (--keep leaves them). Exit 1 when a receipt is a rejection."
        ),
    )
    receipts.add_argument("--partner", help="your partner id (default: the mapping's partner)")
    receipts.add_argument("--mapping", help="mapping file or built-in name (for the partner and event type)")
    _add_amqp_args(receipts)
    _add_state_args(receipts)
    receipts.add_argument("--out", type=Path, default=None, help="append receipts to this file (.csv or .jsonl)")
    receipts.add_argument("--format", choices=("text", "csv", "jsonl"), default=None, help="output format")
    receipts.add_argument(
        "--wait",
        type=float,
        default=0.0,
        help="wait up to this many seconds for receipts of confirmed rows that have none yet (default: %(default)s)",
    )
    receipts.add_argument("--keep", action="store_true", help="leave the receipts on the queue")
    receipts.set_defaults(handler=run_receipts)


def run_receipts(args: argparse.Namespace) -> int:
    from adapters.mapping import MappingError, load_mapping
    from adapters.publish_amqp import redact
    from adapters.state import StateError, read_header

    partner, event_type = args.partner, None
    if args.mapping:
        try:
            mapping = load_mapping(args.mapping)
        except MappingError as exc:
            return _error(f"mapping: {exc}")
        partner = partner or mapping.partner
        event_type = mapping.event_type
    if not partner or not PARTY_ID_RE.fullmatch(partner):
        return _error("give --partner (your partner id)")
    if not args.amqp_url:
        return _error(f"give --amqp-url (or ${AMQP_ENV}); over HTTP the receipts are the answers, in the push report")
    fmt = args.format or (args.out.suffix.lstrip(".").lower() if args.out else "text")
    if fmt not in ("text", "csv", "jsonl"):
        return _error("--out must end in .csv or .jsonl, or give --format")
    if args.out is not None and fmt == "text":
        return _error("text output goes to the terminal; use .csv or .jsonl for --out")

    paths: list[Path] = [args.state] if args.state else sorted(args.state_dir.glob(f"{partner}.*.state.jsonl"))
    states: list[StateFile] = []
    try:
        for path in paths:
            header = read_header(path)
            if header is None or header[0] != partner or (event_type and header[1] != event_type):
                continue
            states.append(StateFile(path, partner=header[0], event_type=header[1]).open())
        try:
            return asyncio.run(_receipts(args, partner, states, fmt))
        except (ConnectionError, OSError) as exc:
            print(f"error: cannot read receipts from {redact(args.amqp_url)}: {exc}", file=sys.stderr)
            return EXIT_NOT_CONFIRMED
    except StateError as exc:
        return _error(str(exc))
    finally:
        for state in states:
            state.close()


async def _receipts(args: argparse.Namespace, partner: str, states: list[StateFile], fmt: str) -> int:
    from adapters import receipts as rc

    outstanding = rc.awaiting(states)
    fetched, connection = await rc.fetch(
        args.amqp_url, args.amqp_prefix, partner, wait=args.wait, outstanding=outstanding
    )
    try:
        rows = rc.to_rows(fetched.receipts, states)
        rc.write_rows(rows, args.out, fmt, sys.stdout)
        rc.record_verdicts(states, rows)
        for state in states:
            state.flush()  # durable before the receipts leave the queue
        still = len(rc.awaiting(states))
        print(rc.summary_line(rows, still, fetched.unreadable), file=sys.stderr if fmt != "text" else sys.stdout)
        if args.out is not None:
            print(f"receipts appended to {args.out}", file=sys.stderr)
        if fetched.messages and not args.keep:
            await fetched.messages[-1].ack(multiple=True)
    finally:
        await connection.close()  # unacknowledged receipts go back on the queue
    return 1 if any(row.status == "rejected" for row in rows) else 0


# -- sample / mappings -------------------------------------------------------------------------------------


def _register_sample(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from adapters.sample_exports import KINDS

    sample = actions.add_parser(
        "sample",
        help="write a synthetic export in a partner system's own columns (never real data)",
        description=(
            "Write a synthetic export of one kind, in that partner system's own columns and codes, from the "
            "synthetic generator (Friday/Saturday night peaks, ages 11-25, the named districts): for trying a "
            "mapping, tests and benchmarks. Never real data. Kinds: "
            + "; ".join(f"{k.name} ({k.title}, {k.format})" for k in KINDS.values())
            + "."
        ),
    )
    sample.add_argument("kind", choices=sorted(KINDS), help="export kind (also the name of its mapping)")
    sample.add_argument("--rows", type=int, default=1000, help="rows to write (default: %(default)s)")
    sample.add_argument("--out", type=Path, required=True, help="file to write")
    sample.add_argument("--seed", type=int, default=2026, help="random seed (default: %(default)s)")
    sample.add_argument("--partner", default=None, help="partner the rows are for (default: the kind's)")
    sample.add_argument("--days", type=int, default=28, help="days the events spread over (default: %(default)s)")
    sample.set_defaults(handler=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    from adapters.sample_exports import KINDS, write_sample

    if args.rows < 1 or args.days < 1:
        return _error("--rows and --days must be positive")
    count = write_sample(args.kind, args.out, args.rows, seed=args.seed, partner=args.partner, days=args.days)
    kind = KINDS[args.kind]
    print(f"wrote {count:,} synthetic rows of the {kind.title} to {args.out} (mapping: {kind.name})")
    return 0


def _register_mappings(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mappings = actions.add_parser(
        "mappings",
        help="list the built-in mappings, or print one to start your own",
        description=(
            "Without NAME: list the mappings shipped with the adapter. With NAME: print that mapping file, "
            "a starting point for your own (see README, 'For partners: writing a mapping'). With --check FILE: "
            "load a mapping and report its mistakes."
        ),
    )
    mappings.add_argument("name", nargs="?", help="a built-in mapping to print")
    mappings.add_argument("--check", type=Path, default=None, help="check a mapping file and exit")
    mappings.set_defaults(handler=run_mappings)


def run_mappings(args: argparse.Namespace) -> int:
    from adapters.mapping import MappingError, builtin_mappings, load_mapping

    if args.check is not None:
        try:
            mapping = load_mapping(args.check)
        except MappingError as exc:
            print(f"{args.check}: {exc}", file=sys.stderr)
            return 1
        print(f"{args.check}: ok: {mapping.event_type} v{mapping.version}, reads {', '.join(mapping.columns)}")
        return 0
    builtins = builtin_mappings()
    if args.name:
        path = builtins.get(args.name)
        if path is None:
            return _error(f"no built-in mapping {args.name!r} (have: {', '.join(builtins)})")
        sys.stdout.write(path.read_text(encoding="utf-8"))
        return 0
    for name, path in builtins.items():
        mapping = load_mapping(path)
        print(f"{name:<20} {mapping.event_type:<18} {mapping.format or '?':<6} {mapping.description}")
    return 0


# -- keys --------------------------------------------------------------------------------------------------


def _register_keys(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = actions.add_parser(
        "keys", help="your signing key: generate one, print its registry entry", description="Your signing key."
    )
    keys_sub = keys.add_subparsers(dest="adapter_keys_command", required=True, metavar="ACTION")
    gen = keys_sub.add_parser(
        "generate",
        help="generate an Ed25519 key pair and print the registry entry for the broker's operators",
        description=(
            "Generate an Ed25519 key pair (the same as 'sv-broker keys generate'). The private key is written "
            "to OUT/<kid>.key.pem with mode 0600: keep it on your side, never send it. The registry entry "
            "printed on stdout (and written to OUT/<kid>.pub.toml) is what you send to the broker's operators."
        ),
    )
    add_generate_arguments(gen)  # one code path with `sv-broker keys generate`
    entry = keys_sub.add_parser(
        "entry",
        help="print the registry entry of an existing private key",
        description="Print the [[key]] registry entry (public key only) for a private key you already have.",
    )
    entry.add_argument("--key", required=True, type=Path, help="the private key (PEM, mode 0600)")
    entry.add_argument("--partner", required=True, help="your partner id")
    entry.add_argument("--kid", help="key id (default: the key file name before .key.pem)")
    entry.add_argument("--valid-days", type=int, default=365, help="validity period in days (default: %(default)s)")
    entry.set_defaults(handler=run_entry)


def run_entry(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from schemas.keyfile import KeyEntry, load_private_key, public_bytes

    if not PARTY_ID_RE.fullmatch(args.partner):
        return _error(f"{args.partner!r} is not a valid partner id")
    kid = args.kid or _kid_from(args.key)
    if not KEY_ID_RE.fullmatch(kid):
        return _error(f"{kid!r} is not a valid key id; give --kid")
    try:
        private_key = load_private_key(args.key)
    except (OSError, ValueError) as exc:
        return _error(f"key {args.key}: {exc}")
    now = datetime.now(UTC).replace(microsecond=0)
    entry = KeyEntry(
        kid=kid,
        partner=args.partner,
        public_key=public_bytes(private_key),
        valid_from=now - timedelta(minutes=5),
        valid_until=now + timedelta(days=args.valid_days),
    )
    print("# registry entry: send this to the broker's operators (public key only)", file=sys.stderr)
    sys.stdout.write(entry.to_toml())
    return 0


# -- message-id ------------------------------------------------------------------------------------------


def _register_message_id(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = actions.add_parser(
        "message-id",
        help="print the message id of a source record (for the broker's IG console or audit trace)",
        description=(
            "Print the message id your adapter gives a source record: the id the broker's audit trail, the IG "
            "console's record trace and your receipts name. Keyed with your message-id key (the .idkey file "
            "beside your signing key), so only you can compute it; the record key itself never leaves your side."
        ),
    )
    cmd.add_argument("--partner", required=True, help="your partner id")
    cmd.add_argument("--id-key", required=True, type=Path, help="your message-id key file (<partner>.idkey, 0600)")
    cmd.add_argument(
        "record_keys",
        nargs="+",
        metavar="RECORD-KEY",
        help="the source record key, as the mapping builds it (several columns joined as the mapping joins them)",
    )
    cmd.set_defaults(handler=run_message_id)


def run_message_id(args: argparse.Namespace) -> int:
    import stat

    from schemas.envelope import message_id, record_key_part

    if not PARTY_ID_RE.fullmatch(args.partner):
        return _error(f"{args.partner!r} is not a valid partner id")
    try:
        # Read only: never create a key here (a new key would give every record a new id).
        if stat.S_IMODE(args.id_key.stat().st_mode) & 0o077:
            return _error(f"{args.id_key} is readable by group/others; chmod 600 it")
        id_key = bytes.fromhex(args.id_key.read_text(encoding="ascii").strip())
    except (OSError, ValueError) as exc:
        return _error(f"message-id key {args.id_key}: {exc}")
    if len(id_key) < 32:
        return _error(f"{args.id_key} does not hold a 32-byte message-id key")
    for key in args.record_keys:
        print(message_id(args.partner, record_key_part(key), id_key))
    return 0
