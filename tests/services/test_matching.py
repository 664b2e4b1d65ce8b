"""The matcher's order book: what a quote crosses, in what order, and at what cost."""

from __future__ import annotations

import dataclasses
import timeit
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import services.orders.matching as matching
from services.market_data.marketdata import Quote
from services.orders.matching import Crossed, OrderBook
from services.orders.order_model import Order, OrderType, Side, Status, TimeInForce

T0 = datetime(2025, 1, 2, 14, 30, tzinfo=UTC)
D = Decimal


def make_order(
    side: Side = Side.BUY,
    type: OrderType = OrderType.LIMIT,
    *,
    limit: str | Decimal | None = None,
    stop: str | Decimal | None = None,
    symbol: str = "AAPL",
    at: int = 0,
    triggered: bool = False,
    status: Status = Status.SUBMITTED,
    quantity: str = "10",
    order_id: UUID | None = None,
) -> Order:
    """An order as the book sees it; ``at`` is its creation, in seconds after T0."""
    created = T0 + timedelta(seconds=at)
    return Order(
        id=order_id or uuid.uuid4(),
        user_id=uuid.UUID(int=1),
        account_id=uuid.UUID(int=2),
        symbol=symbol,
        side=side,
        type=type,
        time_in_force=TimeInForce.GTC,
        quantity=D(quantity),
        notional=None,
        limit_price=None if limit is None else D(limit),
        stop_price=None if stop is None else D(stop),
        status=status,
        filled_quantity=D("0"),
        filled_value=D("0.00"),
        reserved_cash=D("0.00"),
        reserved_quantity=D("0"),
        triggered=triggered,
        version=1,
        idempotency_key=f"k-{uuid.uuid4()}",
        reject_reason=None,
        created_at=created,
        updated_at=created,
        filled_at=None,
    )


def buy(limit: str, **kw: Any) -> Order:
    return make_order(Side.BUY, OrderType.LIMIT, limit=limit, **kw)


def sell(limit: str, **kw: Any) -> Order:
    return make_order(Side.SELL, OrderType.LIMIT, limit=limit, **kw)


def quote(
    bid: str | Decimal = "0",
    ask: str | Decimal = "0",
    last: str | Decimal = "0",
    symbol: str = "AAPL",
) -> Quote:
    return Quote(symbol, D(bid), D(ask), 100, 100, D(last), 1000, 1_735_828_200_000_000_000)


def book_of(*orders: Order) -> OrderBook:
    book = OrderBook()
    for order in orders:
        book.add(order)
    return book


def ids(orders: Iterable[Order]) -> list[UUID]:
    return [o.id for o in orders]


# -- crossing -------------------------------------------------------------------------------


def test_buy_limit_crosses_when_ask_at_or_below_limit() -> None:
    order = buy("100.00")
    book = book_of(order)
    assert book.on_quote(quote(bid="99.00", ask="100.01")).executable == []
    assert book.on_quote(quote(bid="99.00", ask="100.00")).executable == [order]  # equality
    assert book.on_quote(quote(bid="99.00", ask="99.50")).executable == [order]


def test_sell_limit_crosses_when_bid_at_or_above_limit() -> None:
    order = sell("100.00")
    book = book_of(order)
    assert book.on_quote(quote(bid="99.99", ask="101.00")).executable == []
    assert book.on_quote(quote(bid="100.00", ask="101.00")).executable == [order]  # equality
    assert book.on_quote(quote(bid="100.50", ask="101.00")).executable == [order]


def test_equality_is_exact_decimal_whatever_the_exponent() -> None:
    order = buy("100.5")
    book = book_of(order)
    assert book.on_quote(quote(ask="100.500")).executable == [order]
    assert book.on_quote(quote(ask="100.5000001")).executable == []


