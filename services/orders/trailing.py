"""Trailing stops (pure, no I/O): a stop that follows the best price seen since the order
started working, its `high_water_mark` (the highest last price for a sell, the lowest for a buy).

stop = mark - trail for a sell, mark + trail for a buy, where the trail is `trail_price` dollars
or `trail_percent` of the mark, rounded to the tick away from the market (down for a sell, up
for a buy), so the stop never comes nearer the market than the trail asked for. The mark only
ever improves, so a sell's stop only rises and a buy's only falls.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from services.errors import InvalidInput
from services.market_data.marketdata import Quote
from services.orders.order_model import Order, OrderType, Side
from services.orders.order_rules import PlaceOrder, tick_for

HUNDRED = Decimal(100)


def stop_for(
    side: Side, mark: Decimal, trail_price: Decimal | None, trail_percent: Decimal | None
) -> Decimal:
    """The stop a trail makes of `mark`, on the tick grid; zero or less when the trail is wider
    than the price (a sell the caller must refuse)."""
    trail = trail_price if trail_price is not None else mark * (trail_percent or 0) / HUNDRED
    if side is Side.SELL:
        raw = mark - trail
        return raw.quantize(tick_for(raw), rounding=ROUND_FLOOR) if raw > 0 else raw
    raw = mark + trail
    return raw.quantize(tick_for(raw), rounding=ROUND_CEILING)


def with_stop(command: PlaceOrder, mark: Decimal) -> PlaceOrder:
    """A TRAILING_STOP command with the stop its trail makes of `mark`; InvalidInput when the
    trail is wider than the price."""
    stop = stop_for(command.side, mark, command.trail_price, command.trail_percent)
    if stop <= 0:
        field = "trailPrice" if command.trail_price is not None else "trailPercent"
        raise InvalidInput(f"the trail is wider than the price ({mark})", field=field)
    return replace(command, stop_price=stop)


def starting_mark(side: Side, quote: Quote) -> Decimal | None:
    """The mark an order starts from: the last price, or without one the side it would trade
    at (the bid for a sell, the ask for a buy); None without any usable price."""
    for price in (quote.last, quote.bid if side is Side.SELL else quote.ask):
        if price.is_finite() and price > 0:
            return price
    return None


def improves(side: Side, mark: Decimal, last: Decimal) -> bool:
    return last > mark if side is Side.SELL else last < mark


def is_trailing(order: Order) -> bool:
    """A trailing stop still following the price (not yet triggered)."""
    return order.type is OrderType.TRAILING_STOP and not order.triggered


def follow(order: Order, last: Decimal) -> Order:
    """The order with `last` as its mark and the stop moved to match (the caller checked that
    `last` improves the mark)."""
    return replace(
        order,
        high_water_mark=last,
        stop_price=stop_for(order.side, last, order.trail_price, order.trail_percent),
    )


def best_of(kept: Order, fresh: Order) -> Order:
    """`fresh` (a newer version of the same order) with the better of the two marks: a mark
    held in memory may be ahead of the one last stored (it is stored at most once a second)."""
    if (
        is_trailing(kept)
        and is_trailing(fresh)
        and kept.high_water_mark is not None
        and fresh.high_water_mark is not None
        and improves(fresh.side, fresh.high_water_mark, kept.high_water_mark)
    ):
        return follow(fresh, kept.high_water_mark)
    return fresh
