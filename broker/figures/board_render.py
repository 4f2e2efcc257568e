"""The board pack's outputs: HTML (printable, no script, no external asset), CSV, JSON and PNG charts.

Pure: a ``Board`` in, text and bytes out; the command writes the files. Every chart and every
number is drawn from the *published* tables (``PublishedTable``: suppressed entries are ``None``),
never from a ``CountTable``, so a suppressed count cannot reach a picture: it is drawn hatched,
labelled ``[c]``. matplotlib's Agg canvas on its own ``Figure`` (as ``broker/dpia/render_png.py``).
"""

from __future__ import annotations

import base64
import html
import io
import json

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from broker.figures.board import DAY_PART_HOURS, Board
from broker.figures.pack_css import CSS
from broker.figures.table import FOOTNOTE, SUPPRESSED, PublishedTable
from schemas.events.common import DISTRICT_NAMES

FONT = "DejaVu Sans"
BLUE = "#1d70b8"
GREY = "#b1b4b6"
INK = "#0b0c0c"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _figure(width: float = 7.0, height: float = 3.2) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height))
    ax = fig.add_subplot()
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _c_bar(ax: Axes, x: float, top: float, horizontal: bool = False) -> None:
    """A suppressed bar: an empty hatched box of a fixed token size and a ``[c]`` label, never its value."""
    size = max(top * 0.08, 0.5)
    if horizontal:
        ax.barh(x, size, color="white", edgecolor=GREY, hatch="///")
        ax.text(size, x, f" {SUPPRESSED}", va="center", fontsize=8, family=FONT)
    else:
        ax.bar(x, size, color="white", edgecolor=GREY, hatch="///")
        ax.text(x, size, SUPPRESSED, ha="center", va="bottom", fontsize=8, family=FONT)


def bar_chart(t: PublishedTable, title: str) -> bytes:
    """A one-way table as horizontal bars; suppressed cells hatched with ``[c]``."""
    vals = list(t.values[0][: t.n_cols])
    fig, ax = _figure(7.0, max(2.2, 0.35 * t.n_cols + 1.0))
    top = float(max((v for v in vals if v is not None), default=1))
    for i, v in enumerate(vals):
        if v is None:
            _c_bar(ax, i, top, horizontal=True)
        else:
            ax.barh(i, v, color=BLUE)
            ax.text(v, i, f" {v}", va="center", fontsize=8, family=FONT)
    ax.set_yticks(range(t.n_cols), [c.replace("_", " ") for c in t.cols], fontsize=8, family=FONT)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10, family=FONT, loc="left")
    fig.tight_layout()
    return _png(fig)


def heat_map(t: PublishedTable, title: str) -> bytes:
    """A two-way table as a heat map: suppressed cells hatched and labelled ``[c]``."""
    fig, ax = _figure(7.0, max(2.6, 0.4 * t.n_rows + 1.2))
    shown = [v for row in t.values[: t.n_rows] for v in row[: t.n_cols] if v is not None]
    top = max(shown, default=1) or 1
    for i in range(t.n_rows):
        for j in range(t.n_cols):
            v = t.values[i][j]
            if v is None:
                ax.add_patch(_rect(j, i, "white", hatch="///"))
                ax.text(j + 0.5, i + 0.5, SUPPRESSED, ha="center", va="center", fontsize=7, family=FONT)
            else:
                shade = min(1.0, 0.1 + 0.9 * v / top)
                ax.add_patch(_rect(j, i, BLUE, alpha=shade))
                ax.text(j + 0.5, i + 0.5, str(v), ha="center", va="center", fontsize=7, family=FONT,
                        color="white" if shade > 0.55 else INK)  # fmt: skip
    ax.set_xlim(0, t.n_cols)
    ax.set_ylim(t.n_rows, 0)
    cols = [f"{c}\n{DAY_PART_HOURS[c]}" if c in DAY_PART_HOURS else c for c in t.cols]
    ax.set_xticks([j + 0.5 for j in range(t.n_cols)], cols, fontsize=7, family=FONT)
    ax.set_yticks([i + 0.5 for i in range(t.n_rows)], list(t.rows), fontsize=7, family=FONT)
    ax.set_title(title, fontsize=10, family=FONT, loc="left")
    fig.tight_layout()
    return _png(fig)


