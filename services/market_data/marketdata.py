"""Market data as the platform carries it: normalized quotes and their wire form on the streams."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

FIELD_SEPARATOR = "|"
RECORD_SEPARATOR = "\n"


@dataclass(frozen=True, slots=True)
class Quote:
    """The consolidated state of one symbol, as of its source timestamp."""

    symbol: str
    bid: Decimal
    ask: Decimal
    bid_size: int
    ask_size: int
    last: Decimal
    volume: int
    timestamp_ns: int  # when the source stamped it, nanoseconds since the Unix epoch (UTC)

    @property
    def timestamp(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ns / 1e9, tz=UTC)


@dataclass(frozen=True, slots=True)
class BookUpdate:
    """A change of the top of book (best bid and offer) from a feed that sends it alone."""

    symbol: str
    bid: Decimal
    bid_size: int
    ask: Decimal
    ask_size: int
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class TradeReport:
    """A trade print: moves the last price and adds to the day's volume."""

    symbol: str
    price: Decimal
    size: int
    timestamp_ns: int


SourceEvent = Quote | BookUpdate | TradeReport


def encode_quote(q: Quote) -> str:
    return FIELD_SEPARATOR.join(
        (
            q.symbol,
            str(q.bid),
            str(q.ask),
            str(q.bid_size),
            str(q.ask_size),
            str(q.last),
            str(q.volume),
            str(q.timestamp_ns),
        )
    )


def record_timestamp_ns(record: str) -> int:
    """The source time of a wire record (its last field), without decoding the rest."""
    return int(record[record.rfind(FIELD_SEPARATOR) + 1 :])


def decode_quote(record: str) -> Quote:
    symbol, bid, ask, bid_size, ask_size, last, volume, ts = record.split(FIELD_SEPARATOR)
    return Quote(
        symbol,
        Decimal(bid),
        Decimal(ask),
        int(bid_size),
        int(ask_size),
        Decimal(last),
        int(volume),
        int(ts),
    )


def encode_batch(quotes: Iterable[Quote]) -> str:
    """Many quotes in one stream entry: one XADD carries a whole batch."""
    return RECORD_SEPARATOR.join(encode_quote(q) for q in quotes)


def decode_batch(payload: str) -> list[Quote]:
    return [decode_quote(r) for r in payload.split(RECORD_SEPARATOR) if r]


class QuoteBook:
    """Merges top-of-book updates and trade prints into full quotes, one symbol at a time."""

    def __init__(self) -> None:
        self._quotes: dict[str, Quote] = {}

    def apply(self, event: SourceEvent) -> Quote:
        if isinstance(event, Quote):
            self._quotes[event.symbol] = event
            return event
        held = self._quotes.get(event.symbol)
        zero = Decimal("0.00")
        if isinstance(event, BookUpdate):
            quote = Quote(
                event.symbol,
                event.bid,
                event.ask,
                event.bid_size,
                event.ask_size,
                held.last if held else zero,
                held.volume if held else 0,
                event.timestamp_ns,
            )
        else:
            quote = Quote(
                event.symbol,
                held.bid if held else zero,
                held.ask if held else zero,
                held.bid_size if held else 0,
                held.ask_size if held else 0,
                event.price,
                (held.volume if held else 0) + event.size,
                event.timestamp_ns,
            )
        self._quotes[event.symbol] = quote
        return quote
