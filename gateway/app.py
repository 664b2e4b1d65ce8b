"""The Starlette application: GraphQL over HTTP and WebSocket, health, metrics."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route, WebSocketRoute

from gateway.connections import CONNECTIONS, drain
from gateway.graphql_schema import build_schema
from gateway.guards import BodySizeLimitMiddleware, RateLimitMiddleware
from gateway.health import healthz, metrics, readyz
from gateway.logging import install_request_id
from gateway.metrics import (
    REGISTRY,
    CacheCollector,
    HubCollector,
    PoolCollector,
    ReplicaCollector,
    watch_gc_pauses,
)
from gateway.middleware import RequestIdMiddleware
from gateway.view import GraphQLView
from gateway.web import web_routes
from services.infra.container import Services
from services.infra.settings import Settings, get_settings

log = logging.getLogger("tradeql.api")


# Younger collections between two full ones (CPython's default is 10).
FULL_COLLECTION_EVERY = 1000


def freeze_startup_objects() -> None:
    """Keep full garbage collections from stopping requests for tens of milliseconds.

    What startup made (modules, the schema, the services: ~150,000 objects) is moved out of
    the collector's sight: a full collection walked all of it, ~60 ms with every request
    stopped. What the caches keep (holdings, positions valued at the current quotes) is
    long-lived too and replaced every second as quotes move, which made CPython run a full
    collection about every second (~30 ms at 200 users x 50 positions): the benchmark's latency
    tail. Those objects are freed by reference counting, and the cycles a request makes (its
    DataLoaders) die young, in the younger collections; so full collections are made rare (every
    FULL_COLLECTION_EVERY younger ones: about a minute at full load). The cost: a cycle that does
    reach the oldest generation waits that long, and a cyclic startup object dropped later is
    never collected."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
    watch_gc_pauses()


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()
    install_request_id()
    view = GraphQLView(build_schema(settings), settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services = Services.from_settings(settings)
        await services.start_live()
        revocations = asyncio.create_task(
            CONNECTIONS.follow_revocations(services.broadcast, services.sessions)
        )
        app.state.services = services
        app.state.draining = False
        pool_collector = PoolCollector(services.engine)
        REGISTRY.register(pool_collector)
        cache_collector = CacheCollector(services.holdings, services.quote_mirror)
        REGISTRY.register(cache_collector)
        hub_collector = HubCollector(services.portfolio_hub)
        REGISTRY.register(hub_collector)
        replica_collector = ReplicaCollector(services.reads) if services.replica else None
        if replica_collector is not None:
            REGISTRY.register(replica_collector)
        freeze_startup_objects()
        log.info("api started")
        try:
            yield
        finally:
            app.state.draining = True
            revocations.cancel()
            await drain(settings.shutdown_grace_seconds)
            REGISTRY.unregister(pool_collector)
            REGISTRY.unregister(cache_collector)
            REGISTRY.unregister(hub_collector)
            if replica_collector is not None:
                REGISTRY.unregister(replica_collector)
            await services.close()
            log.info("api stopped")

    return Starlette(
        routes=[
            Route("/graphql", view),
            WebSocketRoute("/graphql", view),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            *web_routes(web_app=settings.web_app),
        ],
        middleware=[
            Middleware(RequestIdMiddleware),
            # Outside the limits, so a 429 or 413 carries CORS headers the page can read; it
            # answers preflights itself.
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origin_list,
                allow_methods=["GET", "POST"],
                allow_headers=[
                    "Authorization",
                    "Content-Type",
                    "Accept",
                    "X-API-Key",
                    "X-Request-ID",
                    "apollographql-client-name",
                    "apollographql-client-version",
                ],
                expose_headers=["X-Request-ID", "Retry-After"],
                max_age=600,
            ),
            Middleware(RateLimitMiddleware, settings=settings),
            Middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes),
        ],
        lifespan=lifespan,
    )
