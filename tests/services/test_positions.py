"""Average-cost position arithmetic: hand-computed cases and conservation laws."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.portfolio.positions import PositionState, apply_buy, apply_sell, fill_value

D = Decimal
CENT = D("0.01")
ZERO = D(0)


def buy(position: PositionState, quantity: str, price: str) -> PositionState:
    return apply_buy(position, D(quantity), fill_value(D(quantity), D(price)))


def sell(position: PositionState, quantity: str, price: str) -> PositionState:
    return apply_sell(position, D(quantity), fill_value(D(quantity), D(price)))


# -- hand-computed --------------------------------------------------------------------------


def test_buys_at_several_prices_average_their_cost() -> None:
    p = buy(PositionState(), "10", "100")
    assert p == PositionState(D(10), D("1000.00"), D(0))
    assert p.average_cost == D(100)
    p = buy(p, "10", "110")
    assert p == PositionState(D(20), D("2100.00"), D(0))
    assert p.average_cost == D(105)
    p = buy(p, "5", "95.20")
    assert p == PositionState(D(25), D("2576.00"), D(0))
    assert p.average_cost == D("103.04")


def test_a_partial_sell_realizes_the_difference_from_the_average_cost() -> None:
    p = buy(buy(PositionState(), "10", "100"), "10", "110")
    p = sell(p, "5", "120")  # 600 - 5 x 105
    assert p == PositionState(D(15), D("1575.00"), D("75.00"))
    assert p.average_cost == D(105)  # a sell leaves the average where it was


def test_a_losing_sell_realizes_a_loss() -> None:
    p = sell(buy(PositionState(), "10", "50"), "4", "45.50")  # 182 - 200
    assert p == PositionState(D(6), D("300.00"), D("-18.00"))


def test_a_full_close_resets_the_cost_basis_and_a_reopen_starts_from_the_new_price() -> None:
    p = buy(buy(PositionState(), "10", "100"), "10", "110")
    p = sell(p, "5", "120")
    p = sell(p, "15", "100")  # 1500 - 1575
    assert p.quantity == 0
    assert p.cost_basis == 0
    assert p.realized_pnl == D("0.00")  # +75, then -75
    assert p.average_cost == 0
    p = buy(p, "3", "50")
    assert p == PositionState(D(3), D("150.00"), D("0.00"))
    assert p.average_cost == D(50)  # nothing of the old cost is left


def test_the_last_share_takes_all_of_the_remaining_cost() -> None:
    p = buy(PositionState(), "3", "33.33")  # 99.99 for 3 shares: 33.33 each
    p = buy(p, "1", "0.01")  # 100.00 for 4 shares
    p = sell(p, "1", "30")  # removes 25.00
    p = sell(p, "1", "30")  # removes 25.00
    p = sell(p, "1", "30")  # removes 25.00
    assert p.cost_basis == D("25.00")
    p = sell(p, "1", "30")
    assert p == PositionState(D(0), D(0), D("20.00"))


def test_removed_cost_is_rounded_to_the_cent_half_to_even_and_sums_to_the_basis() -> None:
    p = apply_buy(PositionState(), D(3), D("100.00"))
    p = apply_sell(p, D(1), D("40.00"))  # removes 33.333... -> 33.33
    assert p.cost_basis == D("66.67")
    assert p.realized_pnl == D("6.67")
    p = apply_sell(p, D(1), D("40.00"))  # removes 33.335 -> 33.34 (half to even)
    assert p.cost_basis == D("33.33")
    assert p.realized_pnl == D("13.33")
    p = apply_sell(p, D(1), D("40.00"))  # removes the rest, 33.33
    assert p == PositionState(D(0), D(0), D("20.00"))  # 120 - 100


def test_fractional_shares() -> None:
    p = buy(PositionState(), "0.5", "123.45")  # 61.725 -> 61.72 (half to even)
    assert p == PositionState(D("0.5"), D("61.72"), D(0))
    p = buy(p, "0.25", "200")  # 50.00
    assert p == PositionState(D("0.75"), D("111.72"), D(0))
    assert p.average_cost == D("148.96")
    p = sell(p, "0.3", "150")  # value 45.00; removes 111.72 x 0.4 = 44.688 -> 44.69
    assert p == PositionState(D("0.45"), D("67.03"), D("0.31"))
    p = sell(p, "0.000001", "1000")  # value 0.001 -> 0.00; removes 0.000148... -> 0.00
    assert p == PositionState(D("0.449999"), D("67.03"), D("0.31"))


@pytest.mark.parametrize(
    ("quantity", "price", "value"),
    [
        ("1", "10.005", "10.00"),  # half to even: down to the even cent
        ("1", "10.015", "10.02"),  # half to even: up to the even cent
        ("3", "0.3333", "1.00"),
        ("0.5", "123.45", "61.72"),
        ("0.000001", "1000", "0.00"),
        ("2", "189.98", "379.96"),
    ],
)
def test_a_fill_value_is_shares_times_price_to_the_cent(
    quantity: str, price: str, value: str
) -> None:
    assert str(fill_value(D(quantity), D(price))) == value


def test_selling_more_than_held_raises_and_changes_nothing() -> None:
    p = buy(PositionState(), "10", "100")
    with pytest.raises(ValueError, match="cannot sell"):
        apply_sell(p, D("10.000001"), D("1000.00"))
    with pytest.raises(ValueError, match="cannot sell"):
        apply_sell(PositionState(), D("0.000001"), D("0.00"))
    assert p == PositionState(D(10), D("1000.00"), D(0))


# -- properties -----------------------------------------------------------------------------


@dataclass
class Totals:
    bought: Decimal = ZERO  # sum of buy values
    sold: Decimal = ZERO  # sum of sell values
    removed: Decimal = ZERO  # cost taken out of the basis by sells


PRICES = st.integers(1, 10**8).map(lambda k: D(k).scaleb(-4))  # 0.0001 .. 10 000
QUANTITIES = st.integers(1, 10**9).map(lambda k: D(k).scaleb(-6))  # 0.000001 .. 1 000
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["buy", "sell", "close"]),
        QUANTITIES,
        st.integers(1, 1000),  # a sell's share of the position, in thousandths
        PRICES,
    ),
    min_size=1,
    max_size=40,
)


def run(
    steps: list[tuple[str, Decimal, int, Decimal]],
) -> tuple[PositionState, Totals, list[PositionState]]:
    position, totals, history = PositionState(), Totals(), []
    for kind, quantity, share, price in steps:
        if kind == "buy":
            value = fill_value(quantity, price)
            position = apply_buy(position, quantity, value)
            totals.bought += value
        else:
            if kind == "close":
                quantity = position.quantity
            else:
                quantity = (position.quantity * share / 1000).quantize(D("0.000001"))
            if quantity <= 0:
                continue
            value = fill_value(quantity, price)
            before = position
            position = apply_sell(position, quantity, value)
            removed = before.cost_basis - position.cost_basis
            assert removed == removed.quantize(CENT)  # the cost removed is whole cents
            assert position.realized_pnl - before.realized_pnl == value - removed
            totals.sold += value
            totals.removed += removed
        history.append(position)
    return position, totals, history


@settings(max_examples=400, deadline=None)
@given(steps=STEPS)
def test_quantity_and_cost_basis_never_go_negative(
    steps: list[tuple[str, Decimal, int, Decimal]],
) -> None:
    _, _, history = run(steps)
    for position in history:
        assert position.quantity >= 0
        assert position.cost_basis >= 0
        assert (position.quantity == 0) <= (position.cost_basis == 0)


@settings(max_examples=400, deadline=None)
@given(steps=STEPS)
def test_cost_is_conserved_and_realized_pnl_is_sells_less_the_cost_they_removed(
    steps: list[tuple[str, Decimal, int, Decimal]],
) -> None:
    position, totals, _ = run(steps)
    assert totals.bought == position.cost_basis + totals.removed
    assert position.realized_pnl == totals.sold - totals.removed
    # hence: realized P&L == sells - buys + the cost of what is still held
    assert position.realized_pnl == totals.sold - totals.bought + position.cost_basis
    assert position.cost_basis == position.cost_basis.quantize(CENT)
    assert position.realized_pnl == position.realized_pnl.quantize(CENT)


@settings(max_examples=400, deadline=None)
@given(steps=STEPS, price=PRICES)
def test_a_closed_position_has_no_cost_left_and_realized_all_of_its_pnl(
    steps: list[tuple[str, Decimal, int, Decimal]], price: Decimal
) -> None:
    position, totals, _ = run([*steps, ("close", D(0), 1000, price)])
    assert position.quantity == 0
    assert position.cost_basis == 0
    assert position.average_cost == 0
    assert position.realized_pnl == totals.sold - totals.bought


@settings(max_examples=300, deadline=None)
@given(
    held=QUANTITIES,
    cost=st.integers(0, 10**9).map(lambda k: D(k).scaleb(-2)),
    share=st.integers(1, 999),
    price=PRICES,
)
def test_a_partial_sell_removes_the_average_cost_of_the_shares_sold_to_the_cent(
    held: Decimal, cost: Decimal, share: int, price: Decimal
) -> None:
    quantity = (held * share / 1000).quantize(D("0.000001"))
    if not 0 < quantity < held:
        return
    before = PositionState(held, cost, D(0))
    after = apply_sell(before, quantity, fill_value(quantity, price))
    removed = cost - after.cost_basis
    assert abs(removed - cost * quantity / held) <= D("0.005")
    assert 0 <= removed <= cost
    assert after.quantity == held - quantity