def test_best_price_first_then_time_priority() -> None:
    low_first = buy("99.00", at=0)
    high_late = buy("101.00", at=5)
    mid_late = buy("100.00", at=3)
    mid_early = buy("100.00", at=1)
    too_low = buy("98.00", at=0)
    s_high = sell("97.00", at=0)
    s_low_late = sell("95.00", at=2)
    s_low_early = sell("95.00", at=1)
    book = book_of(
        low_first, high_late, mid_late, mid_early, too_low, s_high, s_low_late, s_low_early
    )

    crossed = book.on_quote(quote(bid="97.00", ask="99.00"))

    assert crossed.executable == [
        high_late,
        mid_early,
        mid_late,
        low_first,  # buys: highest limit first, then time
        s_low_early,
        s_low_late,
        s_high,  # then sells: lowest limit first, then time
    ]
    assert crossed.triggered == []


def test_same_time_ties_broken_by_id() -> None:
    a = buy("10", order_id=UUID(int=2))
    b = buy("10", order_id=UUID(int=1))
    book = book_of(a, b)
    assert book.on_quote(quote(ask="10")).executable == [b, a]


def test_no_cross_leaves_everything_in_place() -> None:
    orders = [
        buy("99.00"),
        sell("101.00"),
        make_order(Side.BUY, OrderType.STOP, stop="105.00"),
        make_order(Side.SELL, OrderType.STOP, stop="95.00"),
        make_order(Side.BUY, OrderType.STOP_LIMIT, stop="105.00", limit="106.00"),
    ]
    book = book_of(*orders)

    assert book.on_quote(quote(bid="99.50", ask="100.50", last="100.00")) == Crossed()
    assert len(book) == 5
    assert set(ids(book.orders())) == set(ids(orders))


def test_executable_orders_stay_until_the_caller_acts() -> None:
    order = buy("100")
    book = book_of(order)
    assert book.on_quote(quote(ask="99")).executable == [order]
    assert order.id in book
    assert book.on_quote(quote(ask="99")).executable == [order]
    assert book.remove(order.id) == order
    assert book.on_quote(quote(ask="99")).executable == []


def test_quote_for_unknown_symbol_crosses_nothing() -> None:
    book = book_of(buy("100"))
    assert book.on_quote(quote(ask="1", bid="1000", last="50", symbol="MSFT")) == Crossed()


# -- remove and replace ---------------------------------------------------------------------


def test_remove_returns_the_order_once() -> None:
    keep, gone = buy("100", at=0), buy("100", at=1)
    book = book_of(keep, gone)
    assert book.remove(gone.id) == gone
    assert book.remove(gone.id) is None
    assert book.remove(uuid.uuid4()) is None
    assert gone.id not in book and book.get(gone.id) is None
    assert len(book) == 1
    assert book.on_quote(quote(ask="100")).executable == [keep]


def test_remove_last_order_drops_the_symbol() -> None:
    order = buy("100", symbol="TSLA")
    book = book_of(order)
    assert book.symbols() == {"TSLA"}
    book.remove(order.id)
    assert book.symbols() == set()
    assert len(book) == 0


def test_replace_after_partial_fill_keeps_time_priority() -> None:
    first, second = buy("100", at=0), buy("100", at=1)
    book = book_of(first, second)
    partial = dataclasses.replace(
        first,
        status=Status.PARTIALLY_FILLED,
        filled_quantity=D("4"),
        filled_value=D("400.00"),
        version=2,
        updated_at=T0 + timedelta(seconds=9),
    )

    book.replace(partial)

    assert book.get(first.id) == partial
    assert len(book) == 2
    crossed = book.on_quote(quote(ask="100")).executable
    assert crossed == [partial, second]
    assert crossed[0].remaining_quantity == D("6")


def test_replace_with_a_new_price_moves_the_order() -> None:
    a, b = buy("100", at=0), buy("101", at=1)
    book = book_of(a, b)
    book.replace(dataclasses.replace(a, limit_price=D("102"), version=2))
    assert ids(book.on_quote(quote(ask="100")).executable) == [a.id, b.id]
    book.replace(dataclasses.replace(a, limit_price=D("99"), version=3))
    assert ids(book.on_quote(quote(ask="100")).executable) == [b.id]
    assert len(book) == 2


