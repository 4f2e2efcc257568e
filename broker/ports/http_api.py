"""HTTP: partner ingest (embedded mode, or beside RabbitMQ), health and readiness (aiohttp)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from broker.errors import ApiError
from broker.logs import get_logger
from broker.pipeline import Pipeline
from broker.stages.outcome import Inbound, Outcome, Status
from schemas.errors import Reason, http_status

log = get_logger("sv_broker.http")


class IngestBatcher:
    """Gathers concurrent HTTP posts into one pipeline batch: one replay-guard query and one audit
    commit for all of them, instead of one each. A post waits at most for the batch in progress.
    """

    def __init__(self, pipeline: Pipeline, batch_max: int = 256) -> None:
        self.pipeline = pipeline
        self.batch_max = batch_max
        self.queue: asyncio.Queue[tuple[Inbound, asyncio.Future[Outcome]]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def submit(self, inbound: Inbound) -> Outcome:
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="http-ingest-batcher")
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((inbound, future))
        return await future

    async def _run(self) -> None:
        while not self.queue.empty():
            items = [self.queue.get_nowait() for _ in range(min(self.batch_max, self.queue.qsize()))]
            try:
                outcomes = await self.pipeline.process([inbound for inbound, _ in items])
            except Exception as exc:  # every waiter learns; nothing was acknowledged to anyone
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), outcome in zip(items, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)

    async def close(self) -> None:
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


READY_CHECKS = web.AppKey("ready_checks", list[Callable[[], Awaitable[bool]]])
PIPELINE = web.AppKey("pipeline", Pipeline)
BATCHER = web.AppKey("batcher", IngestBatcher)


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
    outcome = await request.app[BATCHER].submit(Inbound(body=body, transport="http"))
    receipt = outcome.receipt(pipeline.clock())
    if outcome.status is Status.ACCEPTED:
        return web.json_response(receipt, status=202)
    if outcome.status is Status.DUPLICATE:
        return web.json_response(receipt, status=200)
    if outcome.status is Status.FAILED:
        return problem(
            500, Reason.INTERNAL_ERROR.value, "The broker could not process the message; it kept nothing. Retry."
        )
    return web.json_response(receipt, status=http_status(outcome.reason))


async def openapi(_request: web.Request) -> web.Response:
    from broker.ports.openapi import document

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
    app[BATCHER] = IngestBatcher(pipeline, pipeline.settings.batch_max)
    app[READY_CHECKS] = ready_checks
    app.router.add_post("/v1/events", ingest)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    return app