def _rect(x: float, y: float, colour: str, *, alpha: float = 1.0, hatch: str | None = None) -> Rectangle:
    return Rectangle((x, y), 1, 1, facecolor=colour, alpha=alpha, hatch=hatch, edgecolor=GREY, linewidth=0.5)


def grouped_bars(t: PublishedTable, title: str) -> bytes:
    """Age band x sex: one group of bars per age band, one bar per sex; suppressed: hatched ``[c]``."""
    fig, ax = _figure(7.0, 3.2)
    width = 0.8 / max(1, t.n_cols)
    shown = [v for row in t.values[: t.n_rows] for v in row[: t.n_cols] if v is not None]
    top = float(max(shown, default=1))
    colours = [BLUE, "#d4351c", "#00703c", "#6f72af"]
    labelled = False
    for j, sex in enumerate(t.cols):
        label: str | None = sex.replace("_", " ")  # on the first bar of this sex that is shown
        for i in range(t.n_rows):
            x = i + (j - (t.n_cols - 1) / 2) * width
            v = t.values[i][j]
            if v is None:
                _c_bar(ax, x, top)
            else:
                ax.bar(x, v, width=width, color=colours[j % 4], label=label)
                labelled, label = labelled or label is not None, None
    ax.set_xticks(range(t.n_rows), [r.replace("_", " ") for r in t.rows], fontsize=8, family=FONT)
    if labelled:
        ax.legend(fontsize=7, frameon=False)
    ax.set_title(title, fontsize=10, family=FONT, loc="left")
    fig.tight_layout()
    return _png(fig)


def trend_line(t: PublishedTable, title: str) -> bytes:
    """Quarters as a line; a suppressed quarter is a gap labelled ``[c]``."""
    fig, ax = _figure(7.0, 2.6)
    vals = list(t.values[0][: t.n_cols])
    points = [(i, v) for i, v in enumerate(vals) if v is not None]
    ax.plot([i for i, _ in points], [v for _, v in points], marker="o", color=BLUE)
    for i, v in enumerate(vals):
        ax.annotate(SUPPRESSED if v is None else str(v), (i, 0 if v is None else v), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8, family=FONT)  # fmt: skip
    ax.set_xticks(range(t.n_cols), list(t.cols), fontsize=8, family=FONT)
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10, family=FONT, loc="left")
    fig.tight_layout()
    return _png(fig)


# A schematic, not a map: one tile per district, placed roughly as they lie (north at the top).
TILES: dict[str, tuple[int, int]] = {
    "E07000037": (0, 0),  # High Peak
    "E07000038": (1, 0),  # North East Derbyshire
    "E07000034": (2, 0),  # Chesterfield
    "E07000033": (3, 0),  # Bolsover
    "E07000035": (0, 1),  # Derbyshire Dales
    "E07000032": (1, 1),  # Amber Valley
    "E07000036": (2, 1),  # Erewash
    "E06000015": (1, 2),  # Derby
    "E07000039": (1, 3),  # South Derbyshire
    "E10000007": (3, 3),  # Derbyshire County: a county-level record, no district
}


def tile_map(t: PublishedTable, title: str) -> bytes:
    """The district table as a tile map of the ten areas; a suppressed district hatched ``[c]``."""
    fig = Figure(figsize=(6.0, 5.0))
    ax = fig.add_subplot()
    ax.set_axis_off()
    by_code = {label.rsplit("(", 1)[-1].rstrip(")"): t.values[0][j] for j, label in enumerate(t.cols)}
    top = max((v for v in by_code.values() if v is not None), default=1) or 1
    for code, (x, y) in TILES.items():
        name = DISTRICT_NAMES[code]
        if code not in by_code:  # not in this consumer's records: not a zero the table states
            ax.add_patch(Rectangle((x, y), 0.95, 0.95, facecolor="#f3f2f1", edgecolor=GREY, linestyle=":"))
            ax.text(x + 0.475, y + 0.35, name.replace(" ", "\n", 1), ha="center", va="center", fontsize=7,
                    family=FONT, color="#505a5f")  # fmt: skip
            ax.text(x + 0.475, y + 0.72, "no records", ha="center", va="center", fontsize=7, family=FONT,
                    color="#505a5f")  # fmt: skip
            continue
        v = by_code[code]
        if v is None:
            ax.add_patch(Rectangle((x, y), 0.95, 0.95, facecolor="white", hatch="///", edgecolor=GREY))
            label, ink = SUPPRESSED, INK
        else:
            shade = min(1.0, 0.08 + 0.92 * v / top)
            ax.add_patch(Rectangle((x, y), 0.95, 0.95, facecolor=BLUE, alpha=shade, edgecolor=GREY))
            label, ink = str(v), "white" if shade > 0.55 else INK
        ax.text(x + 0.475, y + 0.35, name.replace(" ", "\n", 1), ha="center", va="center", fontsize=7,
                family=FONT, color=ink)  # fmt: skip
        ax.text(x + 0.475, y + 0.72, label, ha="center", va="center", fontsize=10, family=FONT, color=ink,
                fontweight="bold")  # fmt: skip
    ax.set_xlim(-0.05, 4)
    ax.set_ylim(4, -0.05)
    ax.set_title(title + " (schematic tiles, not to scale)", fontsize=10, family=FONT, loc="left")
    fig.tight_layout()
    return _png(fig)


