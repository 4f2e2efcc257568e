"""The agreements register as HTML, CSV and Markdown: pure functions returning text.

HTML: one complete, self-contained, printable page (no external asset, no script: it is
attached to a DPIA and read offline, years later), styled plainly after the GOV.UK design system
(headings, summary lists, tables, tags); a state is a tag *with its word* ("lapsed", "review
due"), never colour alone. One ``<section class="agreement" id="<agreement id>">`` per agreement,
each flow's field inventory a ``<table class="inventory" data-flow="<agreement>/<flow>">``.

CSV: the field inventory, one row per agreement × flow × schema field, with the agreement's
columns repeated (a spreadsheet filter per agreement or per consumer is then one click); cells
pass :func:`broker.spreadsheet.csv_cell` (no formulas from a purpose that starts with "-").
"""

from __future__ import annotations

import csv
import io
from html import escape

from broker.dpia.facts import FieldEntry, FlowFacts, State
from broker.dpia.register import AgreementEntry, Register
from broker.spreadsheet import csv_cell

_CSS = """
body { font-family: Arial, Helvetica, sans-serif; color: #0b0c0c; margin: 0; line-height: 1.35; }
main { max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { font-size: 2rem; margin: 0 0 8px; } h2 { font-size: 1.5rem; margin: 32px 0 8px; }
h3 { font-size: 1.15rem; margin: 24px 0 8px; } h4 { font-size: 1rem; margin: 16px 0 6px; }
a { color: #1d70b8; }
.lede { color: #505a5f; margin-top: 0; }
.tag { display: inline-block; padding: 2px 8px; font-weight: bold; font-size: 0.85rem; text-transform: uppercase;
  letter-spacing: 0.03em; background: #cce2d8; color: #005a30; border: 1px solid #005a30; }
.tag--due { background: #fff7bf; color: #594d00; border-color: #594d00; }
.tag--lapsed { background: #f6d7d2; color: #942514; border: 2px dashed #942514; }
.tag--future { background: #e8f1f8; color: #0c2d4a; border-color: #0c2d4a; }
.warning { border-left: 5px solid #d4351c; padding: 4px 12px; margin: 8px 0; }
dl.summary { display: grid; grid-template-columns: 14em 1fr; margin: 0; border-top: 1px solid #b1b4b6; }
dl.summary dt, dl.summary dd { margin: 0; padding: 6px 8px 6px 0; border-bottom: 1px solid #b1b4b6; }
dl.summary dt { font-weight: bold; }
table { border-collapse: collapse; width: 100%; margin: 4px 0 12px; font-size: 0.9rem; }
th, td { text-align: left; vertical-align: top; padding: 5px 8px 5px 0; border-bottom: 1px solid #b1b4b6; }
thead th { border-bottom: 2px solid #0b0c0c; }
tr.dropped td { color: #505a5f; }
code { font-family: "Courier New", monospace; font-size: 0.9em; }
@media print { main { max-width: none; padding: 0; } section.agreement { break-before: page; }
  a { color: inherit; text-decoration: none; } }
"""

_TAG_CLASS = {
    State.IN_FORCE: "tag",
    State.REVIEW_DUE: "tag tag--due",
    State.EXPIRING: "tag tag--due",
    State.REVIEW_OVERDUE: "tag tag--lapsed",
    State.EXPIRED: "tag tag--lapsed",
    State.NOT_YET_VALID: "tag tag--future",
}


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _tag(entry: AgreementEntry) -> str:
    return f'<strong class="{_TAG_CLASS[entry.state.state]}">{_e(entry.state.tag)}</strong>'


def _summary(rows: list[tuple[str, str]]) -> str:
    """A GOV.UK summary list; values are already HTML."""
    return '<dl class="summary">' + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _released_html(field: FieldEntry) -> tuple[str, str, str, str]:
    if not field.released:
        return ("not released", "dropped (default deny: not named by this flow)", "", "")
    return (
        "<br>".join(f"<code>{_e(o.output)}</code>" for o in field.outputs),
        "<br>".join(_e(o.describe) for o in field.outputs),
        "<br>".join(f"<code>{_e(o.rule_id)}</code>" for o in field.outputs),
        "<br>".join(_e(o.reason or "") for o in field.outputs),
    )


