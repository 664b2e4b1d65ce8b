"""The fixed-width TCP line feed: parsing, validation, framing and its inverse."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import pickle
from collections.abc import Sequence
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.market_data.marketdata import Quote
from workers.sources.linefeed import (
    KINDS,
    RECORD_LENGTH,
    MalformedRecord,
    format_line,
    parse_line,
    read_lines,
)
from workers.sources.sim import SimulatedMarket

NOW = 1_700_000_000_123_456_789


def record(symbol: str, bid: str, ask: str, last: str, volume: str, *, align: str = "<>") -> str:
    """A 50-character record; `align` is the symbol's then the numbers' alignment (<, >, ^)."""
    sym_align, num_align = align[0], align[1]
    return f"{symbol:{sym_align}10}" + "".join(
        f"{v:{num_align}10}" for v in (bid, ask, last, volume)
    )


GOOD = record("AAPL", "190.12", "190.14", "190.13", "1234567")


def test_a_good_record_becomes_a_quote() -> None:
    q = parse_line(GOOD + "\n", now_ns=NOW)
    assert q == Quote(
        "AAPL", Decimal("190.12"), Decimal("190.14"), 0, 0, Decimal("190.13"), 1234567, NOW
    )
    assert str(q.bid) == "190.12"


@pytest.mark.parametrize("align", ["<>", "><", "^^", ">>", "<<", "^>"])
def test_fields_may_be_padded_on_either_side(align: str) -> None:
    line = record("BRK.B", "410.5", "410.52", "410.51", "0", align=align)
    assert len(line) == RECORD_LENGTH
    q = parse_line(line, now_ns=NOW)
    assert (q.symbol, q.bid, q.ask, q.last, q.volume) == (
        "BRK.B",
        Decimal("410.5"),
        Decimal("410.52"),
        Decimal("410.51"),
        0,
    )


@pytest.mark.parametrize("ending", ["", "\n", "\r\n", "\r"])
@pytest.mark.parametrize("as_bytes", [False, True])
def test_line_endings_and_bytes_or_text(ending: str, as_bytes: bool) -> None:
    line = GOOD + ending
    q = parse_line(line.encode() if as_bytes else line, now_ns=NOW)
    assert q.symbol == "AAPL" and q.timestamp_ns == NOW


@pytest.mark.parametrize(
    "symbol",
    [
        "A",
        "V",
        "BRK.B",
        "AA$B",
        "BAC-L",
        "BAC-PL",
        "ABC+",
        "ABC+A",
        "XYZ^",
        "ABC=",
        "ABC#",
        "ABC*",
        "BACpA",
        "BAC.WS.A",
        "ZVZZT",
        "ABCDEFGHIJ",
        "SPY",
        "BF/B",
        "GOOGL",
    ],
)
def test_real_symbol_forms_are_accepted(symbol: str) -> None:
    assert parse_line(record(symbol, "1", "2", "1.5", "10"), now_ns=NOW).symbol == symbol


@pytest.mark.parametrize(
    ("price", "value"),
    [
        ("0.0001", "0.0001"),
        ("1", "1"),
        ("5.", "5"),
        (".5", "0.5"),
        ("+2.25", "2.25"),
        ("0190.50", "190.50"),
        ("99999.9999", "99999.9999"),
    ],
)
def test_price_forms(price: str, value: str) -> None:
    q = parse_line(record("X", price, price, price, "1"), now_ns=NOW)
    assert q.bid == Decimal(value)


def test_a_locked_market_is_allowed() -> None:
    q = parse_line(record("X", "10.00", "10.00", "10.00", "5"), now_ns=NOW)
    assert q.bid == q.ask


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("", "wrong_length"),
        (GOOD[:-1], "wrong_length"),
        (GOOD + " ", "wrong_length"),
        (GOOD + "\n\n", "wrong_length"),
        (GOOD + GOOD, "wrong_length"),
        (record("", "1", "2", "1", "1"), "bad_symbol"),
        (record("aapl", "1", "2", "1", "1"), "bad_symbol"),
        (record("1ABC", "1", "2", "1", "1"), "bad_symbol"),
        (record("AB CD", "1", "2", "1", "1"), "bad_symbol"),
        (record("ÄPFEL", "1", "2", "1", "1"), "bad_symbol"),
        (record("AB\tC", "1", "2", "1", "1"), "bad_symbol"),
        (record(".B", "1", "2", "1", "1"), "bad_symbol"),
        (record("X", "", "2", "1", "1"), "bad_number"),
        (record("X", "1", "2", "1", ""), "bad_number"),
        (record("X", "1.23456", "2", "1", "1"), "bad_number"),
        (record("X", "1e5", "2", "1", "1"), "bad_number"),
        (record("X", "1,000", "2000", "1", "1"), "bad_number"),
        (record("X", "1 0", "20", "1", "1"), "bad_number"),
        (record("X", "1", "2", "abc", "1"), "bad_number"),
        (record("X", "1", "NaN", "1", "1"), "bad_number"),
        (record("X", "1", "Infinity", "1", "1"), "bad_number"),
        (record("X", "1", "2", "1", "-5"), "bad_number"),
        (record("X", "1", "2", "1", "1.5"), "bad_number"),
        (record("X", "1", "2", "1", "+5"), "bad_number"),
        (record("X", "1", "2", "1", "١٢"), "bad_number"),  # Arabic-Indic digits
        (record("X", "0", "2", "1", "1"), "crossed_or_nonpositive"),
        (record("X", "0.0000", "2", "1", "1"), "crossed_or_nonpositive"),
        (record("X", "-1.00", "2", "1", "1"), "crossed_or_nonpositive"),
        (record("X", "1", "-2", "1", "1"), "crossed_or_nonpositive"),
        (record("X", "1", "2", "0", "1"), "crossed_or_nonpositive"),
        (record("X", "2.01", "2.00", "2", "1"), "crossed_or_nonpositive"),
    ],
)
def test_malformed_records_are_refused_with_their_kind(line: str, kind: str) -> None:
    with pytest.raises(MalformedRecord) as raised:
        parse_line(line, now_ns=NOW)
    assert raised.value.kind == kind
    assert raised.value.detail
    assert str(raised.value).startswith(kind + ": ")


def test_non_ascii_bytes_count_as_one_character_each() -> None:
    line = record("ABC", "1", "2", "1", "1").encode().replace(b"ABC", b"AB\xff")
    with pytest.raises(MalformedRecord) as raised:
        parse_line(line, now_ns=NOW)
    assert raised.value.kind == "bad_symbol"


def test_the_kinds_are_a_small_fixed_set() -> None:
    assert set(KINDS) == {
        "wrong_length",
        "bad_symbol",
        "bad_number",
        "crossed_or_nonpositive",
        "truncated",
    }


def test_malformed_record_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(MalformedRecord("bad_number", "bid 'x'")))
    assert (err.kind, err.detail, str(err)) == ("bad_number", "bid 'x'", "bad_number: bid 'x'")


# --- format_line, the inverse ---------------------------------------------------------------


def test_format_line_writes_the_fixed_width_record() -> None:
    q = Quote(
        "AAPL", Decimal("190.12"), Decimal("190.14"), 300, 500, Decimal("190.13"), 1234567, NOW
    )
    line = format_line(q)
    assert line == (GOOD + "\n").encode()
    assert len(line) == RECORD_LENGTH + 1


prices = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("99999.9999"), places=4)
symbols = st.from_regex(r"[A-Z][A-Z0-9./$^+=#*!@%~\-prw]{0,9}", fullmatch=True)


@given(
    symbol=symbols,
    a=prices,
    b=prices,
    last=prices,
    volume=st.integers(min_value=0, max_value=9_999_999_999),
    ts=st.integers(min_value=0, max_value=2**63),
)
def test_parse_line_inverts_format_line(
    symbol: str, a: Decimal, b: Decimal, last: Decimal, volume: int, ts: int
) -> None:
    q = Quote(symbol, min(a, b), max(a, b), 0, 0, last, volume, ts)
    back = parse_line(format_line(q), now_ns=ts)
    assert back == q
    assert (str(back.bid), str(back.ask), str(back.last)) == (str(q.bid), str(q.ask), str(q.last))


def test_simulated_quotes_round_trip_without_their_sizes() -> None:
    market = SimulatedMarket(
        ["AAPL", "BRK.B", "PENNY"],
        seed=1,
        rate_per_symbol=20,
        start_prices={"PENNY": Decimal("0.0420")},
    )
    market.next_batch(0)
    quotes = [q for k in range(1, 50) for q in market.next_batch(k * 50_000_000)]
    assert quotes
    for q in quotes:
        expected = dataclasses.replace(q, bid_size=0, ask_size=0)
        assert parse_line(format_line(q), now_ns=q.timestamp_ns) == expected


@pytest.mark.parametrize(
    "bad",
    [
        {"symbol": "TOOLONGSYMB"},
        {"symbol": ""},
        {"symbol": "BRK B"},
        {"symbol": "A\n"},
        {"bid": Decimal("0.00001")},
        {"bid": Decimal("123456789.5")},
        {"ask": Decimal("NaN")},
        {"volume": -1},
        {"volume": 10**10},
    ],
)
def test_format_line_refuses_what_the_format_cannot_carry(bad: dict[str, object]) -> None:
    q = Quote("AAPL", Decimal("1"), Decimal("2"), 0, 0, Decimal("1.5"), 10, NOW)
    with pytest.raises(ValueError):
        format_line(dataclasses.replace(q, **bad))  # type: ignore[arg-type]


def test_format_line_drops_only_zeros_beyond_four_places() -> None:
    q = Quote("X", Decimal("1.500000"), Decimal("2E+1"), 0, 0, Decimal("1.5"), 10, NOW)
    back = parse_line(format_line(q), now_ns=NOW)
    assert (back.bid, back.ask) == (Decimal("1.5"), Decimal(20))


def test_format_line_writes_insane_quotes_so_tests_can_send_them() -> None:
    q = Quote("X", Decimal("3"), Decimal("2"), 0, 0, Decimal("1.5"), 10, NOW)
    with pytest.raises(MalformedRecord) as raised:
        parse_line(format_line(q), now_ns=NOW)
    assert raised.value.kind == "crossed_or_nonpositive"


# --- read_lines, the framing -----------------------------------------------------------------


async def feed(reader: asyncio.StreamReader, chunks: Sequence[bytes], *, eof: bool = True) -> None:
    for chunk in chunks:
        reader.feed_data(chunk)
        await asyncio.sleep(0)  # let the reader take this chunk on its own
    if eof:
        reader.feed_eof()


async def collect(
    chunks: Sequence[bytes], **kwargs: int
) -> tuple[list[bytes], list[MalformedRecord]]:
    reader = asyncio.StreamReader()
    errors: list[MalformedRecord] = []
    feeder = asyncio.create_task(feed(reader, chunks))
    lines = [line async for line in read_lines(reader, on_malformed=errors.append, **kwargs)]
    await feeder
    return lines, errors


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


LINES = [
    record(f"S{i}", f"{i + 1}.01", f"{i + 1}.03", f"{i + 1}.02", str(i)).encode() for i in range(20)
]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 13, 50, 51, 52, 97, 4096])
async def test_lines_split_anywhere_come_out_whole(size: int) -> None:
    data = b"".join(line + (b"\r\n" if i % 2 else b"\n") for i, line in enumerate(LINES))
    lines, errors = await collect(chunked(data, size))
    assert lines == LINES
    assert errors == []
    assert [parse_line(x, now_ns=NOW).symbol for x in lines] == [f"S{i}" for i in range(20)]


async def test_an_empty_line_is_yielded_and_parses_as_wrong_length() -> None:
    lines, errors = await collect([LINES[0] + b"\n\n" + LINES[1] + b"\n"])
    assert lines == [LINES[0], b"", LINES[1]]
    with pytest.raises(MalformedRecord, match="wrong_length"):
        parse_line(lines[1], now_ns=NOW)
    assert errors == []


@pytest.mark.parametrize("size", [1, 5, 64, 4096])
async def test_a_partial_line_at_eof_is_reported_truncated(size: int) -> None:
    data = LINES[0] + b"\n" + LINES[1] + b"\n" + LINES[2][:23]
    lines, errors = await collect(chunked(data, size))
    assert lines == LINES[:2]
    assert [e.kind for e in errors] == ["truncated"]
    assert "23 bytes" in errors[0].detail


async def test_eof_right_after_a_newline_is_clean() -> None:
    lines, errors = await collect([LINES[0] + b"\n"])
    assert (lines, errors) == ([LINES[0]], [])
    assert await collect([]) == ([], [])


@pytest.mark.parametrize("size", [1, 100, 999, 1024, 1500, 65536])
async def test_an_overlong_line_is_dropped_and_the_feed_resyncs(size: int) -> None:
    data = LINES[0] + b"\n" + b"X" * 5000 + b"\r\n" + LINES[1] + b"\n"
    lines, errors = await collect(chunked(data, size))
    assert lines == LINES[:2]
    assert [e.kind for e in errors] == ["wrong_length"]


async def test_the_line_limit_is_inclusive() -> None:
    lines, errors = await collect(chunked(b"A" * 1024 + b"\n" + b"B" * 1025 + b"\n", 100))
    assert lines == [b"A" * 1024]
    assert [e.kind for e in errors] == ["wrong_length"]
    lines, errors = await collect([b"A" * 10 + b"\nB"], max_line=9)
    assert lines == [] and [e.kind for e in errors] == ["wrong_length", "truncated"]


async def test_an_overlong_line_cut_by_eof_is_reported_once() -> None:
    lines, errors = await collect(chunked(LINES[0] + b"\n" + b"Y" * 3000, 512))
    assert lines == [LINES[0]]
    assert [e.kind for e in errors] == ["wrong_length"]


async def test_an_overlong_line_is_reported_before_its_newline_arrives() -> None:
    """The reader does not wait for the end of a runaway line (nor buffer it)."""
    reader = asyncio.StreamReader()
    errors: list[MalformedRecord] = []
    lines: list[bytes] = []

    async def consume() -> None:
        async for line in read_lines(reader, on_malformed=errors.append):
            lines.append(line)

    consumer = asyncio.create_task(consume())
    for _ in range(100):  # 100 KiB without a newline
        reader.feed_data(b"Z" * 1024)
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert [e.kind for e in errors] == ["wrong_length"]
    reader.feed_data(b"ZZZ\n" + LINES[3] + b"\n")
    reader.feed_eof()
    await asyncio.wait_for(consumer, timeout=5)
    assert lines == [LINES[3]]
    assert len(errors) == 1


async def test_without_a_callback_problems_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(LINES[0] + b"\n" + LINES[1][:10])
    reader.feed_eof()
    with caplog.at_level(logging.WARNING, logger="workers.sources.linefeed"):
        lines = [line async for line in read_lines(reader)]
    assert lines == [LINES[0]]
    assert "truncated" in caplog.text


async def test_a_raising_callback_ends_the_iteration() -> None:
    def fail(err: MalformedRecord) -> None:
        raise err

    reader = asyncio.StreamReader()
    reader.feed_data(b"Q" * 2000 + b"\n" + LINES[0] + b"\n")
    reader.feed_eof()
    with pytest.raises(MalformedRecord) as raised:
        async for _ in read_lines(reader, on_malformed=fail):
            pass
    assert raised.value.kind == "wrong_length"


async def test_max_line_must_be_positive() -> None:
    with pytest.raises(ValueError):
        await anext(read_lines(asyncio.StreamReader(), max_line=0))


async def test_over_tcp_from_a_simulated_market() -> None:
    """What a demo server does: format simulated quotes onto a socket; the client parses them."""
    market = SimulatedMarket(
        ["AAPL", "MSFT", "BRK.B", "PENNY"],
        seed=5,
        rate_per_symbol=10,
        start_prices={"PENNY": Decimal("0.0375")},
    )
    market.next_batch(0)
    sent = [q for k in range(1, 40) for q in market.next_batch(k * 25_000_000)]

    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for q in sent:
            writer.write(format_line(q))
        writer.write(b"BROKEN")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    errors: list[MalformedRecord] = []
    got = [
        parse_line(line, now_ns=NOW)
        async for line in read_lines(reader, on_malformed=errors.append)
    ]
    writer.close()
    server.close()
    await server.wait_closed()
    assert [(q.symbol, q.bid, q.ask, q.last, q.volume) for q in got] == [
        (q.symbol, q.bid, q.ask, q.last, q.volume) for q in sent
    ]
    assert [e.kind for e in errors] == ["truncated"]


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_any_chunking_gives_the_same_lines(cuts: list[int]) -> None:
    data = b"".join(line + b"\r\n" for line in LINES[:7]) + b"\n" + b"W" * 80 + b"\ntail"
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(points) if b > a]
    loop = asyncio.new_event_loop()  # a loop of its own: hypothesis drives a plain function
    try:
        lines, errors = loop.run_until_complete(collect(chunks, max_line=60))
    finally:
        loop.close()
    assert lines == [*LINES[:7], b""]
    assert [e.kind for e in errors] == ["wrong_length", "truncated"]
