"""Agreement files (TOML) -> a compiled, immutable :class:`PolicySet`.

Every refusal names the file, the key path (and a best-effort line), a stable reason code and a
sentence, so an IG lead can fix the file without reading code.  The broker refuses to start on any
error: an agreement half-loaded is an agreement that releases something nobody signed.

The file format (one agreement per file, ``policies/agreements/<id>.toml``)::

    id = "dsa-istv-ae-2026"                 # file name must be <id>.toml
    title = "..."
    revision = 3                            # only ever goes up (policies/revisions.lock)
    parties = ["uhdb-royal-derby-ed", "derby-csp-analysts", ...]   # every flow party is listed
    purpose = "..."
    lawful_basis = ["UK GDPR Art 6(1)(e)", "DPA 2018 Sch 1 Pt 2 para 10"]
    valid_from = 2026-04-01                 # TOML dates, UK local days, inclusive
    valid_to = 2028-03-31
    review_by = 2027-03-31
    retention_days = 365

    [bands]                                 # named band sets for generalise to = "band"
    sv-age = ["0-10", "11-17", "18-24", "25-34", "35-49", "50-64", "65+"]

    [groups.key-stage]                      # named group sets for generalise to = "group"
    KS3 = ["7", "8", "9"]

    [rule_sets]                             # optional: rule lists shared by several flows
    district-level = [ { id = "...", field = "...", action = "keep" }, ... ]

    [[flows]]
    id = "ae-to-derby-csp"
    partners = ["uhdb-royal-derby-ed"]
    event_type = "ae_assault"
    versions = [1]
    consumers = ["derby-csp-analysts"]
    when = [ { field = "district", in = ["E06000015"] } ]          # optional row conditions
    cadence_days = 7                        # optional: the partners send at least weekly (alerts)
    rules = [                                                       # or rule_set = "district-level"
      { id = "ae-arrival-week", field = "arrival_datetime", action = "generalise", to = "week", as = "arrival_week" },
    ]

Everything not named by a rule is dropped.  Unknown keys anywhere are errors, not ignored: a
misspelt ``when`` would otherwise silently widen a release.

The document's shape (keys, types, which may be left out) is the pydantic model
:class:`~broker.policy.documents.AgreementDoc`; this module reads the files and checks what a
model cannot say: parties in the registry, fields in the event schema and the transforms that fit
them, the band, group and rule sets a rule or flow names, the revision lock, the dates' order,
the secrets, and the lint (sets used by no flow).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError

from broker.errors import PolicyError, SpecError
from broker.figures.specs import SPECS as FIGURES_SPECS
from broker.figures.specs import period_field
from broker.policy.conditions import compile_condition
from broker.policy.documents import ConditionDoc, FlowDoc, HoldDoc, RuleDoc, Salvage, salvage
from broker.policy.model import (
    FORMS_FOR_KIND,
    NEEDS_REASON,
    PSEUDONYMISABLE,
    SCHEMA_FIELDS,
    Action,
    Agreement,
    Band,
    CompiledCondition,
    CompiledRule,
    FieldSpec,
    FiguresSpec,
    Flow,
    Form,
    HoldPolicy,
    PlanKey,
    PolicySet,
    build_plan,
    finish_flow,
)
from broker.policy.transforms import (
    MIN_SECRET_BYTES,
    check_groups_fit,
    compile_generalise,
    compile_keep,
    compile_pseudonymise,
    parse_bands,
    parse_groups,
)
from broker.registry import FIGURES_ONLY_ROLE, Registry
from schemas.documents import DocumentModel, ErrorDetails, key_path
from schemas.errors import CheckCode as C
from schemas.errors import Reason
from schemas.events import EVENT_MODELS

__all__ = [
    "Document",
    "PolicyError",
    "PolicySet",
    "Problem",
    "build_policy",
    "compile_policy",
    "load_policy",
    "read_documents",
    "read_lock",
    "render_lock",
    "uses_pseudonyms",
]

AGREEMENTS_DIR = "agreements"
LOCK_FILE = "revisions.lock"


@dataclass(frozen=True, slots=True)
class Problem:
    severity: str  # "error" or "warning"
    path: str
    key: str
    code: C
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.path + (f":{self.line}" if self.line else "")
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.code.value}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "file": self.path,
            "line": self.line,
            "key": self.key,
            "reason": self.code.value,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class Document:
    """One agreement file as read: its path, its text (for line numbers) and its TOML."""

    path: str
    doc: dict[str, Any]
    text: str = ""


# --- reading ------------------------------------------------------------------------------------


def read_documents(policy_dir: Path) -> tuple[list[Document], list[Problem]]:
    documents: list[Document] = []
    problems: list[Problem] = []
    folder = policy_dir / AGREEMENTS_DIR
    for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
        try:
            text = path.read_text(encoding="utf-8")
            documents.append(Document(str(path), tomllib.loads(text), text))
        except OSError as exc:
            problems.append(Problem("error", str(path), "", C.FILE_UNREADABLE, f"cannot read: {exc.strerror}"))
        except UnicodeDecodeError:
            problems.append(Problem("error", str(path), "", C.FILE_UNREADABLE, "not UTF-8"))
        except tomllib.TOMLDecodeError as exc:
            line = re.search(r"line (\d+)", str(exc))
            problems.append(
                Problem("error", str(path), "", C.INVALID_TOML, str(exc), int(line.group(1)) if line else None)
            )
    return documents, problems


def read_lock(policy_dir: Path) -> tuple[dict[str, int] | None, list[Problem]]:
    """``policies/revisions.lock``: the highest revision accepted per agreement (None if absent).

    Why a committed lock: the threat is a rollback, an older and wider revision of an agreement
    restored by a bad merge or by someone with write access to the policy folder.  The revision in
    the file alone cannot show that; the lock, changed only by ``policy check --update-lock`` and
    reviewed like any other commit, can.
    """
    path = policy_dir / LOCK_FILE
    if not path.is_file():
        return None, []
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return None, [Problem("error", str(path), "", C.LOCK_INVALID, f"cannot read the lock: {exc}")]
    try:
        return dict(LockDoc.model_validate(doc).revisions), []
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    problems = [_lock_problem(str(path), error) for error in errors]
    table = doc.get("revisions", {})
    if not isinstance(table, dict):
        return None, problems
    # Every well-formed entry still counts: one bad line must not lift the lock on the others.
    bad = {error["loc"][1] for error in errors if len(error["loc"]) > 1}
    return {k: v for k, v in table.items() if k not in bad}, problems


class LockDoc(DocumentModel):
    """``revisions.lock``: one ``[revisions]`` table of agreement id = positive revision."""

    revisions: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)


def _lock_problem(path: str, error: ErrorDetails) -> Problem:
    """One pydantic error in the lock as a :class:`Problem` (key path, code, sentence)."""
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        return Problem("error", path, key_path(loc), C.LOCK_INVALID, "unknown key; expected [revisions]")
    if len(loc) == 1:
        return Problem("error", path, "revisions", C.LOCK_INVALID, "must be a table")
    return Problem("error", path, key_path(loc[:1]) + f".{loc[1]}", C.LOCK_INVALID, "must be a positive integer")


def render_lock(revisions: Mapping[str, int]) -> str:
    lines = [
        "# The highest revision accepted per agreement. Written by `sv-broker policy check --update-lock`;",
        "# review changes to it like any other policy change. The broker refuses to load an agreement",
        "# whose revision is below the one recorded here (a rolled-back, possibly wider, agreement).",
        "",
        "[revisions]",
    ]
    lines += [f'"{agreement_id}" = {revision}' for agreement_id, revision in sorted(revisions.items())]
    return "\n".join(lines) + "\n"


# --- line finding (best effort: tomllib gives no positions) ---------------------------------------


def _kv(key: str, value: str) -> str:
    return rf"\b{re.escape(key)}\s*=\s*[\"']{re.escape(value)}[\"']"


def _key(key: str) -> str:
    return rf"(?m)^\s*[\"']?{re.escape(key)}[\"']?\s*=|^\s*\[(?:[^\]\s]*\.)?{re.escape(key)}[.\]]"


def _line_of(text: str, anchors: tuple[str, ...]) -> int | None:
    """The line of the last anchor, each searched after the previous one (e.g. a flow's id, then
    a rule id inside it); None if the first is not found."""
    if not text or not anchors:
        return None
    pos = 0
    found: int | None = None
    for anchor in anchors:
        match = re.compile(anchor, re.MULTILINE).search(text, pos)
        if match is None:
            break
        matched = match.group()
        start = match.start() + len(matched) - len(matched.lstrip())  # skip blank lines \s* ate
        found = text.count("\n", 0, start) + 1
        pos = match.end()
    return found


# --- compiling ----------------------------------------------------------------------------------


def _anchors(raw: Any, loc: tuple[int | str, ...]) -> tuple[str, ...]:
    """Line anchors for a place in the document: each item by its id (a flow without one by its
    ``[[flows]]`` header), each key by its name."""
    out: list[str] = []
    item: Any = raw
    for depth, part in enumerate(loc):
        if isinstance(item, dict):
            item = item.get(part)
        elif isinstance(item, list) and isinstance(part, int) and part < len(item):
            item = item[part]
        else:
            item = None
        if isinstance(part, str):
            out.append(_key(part))
            continue
        rid = item.get("id") if isinstance(item, dict) else None
        if isinstance(rid, str):
            out.append(_kv("id", rid))
        elif loc[:depth] == ("flows",):
            out += [r"\[\[flows\]\]"] * (part + 1)
    if loc[:1] == ("flows",):  # a flow's keys are found after its header, not by the section name
        out.pop(0)
    return tuple(out)


@dataclass(slots=True)
class _RuleSource:
    rule: RuleDoc
    key: str
    anchors: tuple[str, ...]


class _Compiler:
    """Checks what the document models cannot say (see ``documents.py`` for the shape): references
    to the registry and the event schemas, references inside the document, the revision lock,
    the dates' order, the secrets; then compiles each flow."""

    def __init__(self, registry: Registry, secrets: Mapping[str, bytes], lock: Mapping[str, int] | None) -> None:
        self.registry = registry
        self.secrets = secrets
        self.lock = lock
        self.problems: list[Problem] = []

    # reporting
    def _add(
        self, severity: str, document: Document, key: str, code: C, message: str, anchors: tuple[str, ...]
    ) -> None:
        self.problems.append(Problem(severity, document.path, key, code, message, _line_of(document.text, anchors)))

    def error(self, document: Document, key: str, code: C, message: str, anchors: tuple[str, ...] = ()) -> None:
        self._add("error", document, key, code, message, anchors)

    def warn(self, document: Document, key: str, code: C, message: str, anchors: tuple[str, ...] = ()) -> None:
        self._add("warning", document, key, code, message, anchors)

    def _error_count(self) -> int:
        return sum(1 for p in self.problems if p.severity == "error")

    # the agreement
    def agreement(self, document: Document) -> tuple[Agreement, list[Flow]] | None:
        before = self._error_count()
        doc, shape = salvage(document.doc)
        for problem in shape:
            self.error(document, problem.key, problem.code, problem.message, _anchors(document.doc, problem.loc))
        if doc.id is None:
            return None
        agreement_id = doc.id
        if document.path.endswith(".toml") and Path(document.path).stem != agreement_id:
            self.error(
                document, "id", C.FILE_NAME_MISMATCH, f"the file must be named {agreement_id}.toml", (_key("id"),)
            )
        if doc.revision is not None and self.lock is not None and self.lock.get(agreement_id, 0) > doc.revision:
            self.error(
                document,
                "revision",
                C.REVISION_DECREASED,
                f"revision {doc.revision} is below revision {self.lock[agreement_id]} recorded in {LOCK_FILE}; an "
                "agreement's revision only goes up (a lower one may be a rolled-back, wider agreement)",
                (_key("revision"),),
            )
        parties = list(dict.fromkeys(doc.parties or ()))
        for party in parties:
            if party not in self.registry.partners and party not in self.registry.consumers:
                self.error(
                    document,
                    "parties",
                    C.UNKNOWN_PARTY,
                    f"party {party!r} is not in the registry (parties.toml)",
                    (_key("parties"),),
                )
        self._dates(document, doc)
        bands: dict[str, tuple[Band, ...]] = {}
        for name, labels in doc.bands.items():
            try:
                bands[name] = parse_bands(labels, f"bands.{name}")
            except SpecError as exc:
                self.error(document, exc.key, exc.code, exc.message, (r"(?m)^\s*\[bands\]", _key(name)))
        groups: dict[str, dict[str, str]] = {}
        for name, table in doc.groups.items():
            try:
                groups[name] = parse_groups(table, f"groups.{name}")
            except SpecError as exc:
                self.error(document, exc.key, exc.code, exc.message, (rf"\[groups\.{re.escape(name)}\]",))

        pseudonymises = uses_pseudonyms(document.doc)
        secret = self.secrets.get(agreement_id)
        if pseudonymises and secret is None:
            # The engine refuses to start an agreement that pseudonymises without its own secret:
            # a default or shared key would make pseudonyms linkable across agreements.
            self.error(
                document,
                "",
                C.SECRET_MISSING,
                f"agreement {agreement_id} pseudonymises but no secret is loaded for it: add it to the "
                f'secrets file ([pseudonym_secrets] {agreement_id} = "<hex>") or set '
                f"SV_BROKER_SECRET_{agreement_id.upper().replace('-', '_')}",
                (r'\baction\s*=\s*"pseudonymise"',),
            )
        elif pseudonymises and secret is not None and len(secret) < MIN_SECRET_BYTES:
            self.error(
                document,
                "",
                C.SECRET_WEAK,
                f"the secret for {agreement_id} is {len(secret)} bytes; at least {MIN_SECRET_BYTES} are required",
            )

        whole = doc.complete
        agreement = Agreement(
            id=agreement_id,
            title=whole.title if whole else "",
            revision=whole.revision if whole else 0,
            parties=tuple(parties),
            purpose=whole.purpose if whole else "",
            lawful_basis=tuple(whole.lawful_basis) if whole else (),
            valid_from=whole.valid_from if whole else date.min,
            valid_to=whole.valid_to if whole else date.min,
            review_by=whole.review_by if whole else date.min,
            retention_days=whole.retention_days if whole else 0,
            path=document.path,
            pseudonymises=pseudonymises,
            hold=self._hold(document, whole.hold, whole.retention_days) if whole and whole.hold else None,
            notes=(whole.notes or "").strip() if whole else "",
        )
        # Parties unknown (malformed): the flows' parties are not checked against them.
        listed = set(parties) if doc.parties is not None else None
        flows = self._flows(document, agreement, doc, listed, bands, groups, secret)
        self._unused(document, document.doc)
        if self._error_count() > before:
            return None
        return agreement, flows

    def _hold(self, document: Document, hold: HoldDoc, retention_days: int) -> HoldPolicy | None:
        """The ``[hold]`` table, compiled; a held event is never kept longer than the agreement
        keeps what it releases (storage limitation: holding is not a way round retention)."""
        if hold.days > retention_days:
            self.error(
                document,
                "hold.days",
                C.BAD_VALUE,
                f"hold.days ({hold.days}) is longer than retention_days ({retention_days})",
                (r"(?m)^\s*\[hold\]", _key("days")),
            )
            return None
        return HoldPolicy(frozenset(Reason(r) for r in hold.reasons), hold.days, hold.expired_grace_days or 0)

    def _dates(self, document: Document, doc: Salvage) -> None:
        valid_from, valid_to, review_by = doc.valid_from, doc.valid_to, doc.review_by
        if valid_from and valid_to and valid_to < valid_from:
            self.error(document, "valid_to", C.DATES_INCONSISTENT, "valid_to is before valid_from", (_key("valid_to"),))
        if valid_from and review_by and review_by < valid_from:
            self.error(
                document, "review_by", C.DATES_INCONSISTENT, "review_by is before valid_from", (_key("review_by"),)
            )
        if valid_to and review_by and review_by > valid_to:
            self.warn(
                document,
                "review_by",
                C.DATES_INCONSISTENT,
                "review_by is after valid_to: the agreement ends unreviewed",
                (_key("review_by"),),
            )

    def _flows(
        self,
        document: Document,
        agreement: Agreement,
        doc: Salvage,
        parties: set[str] | None,
        bands: Mapping[str, tuple[Band, ...]],
        groups: Mapping[str, dict[str, str]],
        secret: bytes | None,
    ) -> list[Flow]:
        flows: list[Flow] = []
        flow_ids: set[str] = set()
        rule_ids: dict[str, str] = {}  # rule id -> key of its declaration
        rule_sets = {
            name: [_RuleSource(r, f"rule_sets.{name}[{r.id!r}]", (_key(name), _kv("id", r.id))) for r in rules]
            for name, rules in doc.rule_sets.items()
        }
        for declared in rule_sets.values():
            for source in declared:
                self._note_rule_id(document, source, rule_ids)
        taken: dict[tuple[str, str, int, str], str] = {}  # (partner, type, version, consumer) -> flow id
        for index, flow in doc.flows:
            where = f"flows[{flow.id!r}]"
            anchors = (_kv("id", flow.id),)
            errors_before = self._error_count()
            if flow.id in flow_ids:
                self.error(
                    document, f"{where}.id", C.DUPLICATE_ID, f"flow id {flow.id!r} is used twice", (*anchors, *anchors)
                )  # the second use
            flow_ids.add(flow.id)
            versions: list[int] = []
            for v in dict.fromkeys(flow.versions):
                if (flow.event_type, v) in EVENT_MODELS:
                    versions.append(v)
                else:
                    self.error(
                        document,
                        f"{where}.versions",
                        C.UNKNOWN_EVENT_VERSION,
                        f"there is no schema for {flow.event_type} version {v}",
                        (*anchors, _key("versions")),
                    )
            partners = list(dict.fromkeys(flow.partners))
            consumers = list(dict.fromkeys(flow.consumers))
            self._flow_parties(document, flow, where, anchors, partners, consumers, parties)
            sources: list[_RuleSource] = []
            if flow.rule_set is not None:
                if flow.rule_set in rule_sets:
                    sources = rule_sets[flow.rule_set]
                elif flow.rule_set not in doc.broken_rule_sets:  # a malformed one is reported already
                    self.error(
                        document,
                        f"{where}.rule_set",
                        C.UNKNOWN_RULE_SET,
                        f"no rule set {flow.rule_set!r} in [rule_sets]",
                        (*anchors, _key("rule_set")),
                    )
            for rule in flow.rules or ():
                key = f"{where}.rules[{rule.id!r}]"
                sources.append(_RuleSource(rule, key, (*anchors, _kv("id", rule.id))))
                self._note_rule_id(document, sources[-1], rule_ids)

            conditions: list[CompiledCondition] = []
            rules: list[CompiledRule] = []
            for version in versions:
                fields = SCHEMA_FIELDS[(flow.event_type, version)]
                conditions = self._conditions(document, flow.when, fields, where, anchors)
                rules = self._rules(document, agreement, sources, fields, bands, groups, secret, where)
            figures = self._figures(document, flow, where, anchors, rules)
            if self._error_count() > errors_before:
                continue
            for partner in partners:
                for version in versions:
                    for consumer in consumers:
                        slot = (partner, flow.event_type, version, consumer)
                        if slot in taken:
                            # Two releases with one record id (record ids do not include the flow),
                            # and an IG lead could not tell which rules applied.
                            self.error(
                                document,
                                f"{where}.consumers",
                                C.CONSUMER_IN_TWO_FLOWS,
                                f"consumer {consumer!r} already receives {flow.event_type} v{version} from {partner} "
                                f"in flow {taken[slot]!r}; one flow per consumer per partner and event",
                                (*anchors, _key("consumers")),
                            )
                        taken[slot] = flow.id
            flows.append(
                finish_flow(
                    Flow(
                        agreement=agreement,
                        id=flow.id,
                        index=index,
                        partners=frozenset(partners),
                        event_type=flow.event_type,
                        versions=frozenset(versions),
                        consumers=tuple(consumers),
                        conditions=tuple(conditions),
                        rules=tuple(rules),
                        cadence_days=flow.cadence_days,
                        figures=figures,
                    )
                )
            )
        return flows

    def _figures(
        self, document: Document, flow: FlowDoc, where: str, anchors: tuple[str, ...], rules: list[CompiledRule]
    ) -> FiguresSpec | None:
        """A figures flow, compiled: its event type must be one the figures know, and its rules
        must release the event's own date (generalised), or no quarter by event date exists.

        Threat: figures dated by when the broker received the events (a quarter's backlog counted
        in the next) published as that quarter's; the Board compares like with like."""
        doc = flow.figures
        if doc is None:
            return None
        key = f"{where}.figures"
        at = (*anchors, _key("figures"))
        if flow.event_type not in FIGURES_SPECS:
            self.error(
                document,
                key,
                C.BAD_VALUE,
                f"figures are computed for {sorted(FIGURES_SPECS)}, not {flow.event_type}",
                at,
            )
            return None
        outputs = [r.output for r in rules]
        if rules and period_field(flow.event_type, outputs) is None:
            wanted = ", ".join(FIGURES_SPECS[flow.event_type].period)
            self.error(
                document,
                key,
                C.BAD_VALUE,
                f"a figures flow must release the event's date, generalised, as one of: {wanted}",
                at,
            )
            return None
        return FiguresSpec(
            rules=doc.rules,
            round_to=doc.round_to,
            release_after_days=doc.release_after_days,
            trend_quarters=doc.trend_quarters,
        )

    def _flow_parties(
        self,
        document: Document,
        flow: FlowDoc,
        where: str,
        anchors: tuple[str, ...],
        partners: list[str],
        consumers: list[str],
        parties: set[str] | None,
    ) -> None:
        def error(key: str, code: C, message: str) -> None:
            self.error(document, f"{where}.{key}", code, message, (*anchors, _key(key)))

        for partner in partners:
            known = self.registry.partners.get(partner)
            if known is None:
                hint = " (it is a consumer)" if partner in self.registry.consumers else ""
                error("partners", C.UNKNOWN_PARTY, f"partner {partner!r} is not a registered partner{hint}")
                continue
            if parties is not None and partner not in parties:
                error(
                    "partners",
                    C.PARTY_NOT_IN_AGREEMENT,
                    f"partner {partner!r} is not listed in the agreement's parties",
                )
            if flow.event_type not in known.event_types:
                error(
                    "partners",
                    C.PARTNER_CANNOT_SEND,
                    f"partner {partner!r} is not registered to send {flow.event_type}",
                )
        for consumer in consumers:
            if consumer not in self.registry.consumers:
                hint = " (it is a partner)" if consumer in self.registry.partners else ""
                error("consumers", C.UNKNOWN_PARTY, f"consumer {consumer!r} is not a registered consumer{hint}")
            elif parties is not None and consumer not in parties:
                error(
                    "consumers",
                    C.PARTY_NOT_IN_AGREEMENT,
                    f"consumer {consumer!r} is not listed in the agreement's parties",
                )
            elif self.registry.consumers[consumer].role == FIGURES_ONLY_ROLE and flow.figures is None:
                # Threat: a Board (whose papers are public) sent event-level records by a flow
                # that forgot its figures table.
                error(
                    "consumers",
                    C.BAD_VALUE,
                    f"consumer {consumer!r} (role {FIGURES_ONLY_ROLE}) receives figures only: give this flow a "
                    "figures table",
                )

    def _note_rule_id(self, document: Document, source: _RuleSource, rule_ids: dict[str, str]) -> None:
        rid = source.rule.id
        if rid in rule_ids and rule_ids[rid] != source.key:
            self.error(
                document,
                source.key,
                C.DUPLICATE_ID,
                f"rule id {rid!r} is also used at {rule_ids[rid]}; rule ids name one rule each in the decision",
                source.anchors,
            )
        rule_ids.setdefault(rid, source.key)

    def _conditions(
        self,
        document: Document,
        when: list[ConditionDoc],
        fields: Mapping[str, FieldSpec],
        where: str,
        anchors: tuple[str, ...],
    ) -> list[CompiledCondition]:
        out: list[CompiledCondition] = []
        for i, condition in enumerate(when):
            key = f"{where}.when[{i}]"
            try:
                out.append(compile_condition(condition, fields, key))
            except SpecError as exc:
                cond_anchors = (*anchors, r"\bwhen\s*=", _kv("field", condition.field))
                self.error(document, exc.key or key, exc.code, exc.message, cond_anchors)
        return out

    def _rules(
        self,
        document: Document,
        agreement: Agreement,
        sources: list[_RuleSource],
        fields: Mapping[str, FieldSpec],
        bands: Mapping[str, tuple[Band, ...]],
        groups: Mapping[str, dict[str, str]],
        secret: bytes | None,
        where: str,
    ) -> list[CompiledRule]:
        out: list[CompiledRule] = []
        outputs: dict[str, str] = {}
        for source in sources:
            try:
                rule = _rule(agreement, source.rule, fields, bands, groups, secret)
            except SpecError as exc:
                self.error(document, f"{source.key}{exc.key}", exc.code, exc.message, source.anchors)
                continue
            if rule.output in outputs:
                self.error(
                    document,
                    f"{source.key}.as",
                    C.DUPLICATE_OUTPUT,
                    f"rules {outputs[rule.output]!r} and {rule.id!r} both release {rule.output!r} in {where}",
                    source.anchors,
                )
                continue
            outputs[rule.output] = rule.id
            out.append(rule)
        return out

    def _unused(self, document: Document, doc: Mapping[str, Any]) -> None:
        # From the document, not the compiled flows: a flow with an error must not make the band
        # set it names look unused (one problem reported, not two).
        tables = _rule_tables(doc)
        flows = doc.get("flows")
        flow_tables = [f for f in flows if isinstance(f, dict)] if isinstance(flows, list) else []
        used = {
            "bands": {t["bands"] for t in tables if isinstance(t.get("bands"), str)},
            "groups": {t["groups"] for t in tables if isinstance(t.get("groups"), str)},
            "rule_sets": {f["rule_set"] for f in flow_tables if isinstance(f.get("rule_set"), str)},
        }
        for section, names in used.items():
            table = doc.get(section, {})
            for name in table if isinstance(table, dict) else {}:
                if name not in names:
                    self.warn(document, f"{section}.{name}", C.UNUSED, f"{section} entry {name!r} is used by no flow")


