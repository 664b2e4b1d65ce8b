"""The IEX TOPS 1.6 capture reader: its layers, exact prices, robustness, and iex-parser as oracle."""

from __future__ import annotations

import dataclasses
import decimal
import gzip
import io
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import iex_parser
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iex_parser.messages import decode_message

from services.market_data.marketdata import BookUpdate, TradeReport
from tests.workers import iex_capture as cap
from tests.workers.iex_capture import (
    iextp_packet,
    pcap_file,
    pcapng_file,
    quote_update,
    security_directory,
    system_event,
    trade_report,
    trading_status,
    udp_frame,
)
from workers.sources.iex import (
    MALFORMED_KINDS,
    IexEvent,
    IexStats,
    TopsEvent,
    parse_iextp_payload,
    parse_stream,
    read_pcap,
)

T = cap.BASE_NS
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def read_bytes(data: bytes) -> tuple[list[IexEvent], IexStats, list[tuple[str, str]]]:
    """Every event of an uncompressed capture, its stats, and the on_malformed calls."""
    stats = IexStats()
    calls: list[tuple[str, str]] = []

    def on_malformed(kind: str, detail: str) -> None:
        calls.append((kind, detail))

    events = list(parse_stream(io.BytesIO(data), stats, on_malformed))
    return events, stats, calls


def decode(segment: bytes) -> tuple[list[TopsEvent], IexStats]:
    stats = IexStats()
    return list(parse_iextp_payload(segment, stats)), stats


def session_frames() -> list[bytes]:
    """Four packets: several messages each, quotes, trades, other types and a heartbeat."""
    return [
        udp_frame(
            iextp_packet(
                [
                    system_event("O", T),
                    security_directory("AAPL", T + 1),
                    quote_update("AAPL", "187.2500", 300, "187.2600", 200, T + 10),
                ],
                first_sequence=1,
            )
        ),
        udp_frame(
            iextp_packet(
                [
                    quote_update("ZVZZT", "0.1234", 100, "0.1299", 500, T + 20),
                    trade_report("AAPL", "187.2550", 50, T + 21, trade_id=7),
                    trade_report("BRK.B", "410.0000", 1, T + 22),
                ],
                first_sequence=4,
            )
        ),
        udp_frame(iextp_packet([], first_sequence=7)),  # heartbeat
        udp_frame(
            iextp_packet(
                [
                    quote_update("SPY", "0", 0, "512.3400", 1000, T + 40),
                    trading_status("SPY", T + 41),
                ],
                first_sequence=7,
            )
        ),
    ]


def session_events() -> list[IexEvent]:
    first, second, _, fourth = cap.default_capture_times(4)
    return [
        IexEvent(first, BookUpdate("AAPL", Decimal("187.25"), 300, Decimal("187.26"), 200, T + 10)),
        IexEvent(
            second, BookUpdate("ZVZZT", Decimal("0.1234"), 100, Decimal("0.1299"), 500, T + 20)
        ),
        IexEvent(second, TradeReport("AAPL", Decimal("187.255"), 50, T + 21)),
        IexEvent(second, TradeReport("BRK.B", Decimal("410.00"), 1, T + 22)),
        IexEvent(fourth, BookUpdate("SPY", Decimal("0.00"), 0, Decimal("512.34"), 1000, T + 40)),
    ]


def write(path: Path, data: bytes, *, compress: bool) -> Path:
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


# --- well-formed captures --------------------------------------------------------------------


def test_a_session_yields_its_quotes_and_trades_with_capture_times() -> None:
    events, stats, calls = read_bytes(pcap_file(session_frames()))

    assert events == session_events()
    assert (stats.records, stats.packets, stats.messages, stats.events) == (4, 4, 8, 5)
    assert not stats.malformed
    assert calls == []


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
@pytest.mark.parametrize("nanosecond", [True, False], ids=["ns", "us"])
def test_read_pcap_reads_every_pcap_flavour(
    tmp_path: Path, nanosecond: bool, big_endian: bool, compress: bool
) -> None:
    data = pcap_file(session_frames(), nanosecond, big_endian=big_endian)
    path = write(tmp_path / "capture.pcap.gz", data, compress=compress)
    stats = IexStats()

    assert list(read_pcap(path, stats)) == session_events()
    assert not stats.malformed