def test_replace_unknown_order_raises_key_error() -> None:
    with pytest.raises(KeyError):
        OrderBook().replace(buy("100"))


def test_replace_into_an_order_that_cannot_rest_leaves_the_book_unchanged() -> None:
    order = buy("100")
    book = book_of(order)
    with pytest.raises(ValueError, match="FILLED"):
        book.replace(dataclasses.replace(order, status=Status.FILLED))
    assert book.get(order.id) == order


def test_fractional_quantities_are_kept() -> None:
    order = buy("100", quantity="0.125")
    book = book_of(order)
    assert book.on_quote(quote(ask="100")).executable[0].quantity == D("0.125")


# -- stops ----------------------------------------------------------------------------------


def test_buy_stop_triggers_when_last_at_or_above_stop_and_leaves_the_book() -> None:
    above = make_order(Side.BUY, OrderType.STOP, stop="105.00", at=0)
    equal = make_order(Side.BUY, OrderType.STOP, stop="104.00", at=1)
    far = make_order(Side.BUY, OrderType.STOP, stop="110.00", at=0)
    book = book_of(above, equal, far)

    assert book.on_quote(quote(bid="103", ask="104", last="103.99")).triggered == []
    crossed = book.on_quote(quote(bid="103", ask="106", last="105.00"))

    assert crossed.triggered == [equal, above]  # lowest stop first
    assert crossed.executable == []
    assert equal.id not in book and above.id not in book
    assert book.orders() == [far]
    assert book.on_quote(quote(last="105.00")).triggered == []  # removed from the stop index


def test_sell_stop_triggers_when_last_at_or_below_stop() -> None:
    high = make_order(Side.SELL, OrderType.STOP, stop="95.00", at=1)
    equal = make_order(Side.SELL, OrderType.STOP, stop="94.00", at=0)
    far = make_order(Side.SELL, OrderType.STOP, stop="90.00")
    book = book_of(high, equal, far)

    assert book.on_quote(quote(last="95.01")).triggered == []
    crossed = book.on_quote(quote(last="94.00"))

    assert crossed.triggered == [high, equal]  # highest stop first
    assert book.orders() == [far]


def test_stop_ties_in_time_priority() -> None:
    late = make_order(Side.SELL, OrderType.STOP, stop="95", at=2)
    early = make_order(Side.SELL, OrderType.STOP, stop="95", at=1)
    book = book_of(late, early)
    assert book.on_quote(quote(last="90")).triggered == [early, late]


def test_stop_ignores_bid_and_ask() -> None:
    stop = make_order(Side.BUY, OrderType.STOP, stop="105")
    book = book_of(stop)
    assert book.on_quote(quote(bid="106", ask="107", last="100")) == Crossed()
    assert stop.id in book


def test_untriggered_stop_limit_is_not_executable_and_triggered_one_rests_as_limit() -> None:
    order = make_order(Side.BUY, OrderType.STOP_LIMIT, stop="105", limit="106")
    book = book_of(order)

    # ask under the limit, but the stop has not triggered: nothing to execute
    assert book.on_quote(quote(bid="100", ask="101", last="100")) == Crossed()

    crossed = book.on_quote(quote(bid="106", ask="107", last="105"))
    assert crossed.triggered == [order]
    assert order.id not in book

    # the caller decides: re-add as a limit, which a later ask at or under 106 crosses
    book.add(dataclasses.replace(order, triggered=True, version=2))
    assert book.on_quote(quote(bid="106", ask="107", last="107")).executable == []
    crossed = book.on_quote(quote(bid="105", ask="106", last="107"))
    assert ids(crossed.executable) == [order.id]
    assert crossed.triggered == []