def _rule(
    agreement: Agreement,
    rule: RuleDoc,
    fields: Mapping[str, FieldSpec],
    bands: Mapping[str, tuple[Band, ...]],
    groups: Mapping[str, dict[str, str]],
    secret: bytes | None,
) -> CompiledRule:
    """A well-formed rule against the event's fields and the agreement's band and group sets."""
    rid, name, output, action, reason = rule.id, rule.field, rule.output, rule.action, rule.reason
    spec = fields.get(name)
    if spec is None:
        raise SpecError(C.UNKNOWN_FIELD, f"the event has no field {name!r}", ".field")
    if action is Action.KEEP:
        if spec.kind in NEEDS_REASON and reason is None:
            raise SpecError(
                C.REASON_REQUIRED,
                f'{name!r} is {spec.kind} (a quasi-identifier); keeping it needs reason = "..." saying why',
                ".reason",
            )
        return CompiledRule(rid, name, output, action, compile_keep(spec), reason=reason)
    if action is Action.PSEUDONYMISE:
        if spec.kind not in PSEUDONYMISABLE:
            raise SpecError(
                C.TRANSFORM_TYPE_MISMATCH,
                f"pseudonymise does not fit {name!r} ({spec.kind}); it fits "
                f"{sorted(k.value for k in PSEUDONYMISABLE)} fields",
                ".action",
            )
        if secret is None:
            # SECRET_MISSING is reported once for the agreement, which is then not started; the
            # rule is never compiled with a default key.
            return CompiledRule(rid, name, output, action, _no_secret, reason=reason)
        return CompiledRule(rid, name, output, action, compile_pseudonymise(spec, secret, agreement.id), reason=reason)
    form = rule.to
    assert form is not None  # RuleDoc: generalise always says to what
    fitting = FORMS_FOR_KIND.get(spec.kind, frozenset())
    if form not in fitting:
        fits = ", ".join(sorted(f.value for f in fitting)) or "nothing (keep, pseudonymise or drop it)"
        raise SpecError(
            C.TRANSFORM_TYPE_MISMATCH,
            f"generalise to {form.value!r} does not fit {name!r} ({spec.kind}); it fits: {fits}",
            ".to",
        )
    if form is Form.LSOA and reason is None:
        raise SpecError(C.REASON_REQUIRED, 'releasing an LSOA needs reason = "..." saying why', ".reason")
    if form is Form.BAND:
        if rule.bands is None or rule.bands not in bands:
            raise SpecError(C.UNKNOWN_BAND_SET, f"bands = {rule.bands!r} names no set in [bands]", ".bands")
        apply = compile_generalise(form, spec, bands=bands[rule.bands])
        return CompiledRule(rid, name, output, action, apply, form, rule.bands, reason)
    if form is Form.GROUP:
        if rule.groups is None or rule.groups not in groups:
            raise SpecError(C.UNKNOWN_GROUP_SET, f"groups = {rule.groups!r} names no set in [groups]", ".groups")
        check_groups_fit(groups[rule.groups], spec, rule.groups, ".groups")
        apply = compile_generalise(form, spec, groups=groups[rule.groups])
        return CompiledRule(rid, name, output, action, apply, form, rule.groups, reason)
    return CompiledRule(rid, name, output, action, compile_generalise(form, spec), form, None, reason)


