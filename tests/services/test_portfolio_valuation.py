"""`services/portfolio.value`: the arithmetic (by hand), and a valuation reused exactly when the
quotes it was made at are the very same objects."""

from __future__ import annotations

import uuid
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.accounts.cash import Balances
from services.market_data.marketdata import Quote
from services.portfolio.valuation import HeldPosition, Holdings, value


def a_quote(symbol: str, last: str) -> Quote:
    price = Decimal(last)
    return Quote(symbol, price, price, 100, 100, price, 1000, 1)


def holdings() -> Holdings:
    return Holdings(
        Balances(uuid.uuid4(), Decimal("1000.00"), Decimal("100.00")),
        [
            HeldPosition("AAA", Decimal("15"), Decimal("0"), Decimal("1575.00"), Decimal("75.00")),
            HeldPosition("BBB", Decimal("0.5"), Decimal("0"), Decimal("10.015"), Decimal("0")),
        ],
        Decimal("80.004"),
    )


def test_the_numbers_by_hand() -> None:
    v = value(holdings(), {"AAA": a_quote("AAA", "130"), "BBB": a_quote("BBB", "19.99")})
    aaa, bbb = v.positions
    assert (aaa.average_cost, aaa.market_value, aaa.unrealized_pnl) == (
        Decimal("105.0000"),
        Decimal("1950.00"),
        Decimal("375.00"),
    )
    assert aaa.unrealized_pnl_percent == Decimal("23.81")
    assert (bbb.cost_basis, bbb.market_value, bbb.unrealized_pnl) == (
        Decimal("10.02"),  # 10.015 rounded half to even
        Decimal("10.00"),  # 0.5 x 19.99 = 9.995, half to even
        Decimal("-0.02"),
    )
    assert v.market_value == Decimal("1960.00") == aaa.market_value + bbb.market_value
    assert bbb.average_cost == Decimal("20.0300")
    assert v.unrealized_pnl == Decimal("374.98")
    assert v.equity == Decimal("2960.00")
    assert v.realized_pnl == Decimal("80.00")


def test_the_same_quote_objects_give_the_same_valuation_object() -> None:
    held = holdings()
    quotes = {"AAA": a_quote("AAA", "130"), "BBB": a_quote("BBB", "20")}
    first = value(held, quotes)
    assert value(held, dict(quotes)) is first


def test_a_moved_quote_revalues_its_position_and_the_totals_only() -> None:
    held = holdings()
    aaa = a_quote("AAA", "130")
    first = value(held, {"AAA": aaa, "BBB": a_quote("BBB", "20")})
    second = value(held, {"AAA": aaa, "BBB": a_quote("BBB", "30")})
    assert second is not first
    assert second.positions[0] is first.positions[0]  # AAA kept its value
    assert second.positions[1].market_value == Decimal("15.00")
    assert second.market_value == Decimal("1965.00")
    assert second.unrealized_pnl == sum(p.unrealized_pnl or 0 for p in second.positions)


def test_an_equal_quote_that_is_another_object_is_valued_again_to_the_same_numbers() -> None:
    held = holdings()
    first = value(held, {"AAA": a_quote("AAA", "130")})
    again = value(held, {"AAA": a_quote("AAA", "130")})
    assert again is not first and again == first
    assert again.positions[1].market_value is None  # BBB has no quote: valued at cost
    assert again.market_value == Decimal("1960.02")  # 1950.00 + BBB at its cost


def test_a_view_is_made_once_per_valued_position() -> None:
    held = holdings()
    row = value(held, {"AAA": a_quote("AAA", "130")}).positions[0]
    made: list[object] = []

    def present(p: object) -> object:
        made.append(p)
        return object()

    assert row.view(present) is row.view(present)
    assert made == [row]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["AAA", "BBB", "CCC"]),
            st.none() | st.decimals(min_value="0.01", max_value="5000", places=2),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_totals_moved_by_what_changed_always_equal_the_sums_of_the_rows(
    steps: list[dict[str, Decimal | None]],
) -> None:
    """Whatever the order in which quotes move, appear and vanish."""
    held = Holdings(
        Balances(uuid.uuid4(), Decimal("10.00"), Decimal("0.00")),
        [
            HeldPosition("AAA", Decimal("3"), Decimal("0"), Decimal("301.50"), Decimal("0")),
            HeldPosition("BBB", Decimal("0.25"), Decimal("0"), Decimal("7.015"), Decimal("0")),
            HeldPosition("CCC", Decimal("10"), Decimal("0"), Decimal("99.99"), Decimal("0")),
        ],
        Decimal("0"),
    )
    quotes: dict[str, Quote | None] = {}
    for step in steps:
        for symbol, last in step.items():
            quotes[symbol] = None if last is None else a_quote(symbol, str(last))
        v = value(held, dict(quotes))
        fresh = value(holdings_like(held), dict(quotes))  # valued from nothing
        assert v == fresh
        counted = [
            p.market_value if p.market_value is not None else p.cost_basis for p in v.positions
        ]
        assert v.market_value == sum(counted, Decimal("0.00"))
        assert v.unrealized_pnl == sum(
            (p.unrealized_pnl or 0 for p in v.positions), Decimal("0.00")
        )
        assert v.equity == Decimal("10.00") + v.market_value


def holdings_like(held: Holdings) -> Holdings:
    return Holdings(held.balances, held.positions, held.realized_pnl)