def test_sell_stop_limit_triggered_then_executable_at_bid_over_limit() -> None:
    order = make_order(Side.SELL, OrderType.STOP_LIMIT, stop="95", limit="94")
    book = book_of(order)
    assert book.on_quote(quote(last="95")).triggered == [order]
    book.add(dataclasses.replace(order, triggered=True))
    assert book.on_quote(quote(bid="93.99", ask="95")).executable == []
    assert ids(book.on_quote(quote(bid="94", ask="95")).executable) == [order.id]


def test_triggered_stop_limit_added_directly_rests_as_limit() -> None:
    order = make_order(Side.BUY, OrderType.STOP_LIMIT, stop="105", limit="106", triggered=True)
    book = book_of(order)
    assert book.on_quote(quote(last="200")).triggered == []  # not in the stop index
    assert book.on_quote(quote(ask="106")).executable == [order]


# -- zero prices, symbols, refusals ---------------------------------------------------------


def test_zero_sides_of_a_quote_are_ignored() -> None:
    b = buy("100")
    s = sell("0.01")
    bs = make_order(Side.BUY, OrderType.STOP, stop="0.01")  # any positive last triggers it
    ss = make_order(Side.SELL, OrderType.STOP, stop="100")  # a zero last would "cross" it
    book = book_of(b, s, bs, ss)

    assert book.on_quote(quote(bid="0", ask="0", last="0")) == Crossed()
    assert book.on_quote(quote(bid="0", ask="99", last="0")).executable == [b]
    assert book.on_quote(quote(bid="1", ask="0", last="0")).executable == [s]
    assert len(book) == 4
    assert book.on_quote(quote(last="50")).triggered == [bs, ss]


def test_many_symbols_are_isolated() -> None:
    symbols = [f"S{i}" for i in range(20)]
    orders = {
        s: [
            buy("100", symbol=s),
            sell("100", symbol=s),
            make_order(Side.BUY, OrderType.STOP, stop="100", symbol=s),
        ]
        for s in symbols
    }
    book = book_of(*(o for group in orders.values() for o in group))
    assert book.symbols() == set(symbols)

    crossed = book.on_quote(quote(bid="100", ask="100", last="100", symbol="S7"))

    assert crossed.executable == orders["S7"][:2]
    assert crossed.triggered == [orders["S7"][2]]
    assert len(book) == 20 * 3 - 1
    assert set(ids(book.orders("S7"))) == set(ids(orders["S7"][:2]))
    for s in symbols:
        if s != "S7":
            assert set(ids(book.orders(s))) == set(ids(orders[s]))


def test_market_order_is_refused() -> None:
    with pytest.raises(ValueError, match="MARKET"):
        OrderBook().add(make_order(Side.BUY, OrderType.MARKET))


def test_triggered_stop_is_refused() -> None:
    with pytest.raises(ValueError, match="triggered STOP,"):
        OrderBook().add(make_order(Side.SELL, OrderType.STOP, stop="10", triggered=True))


@pytest.mark.parametrize("status", [Status.FILLED, Status.CANCELLED, Status.REJECTED])
def test_closed_order_is_refused(status: Status) -> None:
    with pytest.raises(ValueError, match=status.value):
        OrderBook().add(buy("10", status=status))


@pytest.mark.parametrize(
    "order",
    [
        make_order(Side.BUY, OrderType.LIMIT),
        make_order(Side.BUY, OrderType.LIMIT, limit="0"),
        make_order(Side.BUY, OrderType.LIMIT, limit="NaN"),
        make_order(Side.SELL, OrderType.STOP),
        make_order(Side.SELL, OrderType.STOP_LIMIT, stop="10"),
        make_order(Side.SELL, OrderType.STOP_LIMIT, limit="10"),
        make_order(Side.SELL, OrderType.STOP_LIMIT, stop="10", triggered=True),
    ],
)
def test_missing_or_bad_price_is_refused(order: Order) -> None:
    book = OrderBook()
    with pytest.raises(ValueError, match="positive"):
        book.add(order)
    assert len(book) == 0


