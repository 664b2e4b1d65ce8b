"""Closing positions: a market sell of the whole position, a quantity or a percentage of it, and
closing every position at once (cancelling the account's open orders first, if asked).

A close is an ordinary order placed through `OrderPlacement` (its holds, its batch, its matcher
hand-off); it sells at most the shares no open order holds, else INSUFFICIENT_SHARES. Its
idempotency key guards the request as the client made it (symbol, quantity, percentage), not the
quantity worked out from the position: a retry after the sell has filled answers with the same
order, though the position is gone by then.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.errors import DomainError, IdempotencyConflict, InvalidInput, NotFound
from services.infra.idempotency import request_fingerprint, validate_key
from services.market_data.securities import is_valid_symbol, normalize_symbol
from services.money import require_finite, round_shares_down, trim_quantity
from services.orders.cancel import OrderCancellation
from services.orders.order_model import Order, OrderType, Side, TimeInForce
from services.orders.order_rules import PlaceOrder
from services.orders.order_store import orders_by_id
from services.orders.placement import SCOPE, OrderPlacement

HUNDRED = Decimal(100)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


def close_intent(
    symbol: str, quantity: Decimal | None, percentage: Decimal | None
) -> tuple[tuple[str, str | None], ...]:
    """The request a close's idempotency key guards."""
    return (
        ("close", symbol),
        ("quantity", _text(quantity)),
        ("percentage", _text(percentage)),
    )


def shares_to_sell(held: Decimal, quantity: Decimal | None, percentage: Decimal | None) -> Decimal:
    """The whole position, the quantity given, or the percentage (0, 100] of the position
    rounded down to 6 places."""
    if quantity is not None and percentage is not None:
        raise InvalidInput("give at most one of quantity and percentage", field="percentage")
    if quantity is not None:
        return quantity  # placement checks it like any order's quantity
    if percentage is None:
        return held
    require_finite(percentage, "percentage")
    if not 0 < percentage <= HUNDRED:
        raise InvalidInput("percentage must be greater than 0 and at most 100", field="percentage")
    shares = round_shares_down(held * percentage / HUNDRED)
    if shares <= 0:
        raise InvalidInput(
            f"{percentage}% of {trim_quantity(held)} shares is less than 0.000001 of a share",
            field="percentage",
        )
    return shares


class PositionClosing:
    def __init__(
        self, engine: AsyncEngine, placement: OrderPlacement, cancellation: OrderCancellation
    ) -> None:
        self._engine = engine
        self._placement = placement
        self._cancellation = cancellation

    async def close_position(
        self,
        user_id: UUID,
        symbol: str,
        quantity: Decimal | None,
        percentage: Decimal | None,
        idempotency_key: str,
    ) -> Order:
        wanted = normalize_symbol(symbol)
        if not is_valid_symbol(wanted):
            raise InvalidInput(f"{symbol!r} is not a symbol", field="symbol")
        validate_key(idempotency_key)
        intent = close_intent(wanted, quantity, percentage)
        earlier = await self._earlier(user_id, idempotency_key, intent)
        if earlier is not None:
            return earlier
        held = await self._held(user_id, wanted)
        if not held:
            raise NotFound(f"no position in {wanted}", field="symbol")
        return await self._placement.place(
            PlaceOrder(
                user_id=user_id,
                symbol=wanted,
                side=Side.SELL,
                type=OrderType.MARKET,
                time_in_force=TimeInForce.DAY,
                quantity=shares_to_sell(held, quantity, percentage),
                notional=None,
                limit_price=None,
                stop_price=None,
                idempotency_key=idempotency_key,
                intent=intent,
            )
        )

    async def close_all(
        self, user_id: UUID, *, cancel_orders: bool, idempotency_key: str
    ) -> tuple[list[Order], list[tuple[str, DomainError]]]:
        """A close of every position (`<key>:<symbol>` its idempotency key), after cancelling
        the open orders when asked: the orders, and each symbol that could not be closed with
        why. A retry answers with the same orders (and spares them from its cancel)."""
        validate_key(idempotency_key)
        prefix = f"{idempotency_key}:"
        if cancel_orders:
            await self._cancellation.cancel_all(user_id, sparing_prefix=prefix)
        symbols = sorted(await self._held_symbols(user_id) | await self._closed_by(user_id, prefix))
        results = await asyncio.gather(
            *(
                self.close_position(user_id, symbol, None, None, f"{prefix}{symbol}")
                for symbol in symbols
            ),
            return_exceptions=True,
        )
        orders: list[Order] = []
        failures: list[tuple[str, DomainError]] = []
        for symbol, result in zip(symbols, results, strict=True):
            if isinstance(result, DomainError):
                failures.append((symbol, result))
            elif isinstance(result, BaseException):
                raise result
            else:
                orders.append(result)
        return orders, failures

    async def _earlier(
        self, user_id: UUID, key: str, intent: tuple[tuple[str, str | None], ...]
    ) -> Order | None:
        """The order an earlier request with this key made, if it was this same request."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT request_hash, resource_id FROM idempotency_keys "
                        "WHERE user_id = :u AND scope = :s AND key = :k"
                    ),
                    {"u": user_id, "s": SCOPE, "k": key},
                )
            ).first()
            if row is None or row.resource_id is None:
                return None  # new, or being placed right now: placement settles which
            if row.request_hash != request_fingerprint(dict(intent)):
                raise IdempotencyConflict(
                    "this idempotencyKey was already used for a different request",
                    field="idempotencyKey",
                )
            order_id = UUID(row.resource_id)
            return (await orders_by_id(conn, [order_id]))[order_id]

    async def _held(self, user_id: UUID, symbol: str) -> Decimal:
        async with self._engine.connect() as conn:
            held = (
                await conn.execute(
                    text(
                        "SELECT p.quantity FROM positions p JOIN accounts a ON a.id = p.account_id "
                        "WHERE a.user_id = :u AND p.symbol = :s"
                    ),
                    {"u": user_id, "s": symbol},
                )
            ).scalar()
        return Decimal(held or 0)

    async def _held_symbols(self, user_id: UUID) -> set[str]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT p.symbol FROM positions p JOIN accounts a ON a.id = p.account_id "
                    "WHERE a.user_id = :u AND p.quantity > 0"
                ),
                {"u": user_id},
            )
            return set(rows.scalars())

    async def _closed_by(self, user_id: UUID, prefix: str) -> set[str]:
        """The symbols an earlier closeAllPositions with this key placed orders for."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT key FROM idempotency_keys WHERE user_id = :u AND scope = :s "
                    "AND left(key, :n) = :p AND resource_id IS NOT NULL"
                ),
                {"u": user_id, "s": SCOPE, "n": len(prefix), "p": prefix},
            )
            return {key[len(prefix) :] for key in rows.scalars()}
