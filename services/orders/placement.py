"""Placing orders, batched: requests that arrive within a few milliseconds are committed together.

Each order is still judged alone, in arrival order, against the balances as the earlier orders
of the batch left them; a refused order never fails its neighbours. One transaction per batch:
claim the idempotency keys, lock the accounts (and positions, for sells) in a fixed order, judge,
then apply everything with set-based statements. After the commit, each accepted order is handed
to its matcher partition (XADD orders:{p}); an order whose hand-off is lost is still in
PostgreSQL, and the matcher's periodic sweep finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast
from uuid import UUID

from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.errors import (
    DomainError,
    IdempotencyConflict,
    InsufficientBuyingPower,
    InsufficientShares,
    InvalidInput,
    MarketClosed,
    UnknownSymbol,
)
from services.infra.idempotency import request_fingerprint
from services.infra.redis import RedisClient
from services.infra.replica import ReadRouter
from services.infra.request_context import current_request_id
from services.infra.retry import CONFLICT_SQLSTATES
from services.infra.settings import Settings
from services.infra.streams import partition_of
from services.market_data.clock import MarketClock
from services.market_data.quote_store import QuoteStore
from services.money import trim_quantity
from services.orders import order_classes, order_events, trailing
from services.orders.order_model import Event, Order, OrderClass, OrderType, Side
from services.orders.order_rules import (
    PlaceOrder,
    check_exits_around,
    hold_for,
    needs_quote,
    validate,
)
from services.orders.order_store import insert_orders, order_stream, orders_by_id

log = logging.getLogger("tradeql.placement")
SCOPE = "order"
ZERO = Decimal(0)


@dataclass
class _Request:
    command: PlaceOrder
    fingerprint: str
    future: asyncio.Future[Order]
    # Read when the request is queued: the batch worker runs in the context of whichever
    # request started it, so its own context would name that request for every order.
    request_id: str | None


@dataclass
class _Judged:
    """A batch's verdicts: new orders to insert, and each request's answer."""

    accepted: list[tuple[_Request, UUID, _AccountHold]] = field(default_factory=list)
    existing: dict[int, UUID] = field(default_factory=dict)  # request index -> earlier order
    refused: dict[int, DomainError] = field(default_factory=dict)


class OrderPlacement:
    def __init__(
        self,
        engine: AsyncEngine,
        redis: RedisClient,
        settings: Settings,
        clock: MarketClock,
        *,
        reads: ReadRouter | None = None,
    ) -> None:
        self._engine = engine
        self._reads = reads
        self._redis = redis
        self._settings = settings
        self._clock = clock
        self._quotes = QuoteStore(redis)
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    async def place(self, command: PlaceOrder) -> Order:
        """Validate, then wait for the batch that commits this order (or says why not)."""
        command = validate(command, self._settings)
        if command.type is OrderType.MARKET and not self._clock.is_open():
            raise MarketClosed(
                "the market is closed: market orders wait for the open", field="type"
            )
        fingerprint = request_fingerprint(command.fingerprint_fields())
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="order-placement")
        future: asyncio.Future[Order] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(command, fingerprint, future, current_request_id()))
        return await future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + self._settings.order_batch_ms / 1000
            while len(batch) < self._settings.order_batch_max:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            await self._settle(batch)

    async def _settle(self, batch: list[_Request]) -> None:
        """Commit the batch; should it fail as a whole, commit each request alone, so that a
        request that breaks a batch breaks only itself."""
        try:
            await self._commit(batch)
            return
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch, exc)
                return
            log.warning(
                "order batch of %d failed; committing each alone", len(batch), exc_info=True
            )
        for request in batch:
            try:
                await self._commit([request])
            except Exception as exc:
                self._fail([request], exc)

    @staticmethod
    def _fail(batch: list[_Request], error: BaseException) -> None:
        for request in batch:
            if not request.future.done():
                request.future.set_exception(error)

    async def _commit(self, batch: list[_Request]) -> None:
        # Only market orders and dollar amounts are priced from the quote: a batch of limit
        # orders costs no Redis round trip.
        symbols = sorted({r.command.symbol for r in batch if needs_quote(r.command)})
        quotes = dict(zip(symbols, await self._quotes.read(symbols), strict=True))
        for attempt in range(3):
            try:
                async with self._engine.begin() as conn:
                    judged = await self._judge(conn, batch, quotes)
                    placed, legs = await self._apply(conn, judged)
                    # ACCEPTED in the outbox with the orders: published below, or by the relay
                    accepted = [
                        order_events.OrderUpdate(Event.ACCEPTED, order)
                        for order in [o for _, o in placed] + legs
                    ]
                    await order_events.write(conn, accepted)
                break
            except DBAPIError as exc:
                if attempt == 2 or getattr(exc.orig, "sqlstate", None) not in CONFLICT_SQLSTATES:
                    raise
        if self._reads is not None:  # the owners' next history reads wait for the replica
            await self._reads.note_commit(order.user_id for _, order in placed)
        existing = await self._load_existing(judged)
        try:
            # Before anyone is answered: the owners' cached holdings are retired in it, so a
            # portfolio read after the answer, on any process, shows the hold.
            await self._hand_off(accepted)
        finally:
            self._answer(batch, judged, placed, existing)

    @staticmethod
    def _answer(
        batch: list[_Request],
        judged: _Judged,
        placed: list[tuple[_Request, Order]],
        existing: dict[UUID, Order],
    ) -> None:
        for request, order in placed:
            request.future.set_result(order)
        for index, earlier in judged.existing.items():
            batch[index].future.set_result(existing[earlier])
        for index, error in judged.refused.items():
            if not isinstance(error, _Duplicate):
                batch[index].future.set_exception(error)
        for index, error in judged.refused.items():
            if isinstance(error, _Duplicate):
                _copy_outcome(batch[error.first].future, batch[index].future)

    async def _judge(
        self, conn: AsyncConnection, batch: list[_Request], quotes: dict[str, Any]
    ) -> _Judged:
        judged = _Judged()
        known = set(
            (
                await conn.execute(
                    text("SELECT symbol FROM securities WHERE symbol = ANY(:s) AND active"),
                    {"s": sorted({r.command.symbol for r in batch})},
                )
            ).scalars()
        )
        fresh = await _claim_keys(conn, batch)
        accounts = await _lock_accounts(conn, sorted({r.command.user_id for r in batch}))
        positions = await _lock_positions(
            conn,
            sorted(
                {
                    (accounts[r.command.user_id]["id"], r.command.symbol)
                    for r in batch
                    if r.command.side is Side.SELL and r.command.user_id in accounts
                }
            ),
        )
        seen_keys: dict[tuple[UUID, str], int] = {}
        for index, request in enumerate(batch):
            command = request.command
            key = (command.user_id, command.idempotency_key)
            if key in seen_keys:  # the same key twice in one batch: the first one answers
                first = seen_keys[key]
                if batch[first].fingerprint != request.fingerprint:
                    judged.refused[index] = _conflict()
                else:
                    judged.refused[index] = _Duplicate(first)
                continue
            seen_keys[key] = index
            if key not in fresh:
                earlier = await _earlier_claim(conn, command, request.fingerprint)
                if isinstance(earlier, DomainError):
                    judged.refused[index] = earlier
                else:
                    judged.existing[index] = earlier
                continue
            try:
                hold = _judge_one(command, known, quotes, accounts, positions, self._settings)
            except DomainError as error:
                judged.refused[index] = error
                continue
            judged.accepted.append((request, uuid.uuid4(), hold))
        refused_keys = [
            batch[i].command
            for i, e in judged.refused.items()
            if not isinstance(e, _Duplicate | IdempotencyConflict)
        ]
        await _release_keys(conn, refused_keys)
        return judged

    async def _apply(
        self, conn: AsyncConnection, judged: _Judged
    ) -> tuple[list[tuple[_Request, Order]], list[Order]]:
        """The accepted orders, answered, and the legs made with them (an OCO's stop-loss)."""
        if not judged.accepted:
            return [], []
        cash_by_account: dict[UUID, Decimal] = defaultdict(Decimal)
        shares_by_position: dict[tuple[UUID, str], Decimal] = defaultdict(Decimal)
        rows = []
        for request, order_id, hold in judged.accepted:
            c = request.command
            account_id = hold.account_id
            cash_by_account[account_id] += hold.cash
            if hold.shares:
                shares_by_position[(account_id, c.symbol)] += hold.shares
            rows.append(
                {
                    "id": order_id,
                    "user_id": c.user_id,
                    "account_id": account_id,
                    "symbol": c.symbol,
                    "side": c.side.value,
                    "type": c.type.value,
                    "tif": c.time_in_force.value,
                    "quantity": hold.quantity,
                    "notional": c.notional,
                    "limit_price": c.limit_price,
                    "stop_price": hold.stop_price or c.stop_price,
                    "trail_price": c.trail_price,
                    "trail_percent": c.trail_percent,
                    "high_water_mark": hold.high_water_mark,
                    "reserved_cash": hold.cash,
                    "reserved_quantity": hold.shares,
                    "key": c.idempotency_key,
                    "request_id": request.request_id,
                    "extended_hours": c.extended_hours,
                    "order_class": c.order_class.value,
                    "take_profit_limit": c.take_profit_limit,
                    "stop_loss_stop": c.stop_loss_stop,
                    "stop_loss_limit": c.stop_loss_limit,
                }
            )
        await conn.execute(
            text(
                "UPDATE accounts a SET reserved_cash = a.reserved_cash + d.amount, "
                "updated_at = now() FROM unnest(CAST(:ids AS uuid[]), CAST(:amounts AS numeric[])) "
                "AS d(id, amount) WHERE a.id = d.id"
            ),
            {"ids": list(cash_by_account), "amounts": list(cash_by_account.values())},
        )
        if shares_by_position:
            await conn.execute(
                text(
                    "UPDATE positions p SET reserved_quantity = p.reserved_quantity + d.qty, "
                    "updated_at = now() FROM unnest(CAST(:accounts AS uuid[]), "
                    "CAST(:symbols AS text[]), CAST(:qty AS numeric[])) AS d(account_id, symbol, qty) "
                    "WHERE p.account_id = d.account_id AND p.symbol = d.symbol"
                ),
                {
                    "accounts": [a for a, _ in shares_by_position],
                    "symbols": [s for _, s in shares_by_position],
                    "qty": list(shares_by_position.values()),
                },
            )
        by_id = {o.id: o for o in await insert_orders(conn, rows)}
        legs = await order_classes.insert_legs(
            conn,
            [
                leg
                for row in rows
                if row["order_class"] == OrderClass.OCO.value
                for leg in order_classes.exit_rows(
                    row, cast(Decimal, row["quantity"]), with_take_profit=False
                )
            ],
        )
        await conn.execute(
            text(
                "UPDATE idempotency_keys k SET resource_id = d.order_id FROM unnest("
                "CAST(:users AS uuid[]), CAST(:keys AS text[]), CAST(:orders AS text[])) "
                "AS d(user_id, key, order_id) WHERE k.user_id = d.user_id AND k.scope = 'order' "
                "AND k.key = d.key"
            ),
            {
                "users": [r.command.user_id for r, _, _ in judged.accepted],
                "keys": [r.command.idempotency_key for r, _, _ in judged.accepted],
                "orders": [str(i) for _, i, _ in judged.accepted],
            },
        )
        await conn.execute(
            text(
                "INSERT INTO audit_log (user_id, action, entity_type, entity_id, details, request_id) "
                "SELECT u, 'order.accepted', 'order', o, jsonb_build_object('hold', h), r "
                "FROM unnest(CAST(:users AS uuid[]), CAST(:orders AS text[]), "
                "CAST(:holds AS text[]), CAST(:rids AS text[])) AS d(u, o, h, r)"
            ),
            {
                "users": [r.command.user_id for r, _, _ in judged.accepted],
                "orders": [str(i) for _, i, _ in judged.accepted],
                "holds": [str(h.cash or h.shares) for _, _, h in judged.accepted],
                "rids": [r.request_id for r, _, _ in judged.accepted],
            },
        )
        return [(request, by_id[order_id]) for request, order_id, _ in judged.accepted], legs

    async def _load_existing(self, judged: _Judged) -> dict[UUID, Order]:
        if not judged.existing:
            return {}
        async with self._engine.connect() as conn:
            return await orders_by_id(conn, list(judged.existing.values()))

    async def _hand_off(self, accepted: list[order_events.OrderUpdate]) -> None:
        """Best effort, one round trip: the orders to the matcher, then their ACCEPTED events (and
        the owners' cached holdings retired). The matcher's sweep finds an order whose hand-off
        is lost."""
        if not accepted:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for order in (update.order for update in accepted):
                    partition = partition_of(order.symbol, self._settings.quote_partitions)
                    message: dict[Any, Any] = {"op": "new", "id": str(order.id)}
                    if order.request_id:
                        message["rid"] = order.request_id
                    pipe.xadd(order_stream(partition), message)
                order_events.queue(pipe, accepted)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning(
                "hand-off of %d orders to the matcher failed (%s); the sweep will find them",
                len(accepted),
                exc,
            )


def _copy_outcome(source: asyncio.Future[Order], target: asyncio.Future[Order]) -> None:
    if source.done() and not target.done():
        error = source.exception()
        if error is not None:
            target.set_exception(error)
        else:
            target.set_result(source.result())


class _Duplicate(DomainError):
    """The same key twice in one batch: answered with the first request's order."""

    def __init__(self, first: int) -> None:
        super().__init__("duplicate in batch")
        self.first = first


def _conflict() -> IdempotencyConflict:
    return IdempotencyConflict(
        "this idempotencyKey was already used for a different order", field="idempotencyKey"
    )


async def _claim_keys(conn: AsyncConnection, batch: list[_Request]) -> set[tuple[UUID, str]]:
    unique = {
        (r.command.user_id, r.command.idempotency_key): r.fingerprint for r in reversed(batch)
    }
    rows = await conn.execute(
        text(
            "INSERT INTO idempotency_keys (user_id, scope, key, request_hash) "
            "SELECT u, 'order', k, h FROM unnest(CAST(:users AS uuid[]), CAST(:keys AS text[]), "
            "CAST(:hashes AS text[])) AS d(u, k, h) ORDER BY u, k "
            "ON CONFLICT DO NOTHING RETURNING user_id, key"
        ),
        {
            "users": [u for u, _ in unique],
            "keys": [k for _, k in unique],
            "hashes": list(unique.values()),
        },
    )
    return {(r.user_id, r.key) for r in rows}


async def _earlier_claim(
    conn: AsyncConnection, command: PlaceOrder, fingerprint: str
) -> UUID | DomainError:
    row = (
        await conn.execute(
            text(
                "SELECT request_hash, resource_id FROM idempotency_keys "
                "WHERE user_id = :u AND scope = 'order' AND key = :k"
            ),
            {"u": command.user_id, "k": command.idempotency_key},
        )
    ).first()
    if row is None or row.resource_id is None:
        return InvalidInput(
            "this idempotencyKey is being used right now; retry", field="idempotencyKey"
        )
    if row.request_hash != fingerprint:
        return _conflict()
    return UUID(row.resource_id)


async def _release_keys(conn: AsyncConnection, commands: list[PlaceOrder]) -> None:
    """A refused order leaves its key free: the client may retry it once the reason is gone."""
    if commands:
        await conn.execute(
            text(
                "DELETE FROM idempotency_keys k USING unnest(CAST(:users AS uuid[]), "
                "CAST(:keys AS text[])) AS d(u, key) WHERE k.user_id = d.u AND k.scope = 'order' "
                "AND k.key = d.key AND k.resource_id IS NULL"
            ),
            {"users": [c.user_id for c in commands], "keys": [c.idempotency_key for c in commands]},
        )


async def _lock_accounts(conn: AsyncConnection, user_ids: list[UUID]) -> dict[UUID, dict[str, Any]]:
    rows = await conn.execute(
        text(
            "SELECT id, user_id, cash, reserved_cash FROM accounts WHERE user_id = ANY(:u) "
            "ORDER BY id FOR UPDATE"
        ),
        {"u": user_ids},
    )
    return {r.user_id: {"id": r.id, "available": r.cash - r.reserved_cash} for r in rows}


async def _lock_positions(
    conn: AsyncConnection, keys: list[tuple[UUID, str]]
) -> dict[tuple[UUID, str], Decimal]:
    if not keys:
        return {}
    rows = await conn.execute(
        text(
            "SELECT p.account_id, p.symbol, p.quantity - p.reserved_quantity AS available "
            "FROM positions p JOIN unnest(CAST(:a AS uuid[]), CAST(:s AS text[])) AS d(a, s) "
            "ON p.account_id = d.a AND p.symbol = d.s ORDER BY p.account_id, p.symbol FOR UPDATE"
        ),
        {"a": [a for a, _ in keys], "s": [s for _, s in keys]},
    )
    return {(r.account_id, r.symbol): r.available for r in rows}


@dataclass(frozen=True, slots=True)
class _AccountHold:
    account_id: UUID
    quantity: Decimal
    cash: Decimal
    shares: Decimal
    # A trailing stop's starting mark and the stop it makes
    high_water_mark: Decimal | None = None
    stop_price: Decimal | None = None


def _start_trailing(command: PlaceOrder, quote: Any) -> tuple[PlaceOrder, Decimal]:
    """A trailing stop's starting mark (from `quote`) and the command with its initial stop."""
    mark = trailing.starting_mark(command.side, quote)
    if mark is None:
        raise InvalidInput(f"no price for {command.symbol} yet to trail from", field="symbol")
    return trailing.with_stop(command, mark), mark


def _judge_one(
    command: PlaceOrder,
    known: set[str],
    quotes: dict[str, Any],
    accounts: dict[UUID, dict[str, Any]],
    positions: dict[tuple[UUID, str], Decimal],
    settings: Settings,
) -> _AccountHold:
    """One order against the balances the batch has left so far; updates them if accepted."""
    if command.symbol not in known:
        raise UnknownSymbol(f"{command.symbol} is not a tradable security", field="symbol")
    account = accounts[command.user_id]
    quote = quotes.get(command.symbol)
    if needs_quote(command) and (quote is None or quote.ask <= 0 or quote.bid <= 0):
        raise InvalidInput(
            f"no quote for {command.symbol} yet: cannot price a "
            f"{'trailing stop' if command.type is OrderType.TRAILING_STOP else 'market order'}",
            field="symbol",
        )
    if command.order_class is not OrderClass.SIMPLE and command.type is OrderType.MARKET:
        assert quote is not None  # a market buy needs one (above)
        check_exits_around(command, quote.ask)  # a MARKET entry's price: the ask
    mark = None
    if command.type is OrderType.TRAILING_STOP:
        command, mark = _start_trailing(command, quote)
    hold = hold_for(
        command,
        quote.bid if quote else None,
        quote.ask if quote else None,
        settings.market_order_collar,
    )
    if hold.quantity <= 0:
        raise InvalidInput("that amount buys less than 0.000001 of a share", field="notional")
    if command.side is Side.BUY:
        if hold.cash > account["available"]:
            raise InsufficientBuyingPower(
                f"this order needs {hold.cash} of buying power; {account['available']} is free",
                field="quantity" if command.quantity is not None else "notional",
            )
        account["available"] -= hold.cash
    else:
        key = (account["id"], command.symbol)
        available = positions.get(key, ZERO)
        if hold.shares > available:
            raise InsufficientShares(
                f"this order sells {trim_quantity(hold.shares)} shares of {command.symbol}; "
                f"{trim_quantity(available)} are free",
                field="quantity" if command.quantity is not None else "notional",
            )
        positions[key] = available - hold.shares
    return _AccountHold(
        account["id"], hold.quantity, hold.cash, hold.shares, mark, command.stop_price
    )


