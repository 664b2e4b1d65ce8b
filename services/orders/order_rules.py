"""What makes an order acceptable before any money is looked at, and what it holds back."""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from uuid import UUID

from services.errors import InvalidInput
from services.infra.idempotency import validate_key
from services.infra.settings import Settings
from services.market_data.securities import is_valid_symbol, normalize_symbol
from services.money import decimal_places, require_finite, round_cash_up, round_shares_down
from services.orders.order_model import (
    ENTRY_CLASSES,
    STOP_TYPES,
    OrderClass,
    OrderType,
    Side,
    TimeInForce,
)

CENT = Decimal("0.01")
SUB_DOLLAR_TICK = Decimal("0.0001")
ONE = Decimal(1)
MAX_QUANTITY_PLACES = 6
MAX_PERCENT_PLACES = 2  # the API writes percentages with 2 places (schema/decimals.py)
HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    """The command: what the client asked for, as typed."""

    user_id: UUID
    symbol: str
    side: Side
    type: OrderType
    time_in_force: TimeInForce
    quantity: Decimal | None
    notional: Decimal | None
    limit_price: Decimal | None
    stop_price: Decimal | None
    idempotency_key: str
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    # What the client asked for, when the order was derived from another request (closing a
    # position): the idempotency key guards that request, not the quantity worked out from it.
    intent: tuple[tuple[str, str | None], ...] | None = None
    extended_hours: bool = False
    order_class: OrderClass = OrderClass.SIMPLE
    take_profit_limit: Decimal | None = None  # takeProfit.limitPrice
    stop_loss_stop: Decimal | None = None  # stopLoss.stopPrice
    stop_loss_limit: Decimal | None = None  # stopLoss.limitPrice

    def fingerprint_fields(self) -> dict[str, str | None]:
        def text(v: object) -> str | None:
            return None if v is None else str(v)

        if self.intent is not None:
            return dict(self.intent)
        trail = {"trail": text(self.trail_price), "trail_pct": text(self.trail_percent)}
        extended = {"extended": "true"} if self.extended_hours else {}
        exits = (
            {
                "class": self.order_class.value,
                "take_profit": text(self.take_profit_limit),
                "stop_loss": text(self.stop_loss_stop),
                "stop_loss_limit": text(self.stop_loss_limit),
            }
            if self.order_class is not OrderClass.SIMPLE
            else {}
        )
        return (
            extended
            | exits
            | {
                # only when given: the fingerprints of orders without a trail stay as they were
                **{k: v for k, v in trail.items() if v is not None},
                "symbol": self.symbol,
                "side": self.side.value,
                "type": self.type.value,
                "tif": self.time_in_force.value,
                "quantity": text(self.quantity),
                "notional": text(self.notional),
                "limit": text(self.limit_price),
                "stop": text(self.stop_price),
            }
        )


def tick_for(price: Decimal) -> Decimal:
    return CENT if price >= ONE else SUB_DOLLAR_TICK


def on_tick_grid(price: Decimal) -> bool:
    return price % tick_for(price) == 0


def _price(value: Decimal | None, field: str, settings: Settings) -> Decimal | None:
    if value is None:
        return None
    require_finite(value, field)
    if value <= 0:
        raise InvalidInput(f"{field} must be greater than zero", field=field)
    if value > settings.order_max_price:
        raise InvalidInput(f"{field} must be at most {settings.order_max_price}", field=field)
    if not on_tick_grid(value):
        raise InvalidInput(
            f"{field} {value} is off the tick grid ({tick_for(value)} at this price)", field=field
        )
    return value


def _require_prices(command: PlaceOrder) -> None:
    needs = {
        OrderType.MARKET: (False, False),
        OrderType.LIMIT: (True, False),
        OrderType.STOP: (False, True),
        OrderType.STOP_LIMIT: (True, True),
        OrderType.TRAILING_STOP: (False, False),  # its stop follows the price
    }[command.type]
    for given, needed, field in (
        (command.limit_price, needs[0], "limitPrice"),
        (command.stop_price, needs[1], "stopPrice"),
    ):
        if needed and given is None:
            raise InvalidInput(f"a {command.type.value} order needs {field}", field=field)
        if not needed and given is not None:
            raise InvalidInput(f"a {command.type.value} order takes no {field}", field=field)


def _trail(command: PlaceOrder, settings: Settings) -> tuple[Decimal | None, Decimal | None]:
    """A TRAILING_STOP's trail: exactly one of trailPrice (> 0, on the tick grid) and
    trailPercent (0 < p < 100); no other type takes either."""
    given = ((command.trail_price, "trailPrice"), (command.trail_percent, "trailPercent"))
    if command.type is not OrderType.TRAILING_STOP:
        for value, field in given:
            if value is not None:
                raise InvalidInput(f"a {command.type.value} order takes no {field}", field=field)
        return None, None
    if (command.trail_price is None) == (command.trail_percent is None):
        raise InvalidInput(
            "a TRAILING_STOP order needs exactly one of trailPrice and trailPercent",
            field="trailPrice",
        )
    percent = command.trail_percent
    if percent is not None:
        require_finite(percent, "trailPercent")
        if not 0 < percent < HUNDRED:
            raise InvalidInput("trailPercent must be between 0 and 100", field="trailPercent")
        if decimal_places(percent.normalize()) > MAX_PERCENT_PLACES:
            raise InvalidInput(
                f"trailPercent has more than {MAX_PERCENT_PLACES} decimal places",
                field="trailPercent",
            )
        percent = percent.quantize(Decimal(1).scaleb(-MAX_PERCENT_PLACES))
    return _price(command.trail_price, "trailPrice", settings), percent


