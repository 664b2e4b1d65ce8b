"""The matcher's book of working orders, indexed by symbol and price (pure, no I/O).

A quote must touch only the orders it crosses, never a scan of every resting order. Each symbol
has four binary heaps (``heapq``), one per way an order can be crossed:

* buy limits, executable when ``ask <= limit``: highest limit first;
* sell limits, executable when ``bid >= limit``: lowest limit first;
* buy stops not yet triggered, triggered when ``last >= stop``: lowest stop first;
* sell stops not yet triggered, triggered when ``last <= stop``: highest stop first.

Trailing stops rest in the stop heaps at their current stop, and each also sits in one of two
more heaps keyed by its mark (the best last price seen): sell trails lowest mark first, buy trails
highest first. A quote pops only the trails whose mark its ``last`` improves, moves their marks
and stops, and puts them back; so it still touches only the orders it changes.

A heap entry is ``(signed price, created_at, id)``; the price is negated where the highest comes
first, so every heap is a min-heap and "crossed" is always ``signed price <= signed market
price``. Ties go to time priority: ``created_at``, then ``id``. A quote peeks at each top and pops
only while the top crosses, so a quote that crosses nothing costs four peeks.

Removal and replacement are lazy: the entry stays in its heap and is skipped when popped, because
it is no longer the entry its order's slot points at. A heap whose dead entries outnumber its live
ones is rebuilt, so dead entries cost amortized O(1) each and memory stays O(live orders).

``heapq`` rather than ``sortedcontainers``: the latter is in the environment only as a dependency
of hypothesis (a dev extra), not a runtime dependency of the project.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import IntEnum
from heapq import heapify, heappop, heappush
from uuid import UUID

from services.market_data.marketdata import Quote
from services.orders import trailing
from services.orders.order_model import Order, OrderType, Side

__all__ = ["Crossed", "OrderBook"]

# A heap entry: (price, negated where the highest comes first; created_at; order id). Compared as
# a tuple, so the heap order is best price, then time priority. Its identity marks it live.
_Entry = tuple[Decimal, datetime, UUID]

# Rebuild a heap only past this many dead entries, so small heaps never churn.
_COMPACT_MIN_DEAD = 64


class _Kind(IntEnum):
    """Which of a symbol's four heaps an order rests in (the value is the heap's index)."""

    BUY_LIMIT = 0
    SELL_LIMIT = 1
    BUY_STOP = 2
    SELL_STOP = 3
    SELL_TRAIL = 4  # sell trailing stops by mark: lowest first (a higher last improves it)
    BUY_TRAIL = 5  # buy trailing stops by mark: highest first (a lower last improves it)


# Kinds whose heap puts the highest price first: their keys are negated prices.
_NEGATED = frozenset({_Kind.BUY_LIMIT, _Kind.SELL_STOP, _Kind.BUY_TRAIL})
_PLACES = 4  # the heaps an order rests in; the trail heaps come after them


@dataclass(frozen=True, slots=True)
class Crossed:
    """What one quote crossed.

    ``executable``: limit orders the quote makes executable, still resting in the book (the caller
    fills them, then removes or replaces them): buys (highest limit first), then sells (lowest limit
    first), each side in time priority within a price.

    ``triggered``: stop orders whose stop ``last`` crossed, already removed from the book: buy stops
    (lowest stop first), then sell stops (highest stop first), each in time priority within a price.
    A STOP or TRAILING_STOP becomes a market execution; a STOP_LIMIT is re-added with
    ``triggered=True``.

    ``trailed``: trailing stops whose mark (and stop) ``last`` moved, still resting, as the book
    now holds them (the caller stores the new marks).
    """

    executable: list[Order] = field(default_factory=list)
    triggered: list[Order] = field(default_factory=list)
    trailed: list[Order] = field(default_factory=list)


@dataclass(slots=True)
class _Slot:
    """Where a resting order is: its current version, its heap, and its one live heap entry (and,
    for a trailing stop, its live entry in a trail heap)."""

    order: Order
    kind: _Kind
    entry: _Entry
    trail: _Entry | None = None


class _Heap:
    """One price-ordered heap and the count of its dead (removed or replaced) entries."""

    __slots__ = ("dead", "entries")

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self.dead = 0


class _SymbolBook:
    """The four heaps of one symbol and the number of live orders in them."""

    __slots__ = ("count", "heaps")

    def __init__(self) -> None:
        self.heaps: tuple[_Heap, ...] = tuple(_Heap() for _ in _Kind)
        self.count = 0


def _signed(kind: _Kind, price: Decimal) -> Decimal:
    """The price as its heap compares it. ``copy_negate`` is exact: unary minus would round."""
    return price.copy_negate() if kind in _NEGATED else price


def _placement(order: Order) -> tuple[_Kind, Decimal]:
    """The heap an order rests in and the price it is keyed by; ValueError if it cannot rest."""
    if not order.is_open:
        raise ValueError(f"order {order.id} is {order.status.value}, only open orders rest")
    buy = order.side is Side.BUY
    if order.type is OrderType.MARKET:
        raise ValueError(f"order {order.id} is a MARKET order, which never rests")
    if order.type in (OrderType.STOP, OrderType.TRAILING_STOP) and order.triggered:
        raise ValueError(f"order {order.id} is a triggered {order.type.value}, which executes now")
    if order.type is OrderType.TRAILING_STOP:
        _check_price(order, order.high_water_mark, "high_water_mark")
    if order.type is OrderType.LIMIT or (order.type is OrderType.STOP_LIMIT and order.triggered):
        limit = _check_price(order, order.limit_price, "limit_price")
        return (_Kind.BUY_LIMIT if buy else _Kind.SELL_LIMIT), limit
    stop = _check_price(order, order.stop_price, "stop_price")
    if order.type is OrderType.STOP_LIMIT:
        _check_price(order, order.limit_price, "limit_price")  # needed once it triggers
    return (_Kind.BUY_STOP if buy else _Kind.SELL_STOP), stop


def _check_price(order: Order, price: Decimal | None, name: str) -> Decimal:
    """A price the heaps can order: present, finite and positive (a NaN would break ordering)."""
    if price is None or not price.is_finite() or price <= 0:
        raise ValueError(f"order {order.id} ({order.type.value}) needs a positive {name}")
    return price


def _market(price: Decimal) -> Decimal | None:
    """A quote price, or None when the quote has none (zero, or anything not a positive price)."""
    return price if price.is_finite() and price > 0 else None


class OrderBook:
    """Working orders per symbol, so that a quote finds the orders it crosses in O(k log n).

    ``add``/``replace``/``remove`` are O(log n) (amortized for removal); ``on_quote`` is
    O((k + 1) log n) for the k orders it crosses (plus dead entries it sweeps out on the way).
    """

    def __init__(self) -> None:
        self._slots: dict[UUID, _Slot] = {}
        self._books: dict[str, _SymbolBook] = {}

    # -- reading ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._slots

    def get(self, order_id: UUID) -> Order | None:
        slot = self._slots.get(order_id)
        return None if slot is None else slot.order

    def symbols(self) -> set[str]:
        """The symbols with at least one resting order."""
        return set(self._books)

    def orders(self, symbol: str | None = None) -> list[Order]:
        """The resting orders (of one symbol, or all), in time priority (created_at, then id)."""
        if symbol is None:
            found = [slot.order for slot in self._slots.values()]
        else:
            book = self._books.get(symbol)
            heaps = () if book is None else book.heaps[:_PLACES]  # one symbol: its own heaps
            found = [
                self._slots[entry[2]].order
                for heap in heaps
                for entry in heap.entries
                if self._is_live(entry)
            ]
        found.sort(key=lambda order: (order.created_at, order.id))
        return found

    def crosses_others(self, order: Order, bound: Decimal) -> bool:
        """Whether a resting limit order of another user, on the other side of `order`, is priced
        within `bound` (at or below it for a buy, at or above for a sell): the matcher's cheap look
        before it asks the database for an internal cross (services/orders/internal_cross.py).

        O(1) when nothing is within the bound (the heap's top says so); otherwise a scan of the
        heap stops at the first other user's order, so it is long only when one user's own orders
        fill the front of the book."""
        book = self._books.get(order.symbol)
        if book is None:
            return False
        kind = _Kind.SELL_LIMIT if order.side is Side.BUY else _Kind.BUY_LIMIT
        entries = book.heaps[kind].entries
        market = _signed(kind, bound)
        if not entries or entries[0][0] > market:
            return False
        return any(
            entry[0] <= market
            and self._is_live(entry)
            and self._slots[entry[2]].order.user_id != order.user_id
            for entry in entries
        )

    # -- changing ---------------------------------------------------------------------------

    def add(self, order: Order) -> None:
        """Rest an open LIMIT, STOP, STOP_LIMIT or TRAILING_STOP order (a triggered STOP_LIMIT
        rests as a limit).

        ValueError for a MARKET order, a triggered STOP, a closed order, a missing or non-positive
        price, or an id already resting (use ``replace``).
        """
        kind, price = _placement(order)
        if order.id in self._slots:
            raise ValueError(f"order {order.id} is already in the book")
        book = self._books.get(order.symbol)
        if book is None:
            book = self._books[order.symbol] = _SymbolBook()
        entry: _Entry = (_signed(kind, price), order.created_at, order.id)
        heappush(book.heaps[kind].entries, entry)
        book.count += 1
        slot = self._slots[order.id] = _Slot(order, kind, entry)
        if trailing.is_trailing(order):
            slot.trail = self._push_trail(book, order)

    def remove(self, order_id: UUID) -> Order | None:
        """Take an order out of the book; its heap entry dies in place. None if it was not here."""
        slot = self._slots.pop(order_id, None)
        if slot is None:
            return None
        self._forget(slot)
        return slot.order

    def replace(self, order: Order) -> None:
        """Put a new version of a resting order (same id) in place of the old one.

        After a partial fill the price and created_at are unchanged, so the heap entry stays and
        the order keeps its place. If the new version rests elsewhere (another price, side, symbol
        or a triggered STOP_LIMIT) it moves, still ranked by its created_at.
        KeyError if the id is not in the book; ValueError (book unchanged) if it can no longer rest.
        """
        slot = self._slots.get(order.id)
        if slot is None:
            raise KeyError(order.id)
        order = trailing.best_of(slot.order, order)  # a mark here may be ahead of the stored one
        kind, price = _placement(order)
        old = slot.order
        if (
            kind is slot.kind
            and order.symbol == old.symbol
            and slot.entry == (_signed(kind, price), order.created_at, order.id)
            and slot.trail is None
        ):
            slot.order = order
            return
        self.remove(order.id)
        self.add(order)

    # -- matching ---------------------------------------------------------------------------

    def on_quote(self, quote: Quote, *, extended_only: bool = False) -> Crossed:
        """The limit orders the quote makes executable, the trailing stops whose mark its ``last``
        moves, and the stops its ``last`` triggers (after the trails have moved).

        Executable orders stay in the book; triggered stops are removed. A side of the quote that is
        zero (no bid, no ask, no last) crosses nothing. Only the quote's symbol is looked at.
        ``extended_only`` (the PRE and POST sessions): only orders for extended hours execute, and
        no stop triggers.
        """
        book = self._books.get(quote.symbol)
        if book is None:
            return Crossed()
        executable: list[Order] = []
        triggered: list[Order] = []
        ask, bid, last = _market(quote.ask), _market(quote.bid), _market(quote.last)
        trailed = self._follow(book, last) if last is not None else []
        for kind, market in ((_Kind.BUY_LIMIT, ask), (_Kind.SELL_LIMIT, bid)):
            if market is not None:
                heap = book.heaps[kind]
                crossed = self._pop_crossed(heap, _signed(kind, market))
                for entry in crossed:
                    heappush(heap.entries, entry)  # executable orders keep resting
                    order = self._slots[entry[2]].order
                    if order.extended_hours or not extended_only:
                        executable.append(order)
        if last is not None and not extended_only:
            for kind in (_Kind.BUY_STOP, _Kind.SELL_STOP):
                for entry in self._pop_crossed(book.heaps[kind], _signed(kind, last)):
                    slot = self._slots.pop(entry[2])
                    triggered.append(slot.order)
                    book.count -= 1
                    if slot.trail is not None:
                        self._bury(book, _trail_kind(slot.order))
            if book.count == 0:
                del self._books[quote.symbol]
        return Crossed(executable, triggered, [o for o in trailed if o.id in self._slots])

    # -- internals --------------------------------------------------------------------------

    def _is_live(self, entry: _Entry) -> bool:
        slot = self._slots.get(entry[2])
        return slot is not None and (slot.entry is entry or slot.trail is entry)

    @staticmethod
    def _push_trail(book: _SymbolBook, order: Order) -> _Entry:
        kind = _trail_kind(order)
        assert order.high_water_mark is not None  # _placement checked it
        entry: _Entry = (_signed(kind, order.high_water_mark), order.created_at, order.id)
        heappush(book.heaps[kind].entries, entry)
        return entry

    def _follow(self, book: _SymbolBook, last: Decimal) -> list[Order]:
        """Move every trailing stop whose mark `last` improves: its mark becomes `last`, its stop
        follows, and both heap entries are renewed (the old ones die in place)."""
        moved: list[Order] = []
        for kind in (_Kind.SELL_TRAIL, _Kind.BUY_TRAIL):
            heap = book.heaps[kind]
            market = _signed(kind, last)
            improved: list[_Entry] = []
            while heap.entries and heap.entries[0][0] < market:  # strictly better only
                entry = heappop(heap.entries)
                if self._is_live(entry):
                    improved.append(entry)
                else:
                    heap.dead -= 1
            for entry in improved:
                slot = self._slots[entry[2]]
                order = trailing.follow(slot.order, last)
                stop_kind, stop = _placement(order)
                old_kind = slot.kind
                slot.order, slot.kind = order, stop_kind
                slot.entry = (_signed(stop_kind, stop), order.created_at, order.id)
                heappush(book.heaps[stop_kind].entries, slot.entry)
                slot.trail = self._push_trail(book, order)
                self._bury(book, old_kind)  # the old stop entry, dead now that the slot moved
                moved.append(order)
        return moved

    def _pop_crossed(self, heap: _Heap, market: Decimal) -> list[_Entry]:
        """Pop the live entries whose key is at or better than ``market``, best first.

        Peeks at the top only, so nothing beyond the crossed entries is read; dead entries met on
        the way are dropped for good.
        """
        entries = heap.entries
        live: list[_Entry] = []
        while entries and entries[0][0] <= market:
            entry = heappop(entries)
            if self._is_live(entry):
                live.append(entry)
            else:
                heap.dead -= 1
        return live

    def _forget(self, slot: _Slot) -> None:
        """Account for a slot just taken out of ``_slots``: its entry is now dead."""
        symbol = slot.order.symbol
        book = self._books[symbol]
        book.count -= 1
        if book.count == 0:
            del self._books[symbol]  # its heaps, dead entries included, go with it
            return
        self._bury(book, slot.kind)
        if slot.trail is not None:
            self._bury(book, _trail_kind(slot.order))

    def _bury(self, book: _SymbolBook, kind: _Kind) -> None:
        """Count one more dead entry in a heap; rebuild it once the dead outnumber the live."""
        heap = book.heaps[kind]
        heap.dead += 1
        if heap.dead > _COMPACT_MIN_DEAD and 2 * heap.dead > len(heap.entries):
            heap.entries = [entry for entry in heap.entries if self._is_live(entry)]
            heapify(heap.entries)
            heap.dead = 0


def _trail_kind(order: Order) -> _Kind:
    return _Kind.SELL_TRAIL if order.side is Side.SELL else _Kind.BUY_TRAIL