def _flow_html(flow: FlowFacts) -> str:
    out = [
        f'<h4 id="{_e(flow.ref)}">Flow <code>{_e(flow.flow_id)}</code></h4>',
        _summary(
            [
                ("Event", _e(flow.event)),
                ("From (partners)", ", ".join(f"<code>{_e(p)}</code>" for p in flow.partners)),
                ("To (consumers)", ", ".join(f"<code>{_e(c)}</code>" for c in flow.consumers)),
                ("Records", _e(flow.rows)),
                ("Cadence", _e(flow.cadence)),
                ("Fields", _e(f"{sum(f.released for f in flow.fields)} released, {len(flow.dropped)} dropped")),
            ]
        ),
        f'<table class="inventory" data-flow="{_e(flow.ref)}">',
        f"<caption>Field inventory of {_e(flow.ref)}: every field of {_e(flow.event)}</caption>",
        "<thead><tr><th scope=col>Field</th><th scope=col>Kind</th><th scope=col>Released as</th>"
        "<th scope=col>How</th><th scope=col>Rule</th><th scope=col>Reason</th></tr></thead><tbody>",
    ]
    for field in flow.fields:
        released, how, rule, reason = _released_html(field)
        kind = field.kind + (", optional" if field.optional else "")
        row_class = "" if field.released else ' class="dropped"'
        out.append(
            f'<tr{row_class} data-field="{_e(field.name)}"><th scope=row><code>{_e(field.name)}</code></th>'
            f"<td>{_e(kind)}</td><td>{released}</td><td>{how}</td><td>{rule}</td><td>{reason}</td></tr>"
        )
    out.append("</tbody></table>")
    return "\n".join(out)


def _agreement_html(entry: AgreementEntry) -> str:
    lock = "" if entry.locked_revision is None else f" (revisions.lock: {entry.locked_revision})"
    out = [
        f'<section class="agreement" id="{_e(entry.id)}" data-agreement="{_e(entry.id)}" '
        f'data-state="{entry.state.state.value}">',
        f"<h2>{_e(entry.title)}</h2>",
        f"<p>{_tag(entry)} {_e(entry.state.label)}</p>",
    ]
    if entry.state.warnings:
        out.append(
            '<div class="warning"><ul>' + "".join(f"<li>{_e(w)}</li>" for w in entry.state.warnings) + "</ul></div>"
        )
    out += [
        "<h3>Summary</h3>",
        _summary(
            [
                ("Agreement id", f"<code>{_e(entry.id)}</code>"),
                ("Revision", _e(f"{entry.revision}{lock}")),
                ("Revision history", _e(entry.history) if entry.history else "not recorded in the agreement"),
                ("Purpose", _e(entry.purpose)),
                ("Lawful basis", "<ul>" + "".join(f"<li>{_e(b)}</li>" for b in entry.lawful_basis) + "</ul>"),
                ("Valid", _e(f"{entry.valid_from} to {entry.valid_to}")),
                ("Review by", _e(entry.review_by)),
                ("Retention", _e(f"{entry.retention_days} days")),
                ("Held events", _e(entry.hold)),
                ("Pseudonymises", "yes (a secret of its own)" if entry.pseudonymises else "no"),
                ("File", f"<code>{_e(entry.path)}</code>"),
            ]
        ),
        "<h3>Parties</h3>",
        "<table><thead><tr><th scope=col>Party</th><th scope=col>Organisation</th><th scope=col>Role</th>"
        "<th scope=col>Id</th></tr></thead><tbody>",
        *(
            f"<tr><td>{_e(p.name)}</td><td>{_e(p.organisation)}</td><td>{_e(p.role)}</td>"
            f"<td><code>{_e(p.id)}</code></td></tr>"
            for p in entry.parties
        ),
        "</tbody></table>",
        "<h3>Flows and field inventory</h3>",
        *(_flow_html(f) for f in entry.flows),
        "<h3>ICO data sharing code checklist</h3>",
        '<table class="checklist"><thead><tr><th scope=col>Item</th><th scope=col>The code asks</th>'
        "<th scope=col>Source</th><th scope=col>Answer</th></tr></thead><tbody>",
        *(
            f"<tr><th scope=row>{_e(i.topic)}</th><td>{_e(i.asks)}</td><td>{_e(i.source.value)}</td>"
            f"<td>{_e(i.answer)}</td></tr>"
            for i in entry.checklist
        ),
        "</tbody></table>",
        "</section>",
    ]
    return "\n".join(out)


def to_html(register: Register) -> str:
    contents = "".join(f'<li><a href="#{_e(a.id)}">{_e(a.title)}</a> {_tag(a)}</li>' for a in register.agreements)
    unused = (
        "<h2>Registered parties named by no flow</h2><p>They receive (or send) nothing under any agreement.</p><ul>"
        + "".join(f"<li>{_e(p.name)} (<code>{_e(p.id)}</code>, {_e(p.role)})</li>" for p in register.unused)
        + "</ul>"
        if register.unused
        else ""
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en-GB">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(register.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>{_e(register.title)}</h1>\n"
        f'<p class="lede">{len(register.agreements)} agreements, from the compiled agreement files the broker '
        "enforces. Fields a flow does not name are not released (default deny). Checklist items marked "
        "\u201cnot recorded in the agreement\u201d are for the partnership to complete.</p>\n"
        f"<h2>Contents</h2>\n<ul>{contents}</ul>\n"
        + "\n".join(_agreement_html(a) for a in register.agreements)
        + f"\n{unused}\n</main>\n</body>\n</html>\n"
    )


