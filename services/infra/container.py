"""Everything long-lived a process needs, built once from the settings."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from broadcaster import Broadcast
from sqlalchemy.ext.asyncio import AsyncEngine

from services.accounts.activities import Activities
from services.accounts.cash import Cash
from services.accounts.login_throttle import LoginThrottle, ThrottleRules
from services.accounts.passwords import Passwords
from services.accounts.sessions import SessionStore
from services.accounts.users import Accounts
from services.alerts.price_alerts import PriceAlerts
from services.infra import keys
from services.infra.db import create_engine
from services.infra.pubsub import create_broadcast
from services.infra.redis import RedisClient, create_redis
from services.infra.replica import ReadRouter
from services.infra.settings import Settings
from services.market_data.bars import Bars
from services.market_data.clock import MarketClock
from services.market_data.quote_hub import QuoteHub
from services.market_data.quote_mirror import QuoteMirror
from services.market_data.quote_store import QuoteStore, quote_channels
from services.market_data.securities import Securities
from services.orders.cancel import OrderCancellation
from services.orders.closing import PositionClosing
from services.orders.order_history import OrderHistory
from services.orders.order_store import OrderStore
from services.orders.placement import OrderPlacement
from services.orders.replace import OrderReplacement
from services.partners.registry import Partners
from services.portfolio.day_change import DayChanges
from services.portfolio.holdings_cache import HoldingsCache
from services.portfolio.portfolio_hub import PortfolioHub
from services.portfolio.valuation import Portfolios
from services.watchlists.lists import Watchlists


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    redis: RedisClient
    replica: AsyncEngine | None = None
    reads: ReadRouter = field(init=False)
    passwords: Passwords = field(init=False)
    users: Accounts = field(init=False)
    sessions: SessionStore = field(init=False)
    login_throttle: LoginThrottle = field(init=False)
    partners: Partners = field(init=False)
    cash: Cash = field(init=False)
    securities: Securities = field(init=False)
    quote_store: QuoteStore = field(init=False)
    bars: Bars = field(init=False)
    clock: MarketClock = field(init=False)
    broadcast: Broadcast = field(init=False)
    quote_hub: QuoteHub = field(init=False)
    order_store: OrderStore = field(init=False)
    order_history: OrderHistory = field(init=False)
    activities: Activities = field(init=False)
    day_changes: DayChanges = field(init=False)
    placement: OrderPlacement = field(init=False)
    cancellation: OrderCancellation = field(init=False)
    replacement: OrderReplacement = field(init=False)
    closing: PositionClosing = field(init=False)
    watchlists: Watchlists = field(init=False)
    alerts: PriceAlerts = field(init=False)
    portfolios: Portfolios = field(init=False)
    holdings: HoldingsCache = field(init=False)
    quote_mirror: QuoteMirror = field(init=False)
    portfolio_hub: PortfolioHub = field(init=False)
    _tasks: list[asyncio.Task[None]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        keys.configure(self.settings.database_url, self.settings.redis_namespace)
        self.reads = ReadRouter(
            self.engine,
            self.replica,
            self.redis,
            max_lag_seconds=self.settings.db_replica_max_lag_seconds,
            wait_seconds=self.settings.db_replica_wait_ms / 1000,
        )
        self.passwords = Passwords(self.settings)
        self.users = Accounts(self.engine, self.settings, self.passwords)
        self.sessions = SessionStore(self.engine, self.redis, self.settings)
        self.login_throttle = LoginThrottle(
            self.redis,
            ThrottleRules(
                free=self.settings.login_free_failures,
                max_wait_seconds=self.settings.login_max_wait_seconds,
                address_limit=self.settings.login_address_failures,
                address_window_seconds=self.settings.login_address_window_seconds,
            ),
        )
        self.partners = Partners(self.engine, self.redis, self.settings)
        self.cash = Cash(self.engine, self.redis, self.settings)
        self.securities = Securities(self.engine, self.reads)
        self.quote_store = QuoteStore(self.redis)
        self.bars = Bars(self.engine, self.reads)
        self.clock = MarketClock(
            always_open=self.settings.market_always_open, session=self.settings.market_session
        )
        assert self.settings.redis_url is not None
        self.broadcast = create_broadcast(self.settings.redis_url, self.settings.redis_cluster)
        self.quote_mirror = QuoteMirror(
            self.quote_store, self.settings.quote_mirror_max_age_seconds
        )
        self.quote_hub = QuoteHub(
            self.broadcast,
            self.quote_mirror,
            quote_channels(self.settings.quote_partitions, self.settings.redis_cluster),
        )
        self.order_store = OrderStore(self.engine, self.reads)
        self.order_history = OrderHistory(self.engine)
        self.activities = Activities(self.engine)
        self.day_changes = DayChanges(self.engine, self.clock)
        self.placement = OrderPlacement(
            self.engine, self.redis, self.settings, self.clock, reads=self.reads
        )
        self.cancellation = OrderCancellation(
            self.engine, self.redis, self.settings, reads=self.reads
        )
        self.replacement = OrderReplacement(self.engine, self.redis, self.settings)
        self.closing = PositionClosing(self.engine, self.placement, self.cancellation)
        self.watchlists = Watchlists(
            self.engine,
            max_lists=self.settings.watchlist_max_lists,
            max_symbols=self.settings.watchlist_max_symbols,
            reads=self.reads,
        )
        self.alerts = PriceAlerts(self.engine, self.redis, self.settings)
        self.portfolios = Portfolios(self.engine, self.reads)
        self.holdings = HoldingsCache(
            self.portfolios,
            self.redis,
            size=self.settings.holdings_cache_size,
            ttl_seconds=self.settings.holdings_cache_seconds,
        )
        self.portfolio_hub = PortfolioHub(
            self.holdings, self.quote_mirror, self.quote_hub, self.broadcast
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        replica = (
            create_engine(settings, url=settings.database_replica_url)
            if settings.database_replica_url
            else None
        )
        return cls(
            settings=settings,
            engine=create_engine(settings),
            redis=create_redis(settings),
            replica=replica,
        )

    async def start_live(self) -> None:
        """Connect the broadcast and start fanning live data out (API processes only)."""
        await asyncio.to_thread(self.clock.state)  # load the holiday calendar before traffic
        await self.broadcast.connect()
        self._tasks.append(asyncio.create_task(self.quote_hub.run(), name="quote-hub"))

    async def close(self) -> None:
        await self.placement.close()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._tasks:
            await self.broadcast.disconnect()
        await self.redis.aclose()
        await self.engine.dispose()
        if self.replica is not None:
            await self.replica.dispose()
