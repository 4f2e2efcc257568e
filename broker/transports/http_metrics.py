"""``GET /metrics``: the Prometheus scrape (``broker/metrics.py`` says what is in it).

Unauthenticated, as Prometheus scrapes expect: it holds counts by id and code only (no payload
value, no person), and the deployment's NetworkPolicy admits only the monitoring namespace to it
(``deploy/k8s/``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from broker.metrics import CONTENT_TYPE

Scrape = Callable[[], Awaitable[bytes]]
SCRAPE: web.AppKey[Scrape] = web.AppKey("metrics_scrape")


async def metrics(request: web.Request) -> web.Response:
    body = await request.app[SCRAPE]()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})


def add_routes(app: web.Application, scrape: Scrape) -> None:
    app[SCRAPE] = scrape
    app.router.add_get("/metrics", metrics)