@pytest.mark.parametrize("tsresol", [9, None, 3], ids=["ns", "default-us", "ms"])
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
def test_read_pcap_reads_pcapng_as_iex_publishes_it(
    tmp_path: Path, big_endian: bool, compress: bool, tsresol: int | None
) -> None:
    data = pcapng_file(session_frames(), big_endian=big_endian, tsresol=tsresol)
    path = write(
        tmp_path / "data_feeds_20240315_20240315_IEXTP1_TOPS1.6.pcap.gz", data, compress=compress
    )
    stats = IexStats()

    assert list(read_pcap(str(path), stats)) == session_events()
    assert not stats.malformed


def test_pcapng_binary_time_resolution_is_converted_to_nanoseconds() -> None:
    times = [T + 123_456_789, T + 2 * cap.NS_PER_S]
    frames = session_frames()[:2]
    events, stats, _ = read_bytes(pcapng_file(frames, tsresol=0x80 | 30, capture_ns=times))

    expected = [times[0], times[1], times[1], times[1]]
    assert all(abs(e.capture_ns - t) <= 1 for e, t in zip(events, expected, strict=True))
    assert not stats.malformed


def test_capture_time_keeps_nanoseconds_in_a_nanosecond_pcap() -> None:
    times = [T + 1, T + 999_999_999]
    events, _, _ = read_bytes(pcap_file(session_frames()[:2], capture_ns=times))

    assert sorted({e.capture_ns for e in events}) == times


def test_compression_is_recognized_by_its_magic_bytes_not_the_file_name(tmp_path: Path) -> None:
    data = pcap_file(session_frames())
    compressed = write(tmp_path / "named.pcap", data, compress=True)
    plain = write(tmp_path / "named.pcap.gz", data, compress=False)

    assert list(read_pcap(compressed)) == list(read_pcap(plain)) == session_events()


def test_frames_behind_vlan_tags_ip_options_and_ethernet_trailers_are_read() -> None:
    segment = iextp_packet([trade_report("IBM", "190.0100", 10, T)])
    frames = [
        udp_frame(segment, vlan_ids=[100]),
        udp_frame(segment, vlan_ids=[100, 200]),
        udp_frame(segment, ip_options=b"\x01\x01\x01\x00"),  # IHL 6: options must be skipped
        udp_frame(segment, ip_options=bytes(8)),
        udp_frame(segment, trailer=b"\xde\xad\xbe\xef"),  # an FCS, or padding
        # inside the IP packet but past the UDP datagram: the UDP length bounds the payload
        udp_frame(segment, ip_total_length=20 + 8 + len(segment) + 4, trailer=b"\xde\xad\xbe\xef"),
    ]
    events, stats, _ = read_bytes(pcap_file(frames))

    assert [e.event for e in events] == [TradeReport("IBM", Decimal("190.01"), 10, T)] * 6
    assert not stats.malformed


def test_a_heartbeat_padded_to_the_ethernet_minimum_is_not_malformed() -> None:
    frame = udp_frame(iextp_packet([]), trailer=bytes(6))
    events, stats, _ = read_bytes(pcap_file([frame]))

    assert events == []
    assert (stats.packets, stats.messages) == (1, 0)
    assert not stats.malformed


# --- exact prices, symbols, sides --------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ("187.2500", "187.25"),
        ("187.2550", "187.255"),
        ("187.2551", "187.2551"),
        ("100.0000", "100.00"),
        ("0.1234", "0.1234"),
        ("0.5000", "0.50"),
        ("0.0001", "0.0001"),
        ("0", "0.00"),
        ("922337203685477.5807", "922337203685477.5807"),  # the largest TOPS price
        ("-1.5000", "-1.50"),  # the type is signed; kept as sent
    ],
)
def test_prices_are_exact_decimals_trimmed_to_at_least_two_places(wire: str, expected: str) -> None:
    events, _ = decode(iextp_packet([trade_report("XYZ", wire, 1, T)]))

    (trade,) = events
    assert isinstance(trade, TradeReport)
    assert isinstance(trade.price, Decimal)
    assert str(trade.price) == expected
    assert trade.price == Decimal(wire)


def test_prices_ignore_the_callers_decimal_context() -> None:
    segment = iextp_packet([quote_update("XYZ", "123456.7891", 1, "123456.7899", 1, T)])
    with decimal.localcontext() as context:
        context.prec = 3
        context.rounding = decimal.ROUND_DOWN
        events, _ = decode(segment)

    (quote,) = events
    assert isinstance(quote, BookUpdate)
    assert (str(quote.bid), str(quote.ask)) == ("123456.7891", "123456.7899")