# --- CSV ---------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "agreement_id",
    "agreement_title",
    "revision",
    "state",
    "valid_from",
    "valid_to",
    "review_by",
    "retention_days",
    "lawful_basis",
    "flow_id",
    "event_type",
    "versions",
    "partners",
    "consumers",
    "records",
    "cadence_days",
    "field",
    "field_kind",
    "optional",
    "released",
    "outputs",
    "how",
    "rule_ids",
    "reasons",
)


def inventory_rows(register: Register) -> list[list[object]]:
    rows: list[list[object]] = []
    for a in register.agreements:
        for f in a.flows:
            for field in f.fields:
                rows.append(
                    [
                        a.id,
                        a.title,
                        a.revision,
                        a.state.state.value,
                        a.valid_from.isoformat(),
                        a.valid_to.isoformat(),
                        a.review_by.isoformat(),
                        a.retention_days,
                        list(a.lawful_basis),
                        f.flow_id,
                        f.event_type,
                        [str(v) for v in f.versions],
                        list(f.partners),
                        list(f.consumers),
                        f.rows,
                        f.cadence_days,
                        field.name,
                        field.kind,
                        field.optional,
                        field.released,
                        [o.output for o in field.outputs],
                        [o.describe for o in field.outputs] if field.released else "dropped (default deny)",
                        [o.rule_id for o in field.outputs],
                        [o.reason or "" for o in field.outputs] if any(o.reason for o in field.outputs) else None,
                    ]
                )
    return rows


def to_csv(register: Register) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180
    writer.writerow(CSV_COLUMNS)
    for row in inventory_rows(register):
        writer.writerow([csv_cell(v) for v in row])
    return buffer.getvalue()


# --- Markdown ----------------------------------------------------------------------------------


def _md(text: object) -> str:
    # A table cell: pipes escaped, line breaks folded (a cell is one line in GitHub's tables).
    return " ".join(str(text).split()).replace("|", "\\|")


def to_markdown(register: Register) -> str:
    out = [f"# {register.title}", ""]
    for a in register.agreements:
        lock = "" if a.locked_revision is None else f" (revisions.lock: {a.locked_revision})"
        out += [
            f"## {a.title}",
            "",
            f"**{a.state.tag.upper()}**: {a.state.label}",
            "",
            *(f"> warning: {w}" for w in a.state.warnings),
            *([""] if a.state.warnings else []),
            f"- Agreement id: `{a.id}`, revision {a.revision}{lock}",
            f"- Revision history: {_md(a.history) if a.history else 'not recorded in the agreement'}",
            f"- Purpose: {a.purpose}",
            f"- Lawful basis: {'; '.join(a.lawful_basis)}",
            f"- Valid {a.valid_from} to {a.valid_to}; review by {a.review_by}",
            f"- Retention: {a.retention_days} days",
            f"- Held events: {a.hold}",
            f"- Parties: {'; '.join(f'{p.name} (`{p.id}`, {p.role})' for p in a.parties)}",
            "",
        ]
        for f in a.flows:
            out += [
                f"### Flow `{f.flow_id}`: {f.event}",
                "",
                f"From {', '.join(f'`{p}`' for p in f.partners)} to {', '.join(f'`{c}`' for c in f.consumers)}; "
                f"{f.rows}; {f.cadence}.",
                "",
                "| field | kind | released as | how | rule | reason |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            for field in f.fields:
                if field.released:
                    cells = [
                        ", ".join(o.output for o in field.outputs),
                        "; ".join(o.describe for o in field.outputs),
                        ", ".join(o.rule_id for o in field.outputs),
                        "; ".join(o.reason or "" for o in field.outputs),
                    ]
                else:
                    cells = ["not released", "dropped (default deny)", "", ""]
                out.append(f"| `{field.name}` | {field.kind} | " + " | ".join(_md(c) for c in cells) + " |")
            out.append("")
        out += ["### ICO data sharing code checklist", "", "| item | source | answer |", "| --- | --- | --- |"]
        out += [f"| {_md(i.topic)} | {_md(i.source.value)} | {_md(i.answer)} |" for i in a.checklist]
        out.append("")
    if register.unused:
        out += ["## Registered parties named by no flow", ""]
        out += [f"- {p.name} (`{p.id}`, {p.role})" for p in register.unused]
        out.append("")
    return "\n".join(out)