def _size(command: PlaceOrder, settings: Settings) -> None:
    if (command.quantity is None) == (command.notional is None):
        raise InvalidInput("give exactly one of quantity and notional", field="quantity")
    if command.quantity is not None:
        require_finite(command.quantity, "quantity")
        if command.quantity <= 0:
            raise InvalidInput("quantity must be greater than zero", field="quantity")
        if decimal_places(command.quantity.normalize()) > MAX_QUANTITY_PLACES:
            raise InvalidInput("quantity has more than 6 decimal places", field="quantity")
        if command.quantity > settings.order_max_quantity:
            raise InvalidInput(
                f"quantity must be at most {settings.order_max_quantity}", field="quantity"
            )
    if command.notional is not None:
        require_finite(command.notional, "notional")
        if command.type is not OrderType.MARKET:
            raise InvalidInput("notional is for MARKET orders only", field="notional")
        if decimal_places(command.notional.normalize()) > 2:
            raise InvalidInput("notional has more than 2 decimal places", field="notional")
        if not settings.order_min_notional <= command.notional <= settings.order_max_notional:
            raise InvalidInput(
                f"notional must be between {settings.order_min_notional} and "
                f"{settings.order_max_notional}",
                field="notional",
            )


def validate(command: PlaceOrder, settings: Settings) -> PlaceOrder:
    """The command, normalized, or InvalidInput naming the field at fault."""
    symbol = normalize_symbol(command.symbol)
    if not is_valid_symbol(symbol):
        raise InvalidInput(f"{command.symbol!r} is not a symbol", field="symbol")
    validate_key(command.idempotency_key)
    if (
        command.order_class is OrderClass.OCO
        and command.type is OrderType.LIMIT
        and command.limit_price is None
        and command.take_profit_limit is not None
    ):  # an OCO's limit is its take-profit's
        tp = _price(command.take_profit_limit, "takeProfit.limitPrice", settings)
        command = replace(command, limit_price=tp)
    _require_prices(command)
    limit = _price(command.limit_price, "limitPrice", settings)
    stop = _price(command.stop_price, "stopPrice", settings)
    trail_price, trail_percent = _trail(command, settings)
    _size(command, settings)
    if command.type in STOP_TYPES and command.time_in_force in (
        TimeInForce.IOC,
        TimeInForce.FOK,
    ):
        raise InvalidInput(
            f"{command.time_in_force.value} needs an order that can execute now, not a stop",
            field="timeInForce",
        )
    if command.extended_hours and (
        command.type is not OrderType.LIMIT or command.time_in_force is not TimeInForce.DAY
    ):
        raise InvalidInput(
            "extendedHours is for LIMIT orders with timeInForce DAY", field="extendedHours"
        )
    command = _order_class(replace(command, limit_price=limit), settings)
    limit = command.limit_price
    quantity = command.quantity.normalize() if command.quantity is not None else None
    return replace(
        command,
        symbol=symbol,
        limit_price=limit,
        stop_price=stop,
        trail_price=trail_price,
        trail_percent=trail_percent,
        quantity=quantity if quantity is None else quantity.quantize(Decimal("0.000001")),
    )


# -- order classes ---------------------------------------------------------------------------
# Positions never go short: a BRACKET or OTO entry is a buy, its exits (and an OCO's) sells.


def _exits(command: PlaceOrder, settings: Settings) -> PlaceOrder:
    """The exit prices checked on their own (tick grid, bounds), under their input's names."""
    return replace(
        command,
        take_profit_limit=_price(command.take_profit_limit, "takeProfit.limitPrice", settings),
        stop_loss_stop=_price(command.stop_loss_stop, "stopLoss.stopPrice", settings),
        stop_loss_limit=_price(command.stop_loss_limit, "stopLoss.limitPrice", settings),
    )


def _require(condition: bool, message: str, field: str) -> None:
    if not condition:
        raise InvalidInput(message, field=field)