@pytest.mark.parametrize(
    ("field", "symbol"),
    [
        ("A", "A"),
        ("BRK.B", "BRK.B"),
        ("ABCDEFGH", "ABCDEFGH"),
        (b"ZIEXT   ", "ZIEXT"),
        (b"  IBM   ", "IBM"),
        (b"BRK B   ", "BRK B"),
    ],
)
def test_symbols_are_stripped_of_their_padding(field: str | bytes, symbol: str) -> None:
    events, _ = decode(iextp_packet([quote_update(field, "1", 1, "2", 1, T)]))

    assert [e.symbol for e in events] == [symbol]


def test_quotes_with_an_empty_side_are_still_yielded() -> None:
    segment = iextp_packet(
        [
            quote_update("NOASK", "10.0000", 100, "0", 0, T),
            quote_update("NOBID", "0", 0, "10.0100", 100, T + 1),
            quote_update("ZERO", "0", 0, "0", 0, T + 2, flags=0x80),  # the pre-open "zero quote"
        ]
    )
    events, stats = decode(segment)

    assert events == [
        BookUpdate("NOASK", Decimal("10.00"), 100, Decimal(0), 0, T),
        BookUpdate("NOBID", Decimal(0), 0, Decimal("10.01"), 100, T + 1),
        BookUpdate("ZERO", Decimal(0), 0, Decimal(0), 0, T + 2),
    ]
    assert not stats.malformed


def test_other_message_types_are_skipped_silently() -> None:
    trade_break = b"B" + trade_report("AAPL", "187.25", 50, T)[1:]  # a T's layout, not a trade
    official_price = b"X" + b"Q" + cap.i64le(T) + cap.symbol_field("AAPL") + cap.i64le(1872500)
    segment = iextp_packet(
        [
            system_event("S", T),
            security_directory("AAPL", T),
            trading_status("AAPL", T, status="H", reason="T1"),
            trade_break,
            official_price,
            b"\x7a" + bytes(5),  # a type this version does not define
            b"S",  # too short for a system event, but not ours to judge
        ]
    )
    events, stats = decode(segment)

    assert events == []
    assert (stats.packets, stats.messages, stats.events) == (1, 7, 0)
    assert not stats.malformed


def test_a_message_longer_than_its_layout_is_read_and_its_extra_bytes_ignored() -> None:
    segment = iextp_packet(
        [
            quote_update("AAPL", "1", 1, "2", 2, T) + b"\xff" * 6,
            trade_report("AAPL", "1.5", 3, T) + b"\xff",
        ]
    )
    events, stats = decode(segment)

    assert events == [
        BookUpdate("AAPL", Decimal("1.00"), 1, Decimal("2.00"), 2, T),
        TradeReport("AAPL", Decimal("1.50"), 3, T),
    ]
    assert not stats.malformed