def test_same_id_twice_is_refused() -> None:
    order = buy("10")
    book = book_of(order)
    with pytest.raises(ValueError, match="already"):
        book.add(order)


def test_mapping_helpers() -> None:
    a, b = buy("10", at=2, symbol="A"), sell("11", at=1, symbol="B")
    book = book_of(a, b)
    assert len(book) == 2
    assert a.id in book and uuid.uuid4() not in book
    assert book.get(b.id) == b
    assert book.orders() == [b, a]  # time priority
    assert book.orders("A") == [a]
    assert book.orders("C") == []


def test_removed_entries_are_compacted_and_the_book_stays_right() -> None:
    book = OrderBook()
    orders = [buy(str(100 + i % 7), at=i) for i in range(1000)]
    for order in orders:
        book.add(order)
    kept = orders[::10]
    for order in orders:
        if order not in kept:
            book.remove(order.id)
    heap = book._books["AAPL"].heaps[matching._Kind.BUY_LIMIT]  # internals: memory stays bounded
    assert len(heap.entries) <= 2 * len(kept) + 2 * matching._COMPACT_MIN_DEAD

    expected = brute_force(kept, quote(ask="103"))
    assert book.on_quote(quote(ask="103")) == expected


# -- cost: a quote touches only what it crosses ---------------------------------------------


