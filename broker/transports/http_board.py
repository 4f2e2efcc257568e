"""The quarterly board pack over HTTP: ``GET /v1/feeds/{consumer}/board?quarter=2026-Q3``
(analyst role, the caller's own consumer only), as JSON (default) or one self-contained HTML page
(``format=html``: the charts inlined as PNG data, printable to PDF).

The same pack as ``sv-broker report quarterly``: a figures-only consumer's is its released
figures as released; any other consumer's is built from the records it was released, through the
same disclosure control. Every request is audited (``accessed``, with the figures ids read)
before the answer is written; counting and drawing run off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import TYPE_CHECKING

from aiohttp import web

from broker.errors import ApiError
from broker.pipeline.access import feed_bodies

if TYPE_CHECKING:
    from broker.figures.board import Board
from broker.figures.specs import Quarter
from broker.transports.http_access import ACCESS, audited_route, response_format
from broker.transports.http_feeds import QUARTER, analyst_for
from schemas.errors import Reason


def html_headers(css: str) -> dict[str, str]:
    """The standalone page's headers: its one inline stylesheet allowed by hash, its charts as data
    images, nothing else (threat: served on the console's origin, any markup that slipped in could
    neither run nor load anything)."""
    style = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; style-src 'sha256-{style}'; img-src data:; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def quarter_of(request: web.Request) -> Quarter:
    text = request.query.get("quarter", "")
    if not QUARTER.fullmatch(text):
        raise ApiError(Reason.BAD_QUARTER, "quarter must be a calendar quarter like 2026-Q3.")
    return Quarter.parse(text)


def _inline(board: Board) -> str:
    """The pack's HTML with each chart inlined (one file to save or print)."""
    from broker.figures.board_render import charts, inline_charts, to_html

    files = charts(board)
    return inline_charts(to_html(board, files), files)


async def board_pack(request: web.Request) -> web.StreamResponse:
    principal, consumer = await analyst_for(request)
    quarter = quarter_of(request)
    fmt = response_format(request, ("json", "html"))
    ctx = request.app[ACCESS]
    figures = [json.loads(r.body) for r in await ctx.store.figures_of(consumer) if r.period == str(quarter)]
    by_records = any(consumer in f.consumers for f in ctx.policy.flows if f.figures is None)
    if not figures and not by_records:
        # A figures-only consumer's pack is its released figures: none yet is not an empty pack.
        raise ApiError(
            Reason.FIGURES_NOT_RELEASED,
            f"No figures for {quarter} have been released to this consumer (a quarter is released some days "
            "after it ends; one that cannot be protected is not released).",
        )
    records = [] if figures else await feed_bodies(ctx.store, consumer)
    await ctx.audit.read(
        principal,
        "board",
        audited_route(request),
        {
            "consumer": consumer,
            "quarter": str(quarter),
            "format": fmt,
            "from": "figures" if figures else "records",
            "record_ids": [f["figures_id"] for f in figures],
            "count": len(figures) if figures else len(records),
        },
    )

    # numpy, scipy and matplotlib load with the first pack asked for, not with every broker process
    from broker.figures.board import board_from_figures, build_board
    from broker.figures.board_render import board_doc
    from broker.figures.pack_css import CSS
    from broker.figures.suppress import UnderProtected

    def build() -> Board:
        if figures:
            return board_from_figures(figures, consumer)
        return build_board(records, quarter, consumer=consumer)

    try:
        board = await asyncio.to_thread(build)
    except UnderProtected:
        raise ApiError(
            Reason.FIGURES_UNPROTECTED, "The quarter's tables cannot be protected from disclosure; nothing is shown."
        ) from None
    if fmt == "html":
        page = await asyncio.to_thread(_inline, board)
        return web.Response(text=page, content_type="text/html", charset="utf-8", headers=html_headers(CSS))
    return web.json_response(board_doc(board) | {"built_from": board.built_from})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/feeds/{consumer}/board", board_pack)