def test_iex_event_is_frozen() -> None:
    event = session_events()[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.capture_ns = 0  # type: ignore[misc]


# --- malformed pieces ----------------------------------------------------------------------------

GOOD_BEFORE = iextp_packet([trade_report("BEFORE", "1.0000", 1, T)])
GOOD_AFTER = iextp_packet([trade_report("AFTER", "2.0000", 2, T + 1)])
GOOD_QUOTE = quote_update("GOOD", "3.0000", 3, "3.0100", 3, T + 2)


def raw_segment(payload: bytes, message_count: int) -> bytes:
    """A segment whose header is consistent but whose payload is given byte for byte."""
    return iextp_packet([], payload_length=len(payload), message_count=message_count) + payload


def prefixed(message: bytes) -> bytes:
    return cap.u16le(len(message)) + message


FRAME_CASES = [
    pytest.param("truncated_frame", b"\x01\x00\x5e\x57\x15\x04\x0a\x1b", id="ethernet-cut"),
    pytest.param("truncated_frame", udp_frame(GOOD_BEFORE)[:30], id="ip-header-cut"),
    pytest.param("truncated_frame", udp_frame(GOOD_BEFORE)[:-5], id="ip-packet-cut"),
    pytest.param("truncated_frame", udp_frame(b"", ip_total_length=24)[:38], id="udp-header-cut"),
    pytest.param("truncated_frame", udp_frame(b"", vlan_ids=[5])[:15], id="vlan-tag-cut"),
    pytest.param("not_ipv4", udp_frame(GOOD_BEFORE, ethertype=0x86DD), id="ipv6-ethertype"),
    pytest.param("not_ipv4", udp_frame(GOOD_BEFORE, ethertype=0x0806), id="arp"),
    pytest.param("not_ipv4", udp_frame(GOOD_BEFORE, ip_version=6), id="ip-version-6"),
    pytest.param("bad_ip_header", udp_frame(GOOD_BEFORE, ip_header_words=4), id="ihl-4"),
    pytest.param("bad_ip_header", udp_frame(GOOD_BEFORE, ip_total_length=19), id="total-lt-ihl"),
    pytest.param("ip_fragment", udp_frame(GOOD_BEFORE, fragment=0x2000), id="more-fragments"),
    pytest.param("ip_fragment", udp_frame(GOOD_BEFORE, fragment=0x0010), id="fragment-offset"),
    pytest.param("not_udp", udp_frame(GOOD_BEFORE, ip_protocol=6), id="tcp"),
    pytest.param("bad_udp_length", udp_frame(GOOD_BEFORE, udp_length=7), id="udp-length-7"),
    pytest.param("bad_udp_length", udp_frame(GOOD_BEFORE, udp_length=4000), id="udp-too-long"),
    pytest.param("truncated_iextp_header", udp_frame(GOOD_BEFORE[:39]), id="iextp-39-bytes"),
    pytest.param("truncated_iextp_header", udp_frame(b""), id="empty-udp"),
    pytest.param(
        "unsupported_iextp_version",
        udp_frame(iextp_packet([GOOD_QUOTE], version=2)),
        id="iextp-version-2",
    ),
    pytest.param(
        "payload_length_mismatch",
        udp_frame(iextp_packet([GOOD_QUOTE], payload_length=43)),
        id="payload-short",
    ),
    pytest.param(
        "payload_length_mismatch",
        udp_frame(iextp_packet([GOOD_QUOTE], payload_length=45)),
        id="payload-long",
    ),
    pytest.param(
        "payload_length_mismatch", udp_frame(iextp_packet([GOOD_QUOTE])[:-1]), id="datagram-cut"
    ),
    pytest.param(
        "payload_length_mismatch",
        udp_frame(iextp_packet([GOOD_QUOTE]), udp_length=8 + 40 + 44 - 1),
        id="udp-length-one-short",
    ),
]


@pytest.mark.parametrize(("kind", "bad_frame"), FRAME_CASES)
def test_a_malformed_packet_is_counted_and_skipped(kind: str, bad_frame: bytes) -> None:
    frames = [udp_frame(GOOD_BEFORE), bad_frame, udp_frame(GOOD_AFTER)]
    events, stats, calls = read_bytes(pcap_file(frames))

    assert [e.event.symbol for e in events] == ["BEFORE", "AFTER"]
    assert stats.malformed == {kind: 1}
    assert [k for k, _ in calls] == [kind]
    assert all(isinstance(detail, str) and detail for _, detail in calls)
    assert stats.records == 3


SEGMENT_CASES = [
    pytest.param(
        "message_overrun",
        raw_segment(prefixed(GOOD_QUOTE) + b"\x64\x00" + bytes(10), 2),
        ["GOOD"],
        id="length-past-payload",
    ),
    pytest.param(
        "message_overrun",
        raw_segment(prefixed(GOOD_QUOTE) + b"\x05", 2),
        ["GOOD"],
        id="length-prefix-cut",
    ),
    pytest.param(
        "message_overrun", raw_segment(b"\xff\xff" + GOOD_QUOTE, 1), [], id="first-message-overruns"
    ),
    pytest.param(
        "message_count_mismatch",
        iextp_packet([GOOD_QUOTE], message_count=3),
        ["GOOD"],
        id="fewer-than-counted",
    ),
    pytest.param(
        "message_count_mismatch",
        iextp_packet([GOOD_QUOTE] * 2, message_count=1),
        ["GOOD", "GOOD"],
        id="more-than-counted",
    ),
    pytest.param(
        "short_message", iextp_packet([GOOD_QUOTE[:41], GOOD_QUOTE]), ["GOOD"], id="quote-41-bytes"
    ),
    pytest.param("short_message", iextp_packet([b"Q", GOOD_QUOTE]), ["GOOD"], id="quote-1-byte"),
    pytest.param(
        "short_message",
        iextp_packet([trade_report("X", "1", 1, T)[:37], GOOD_QUOTE]),
        ["GOOD"],
        id="trade-37-bytes",
    ),
    pytest.param("short_message", iextp_packet([b"", GOOD_QUOTE]), ["GOOD"], id="empty-message"),
    pytest.param(
        "bad_symbol",
        iextp_packet([quote_update(b"AB\x00\x00\x00\x00\x00\x00", "1", 1, "2", 1, T), GOOD_QUOTE]),
        ["GOOD"],
        id="nul-padded",
    ),
    pytest.param(
        "bad_symbol",
        iextp_packet([trade_report(b"\xc3\xa9TF    ", "1", 1, T), GOOD_QUOTE]),
        ["GOOD"],
        id="non-ascii",
    ),
    pytest.param(
        "bad_symbol",
        iextp_packet([trade_report(b" " * 8, "1", 1, T), GOOD_QUOTE]),
        ["GOOD"],
        id="blank",
    ),
]


@pytest.mark.parametrize(("kind", "segment", "symbols"), SEGMENT_CASES)
def test_a_malformed_message_is_counted_and_the_rest_of_its_segment_still_read(
    kind: str, segment: bytes, symbols: list[str]
) -> None:
    frames = [udp_frame(GOOD_BEFORE), udp_frame(segment), udp_frame(GOOD_AFTER)]
    events, stats, calls = read_bytes(pcap_file(frames))

    assert [e.event.symbol for e in events] == ["BEFORE", *symbols, "AFTER"]
    assert stats.malformed == {kind: 1}
    assert [k for k, _ in calls] == [kind]


def _pcap_with_record_length(length: int) -> bytes:
    good = pcap_file([udp_frame(GOOD_BEFORE)])
    return good + cap.u32le(1) + cap.u32le(0) + cap.u32le(length) + cap.u32le(length) + bytes(64)


def _pcapng_with_block_length(length: int) -> bytes:
    good = pcapng_file([udp_frame(GOOD_BEFORE)])
    return good + cap.u32le(6) + cap.u32le(length) + bytes(64)


def _enhanced_packet(frame: bytes, *, interface: int = 0, captured: int | None = None) -> bytes:
    """A little-endian pcapng Enhanced Packet Block, its captured length overridable."""
    length = len(frame) if captured is None else captured
    body = b"".join(
        [
            cap.u32le(interface),
            bytes(8),
            cap.u32le(length),
            cap.u32le(length),
            frame,
            bytes(-len(frame) % 4),
        ]
    )
    return cap.u32le(6) + cap.u32le(12 + len(body)) + body + cap.u32le(12 + len(body))


def _pcapng_with_packet(interface: int, captured: int) -> bytes:
    return b"".join(
        [
            pcapng_file([udp_frame(GOOD_BEFORE)]),
            _enhanced_packet(bytes(8), interface=interface, captured=captured),
            _enhanced_packet(udp_frame(GOOD_AFTER)),
        ]
    )


def _corrupt_gzip() -> bytes:
    data = bytearray(gzip.compress(pcap_file(session_frames()), mtime=0))
    data[-8] ^= 0xFF  # the CRC-32
    return bytes(data)


FILE_CASES = [
    pytest.param("bad_pcap_header", b"", [], id="empty"),
    pytest.param("bad_pcap_header", b"not a capture file at all", [], id="text"),
    pytest.param("bad_pcap_header", pcap_file([])[:20], [], id="pcap-header-cut"),
    pytest.param("bad_pcap_header", pcapng_file([])[:9], [], id="pcapng-header-cut"),
    pytest.param(
        "bad_pcap_header",
        pcapng_file([])[:8] + b"XXXX" + pcapng_file([])[12:],
        [],
        id="pcapng-byte-order",
    ),
    pytest.param(
        "unsupported_linktype",
        pcap_file([udp_frame(GOOD_BEFORE)], linktype=101),
        [],
        id="pcap-raw-ip",
    ),
    pytest.param(
        "unsupported_linktype",
        pcapng_file([udp_frame(GOOD_BEFORE)], linktype=113),
        [],
        id="pcapng-linux-cooked",
    ),
    pytest.param(
        "truncated_record",
        pcap_file([udp_frame(GOOD_BEFORE)] * 2)[:-10],
        ["BEFORE"],
        id="pcap-frame-cut",
    ),
    pytest.param(
        "truncated_record",
        pcap_file([udp_frame(GOOD_BEFORE)] * 2)[:-130],
        ["BEFORE"],
        id="pcap-record-header-cut",
    ),
    pytest.param(
        "truncated_record",
        pcapng_file([udp_frame(GOOD_BEFORE)] * 2)[:-1],
        ["BEFORE"],
        id="pcapng-block-cut",
    ),
    pytest.param(
        "bad_record_length",
        _pcap_with_record_length(0x7FFF_FFFF),
        ["BEFORE"],
        id="pcap-2GiB-record",
    ),
    pytest.param(
        "bad_record_length", _pcapng_with_block_length(13), ["BEFORE"], id="pcapng-unaligned-block"
    ),
    pytest.param(
        "bad_record_length", _pcapng_with_block_length(8), ["BEFORE"], id="pcapng-tiny-block"
    ),
    pytest.param(
        "bad_pcapng_block",
        _pcapng_with_packet(3, 8),
        ["BEFORE", "AFTER"],
        id="undeclared-interface",
    ),
    pytest.param(
        "bad_pcapng_block", _pcapng_with_packet(0, 9), ["BEFORE", "AFTER"], id="captured-past-block"
    ),
]


@pytest.mark.parametrize(("kind", "data", "symbols"), FILE_CASES)
def test_a_malformed_file_ends_or_resumes_cleanly(
    kind: str, data: bytes, symbols: list[str]
) -> None:
    events, stats, calls = read_bytes(data)

    assert [e.event.symbol for e in events] == symbols
    assert stats.malformed == {kind: 1}
    assert [k for k, _ in calls] == [kind]


def test_corrupt_compression_ends_the_read_as_a_read_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pcap.gz"
    path.write_bytes(_corrupt_gzip())
    stats = IexStats()

    events = list(read_pcap(path, stats))

    assert len(events) <= len(session_events())
    assert stats.malformed == {"read_error": 1}


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_an_empty_file_yields_nothing(tmp_path: Path, compress: bool) -> None:
    path = write(tmp_path / "empty.pcap.gz", b"", compress=compress)
    stats = IexStats()

    assert list(read_pcap(path, stats)) == []
    assert stats.malformed == {"bad_pcap_header": 1}


def test_a_missing_file_is_an_os_error_not_data() -> None:
    with pytest.raises(FileNotFoundError):
        next(read_pcap("/nonexistent/capture.pcap.gz"))


def _record_ends(frames: Sequence[bytes]) -> set[int]:
    ends, position = {24}, 24
    for frame in frames:
        position += 16 + len(frame)
        ends.add(position)
    return ends


def test_a_pcap_cut_anywhere_yields_what_came_before_and_counts_the_cut() -> None:
    frames = session_frames()
    data = pcap_file(frames)
    everything = session_events()
    ends = _record_ends(frames)

    for cut in range(len(data) + 1):
        events, stats, _ = read_bytes(data[:cut])
        assert events == everything[: len(events)], cut
        if cut < 24:
            assert stats.malformed == {"bad_pcap_header": 1}, cut
        elif cut in ends:
            assert not stats.malformed, cut
        else:
            assert stats.malformed == {"truncated_record": 1}, cut


def test_a_pcapng_cut_anywhere_yields_what_came_before() -> None:
    data = pcapng_file(session_frames())
    everything = session_events()

    for cut in range(len(data)):
        events, stats, _ = read_bytes(data[:cut])
        assert events == everything[: len(events)], cut
        assert sum(stats.malformed.values()) <= 1, cut
        assert set(stats.malformed) <= {"bad_pcap_header", "truncated_record"}, cut


def test_a_gzip_download_cut_anywhere_ends_cleanly(tmp_path: Path) -> None:
    compressed = gzip.compress(pcap_file(session_frames()), mtime=0)
    everything = session_events()
    path = tmp_path / "partial.pcap.gz"

    for cut in range(len(compressed)):
        path.write_bytes(compressed[:cut])
        stats = IexStats()
        events = list(read_pcap(path, stats))
        assert events == everything[: len(events)], cut
        assert sum(stats.malformed.values()) == 1, cut
        expected = "bad_pcap_header" if cut < 2 else "truncated_record"
        assert set(stats.malformed) == {expected}, cut


# --- fuzzing: nothing raises, every kind is a documented one -----------------------------------


def _kinds_are_documented(stats: IexStats) -> None:
    assert set(stats.malformed) <= MALFORMED_KINDS


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_udp_payload_is_decoded_without_raising(payload: bytes) -> None:
    _, stats = decode(payload)
    _kinds_are_documented(stats)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=6), st.integers(0, 8), st.integers(0, 300))