class _Counter:
    """Counts the heap operations the book performs, by wrapping the module's heapq names."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pops = 0
        self.pushes = 0
        pop: Callable[..., Any] = matching.heappop
        push: Callable[..., Any] = matching.heappush

        def counting_pop(heap: list[Any]) -> Any:
            self.pops += 1
            return pop(heap)

        def counting_push(heap: list[Any], item: Any) -> None:
            self.pushes += 1
            push(heap, item)

        monkeypatch.setattr(matching, "heappop", counting_pop)
        monkeypatch.setattr(matching, "heappush", counting_push)

    def reset(self) -> None:
        self.pops = self.pushes = 0


def _far_book(n: int) -> OrderBook:
    """``n`` resting orders, a quarter in each index, all far from a market around 100."""
    book = OrderBook()
    for i in range(n):
        cents = D(i % 5000) / 100
        match i % 4:
            case 0:
                order = buy(str(D("10") + cents), at=i)
            case 1:
                order = sell(str(D("200") + cents), at=i)
            case 2:
                order = make_order(Side.BUY, OrderType.STOP, stop=D("300") + cents, at=i)
            case _:
                order = make_order(Side.SELL, OrderType.STOP_LIMIT, stop=D("1") + cents, limit="1")
        book.add(order)
    return book


@pytest.fixture(scope="module")
def big_book() -> OrderBook:
    return _far_book(100_000)


def test_quote_crossing_nothing_pops_nothing(
    big_book: OrderBook, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = _Counter(monkeypatch)
    for _ in range(100):
        assert big_book.on_quote(quote(bid="99.99", ask="100.01", last="100")) == Crossed()
    assert (counter.pops, counter.pushes) == (0, 0)
    assert len(big_book) == 100_000


def test_quote_crossing_k_orders_pops_k(
    big_book: OrderBook, monkeypatch: pytest.MonkeyPatch
) -> None:
    near = [buy("100.00", at=-i) for i in range(3)]
    near_stop = make_order(Side.BUY, OrderType.STOP, stop="100.50")
    for order in [*near, near_stop]:
        big_book.add(order)
    try:
        counter = _Counter(monkeypatch)
        crossed = big_book.on_quote(quote(bid="99.99", ask="100.00", last="101"))
        assert crossed.executable == near[::-1]
        assert crossed.triggered == [near_stop]
        # 3 executable popped and pushed back, 1 stop popped for good: nothing else read
        assert (counter.pops, counter.pushes) == (4, 3)

        # once removed (filled), their dead entries are swept at most once, then never again
        for order in near:
            big_book.remove(order.id)
        counter.reset()
        assert big_book.on_quote(quote(bid="99.99", ask="100.00", last="101")) == Crossed()
        assert (counter.pops, counter.pushes) == (3, 0)
        counter.reset()
        assert big_book.on_quote(quote(bid="99.99", ask="100.00", last="101")) == Crossed()
        assert (counter.pops, counter.pushes) == (0, 0)
    finally:
        for order in near:
            big_book.remove(order.id)
    assert len(big_book) == 100_000


def test_quote_time_does_not_grow_with_resting_orders(big_book: OrderBook) -> None:
    small = _far_book(8)
    q = quote(bid="99.99", ask="100.01", last="100")

    def per_quote(book: OrderBook) -> float:
        return min(timeit.repeat(lambda: book.on_quote(q), number=500, repeat=5)) / 500

    big, tiny = per_quote(big_book), per_quote(small)
    # A scan of 100,000 orders would be thousands of times slower; a peek is the same either way.
    assert big < 10 * tiny, (big, tiny)
    assert big < 1e-3, big


# -- property: the book agrees with a brute-force scan --------------------------------------


def _rests_as_limit(o: Order) -> bool:
    return o.type is OrderType.LIMIT or (o.type is OrderType.STOP_LIMIT and o.triggered)


def brute_force(orders: Iterable[Order], q: Quote) -> Crossed:
    """Every order checked against the quote, then sorted the way the book promises."""
    mine = [o for o in orders if o.symbol == q.symbol]

    def limit(o: Order) -> Decimal:
        assert o.limit_price is not None
        return o.limit_price

    def stop(o: Order) -> Decimal:
        assert o.stop_price is not None
        return o.stop_price

    limits = [o for o in mine if _rests_as_limit(o)]
    stops = [o for o in mine if not _rests_as_limit(o)]
    buys = [o for o in limits if o.side is Side.BUY and q.ask > 0 and q.ask <= limit(o)]
    sells = [o for o in limits if o.side is Side.SELL and q.bid > 0 and q.bid >= limit(o)]
    buy_stops = [o for o in stops if o.side is Side.BUY and q.last > 0 and q.last >= stop(o)]
    sell_stops = [o for o in stops if o.side is Side.SELL and q.last > 0 and q.last <= stop(o)]
    buys.sort(key=lambda o: (-limit(o), o.created_at, o.id))
    sells.sort(key=lambda o: (limit(o), o.created_at, o.id))
    buy_stops.sort(key=lambda o: (stop(o), o.created_at, o.id))
    sell_stops.sort(key=lambda o: (-stop(o), o.created_at, o.id))
    return Crossed(buys + sells, buy_stops + sell_stops)


PRICES = [D(c) / 4 for c in range(1, 13)]  # 0.25 .. 3.00: few prices, so many ties
prices = st.sampled_from(PRICES)
quote_prices = st.sampled_from([D(0), *PRICES, D("0.1"), D("3.5")])
SYMBOLS = ("AAA", "BBB")


@st.composite
def orders_st(draw: st.DrawFn) -> Order:
    type_ = draw(st.sampled_from([OrderType.LIMIT, OrderType.STOP, OrderType.STOP_LIMIT]))
    return make_order(
        draw(st.sampled_from(list(Side))),
        type_,
        limit=draw(prices) if type_ is not OrderType.STOP else None,
        stop=draw(prices) if type_ is not OrderType.LIMIT else None,
        symbol=draw(st.sampled_from(SYMBOLS)),
        at=draw(st.integers(0, 3)),
        triggered=type_ is OrderType.STOP_LIMIT and draw(st.booleans()),
        status=draw(st.sampled_from([Status.PENDING, Status.SUBMITTED, Status.PARTIALLY_FILLED])),
        order_id=draw(st.uuids()),
    )


quotes_st = st.builds(quote, quote_prices, quote_prices, quote_prices, st.sampled_from(SYMBOLS))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(orders_st(), max_size=40, unique_by=lambda o: o.id), st.lists(quotes_st, max_size=5)
)
def test_on_quote_equals_brute_force(orders: list[Order], quotes: list[Quote]) -> None:
    book = book_of(*orders)
    resting = {o.id: o for o in orders}
    for q in quotes:
        expected = brute_force(resting.values(), q)
        got = book.on_quote(q)
        assert got.executable == expected.executable
        assert set(ids(got.triggered)) == set(ids(expected.triggered))
        assert got.triggered == expected.triggered
        for o in got.triggered:
            del resting[o.id]
        assert set(ids(book.orders())) == set(resting)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_operations_agree_with_brute_force(data: st.DataObject) -> None:
    """Adds, removals, partial fills, re-added stop limits and quotes, in any interleaving."""
    book = OrderBook()
    resting: dict[UUID, Order] = {}
    for _ in range(data.draw(st.integers(1, 60))):
        op = data.draw(st.sampled_from(["add", "add", "remove", "fill", "quote"]))
        if op == "add" or (not resting and op != "quote"):
            order = data.draw(orders_st().filter(lambda o: o.id not in resting))
            book.add(order)
            resting[order.id] = order
        elif op == "remove":
            order_id = data.draw(st.sampled_from(sorted(resting)))
            assert book.remove(order_id) == resting.pop(order_id)
        elif op == "fill":
            old = resting[data.draw(st.sampled_from(sorted(resting)))]
            new = dataclasses.replace(
                old,
                status=Status.PARTIALLY_FILLED,
                filled_quantity=old.filled_quantity + D("0.5"),
                version=old.version + 1,
            )
            book.replace(new)
            resting[new.id] = new
        else:
            q = data.draw(quotes_st)
            got = book.on_quote(q)
            assert got == brute_force(resting.values(), q)
            for o in got.triggered:
                del resting[o.id]
                if o.type is OrderType.STOP_LIMIT and data.draw(st.booleans()):
                    again = dataclasses.replace(o, triggered=True, version=o.version + 1)
                    book.add(again)
                    resting[again.id] = again
        assert len(book) == len(resting)
        assert {o.id: o for o in book.orders()} == resting
        assert book.symbols() == {o.symbol for o in resting.values()}


def test_in_extended_hours_only_extended_orders_execute_and_no_stop_triggers() -> None:
    regular = make_order(limit="101.00", at=0)
    extended = dataclasses.replace(make_order(limit="100.50", at=1), extended_hours=True)
    stop = make_order(Side.SELL, OrderType.STOP, stop="100.00", at=2)
    book = book_of(regular, extended, stop)
    crossed = book.on_quote(quote("99.90", "100.00", "99.95"), extended_only=True)
    assert ids(crossed.executable) == [extended.id] and crossed.triggered == []
    assert len(book) == 3  # the regular order and the stop keep resting for the session
    crossed = book.on_quote(quote("99.90", "100.00", "99.95"))
    assert ids(crossed.executable) == [regular.id, extended.id]
    assert ids(crossed.triggered) == [stop.id]


def test_crosses_others_sees_another_users_order_within_the_bound() -> None:
    """The matcher's look before an internal cross: the other side, within the bound, someone
    else's, live."""
    other = dataclasses.replace
    mine = sell("100.01", at=0)
    theirs = other(sell("100.03", at=1), user_id=uuid.UUID(int=9))
    book = book_of(mine, theirs, other(buy("99.99", at=2), user_id=uuid.UUID(int=9)))
    incoming = buy("100.05", status=Status.PENDING)  # user 1, as `mine`
    assert book.crosses_others(incoming, D("100.03"))
    assert not book.crosses_others(incoming, D("100.02"))  # only my own sell is within it
    assert not book.crosses_others(other(incoming, symbol="MSFT"), D("200"))
    selling = sell("99.00", status=Status.PENDING)
    assert book.crosses_others(selling, D("99.99"))  # their buy, at or above the bound
    assert not book.crosses_others(selling, D("100.00"))
    book.remove(theirs.id)
    assert not book.crosses_others(incoming, D("100.05"))  # a dead entry does not count