def _order_class(command: PlaceOrder, settings: Settings) -> PlaceOrder:
    """A class order's shape: its entry (or OCO's take-profit) and its exits."""
    klass = command.order_class
    has_tp, has_sl = command.take_profit_limit is not None, command.stop_loss_stop is not None
    if klass is OrderClass.SIMPLE:
        _require(not has_tp, "takeProfit is for BRACKET, OTO and OCO orders", "takeProfit")
        _require(
            not has_sl and command.stop_loss_limit is None,
            "stopLoss is for BRACKET, OTO and OCO orders",
            "stopLoss",
        )
        return command
    _require(
        command.stop_loss_limit is None or has_sl,
        "stopLoss.limitPrice needs stopLoss.stopPrice",
        "stopLoss.stopPrice",
    )
    _require(
        command.quantity is not None, f"a {klass.value} order is placed by quantity", "notional"
    )
    _require(
        command.time_in_force in (TimeInForce.DAY, TimeInForce.GTC),
        f"a {klass.value} order is DAY or GTC",
        "timeInForce",
    )
    _require(not command.extended_hours, f"a {klass.value} order works in REGULAR hours only",
             "extendedHours")  # fmt: skip
    if klass is OrderClass.BRACKET:
        _require(has_tp, "a BRACKET order needs takeProfit", "takeProfit")
        _require(has_sl, "a BRACKET order needs stopLoss", "stopLoss")
    elif klass is OrderClass.OTO:
        _require(
            has_tp != has_sl, "an OTO order needs exactly one of takeProfit and stopLoss",
            "takeProfit",
        )  # fmt: skip
    else:
        _require(has_tp, "an OCO order needs takeProfit", "takeProfit")
        _require(has_sl, "an OCO order needs stopLoss", "stopLoss")
    command = _exits(command, settings)
    if command.stop_loss_limit is not None:
        assert command.stop_loss_stop is not None
        _require(
            command.stop_loss_limit <= command.stop_loss_stop,
            "stopLoss.limitPrice must be at most stopLoss.stopPrice",
            "stopLoss.limitPrice",
        )
    if klass in ENTRY_CLASSES:
        _require(command.side is Side.BUY, f"a {klass.value} entry is a BUY", "side")
        _require(
            command.type in (OrderType.MARKET, OrderType.LIMIT),
            f"a {klass.value} entry is a MARKET or LIMIT order",
            "type",
        )
        if command.limit_price is not None:
            check_exits_around(command, command.limit_price)
        return command
    _require(command.side is Side.SELL, "an OCO order sells a position", "side")
    _require(command.type is OrderType.LIMIT, "an OCO order is a LIMIT order", "type")
    _require(
        command.limit_price is None or command.limit_price == command.take_profit_limit,
        "an OCO's limitPrice is its takeProfit.limitPrice",
        "limitPrice",
    )
    assert command.take_profit_limit is not None and command.stop_loss_stop is not None
    _require(
        command.take_profit_limit > command.stop_loss_stop,
        "takeProfit.limitPrice must be above stopLoss.stopPrice",
        "takeProfit.limitPrice",
    )
    return replace(command, limit_price=command.take_profit_limit)


def check_exits_around(command: PlaceOrder, entry_price: Decimal) -> None:
    """takeProfit.limitPrice > the entry's price > stopLoss.stopPrice (the entry's price is its
    limit, or the ask for a MARKET entry)."""
    if command.take_profit_limit is not None:
        _require(
            command.take_profit_limit > entry_price,
            f"takeProfit.limitPrice must be above the entry price {entry_price}",
            "takeProfit.limitPrice",
        )
    if command.stop_loss_stop is not None:
        _require(
            command.stop_loss_stop < entry_price,
            f"stopLoss.stopPrice must be below the entry price {entry_price}",
            "stopLoss.stopPrice",
        )


@dataclass(frozen=True, slots=True)
class Hold:
    """What an accepted order holds back: cash for a buy, shares for a sell."""

    quantity: Decimal  # the order's shares (estimated from the quote for a dollar-amount buy)
    cash: Decimal = Decimal("0.00")
    shares: Decimal = Decimal(0)


def hold_for(
    command: PlaceOrder, bid: Decimal | None, ask: Decimal | None, collar: Decimal
) -> Hold:
    """LIMIT: quantity x limit; MARKET: quantity x ask x (1 + collar); STOP (and TRAILING_STOP,
    at its initial stop): quantity x stop x (1 + collar); a dollar amount: the amount. A sell
    holds its shares."""
    if command.side is Side.SELL:
        quantity = command.quantity
        if quantity is None:  # selling a dollar amount: the shares it takes at the bid
            assert command.notional is not None and bid
            quantity = round_shares_down(command.notional / bid)
        return Hold(quantity=quantity, shares=quantity)
    if command.notional is not None:
        assert ask
        return Hold(quantity=round_shares_down(command.notional / ask), cash=command.notional)
    assert command.quantity is not None
    if command.type in (OrderType.LIMIT, OrderType.STOP_LIMIT):
        assert command.limit_price is not None
        price = command.limit_price
    elif command.type in (OrderType.STOP, OrderType.TRAILING_STOP):
        assert command.stop_price is not None
        price = command.stop_price * (1 + collar)
    else:
        assert ask
        price = ask * (1 + collar)
    return Hold(quantity=command.quantity, cash=round_cash_up(command.quantity * price))


def needs_quote(command: PlaceOrder) -> bool:
    """A market order or a dollar amount is priced from the current quote; a trailing stop
    starts following from it."""
    return command.type is OrderType.TRAILING_STOP or (
        command.type is OrderType.MARKET
        and (command.side is Side.BUY or command.notional is not None)
    )