def test_any_segment_framing_is_decoded_without_raising(
    messages: list[bytes], count: int, length: int
) -> None:
    for segment in (
        iextp_packet(messages),
        iextp_packet(messages, message_count=count),
        raw_segment(b"".join(messages), count),
    ):
        _, stats = decode(segment)
        _kinds_are_documented(stats)


CAPTURES = {
    "pcap": pcap_file(session_frames()),
    "pcap-us-be": pcap_file(session_frames(), False, big_endian=True),
    "pcapng": pcapng_file(session_frames()),
    "pcapng-be": pcapng_file(session_frames(), big_endian=True),
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(CAPTURES)), st.data())
def test_a_damaged_capture_is_read_without_raising(name: str, data: st.DataObject) -> None:
    capture = bytearray(CAPTURES[name])
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(capture) - 1))
        capture[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(capture)))

    events, stats, calls = read_bytes(bytes(capture[:cut]))

    _kinds_are_documented(stats)
    assert sum(stats.malformed.values()) == len(calls)
    assert all(isinstance(e.event, BookUpdate | TradeReport) for e in events)


# --- the oracle: iex-parser --------------------------------------------------------------------

SYMBOLS = ["AAPL", "MSFT", "ZVZZT", "BRK.B", "SPY", "A", "GOOGL", "ZXIET"]


