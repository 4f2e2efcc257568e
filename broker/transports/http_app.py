"""HTTP: partner ingest (embedded mode, or beside RabbitMQ), health and readiness (aiohttp)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from broker.errors import ApiError
from broker.logs import get_logger
from broker.pipeline.batcher import Batcher
from broker.pipeline.ingest import Pipeline
from broker.stages.outcome import Accepted, Duplicate, Failed, Outcome, receipt
from broker.stages.types import Inbound
from schemas.errors import REASONS, Reason, Unavailable

log = get_logger("sv_broker.http")


class HttpIngest:
    """Posts go into the shared :class:`Batcher` (concurrent posts share one pipeline batch: one
    replay-guard query and one audit commit); each post waits for its own outcome."""

    def __init__(self, pipeline: Pipeline, batch_max: int = 256) -> None:
        self.batcher: Batcher[asyncio.Future[Outcome]] = Batcher(
            pipeline, self._settle, self._fail, batch_max=batch_max
        )

    async def submit(self, inbound: Inbound) -> Outcome:
        self.batcher.start()
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.batcher.put(inbound, future)
        return await future

    @staticmethod
    async def _settle(futures: list[asyncio.Future[Outcome]], outcomes: list[Outcome]) -> None:
        for future, outcome in zip(futures, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    @staticmethod
    async def _fail(futures: list[asyncio.Future[Outcome]], exc: Exception) -> bool:
        # Every waiter learns (nothing was acknowledged to anyone); the partner retries the post.
        for future in futures:
            if not future.done():
                future.set_exception(exc)
        return False

    async def close(self) -> None:
        await self.batcher.stop()


READY_CHECKS = web.AppKey("ready_checks", list[Callable[[], Awaitable[bool]]])
PIPELINE = web.AppKey("pipeline", Pipeline)
INGEST = web.AppKey("ingest", HttpIngest)


def problem(
    status: int, reason: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    body = {"reason": reason, "message": message, **extra}
    return web.json_response(body, status=status, headers=headers, dumps=lambda v: json.dumps(v, ensure_ascii=False))


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """Read at most ``limit + 1`` bytes: enough to know the body is too large, never more
    (threat: memory exhaustion by an endless body)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await request.content.read(min(65536, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def ingest(request: web.Request) -> web.Response:
    pipeline = request.app[PIPELINE]
    body = await _read_limited(request, pipeline.settings.max_body_bytes)
    try:
        outcome = await request.app[INGEST].submit(Inbound(body=body, transport="http"))
    except Unavailable:
        # The store is down: nothing was kept, so the partner retries later (a 503, not a 500).
        return problem(
            503,
            Reason.UNAVAILABLE.value,
            "The broker cannot store messages right now; it kept nothing. Retry.",
            {"Retry-After": "5"},
        )
    if isinstance(outcome, Failed):
        return problem(
            500, Reason.INTERNAL_ERROR.value, "The broker could not process the message; it kept nothing. Retry."
        )
    answer = receipt(outcome, pipeline.clock())
    if isinstance(outcome, Accepted):
        return web.json_response(answer, status=202)
    if isinstance(outcome, Duplicate):
        return web.json_response(answer, status=200)
    return web.json_response(answer, status=REASONS[outcome.reason].status)


async def openapi(_request: web.Request) -> web.Response:
    from broker.transports.openapi import document

    return web.json_response(document())


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks = request.app[READY_CHECKS]
    results = [await check() for check in checks]
    ok = all(results)
    return web.json_response({"ready": ok}, status=200 if ok else 503)


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Nothing crashes the service and nothing leaks a traceback: unexpected errors become a 500
    with a stable reason; aiohttp's own HTTP errors become JSON with a reason code."""
    try:
        return await handler(request)
    except ApiError as exc:
        return problem(exc.status, exc.reason.value, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = {404: Reason.NOT_FOUND, 405: Reason.METHOD_NOT_ALLOWED, 413: Reason.BODY_TOO_LARGE}.get(
            exc.status, Reason.HTTP_ERROR
        )
        return problem(exc.status, reason.value, exc.reason)
    except (ConnectionResetError, asyncio.CancelledError):
        raise  # the client went away (e.g. closed an event stream): nothing to answer
    except Exception as exc:
        log.exception("http_handler_failed", path=request.path, error=type(exc).__name__)
        return problem(500, Reason.INTERNAL_ERROR.value, "The broker hit an internal error; nothing was kept. Retry.")


def build_app(pipeline: Pipeline, ready_checks: list[Callable[[], Awaitable[bool]]]) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=pipeline.settings.max_body_bytes + 1024)
    app[PIPELINE] = pipeline
    app[INGEST] = HttpIngest(pipeline, pipeline.settings.batch_max)

    async def close_ingest(app: web.Application) -> None:
        await app[INGEST].close()  # after in-flight requests: their batches finish first

    app.on_cleanup.append(close_ingest)
    app[READY_CHECKS] = ready_checks
    app.router.add_post("/v1/events", ingest)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    return app