def _rule_tables(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every rule table of an agreement document, in rule sets and in flows."""
    tables: list[Any] = []
    rule_sets = doc.get("rule_sets")
    for rules in rule_sets.values() if isinstance(rule_sets, dict) else []:
        tables.extend(rules if isinstance(rules, list) else [])
    flows = doc.get("flows")
    for flow in flows if isinstance(flows, list) else []:
        if isinstance(flow, dict) and isinstance(flow.get("rules"), list):
            tables.extend(flow["rules"])
    return [t for t in tables if isinstance(t, dict)]


def uses_pseudonyms(doc: Mapping[str, Any]) -> bool:
    """Whether an agreement document has any pseudonymise rule (and so needs a secret)."""
    return any(t.get("action") == Action.PSEUDONYMISE.value for t in _rule_tables(doc))


def _no_secret(value: Any) -> None:
    raise RuntimeError("an agreement without its pseudonymisation secret is never started")


def compile_policy(
    documents: Iterable[Document],
    registry: Registry,
    secrets: Mapping[str, bytes],
    lock: Mapping[str, int] | None = None,
) -> tuple[PolicySet, list[Problem]]:
    """Compile every document; agreements with errors are left out of the set and reported."""
    compiler = _Compiler(registry, secrets, lock)
    agreements: dict[str, Agreement] = {}
    flows: list[Flow] = []
    seen: dict[str, str] = {}
    for document in documents:
        agreement_id = document.doc.get("id")
        if isinstance(agreement_id, str) and agreement_id in seen:
            compiler.error(
                document,
                "id",
                C.DUPLICATE_AGREEMENT,
                f"agreement {agreement_id} is also defined in {seen[agreement_id]}",
                (_key("id"),),
            )
            continue
        if isinstance(agreement_id, str):
            seen[agreement_id] = document.path
        result = compiler.agreement(document)
        if result is not None:
            agreement, agreement_flows = result
            agreements[agreement.id] = agreement
            flows.extend(agreement_flows)
    # One secret per agreement: two agreements sharing a key is a configuration slip that the
    # HMAC message's agreement id would still contain, but it defeats key separation, so refuse.
    by_secret: dict[bytes, str] = {}
    for agreement in agreements.values():
        secret = secrets.get(agreement.id)
        if agreement.pseudonymises and secret is not None:
            if secret in by_secret:
                compiler.problems.append(
                    Problem(
                        "error",
                        agreement.path,
                        "",
                        C.SECRET_REUSED,
                        f"agreements {by_secret[secret]} and {agreement.id} have the same secret; each needs its own",
                    )
                )
            by_secret.setdefault(secret, agreement.id)
    problems = list(dict.fromkeys(compiler.problems))
    return _policy_set(agreements, flows, registry), problems


def _policy_set(agreements: Mapping[str, Agreement], flows: list[Flow], registry: Registry) -> PolicySet:
    ordered = tuple(sorted(flows, key=lambda f: (f.agreement.id, f.index)))
    keys: set[PlanKey] = set()
    for partner in registry.partners.values():
        for event_type, version in EVENT_MODELS:
            if event_type in partner.event_types:
                keys.add((partner.id, event_type, version))
    for flow in ordered:
        keys.update((p, flow.event_type, v) for p in flow.partners for v in flow.versions)
    return PolicySet(
        agreements=dict(agreements),
        flows=ordered,
        plans={key: build_plan(ordered, key) for key in sorted(keys)},
        consumers_in_flows=frozenset(c for f in ordered for c in f.consumers),
    )


def _raise_on_errors(problems: list[Problem]) -> None:
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise PolicyError(errors[0], errors)


def build_policy(
    documents: Iterable[Document | tuple[str, Mapping[str, Any]]],
    registry: Registry,
    secrets: Mapping[str, bytes],
    lock: Mapping[str, int] | None = None,
) -> PolicySet:
    """Compile in-memory agreement documents (tests, tools); raises :class:`PolicyError` on any error."""
    docs = [d if isinstance(d, Document) else Document(d[0], dict(d[1])) for d in documents]
    policy, problems = compile_policy(docs, registry, secrets, lock)
    _raise_on_errors(problems)
    return policy


def load_policy(policy_dir: Path, registry: Registry, secrets: Mapping[str, bytes]) -> PolicySet:
    """Load ``policy_dir/agreements/*.toml`` (checked against ``policy_dir/revisions.lock`` when
    present) and compile them; raises :class:`PolicyError` on any error, so the broker does not
    start on agreements it cannot apply exactly as written."""
    documents, problems = read_documents(policy_dir)
    lock, lock_problems = read_lock(policy_dir)
    policy, compile_problems = compile_policy(documents, registry, secrets, lock)
    _raise_on_errors([*problems, *lock_problems, *compile_problems])
    return policy
