"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.connections import CONNECTIONS
from gateway.metrics import REGISTRY
from services.infra.container import Services

READY_TIMEOUT_SECONDS = 2.0


async def healthz(request: Request) -> JSONResponse:
    """Alive: the process answers. Says nothing about its dependencies."""
    return JSONResponse({"status": "ok"})


async def _postgres_ok(services: Services) -> bool:
    async with services.engine.connect() as conn:
        return (await conn.execute(text("SELECT 1"))).scalar_one() == 1


async def _redis_ok(services: Services) -> bool:
    return bool(await services.redis.ping())  # type: ignore[misc]


async def _check(probe: Coroutine[Any, Any, bool]) -> str:
    try:
        ok = await asyncio.wait_for(probe, READY_TIMEOUT_SECONDS)
    except Exception as exc:  # any failure of a dependency means not ready, and why
        return f"error: {type(exc).__name__}"
    return "ok" if ok else "error"


async def readyz(request: Request) -> JSONResponse:
    """Ready: PostgreSQL and Redis both answer within the timeout."""
    services: Services = request.app.state.services
    if getattr(request.app.state, "draining", False) or CONNECTIONS.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    postgres, redis = await asyncio.gather(
        _check(_postgres_ok(services)), _check(_redis_ok(services))
    )
    ok = postgres == "ok" and redis == "ok"
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "postgres": postgres, "redis": redis},
        status_code=200 if ok else 503,
    )


async def metrics(request: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