def charts(board: Board) -> dict[str, bytes]:
    """File name -> PNG, one chart per published table (drawn from the published values only)."""
    out: dict[str, bytes] = {}
    for section in board.sections:
        for name in section.table_names:
            t = board.table(name)
            caption = board.captions[name]
            if name.endswith(".trend"):
                out[f"{name}.png"] = trend_line(t, caption)
            elif name.endswith(".when"):
                out[f"{name}.png"] = heat_map(t, caption)
            elif ".who." in name:
                out[f"{name}.png"] = grouped_bars(t, caption)
            else:
                out[f"{name}.png"] = bar_chart(t, caption)
            if name.endswith(".where"):
                out[f"{name}.map.png"] = tile_map(t, caption)
    return out


def to_json(board: Board) -> str:
    return json.dumps(board_doc(board), indent=2, ensure_ascii=False) + "\n"


def sections_doc(board: Board) -> list[dict[str, object]]:
    """The sections as JSON-ready data: each table (``[c]`` for suppressed), caption and shares."""
    return [
        {
            "event_type": s.event_type,
            "title": s.title,
            "period_field": s.period_field,
            "tables": [board.table(n).to_json() | {"caption": board.captions[n]} for n in s.table_names],
            "shares": [sh.to_json() for sh in s.shares],
        }
        for s in board.sections
    ]


def board_doc(board: Board) -> dict[str, object]:
    doc: dict[str, object] = {
        "report": "quarterly board pack",
        "consumer": board.consumer,
        "quarter": str(board.quarter),
        "rules": board.rules,
        # Each section's events as its tables publish them (suppressed: "[c]"); the exact counts,
        # and how many records were not counted and why, are the analyst's (the CLI prints them),
        # never in a file made to be published: a small total is itself a small cell.
        "events": {k: SUPPRESSED if v is None else v for k, v in board.totals().items()},
        "sections": sections_doc(board),
        "disclosure_check": dict(board.report_doc()),
    }
    return doc


def to_csv(board: Board) -> dict[str, str]:
    return {f"{n}.csv": board.table(n).to_csv() for s in board.sections for n in s.table_names}


def _cell(v: int | None) -> str:
    return f'<td class="c">{SUPPRESSED}</td>' if v is None else f"<td>{v}</td>"


def _table_html(t: PublishedTable, caption: str) -> str:
    e = html.escape
    n, m = t.n_rows, t.n_cols
    rows = []
    if t.one_way:
        rows.append(f"<tr><th>{e(t.col_title)}</th><th>Count</th></tr>")
        rows += [f"<tr><th>{e(t.cols[j])}</th>{_cell(t.values[0][j])}</tr>" for j in range(m)]
        rows.append(f'<tr class="total"><th>Total</th>{_cell(t.values[n][m])}</tr>')
    else:
        head = "".join(f"<th>{e(c)}</th>" for c in t.cols)
        rows.append(f"<tr><th>{e(t.row_title)} \\ {e(t.col_title)}</th>{head}<th>Total</th></tr>")
        for i in range(n):
            rows.append(f"<tr><th>{e(t.rows[i])}</th>{''.join(_cell(v) for v in t.values[i])}</tr>")
        rows.append(f'<tr class="total"><th>Total</th>{"".join(_cell(v) for v in t.values[n])}</tr>')
    notes = "".join(f'<p class="note">{e(x)}</p>' for x in t.footnotes())
    return f"<table><caption>{e(caption)}</caption>{''.join(rows)}</table>{notes}"


