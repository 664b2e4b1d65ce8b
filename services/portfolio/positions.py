"""Position arithmetic by the average-cost method. Pure: the fills service applies the result."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from services.money import round_cash

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class PositionState:
    quantity: Decimal = ZERO
    cost_basis: Decimal = ZERO  # what the shares held cost, in dollars
    realized_pnl: Decimal = ZERO

    @property
    def average_cost(self) -> Decimal:
        return self.cost_basis / self.quantity if self.quantity else ZERO


def fill_value(quantity: Decimal, price: Decimal) -> Decimal:
    """The cash a fill moves: shares x price, to the cent (half to even)."""
    return round_cash(quantity * price)


def apply_buy(position: PositionState, quantity: Decimal, value: Decimal) -> PositionState:
    """Shares bought for `value` dollars join the position at their cost."""
    return PositionState(
        position.quantity + quantity, position.cost_basis + value, position.realized_pnl
    )


def apply_sell(position: PositionState, quantity: Decimal, value: Decimal) -> PositionState:
    """Shares sold for `value` leave at the average cost; the difference is realized P&L.

    The cost removed is the position's cost in proportion to the shares sold, rounded to the
    cent; selling the last share removes all of the remaining cost, so nothing is left over."""
    if quantity > position.quantity:
        raise ValueError(f"cannot sell {quantity} of {position.quantity} shares")
    if quantity == position.quantity:
        removed = position.cost_basis
    else:
        removed = round_cash(position.cost_basis * quantity / position.quantity)
    return PositionState(
        position.quantity - quantity,
        position.cost_basis - removed,
        position.realized_pnl + value - removed,
    )
