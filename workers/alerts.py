"""Alert checker: a consumer group on the quote streams that triggers price alerts as quotes cross.

Every checker process holds every ACTIVE alert in an `AlertIndex` (per symbol, sorted by
threshold), so a quote touches only the alerts it crosses. Quotes are split between the checkers
of the group "alerts"; triggers happen once whatever the number of checkers, because recording
one is a conditional update in PostgreSQL (`services.alerts.price_alerts.mark_triggered`): only the alerts it
moved from ACTIVE to TRIGGERED are published, to their owners' `alerts:{user_id}` channels. A
batch of stream messages is acknowledged after that commit and that publish (at once, if it
crossed nothing).

Recording triggers is one statement on an autocommit connection of the checker's own: one
round trip and its commit. Reading never waits for it: crossings wait in a pending batch while
`MAX_WRITES` writes are in flight, and the next free writer takes the whole pending batch, so
batches grow with the load instead of queueing (their alerts are disjoint: each was taken out
of the index by the quote that crossed it). Reading pauses only past `MAX_PENDING_MESSAGES`
(PostgreSQL away).

What the index holds follows PostgreSQL:

* on start, it loads every ACTIVE alert (after subscribing to `alerts:changes`, so nothing
  created during the load is missed);
* `alerts:changes` (pub/sub) brings new alerts, cancels and other checkers' triggers within
  milliseconds;
* every `alert_resync_seconds` (and at once after the pub/sub connection was lost) it re-reads
  the alerts created or cancelled since its last read (a transaction-id watermark, exact: see
  `services.alerts.price_alerts.changed_since`), so a lost notification costs seconds, never the alert.

The index is a hint; PostgreSQL decides. An alert the index still holds after it was cancelled
or triggered elsewhere costs one conditional update that changes nothing.

The record in PostgreSQL is exactly once; the push is at most once: pub/sub reaches the
subscriptions open at that moment, a publish is retried while Redis is away, and one still
unsent when the checker dies is lost (`alerts(status: TRIGGERED)` shows the alert all the same).

Restart: the consumer group remembers what was read, so a new checker first reads the quotes
written while none ran (those the stream still holds, MAXLEN ~ per partition), and a crossing
among them triggers then, with that quote's price and time. A crossing that left the stream
before any checker read it (trimmed, or Redis flushed) is judged on the next quote: an ABOVE
alert triggers if that quote's last is still at or above the threshold, else it stays ACTIVE.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from prometheus_client import Counter, Gauge, Histogram
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.alerts import price_alerts as alerts
from services.alerts.alert_index import AlertIndex, WatchedAlert
from services.infra.container import Services
from services.infra.pubsub import read_message, subscribe_to
from services.infra.retry import CONFLICT_SQLSTATES
from services.infra.streams import ConsumerGroup, StreamMessage, consumer_name, quote_streams
from services.market_data.marketdata import FIELD_SEPARATOR, RECORD_SEPARATOR
from workers.metrics import GROUPS_RECREATED, LogOncePerKind

log = logging.getLogger("tradeql.alerts")
GROUP = "alerts"
READ_COUNT = 200
IDLE_BLOCK_MS = 200
CLAIM_EVERY_SECONDS = 30.0
MAX_WRITES = 4  # batches being recorded at once
MAX_PENDING_MESSAGES = 5_000  # read and crossed, waiting for a writer: past this, stop reading
FIELD_COUNT = 8

ALERTS_WATCHED = Gauge("tradeql_alerts_watched", "Active alerts in this checker's index")
ALERTS_TRIGGERED = Counter("tradeql_alerts_triggered_total", "Alerts this checker triggered")
ALERT_ATTEMPTS_LOST = Counter(
    "tradeql_alert_triggers_lost_total",
    "Crossed alerts already triggered or cancelled by the time this checker tried",
)
ALERT_QUOTES = Counter("tradeql_alert_quotes_checked_total", "Quotes checked against the index")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 5)
ALERT_TRIGGER_SECONDS = Histogram(
    "tradeql_alert_trigger_seconds",
    "Quote source time to the triggered alert published",
    buckets=_LATENCY_BUCKETS,
)
ALERT_READ_SECONDS = Histogram(
    "tradeql_alert_quote_age_at_read_seconds",
    "Quote source time to read by the checker, for quotes that crossed an alert",
    buckets=_LATENCY_BUCKETS,
)
ALERT_RECORD_SECONDS = Histogram(
    "tradeql_alert_record_seconds",
    "Recording one batch's triggers in PostgreSQL and publishing them",
    buckets=_LATENCY_BUCKETS,
)


@dataclass(frozen=True, slots=True)
class Crossed:
    """An alert a quote crossed, with that quote's last price and source time."""

    alert: WatchedAlert
    price: Decimal
    quote_ts_ns: int


