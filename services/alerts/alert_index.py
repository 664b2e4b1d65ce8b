"""The alert checker's index of active price alerts, per symbol, sorted by threshold (pure, no I/O).

A quote must touch only the alerts it crosses, never a scan of every alert. Each symbol has two
binary heaps (``heapq``):

* ABOVE alerts, crossed when ``last >= threshold``: a min-heap by threshold, so a quote pops
  from the top while the top's threshold is at or below ``last``;
* BELOW alerts, crossed when ``last <= threshold``: a max-heap by threshold (keys negated), so a
  quote pops while the top's threshold is at or above ``last``.

A quote that crosses nothing costs two peeks; one that crosses k alerts costs O(k log n).

Thresholds sit on the 0.0001 grid and are kept as integer ticks (exact, and lighter than a
``Decimal`` when a checker holds a million of them). A last price off the grid is compared
exactly all the same: ABOVE uses it rounded down to a tick, BELOW rounded up, and for a threshold
on the grid ``floor(last) >= t`` holds exactly when ``last >= t`` (likewise for ceil and <=).
A quote without a positive last price (no trade yet) crosses nothing.

An alert is crossed only by a quote stamped at or after its creation: a quote from before the
user asked (a backlog, a replay) says nothing about what happened since. Such a quote leaves the
alert in place.

Removal is lazy: the entry stays in its heap and is skipped when popped, because it is no longer
the entry its alert id points at. A heap whose dead entries outnumber its live ones (past a
small floor) is rebuilt, so dead entries cost amortized O(1) each and memory stays O(live).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, KeysView
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from enum import StrEnum
from heapq import heapify, heappop, heappush
from uuid import UUID

__all__ = [
    "PRICE_PLACES",
    "AlertIndex",
    "Condition",
    "WatchedAlert",
    "from_ticks",
    "to_ticks",
]

PRICE_PLACES = 4
TICKS_PER_UNIT = 10**PRICE_PLACES
_TICK = Decimal(1).scaleb(-PRICE_PLACES)

# Rebuild a heap only past this many dead entries, so small heaps never churn.
_COMPACT_MIN_DEAD = 64


class Condition(StrEnum):
    """ABOVE triggers when the last price is at or above the threshold, BELOW at or below."""

    ABOVE = "ABOVE"
    BELOW = "BELOW"


@dataclass(frozen=True, slots=True)
class WatchedAlert:
    """What the checker needs of an active alert to know when a quote crosses it."""

    id: UUID
    symbol: str
    condition: Condition
    ticks: int  # the threshold in 0.0001 steps
    created_us: int  # creation, microseconds since the Unix epoch (UTC)

    @property
    def threshold(self) -> Decimal:
        return from_ticks(self.ticks)


def to_ticks(price: Decimal) -> int:
    """A price on the 0.0001 grid as integer ticks; ValueError if it is off the grid."""
    try:
        scaled = price.scaleb(PRICE_PLACES)
        if not scaled.is_finite() or scaled != scaled.to_integral_value():
            raise ValueError(f"{price} is not on the {_TICK} grid")
    except InvalidOperation as exc:
        raise ValueError(f"{price} is not a price") from exc
    return int(scaled)


def from_ticks(ticks: int) -> Decimal:
    return Decimal(ticks).scaleb(-PRICE_PLACES)


# A heap entry: (key, sequence, alert). The key is the threshold in ticks, negated in the BELOW
# heap; the sequence makes every entry unique, so comparison never reaches the alert. The
# entry's identity marks it live: it is the one the alert's id points at.
_Entry = tuple[int, int, WatchedAlert]


class _Heap:
    """One threshold-ordered heap and the count of its dead (removed) entries."""

    __slots__ = ("dead", "entries")

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self.dead = 0

    @property
    def live(self) -> int:
        return len(self.entries) - self.dead


class _SymbolAlerts:
    __slots__ = ("above", "below")

    def __init__(self) -> None:
        self.above = _Heap()
        self.below = _Heap()

    def heap(self, condition: Condition) -> _Heap:
        return self.above if condition is Condition.ABOVE else self.below

    def empty(self) -> bool:
        return self.above.live == 0 and self.below.live == 0


def _key(alert: WatchedAlert) -> int:
    return alert.ticks if alert.condition is Condition.ABOVE else -alert.ticks


class AlertIndex:
    """Active alerts per symbol, so that a quote finds the alerts it crosses in O(k log n).

    ``add`` and ``remove`` are O(log n) (amortized for removal); ``add_many`` heapifies a heap
    that grows by more than an eighth at once; ``cross`` pops and returns the alerts a quote
    crosses, which are then no longer in the index (put them back with ``add_many`` if their
    trigger could not be recorded).
    """

    def __init__(self) -> None:
        self._entries: dict[UUID, _Entry] = {}
        self._symbols: dict[str, _SymbolAlerts] = {}
        self._sequence = itertools.count()
        self.visited = 0  # heap entries popped by `cross`, live or dead: its whole cost

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, alert_id: object) -> bool:
        return alert_id in self._entries

    def get(self, alert_id: UUID) -> WatchedAlert | None:
        entry = self._entries.get(alert_id)
        return entry[2] if entry is not None else None

    def symbols(self) -> KeysView[str]:
        """Symbols with at least one alert: a quote for any other is skipped unread."""
        return self._symbols.keys()

    def add(self, alert: WatchedAlert) -> bool:
        """Watch an alert; False if it is already watched (alerts never change)."""
        if alert.id in self._entries:
            return False
        entry = (_key(alert), next(self._sequence), alert)
        self._entries[alert.id] = entry
        heappush(self._book(alert.symbol).heap(alert.condition).entries, entry)
        return True

    def add_many(self, alerts: Iterable[WatchedAlert]) -> int:
        """Watch many alerts at once (a load, a re-sync); returns how many were new."""
        grown: dict[int, tuple[_Heap, list[_Entry]]] = {}
        for alert in alerts:
            if alert.id in self._entries:
                continue
            entry = (_key(alert), next(self._sequence), alert)
            self._entries[alert.id] = entry
            heap = self._book(alert.symbol).heap(alert.condition)
            grown.setdefault(id(heap), (heap, []))[1].append(entry)
        added = 0
        for heap, entries in grown.values():
            added += len(entries)
            if len(entries) * 8 > len(heap.entries):
                heap.entries.extend(entries)
                heapify(heap.entries)
            else:
                for entry in entries:
                    heappush(heap.entries, entry)
        return added

    def remove(self, alert_id: UUID) -> WatchedAlert | None:
        """Stop watching an alert (cancelled, or triggered elsewhere); None if not watched."""
        entry = self._entries.pop(alert_id, None)
        if entry is None:
            return None
        alert = entry[2]
        book = self._symbols[alert.symbol]
        heap = book.heap(alert.condition)
        heap.dead += 1
        if heap.live == 0:
            heap.entries.clear()
            heap.dead = 0
        elif heap.dead > _COMPACT_MIN_DEAD and heap.dead > heap.live:
            self._compact(heap)
        if book.empty():
            del self._symbols[alert.symbol]
        return alert

    def cross(self, symbol: str, last: Decimal, at_us: int) -> list[WatchedAlert]:
        """The alerts of `symbol` that a quote with this last price, stamped `at_us`
        (microseconds since the epoch), crosses: taken out of the index, ABOVE ones first."""
        book = self._symbols.get(symbol)
        if book is None or not last.is_finite() or last <= 0:
            return []
        scaled = last.scaleb(PRICE_PLACES)
        floor = int(scaled.to_integral_value(ROUND_FLOOR))
        ceiling = floor if scaled == floor else floor + 1
        crossed: list[WatchedAlert] = []
        above, below = book.above.entries, book.below.entries
        if above and above[0][0] <= floor:  # most quotes cross nothing: two peeks
            self._drain(book.above, floor, at_us, crossed)
        if below and below[0][0] <= -ceiling:
            self._drain(book.below, -ceiling, at_us, crossed)
        if crossed and book.empty():
            del self._symbols[symbol]
        return crossed

    # -- internals ----------------------------------------------------------------------------
    def _book(self, symbol: str) -> _SymbolAlerts:
        book = self._symbols.get(symbol)
        if book is None:
            book = self._symbols[symbol] = _SymbolAlerts()
        return book

    def _drain(self, heap: _Heap, bound: int, at_us: int, crossed: list[WatchedAlert]) -> None:
        """Pop every entry keyed at or below `bound`; live ones old enough are crossed."""
        entries = heap.entries
        live = self._entries
        too_new: list[_Entry] = []
        while entries and entries[0][0] <= bound:
            entry = heappop(entries)
            self.visited += 1
            alert = entry[2]
            if live.get(alert.id) is not entry:
                heap.dead -= 1
            elif alert.created_us > at_us:
                too_new.append(entry)
            else:
                del live[alert.id]
                crossed.append(alert)
        for entry in too_new:
            heappush(entries, entry)

    def _compact(self, heap: _Heap) -> None:
        live = self._entries
        heap.entries = [e for e in heap.entries if live.get(e[2].id) is e]
        heapify(heap.entries)
        heap.dead = 0