def oracle_frames(seed: int = 20240315) -> list[bytes]:
    """Sixty packets of seeded random quotes and trades, some on VLANs or with IP options."""
    rng = random.Random(seed)
    frames, sequence, clock = [], 1, T

    def price() -> Decimal:
        units = rng.choice([rng.randrange(1, 10_000), rng.randrange(10_000, 60_000_000)])
        return Decimal(units).scaleb(-4)

    for index in range(60):
        messages = []
        for _ in range(rng.randrange(0, 6)):
            clock += rng.randrange(1, 5_000_000)  # any nanosecond, not only whole microseconds
            symbol = rng.choice(SYMBOLS)
            roll = rng.random()
            if roll < 0.5:
                bid, ask = price(), price()
                bid_size, ask_size = rng.randrange(0, 10_000), rng.randrange(0, 10_000)
                if rng.random() < 0.1:
                    bid, bid_size = Decimal(0), 0
                messages.append(
                    quote_update(
                        symbol,
                        bid,
                        bid_size,
                        ask,
                        ask_size,
                        clock,
                        flags=rng.choice([0, 0x40, 0x80]),
                    )
                )
            elif roll < 0.9:
                messages.append(
                    trade_report(
                        symbol,
                        price(),
                        rng.randrange(1, 100_000),
                        clock,
                        trade_id=rng.randrange(1, 2**40),
                        flags=rng.choice([0, 0x20, 0x40, 0x80]),
                    )
                )
            elif roll < 0.95:
                messages.append(security_directory(symbol, clock, adjusted_poc=price()))
            else:
                messages.append(system_event(rng.choice("OSRMEC"), clock))
        segment = iextp_packet(messages, first_sequence=sequence, send_time_ns=clock)
        sequence += len(messages)
        vlan_ids = [42] if index % 7 == 3 else []
        options = b"\x01\x01\x01\x00" if index % 11 == 5 else b""
        frames.append(udp_frame(segment, vlan_ids=vlan_ids, ip_options=options))
    return frames


