"""The flow map as PNG: the SVG's layout (``layout.py``) drawn with matplotlib's Agg renderer, so
the picture is made with pip-installed code only (no Graphviz, no Cairo) and is the same picture
as the SVG, box for box.

A ``Figure`` with its own Agg canvas, never ``pyplot``: no global figure state, nothing shown,
safe to call from the console's request handlers. Bytes out; the caller writes the file.
The font is DejaVu Sans, which matplotlib ships, so the output does not depend on the host's fonts.
The PNG's text chunks carry the title and the description (as the SVG's <title>/<desc>).
"""

from __future__ import annotations

import io

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle
from matplotlib.path import Path
from matplotlib.patheffects import withStroke
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from broker.dpia.flowmap import FlowMap
from broker.dpia.layout import Layout, Text, layout
from broker.dpia.render_map import BLUE, FLOW_FILL, GREY, INK, PALE, RED, WHITE

POINTS_PER_UNIT = 0.72
"""A layout unit is 1/100 inch (the figure is width/100 inches wide); a point is 1/72 inch."""
DASHES = (0, (5.0, 3.0))
FONT = "DejaVu Sans"


def _text(ax: Axes, t: Text, colour: str = INK, halo: bool = False) -> None:
    ax.text(
        t.x,
        t.y,
        t.text,
        fontsize=t.size * POINTS_PER_UNIT,
        fontweight="bold" if t.bold else "normal",
        fontstyle="italic" if t.italic else "normal",
        fontfamily=FONT,
        ha="center" if t.anchor == "middle" else "left",
        va="baseline",
        color=colour,
        path_effects=[withStroke(linewidth=3, foreground=WHITE)] if halo else None,
    )


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _palette() -> Image.Image:
    """Every ink blended with every background it is drawn on, in 12 steps: the colours an
    anti-aliased line or letter can take. Mapping the picture onto this fixed palette keeps each
    ink exactly (an adaptive palette merges the rare red of one lapsed agreement into grey, and the
    word "lapsed" would lose its colour), at about a fifth of the 24-bit file's size."""
    steps = 12
    colours: list[tuple[int, int, int]] = []
    for ink in (INK, GREY, BLUE, RED):
        for ground in (WHITE, PALE, FLOW_FILL):
            a, b = _rgb(ink), _rgb(ground)
            colours += [
                tuple(round(b[i] + (a[i] - b[i]) * k / steps) for i in range(3))  # type: ignore[misc]
                for k in range(steps + 1)
            ]
    colours = list(dict.fromkeys(colours))[:256]
    flat = [v for c in colours for v in c]
    palette = Image.new("P", (1, 1))
    palette.putpalette(flat + flat[:3] * (256 - len(colours)))
    return palette


def png_of(lay: Layout, dpi: int = 150) -> bytes:
    fig = Figure(figsize=(lay.width / 100, lay.height / 100), dpi=dpi, facecolor=WHITE)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, lay.width)
    ax.set_ylim(lay.height, 0)  # y down, as in the SVG
    ax.axis("off")
    for t in lay.texts:
        _text(ax, t)
    for x0, x1, y, dashed in lay.legend:
        ax.plot([x0, x1], [y, y], color=RED if dashed else GREY, linewidth=1.2, linestyle=DASHES if dashed else "-")
    for box in lay.boxes:
        fill = {"agreement": WHITE, "flow": FLOW_FILL}.get(box.kind, PALE)
        lapsed = box.dashed and box.kind in ("agreement", "flow")
        stroke = RED if lapsed else BLUE if box.kind == "agreement" else GREY
        ax.add_patch(
            Rectangle(
                (box.x, box.y),
                box.w,
                box.h,
                facecolor=fill,
                edgecolor=stroke,
                linewidth=1.6 if box.kind == "agreement" else 0.8,
                linestyle=DASHES if box.dashed else "-",
            )
        )
        for t in box.texts:
            _text(ax, t, RED if t.alert else INK)
    for curve in lay.curves:
        colour = RED if curve.dashed else GREY
        path = Path([curve.start, curve.c1, curve.c2, curve.end], [Path.MOVETO, Path.CURVE4, Path.CURVE4, Path.CURVE4])
        ax.add_patch(
            FancyArrowPatch(
                path=path,
                arrowstyle="-|>",
                mutation_scale=7,
                color=colour,
                linewidth=1.0,
                linestyle=DASHES if curve.dashed else "-",
            )
        )
        if curve.label is not None:
            _text(ax, curve.label, colour, halo=True)
    buffer = io.BytesIO()
    # No "Software" chunk (the matplotlib version is nobody's business in a DPIA); title and
    # description as the SVG's, for whoever reads the file without seeing it.
    fig.savefig(
        buffer,
        format="png",
        dpi=dpi,
        facecolor=WHITE,
        metadata={"Software": None, "Title": lay.title, "Description": lay.description},
    )
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        text = dict(image.text)  # type: ignore[attr-defined]
        small = image.convert("RGB").quantize(palette=_palette(), dither=Image.Dither.NONE)
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True, pnginfo=info, dpi=(dpi, dpi))
    return out.getvalue()


def to_png(flow_map: FlowMap, dpi: int = 150) -> bytes:
    return png_of(layout(flow_map), dpi)