def cross_quotes(
    index: AlertIndex, messages: list[StreamMessage], report: LogOncePerKind
) -> tuple[list[Crossed], int]:
    """The alerts these quote stream messages cross, in stream order (taken out of the index),
    and how many quotes were checked. A quote for a symbol without alerts is skipped unparsed."""
    watched = index.symbols()
    crossed: list[Crossed] = []
    checked = 0
    for message in messages:
        for line in message.fields.get("q", "").split(RECORD_SEPARATOR):
            if line[: line.find(FIELD_SEPARATOR)] not in watched:
                continue
            fields = line.split(FIELD_SEPARATOR)
            try:
                if len(fields) != FIELD_COUNT:
                    raise ValueError("field count")
                last, ts_ns = Decimal(fields[5]), int(fields[7])
            except (ValueError, InvalidOperation):
                report("bad_stream_record", line[:80])
                continue
            checked += 1
            for alert in index.cross(fields[0], last, ts_ns // 1000):
                crossed.append(Crossed(alert, last, ts_ns))
    return crossed, checked


class AlertChecker:
    def __init__(
        self,
        services: Services,
        *,
        consumer: str | None = None,
        resync_seconds: float | None = None,
    ) -> None:
        settings = services.settings
        self.services = services
        self.index = AlertIndex()
        self.group = ConsumerGroup(
            services.redis,
            GROUP,
            quote_streams(settings.quote_partitions),
            consumer or consumer_name(GROUP),
        )
        self.resync_seconds = resync_seconds or settings.alert_resync_seconds
        self.report = LogOncePerKind("alerts")
        self.ready = asyncio.Event()  # the index is loaded and changes are being received
        self._listening = asyncio.Event()
        self._resync_now = False
        self._watermark: int | None = None  # where the next re-sync reads from
        self._retry: list[StreamMessage] = []  # read, but their triggers are not recorded yet
        self._writes: set[asyncio.Task[None]] = set()
        self._pending: list[Crossed] = []  # crossed, waiting for a writer
        self._pending_messages: list[StreamMessage] = []  # theirs, to ack after the write
        self._stop = asyncio.Event()
        self._connections: list[AsyncConnection] = []  # idle, for recording triggers
        # This checker's own counts (the Prometheus metrics add up every checker in a process).
        self.quotes_checked = 0
        self.triggered = 0
        self.raced = 0  # crossed here, but already triggered or cancelled when recorded

    # -- life cycle -----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        await self.group.ensure()
        listener = asyncio.create_task(self._listen(stop), name="alert-changes")
        try:
            await self._start(stop)
            next_claim = time.monotonic() + CLAIM_EVERY_SECONDS
            next_sync = time.monotonic() + self.resync_seconds
            while not stop.is_set():
                try:
                    if time.monotonic() >= next_claim:  # a checker that died since we started
                        self._retry += await self.group.claim_abandoned()
                        next_claim = time.monotonic() + CLAIM_EVERY_SECONDS
                    if self._resync_now or time.monotonic() >= next_sync:
                        await self.resync()
                        next_sync = time.monotonic() + self.resync_seconds
                    if len(self._pending_messages) >= MAX_PENDING_MESSAGES:
                        await asyncio.sleep(0.01)  # the writers are behind: let them catch up
                        continue
                    messages, self._retry = self._retry, []
                    if not messages:
                        messages = await self._read()
                    await self.handle(messages)
                except (RedisError, OSError, DBAPIError) as exc:
                    log.warning("alert checker: %s; retrying", exc)
                    await asyncio.sleep(0.5)
            await self.drain()  # stopping: record, publish and ack what is in flight
        finally:
            await self.group.close()
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            for write in self._writes:
                write.cancel()
            for conn in self._connections:
                with contextlib.suppress(Exception):
                    await conn.close()
            self._connections.clear()

    async def _start(self, stop: asyncio.Event) -> None:
        """Listen for changes first, then load: an alert created during the load is not lost."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), 5.0)  # else the re-sync covers it
        while not stop.is_set():
            try:
                await self.load()
                break
            except (OSError, DBAPIError) as exc:
                log.warning("alert checker: cannot load the alerts (%s); retrying", exc)
                await asyncio.sleep(1.0)
        self.ready.set()
        with contextlib.suppress(RedisError, OSError):
            self._retry = await self.group.claim_abandoned()

    async def load(self) -> None:
        """Every ACTIVE alert into the index. A million alerts are a few million long-lived,
        acyclic objects: the cyclic GC is paused while they are made (its full passes over them
        would double the load time), and they are frozen out of every later pass (which would
        each stall the checker for a second)."""
        started = time.perf_counter()
        collecting = gc.isenabled()
        gc.disable()
        try:
            async with self.services.engine.connect() as conn:
                active, watermark = await alerts.load_active(conn)
            self.index.add_many(active)
        finally:
            if collecting:
                gc.enable()
        loaded = len(active)
        del active
        gc.freeze()
        self._watermark = watermark
        self._resync_now = False
        ALERTS_WATCHED.set(len(self.index))
        log.info(
            "alert checker: %d active alerts loaded in %.1fs",
            loaded,
            time.perf_counter() - started,
        )

    async def resync(self) -> None:
        """Alerts created or cancelled lately, from PostgreSQL: whatever pub/sub lost."""
        if self._watermark is None:
            await self.load()
            return
        async with self.services.engine.connect() as conn:
            changes, watermark = await alerts.changed_since(conn, self._watermark)
        self.index.add_many(a.watched() for a, active in changes if active)
        for alert, active in changes:
            if not active:
                self.index.remove(alert.id)
        self._watermark = watermark
        self._resync_now = False
        ALERTS_WATCHED.set(len(self.index))

    # -- alert changes (pub/sub) ----------------------------------------------------------------
    async def _listen(self, stop: asyncio.Event) -> None:
        """Apply `alerts:changes` as it comes; after a lost connection, ask for a re-sync."""
        backoff = 0.1
        while not stop.is_set():
            pubsub = self.services.redis.pubsub()
            try:
                await subscribe_to(pubsub, alerts.changes_channel())
                while True:  # the confirmation: from here on, nothing published is missed
                    message = await read_message(pubsub, timeout=1.0)
                    if message is not None and message["type"] == "subscribe":
                        break
                self._resync_now = True  # whatever was published while not listening
                self._listening.set()
                backoff = 0.1
                while not stop.is_set():
                    message = await read_message(pubsub, timeout=1.0)
                    if message is not None and message["type"] == "message":
                        self.apply_change(message["data"])
            except (RedisError, OSError) as exc:
                log.warning("alert changes: connection lost (%s); reconnecting", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self._listening.clear()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    def apply_change(self, payload: str) -> None:
        try:
            change = alerts.decode_change(payload)
            if change.alert is not None:
                if change.alert.status is alerts.AlertStatus.ACTIVE:
                    self.index.add(change.alert.watched())
                else:
                    self.index.remove(change.alert.id)
            for alert_id in change.gone:
                self.index.remove(alert_id)
        except (ValueError, KeyError, TypeError, InvalidOperation):
            self.report("bad_alert_change", payload[:80])
            return
        ALERTS_WATCHED.set(len(self.index))

    # -- quotes ---------------------------------------------------------------------------------
    async def _read(self) -> list[StreamMessage]:
        created = self.group.groups_created
        messages = await self.group.read(count=READ_COUNT, block_ms=IDLE_BLOCK_MS)
        if self.group.groups_created != created:
            GROUPS_RECREATED.labels(GROUP).inc()
        return messages

    async def handle(self, messages: list[StreamMessage]) -> None:
        """Cross the index with these quotes; acknowledge them at once if they crossed nothing,
        else hand their triggers to a writer (now, or when one is free)."""
        if not messages:
            return
        read_ns = time.time_ns()
        crossed = self.cross(messages)
        if not crossed:
            await self.group.ack(messages)
            return
        for c in crossed:
            ALERT_READ_SECONDS.observe((read_ns - c.quote_ts_ns) / 1e9)
        ALERTS_WATCHED.set(len(self.index))
        self._pending += crossed
        self._pending_messages += messages
        self._dispatch()

    def _dispatch(self) -> None:
        """Start a writer on everything pending, if one of MAX_WRITES is free."""
        if not self._pending or len(self._writes) >= MAX_WRITES:
            return
        crossed, messages = self._pending, self._pending_messages
        self._pending, self._pending_messages = [], []
        self._writes.add(asyncio.create_task(self._settle(crossed, messages)))

    async def drain(self) -> None:
        """Record, publish and acknowledge everything crossed so far."""
        while self._writes or self._pending:
            self._dispatch()
            await asyncio.wait(set(self._writes))

    def cross(self, messages: list[StreamMessage]) -> list[Crossed]:
        """Every alert these quotes cross, in stream order: taken out of the index."""
        crossed, checked = cross_quotes(self.index, messages, self.report)
        self.quotes_checked += checked
        ALERT_QUOTES.inc(checked)
        return crossed

    async def _settle(self, crossed: list[Crossed], messages: list[StreamMessage]) -> None:
        """Record one batch's triggers, publish them, then acknowledge its messages. If the
        record fails, the alerts go back into the index and the messages are crossed again.
        Then the next pending batch, if any."""
        started = time.perf_counter()
        try:
            try:
                triggered = await self._record(crossed)
            except Exception as exc:  # PostgreSQL away, the pool exhausted...: not recorded
                log.warning("alert checker: triggers not recorded (%r); trying again", exc)
                self.index.add_many(c.alert for c in crossed)
                await asyncio.sleep(0.5)
                self._retry += messages
                return
            self.triggered += len(triggered)
            self.raced += len(crossed) - len(triggered)
            ALERTS_TRIGGERED.inc(len(triggered))
            ALERT_ATTEMPTS_LOST.inc(len(crossed) - len(triggered))
            await self._publish_and_ack(triggered, messages)
            ALERT_RECORD_SECONDS.observe(time.perf_counter() - started)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._writes.discard(task)
            self._dispatch()

    async def _record(self, crossed: list[Crossed]) -> list[alerts.Triggered]:
        crossings = [alerts.Crossing(c.alert.id, c.price, c.quote_ts_ns) for c in crossed]
        for attempt in range(3):
            conn = await self._connection()
            try:
                triggered = await alerts.mark_triggered(conn, crossings)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await conn.close()
                sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
                if attempt == 2 or sqlstate not in CONFLICT_SQLSTATES:
                    raise
                continue
            self._connections.append(conn)
            return triggered
        raise AssertionError("unreachable")

    async def _connection(self) -> AsyncConnection:
        """An autocommit connection of this checker's own (kept between batches: no pool
        checkout and ping per batch); one that failed is closed, not kept."""
        if self._connections:
            return self._connections.pop()
        conn = await self.services.engine.connect()
        return await conn.execution_options(isolation_level="AUTOCOMMIT")

    async def _publish_and_ack(
        self, triggered: list[alerts.Triggered], messages: list[StreamMessage]
    ) -> None:
        """After the commit: the pushes, then the acks, retried while Redis is away (a crash in
        between re-reads messages whose alerts are no longer ACTIVE: nothing happens twice)."""
        backoff = 0.1
        while True:
            try:
                if triggered:
                    await alerts.publish_triggered(self.services.redis, triggered)
                    now_ns = time.time_ns()
                    for t in triggered:
                        ALERT_TRIGGER_SECONDS.observe((now_ns - t.quote_ts_ns) / 1e9)
                    triggered = []
                await self.group.ack(messages)
                return
            except (RedisError, OSError) as exc:
                if self._stop.is_set():
                    log.warning("alert checker: stopping with %d pushes unsent", len(triggered))
                    return
                log.warning("alert checker: cannot publish or ack (%s); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