def oracle_capture(path: Path, fmt: str) -> Path:
    frames = oracle_frames()
    times = [T + i * 1_000_000 for i in range(len(frames))]
    data = {
        "pcap-ns": lambda: pcap_file(frames, True, capture_ns=times),
        "pcap-us": lambda: pcap_file(frames, False, big_endian=True, capture_ns=times),
        "pcapng": lambda: pcapng_file(frames, capture_ns=times),
    }[fmt]()
    return write(path, data, compress=True)


def iex_parser_messages(path: Path) -> list[dict[str, Any]]:
    with iex_parser.Parser(str(path), iex_parser.TOPS_1_6) as reader:
        return [dict(message) for message in reader]


def as_parser_time(timestamp_ns: int) -> datetime:
    """How iex-parser turns a TOPS timestamp into a datetime (a float, then microseconds)."""
    return datetime.fromtimestamp(timestamp_ns / 10**9, tz=UTC)


def assert_same_as_iex_parser(ours: TopsEvent, theirs: dict[str, Any]) -> None:
    assert theirs["symbol"].decode("ascii") == ours.symbol
    assert theirs["timestamp"] == as_parser_time(ours.timestamp_ns)
    exact = EPOCH + timedelta(microseconds=ours.timestamp_ns // 1000)
    assert abs(theirs["timestamp"] - exact) <= timedelta(microseconds=1)
    if isinstance(ours, BookUpdate):
        assert theirs["type"] == "quote_update"
        assert (theirs["bid_price"], theirs["bid_size"]) == (ours.bid, ours.bid_size)
        assert (theirs["ask_price"], theirs["ask_size"]) == (ours.ask, ours.ask_size)
    else:
        assert theirs["type"] == "trade_report"
        assert (theirs["price"], theirs["size"]) == (ours.price, ours.size)


@pytest.mark.parametrize("fmt", ["pcap-ns", "pcap-us", "pcapng"])
def test_oracle_iex_parser_reads_the_same_events_from_the_same_file(
    tmp_path: Path, fmt: str
) -> None:
    path = oracle_capture(tmp_path / "data_feeds_20240315_20240315_IEXTP1_TOPS1.6.pcap.gz", fmt)
    stats = IexStats()

    ours = [e.event for e in read_pcap(path, stats)]
    everything = iex_parser_messages(path)
    theirs = [m for m in everything if m["type"] in {"quote_update", "trade_report"}]

    assert not stats.malformed
    assert len(everything) == stats.messages
    assert len(ours) == len(theirs) > 100
    assert {type(e) for e in ours} == {BookUpdate, TradeReport}
    for mine, other in zip(ours, theirs, strict=True):
        assert_same_as_iex_parser(mine, other)


tops_symbols = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ.+-=^", min_size=1, max_size=8).filter(
    lambda s: s.strip(" ") == s
)
prices = st.integers(-(2**63), 2**63 - 1).map(lambda units: Decimal(units).scaleb(-4))
sizes = st.integers(0, 2**32 - 1)
timestamps = st.integers(0, 4_102_444_800 * 10**9)  # 1970 to 2100
flags = st.integers(0, 255)