def _style(css_href: str | None) -> str:
    """The pack's CSS inline (a file that stands alone), or linked (a page under a strict CSP)."""
    return f"<style>{CSS}</style>" if css_href is None else f"<link rel='stylesheet' href='{html.escape(css_href)}'>"


def inline_charts(page: str, chart_files: dict[str, bytes]) -> str:
    """The page with each chart's file name replaced by its PNG as data (one file to save or print)."""
    for name, png in chart_files.items():
        page = page.replace(f"src='{name}'", "src='data:image/png;base64," + base64.b64encode(png).decode() + "'")
    return page


def _shown_totals(board: Board) -> str:
    parts = [f"{n if n is not None else SUPPRESSED}" for n in board.totals().values()]
    return " + ".join(parts) if parts else "0"


def _intro(board: Board) -> str:
    e = html.escape
    if board.built_from == "figures":
        return (
            f"<p>The figures released to <b>{e(board.consumer)}</b> by the broker under its agreement: "
            f"{_shown_totals(board)} events counted with an event date in {board.quarter}, each table protected "
            "before it was released. Periods are by <b>event date</b>, never by the time the broker received or "
            "released anything: a late-reported offence counts in the quarter it happened (and the quarter is "
            "released again, as a new revision, when it does).</p>"
        )
    return (
        f"<p>Built from the records released to <b>{e(board.consumer)}</b>: {_shown_totals(board)} records with an "
        f"event date in {board.quarter}. Periods are by <b>event date</b> (the record's own released date field, "
        "named in each section), never by the time the broker released it: a late-reported offence counts in the "
        "quarter it happened. An ISO week counts in the quarter holding its Thursday.</p>"
    )


def to_html(board: Board, chart_files: dict[str, bytes], css_href: str | None = None) -> str:
    """The report: static HTML, print CSS, no script, no external asset (charts are files beside it)."""
    e = html.escape
    rep = board.report_doc()
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Serious violence quarterly board pack {board.quarter}</title>{_style(css_href)}</head><body>",
        f"<h1>Serious violence: quarterly board pack, {board.quarter}</h1>",
        _intro(board),
    ]
    rules = ", ".join(sorted({str(r.get("rule")) for r in dict(rep.get("rules", {})).values()}))
    parts.append(
        "<h2>Disclosure control</h2>"
        f"<p>Every table is protected by the partnership's disclosure control (rules: {e(rules or 'none')}; "
        f"--rules {e(board.rules)}): {rep.get('suppressed', 0)} entries suppressed [c], the small or dominated "
        "cells and the others it takes so that none can be worked out from totals, checked by a "
        f"linear-programming attack ({rep.get('lp_solves', 0)} solves; protected: {rep.get('protected')}). Which "
        "suppressed cells are small is not said (that would narrow them); the full disclosure-check report is "
        "the information governance lead's. Shares are computed from published counts only and are not "
        f"shown when their numerator or denominator is suppressed.</p><p class='note'>{e(FOOTNOTE)}</p>"
    )
    for s in board.sections:
        parts.append(f"<h2>{e(s.title)}</h2><p class='note'>Period field: <code>{e(s.period_field)}</code>.</p>")
        for sh in s.shares:
            pct = "not shown" if sh.percent is None else f"{sh.percent}%"
            num = SUPPRESSED if sh.numerator is None else sh.numerator
            den = SUPPRESSED if sh.denominator is None else sh.denominator
            note = f" ({e(sh.note)})" if sh.note else ""
            parts.append(f"<p><b>{e(sh.label)}</b>: {pct} ({num} of {den}){note}</p>")
        for name in s.table_names:
            img = f"{name}.png"
            pic = "".join(
                f"<img src='{e(f)}' alt='{e(board.captions[name])}'>"
                for f in (img, f"{name}.map.png")
                if f in chart_files
            )
            parts.append(f"<div class='figure'>{pic}{_table_html(board.table(name), board.captions[name])}</div>")
    parts.append("</body></html>\n")
    return "".join(parts)


def render(board: Board) -> dict[str, bytes]:
    """Every output file: name -> bytes (board.html, board.json, one CSV and one PNG per table)."""
    pngs = charts(board)
    out: dict[str, bytes] = {"board.html": to_html(board, pngs).encode(), "board.json": to_json(board).encode()}
    out |= {k: v.encode() for k, v in to_csv(board).items()}
    out |= pngs
    return out
