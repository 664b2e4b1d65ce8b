"""The seed's TCP line feed: one fixed-width quote record per line.

A record is 50 characters, then a newline ('\\r\\n' is tolerated):

    columns  0-9   symbol
    columns 10-19  bid
    columns 20-29  ask
    columns 30-39  last
    columns 40-49  volume (cumulative shares)

Each field may be padded with spaces on either side. The format carries no sizes and no
timestamp: parsed quotes have bid_size = ask_size = 0 and are stamped with the receive time.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Literal, get_args

from services.market_data.marketdata import Quote

__all__ = [
    "FIELD_WIDTH",
    "KINDS",
    "MAX_LINE",
    "RECORD_LENGTH",
    "MalformedKind",
    "MalformedRecord",
    "format_line",
    "parse_line",
    "read_lines",
]

log = logging.getLogger(__name__)

FIELD_WIDTH = 10
RECORD_LENGTH = 5 * FIELD_WIDTH
MAX_LINE = 1024  # longer than this without a newline: dropped up to the next newline
_READ_CHUNK = 64 * 1024

MalformedKind = Literal[
    "wrong_length",  # not 50 characters (or longer than MAX_LINE on the wire)
    "bad_symbol",  # empty, too long, or characters no US symbol uses
    "bad_number",  # a price or the volume is blank or not a number of the allowed form
    "crossed_or_nonpositive",  # a price <= 0, or bid > ask
    "truncated",  # the stream ended in the middle of a line
]
KINDS: tuple[MalformedKind, ...] = get_args(MalformedKind)


class MalformedRecord(Exception):
    """A record the feed sent that cannot be a quote; `kind` is one of `KINDS`."""

    def __init__(self, kind: MalformedKind, detail: str) -> None:
        super().__init__(kind, detail)
        self.kind: MalformedKind = kind
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


# A root of capital letters (digits allowed after the first character), then the suffix
# characters of the US conventions: CMS/NYSE and CQS ('.', '/', CQS's lowercase p/r/w for
# preferred, rights and when-issued) and Nasdaq ('-' preferred, '$' when distributed or ACT
# preferred as in AA$B, '+' warrants, '^' rights, '=' units, '#' when issued, '*' called,
# '!' '@' '%' '~'). A space never appears: it is the padding.
_SYMBOL = re.compile(r"[A-Z][A-Z0-9./$^+=#*!@%~\-prw]{0,9}")
# Plain decimals with at most 4 places; a sign parses so that "-1.00" reads as nonpositive.
_PRICE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]{0,4})?|\.[0-9]{1,4})")
_VOLUME = re.compile(r"[0-9]+")
_FOUR_PLACES = Decimal("0.0001")


def _excerpt(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _price(text: str, name: str) -> Decimal:
    field = text.strip(" ")
    if not field:
        raise MalformedRecord("bad_number", f"{name} is blank")
    if _PRICE.fullmatch(field) is None:
        raise MalformedRecord("bad_number", f"{name} {field!r} is not a decimal with <= 4 places")
    return Decimal(field)


def parse_line(line: str | bytes, *, now_ns: int) -> Quote:
    """One record as a Quote stamped `now_ns`; raises MalformedRecord if it is not a valid one.

    The line may still end in '\\n' or '\\r\\n'. Bytes are read one character per byte
    (latin-1), so a non-ASCII byte counts toward the length and then fails its field.
    """
    text = line.decode("latin-1") if isinstance(line, bytes | bytearray) else line
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    if len(text) != RECORD_LENGTH:
        raise MalformedRecord(
            "wrong_length", f"{len(text)} characters, expected {RECORD_LENGTH}: {_excerpt(text)}"
        )
    symbol = text[0:10].strip(" ")
    if _SYMBOL.fullmatch(symbol) is None:
        raise MalformedRecord("bad_symbol", f"{symbol!r} is not a symbol")
    bid = _price(text[10:20], "bid")
    ask = _price(text[20:30], "ask")
    last = _price(text[30:40], "last")
    volume_text = text[40:50].strip(" ")
    if _VOLUME.fullmatch(volume_text) is None:
        raise MalformedRecord("bad_number", f"volume {volume_text!r} is not a whole number")
    for name, value in (("bid", bid), ("ask", ask), ("last", last)):
        if value <= 0:
            raise MalformedRecord("crossed_or_nonpositive", f"{symbol}: {name} {value} <= 0")
    if bid > ask:
        raise MalformedRecord("crossed_or_nonpositive", f"{symbol}: bid {bid} > ask {ask}")
    return Quote(symbol, bid, ask, 0, 0, last, int(volume_text), now_ns)


def _log_malformed(err: MalformedRecord) -> None:
    log.warning("line feed: malformed record: %s", err)


async def read_lines(
    reader: asyncio.StreamReader,
    *,
    on_malformed: Callable[[MalformedRecord], object] | None = None,
    max_line: int = MAX_LINE,
) -> AsyncIterator[bytes]:
    """The complete lines of a stream, without their '\\n' or '\\r\\n', until EOF.

    What cannot be a line is reported to `on_malformed` (by default, logged) and skipped:
    a line longer than `max_line` bytes, as `wrong_length`, as soon as it passes the limit,
    after which everything up to the next newline is dropped; and bytes left without a newline
    at EOF, as `truncated`. Memory stays bounded by one read chunk plus `max_line`. A callback
    that raises ends the iteration with its exception.
    """
    if max_line < 1:
        raise ValueError("max_line must be positive")
    report = on_malformed if on_malformed is not None else _log_malformed
    pending = b""  # the start of a line whose newline has not arrived yet
    discarding = False  # inside an over-long line, waiting for its newline

    def overlong(head: bytes) -> MalformedRecord:
        return MalformedRecord(
            "wrong_length",
            f"line longer than {max_line} bytes, dropped up to the next newline: "
            f"{_excerpt(head[:40].decode('latin-1'))}",
        )

    while True:
        chunk = await reader.read(_READ_CHUNK)
        if not chunk:
            break
        parts = chunk.split(b"\n")
        tail = parts.pop()  # after the last newline: the start of the next line, maybe empty
        if parts:
            if discarding:
                discarding = False  # the over-long line ends here: resynced
                del parts[0]
            elif pending:
                parts[0] = pending + parts[0]
            pending = b""
            for line in parts:
                if len(line) > max_line:
                    report(overlong(line))
                    continue
                yield line[:-1] if line.endswith(b"\r") else line
        if discarding:
            continue
        if tail:
            if len(pending) + len(tail) > max_line:
                report(overlong(pending + tail[:40]))
                pending = b""
                discarding = True
            else:
                pending += tail
    if pending:
        report(
            MalformedRecord(
                "truncated",
                f"stream ended inside a line of {len(pending)} bytes: "
                f"{_excerpt(pending[:60].decode('latin-1'))}",
            )
        )


def _format_price(value: Decimal, name: str) -> str:
    if not value.is_finite():
        raise ValueError(f"{name} {value} is not a finite number")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -4:
        rounded = value.quantize(_FOUR_PLACES)
        if rounded != value:
            raise ValueError(f"{name} {value} has more than 4 decimal places")
        value = rounded
    return format(value, "f")


def format_line(quote: Quote) -> bytes:
    """The record for a quote, newline included; sizes and timestamp are not part of the format.

    It checks only that the quote can be written (widths, at most 4 decimal places, a symbol
    without spaces); it does not check that the quote is sane, so tests can write crossed or
    nonpositive records and see `parse_line` reject them.
    """
    symbol = quote.symbol
    if not (
        0 < len(symbol) <= FIELD_WIDTH
        and symbol.isascii()
        and symbol.isprintable()
        and " " not in symbol
    ):
        raise ValueError(f"symbol {symbol!r} cannot be written in the line format")
    if quote.volume < 0:
        raise ValueError(f"volume {quote.volume} is negative")
    fields = [
        _format_price(quote.bid, "bid"),
        _format_price(quote.ask, "ask"),
        _format_price(quote.last, "last"),
        str(quote.volume),
    ]
    for value in fields:
        if len(value) > FIELD_WIDTH:
            raise ValueError(f"{value} does not fit in {FIELD_WIDTH} characters")
    record = symbol.ljust(FIELD_WIDTH) + "".join(f.rjust(FIELD_WIDTH) for f in fields) + "\n"
    return record.encode("ascii")