def _decode_one(message: bytes) -> TopsEvent:
    events, stats = decode(iextp_packet([message]))
    assert not stats.malformed
    (event,) = events
    return event


@settings(max_examples=300, deadline=None)
@given(tops_symbols, prices, sizes, prices, sizes, timestamps, flags)
def test_oracle_quote_updates_decode_as_iex_parser_decodes_them(
    symbol: str, bid: Decimal, bid_size: int, ask: Decimal, ask_size: int, ts: int, flag: int
) -> None:
    message = quote_update(symbol, bid, bid_size, ask, ask_size, ts, flags=flag)
    assert_same_as_iex_parser(
        _decode_one(message), dict(decode_message(iex_parser.TOPS_1_6, message[0], message[1:]))
    )


@settings(max_examples=300, deadline=None)
@given(tops_symbols, prices, sizes, timestamps, flags, st.integers(-(2**63), 2**63 - 1))
def test_oracle_trade_reports_decode_as_iex_parser_decodes_them(
    symbol: str, price: Decimal, size: int, ts: int, flag: int, trade_id: int
) -> None:
    message = trade_report(symbol, price, size, ts, flags=flag, trade_id=trade_id)
    assert_same_as_iex_parser(
        _decode_one(message), dict(decode_message(iex_parser.TOPS_1_6, message[0], message[1:]))
    )


def test_oracle_the_builder_agrees_with_iex_parser_on_other_message_types() -> None:
    """Guards the builder itself: iex-parser reads its non-event messages as specified."""
    checks: list[tuple[bytes, Callable[[dict[str, Any]], bool]]] = [
        (system_event("R", T), lambda m: m["event"] == b"R"),
        (
            security_directory("AAPL", T, round_lot=100, adjusted_poc="187.25"),
            lambda m: (
                (m["symbol"], m["round_lot_size"], m["adjusted_poc_close"])
                == (b"AAPL", 100, 1872500)
            ),
        ),
        (
            trading_status("AAPL", T, status="H", reason="T1"),
            lambda m: (m["status"], m["symbol"], m["reason"]) == (b"H", b"AAPL", b"T1"),
        ),
    ]
    for message, check in checks:
        decoded = dict(decode_message(iex_parser.TOPS_1_6, message[0], message[1:]))
        assert decoded["timestamp"] == as_parser_time(T)
        assert check(decoded), decoded
