"""IEX TOPS 1.6 historical captures (``data_feeds_*_IEXTP1_TOPS1.6.pcap.gz``) as normalized events.

Layers, outermost first: optional gzip (recognized by its magic bytes, whatever the file is
called); a capture file, either classic pcap (either byte order, microsecond or nanosecond
timestamps) or pcapng, which IEX's files have been since at least September 2017 despite their
``.pcap`` name (they are mergecap output); Ethernet II with any 802.1Q/802.1ad tags; IPv4, options included;
UDP; the 40-byte IEX-TP 1.25 segment header; then the segment's messages, each behind a
little-endian 2-byte length. Of the TOPS 1.6 messages, Quote Update ('Q') becomes a
:class:`BookUpdate` and Trade Report ('T') a :class:`TradeReport`; every other type is skipped
silently. A message longer than its fixed layout is accepted and its extra bytes ignored, as the
length prefix allows a later revision to append fields.

Design: :func:`read_pcap` and :func:`parse_stream` yield :class:`IexEvent`, which pairs each
event with the capture time of the packet that carried it: a replay at the recorded pace sleeps
on ``capture_ns``, while the event keeps IEX's own ``timestamp_ns``. :func:`parse_iextp_payload`
decodes one UDP payload and yields the bare events.

Prices are exact. The wire carries an integer of $0.0001 units; it becomes a Decimal with the
trailing zeros dropped down to, never past, two places: 187.2500 -> 187.25, 100.0000 -> 100.00,
187.2550 -> 187.255, 0.1234 -> 0.1234. A quote with an empty side (price and size 0) is still
yielded, with that price ``Decimal('0.00')``.

Nothing in the data makes the reader raise. A damaged piece is counted in
``IexStats.malformed[kind]``, reported to ``on_malformed(kind, detail)``, and skipped; reading
resumes with the next piece that can be trusted (message, packet), or ends when the capture's own
framing is lost. Kinds, by layer:

- file: ``bad_pcap_header`` (not pcap/pcapng, empty, header cut short: nothing is yielded),
  ``unsupported_linktype`` (not Ethernet: the whole pcap file, or that pcapng interface's
  packets), ``truncated_record`` (the file, or its gzip stream, ends inside a record, as after an
  interrupted download), ``bad_record_length`` (a record or block length no capture writes),
  ``read_error`` (corrupt compression), ``bad_pcapng_block`` (a pcapng interface or packet block
  that contradicts itself). ``truncated_record``, ``bad_record_length`` and ``read_error`` end
  the stream cleanly, since nothing after them can be framed.
- frame: ``truncated_frame``, ``not_ipv4``, ``bad_ip_header``, ``ip_fragment``, ``not_udp``,
  ``bad_udp_length``.
- IEX-TP segment: ``truncated_iextp_header``, ``unsupported_iextp_version``,
  ``payload_length_mismatch`` (the header's payload length disagrees with the datagram; the
  segment is dropped), ``message_overrun`` (a message length runs past the payload; the rest of
  the segment is dropped), ``message_count_mismatch`` (counted after yielding what was framed).
- message: ``short_message`` (a Q or T shorter than its layout, or an empty message),
  ``bad_symbol`` (not printable ASCII).

Opening the file is not data: a missing path raises the usual OSError, at the first iteration.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO, Final, NamedTuple, cast

from services.market_data.marketdata import BookUpdate, TradeReport

__all__ = [
    "MALFORMED_KINDS",
    "IexEvent",
    "IexStats",
    "MalformedCallback",
    "TopsEvent",
    "parse_iextp_payload",
    "parse_stream",
    "read_pcap",
]

TopsEvent = BookUpdate | TradeReport
MalformedCallback = Callable[[str, str], None]
Payload = bytes | bytearray | memoryview

MALFORMED_KINDS: Final = frozenset(
    {
        "bad_pcap_header",
        "unsupported_linktype",
        "truncated_record",
        "bad_record_length",
        "bad_pcapng_block",
        "read_error",
        "truncated_frame",
        "not_ipv4",
        "bad_ip_header",
        "ip_fragment",
        "not_udp",
        "bad_udp_length",
        "truncated_iextp_header",
        "unsupported_iextp_version",
        "payload_length_mismatch",
        "message_overrun",
        "message_count_mismatch",
        "short_message",
        "bad_symbol",
    }
)

_NS_PER_S: Final = 1_000_000_000
_GZIP_MAGIC: Final = b"\x1f\x8b"
_PCAP_MAGICS: Final = {  # first four bytes -> (byte order, nanoseconds per fraction tick)
    b"\xd4\xc3\xb2\xa1": ("<", 1000),
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
_PCAPNG_SHB: Final = b"\x0a\x0d\x0d\x0a"  # Section Header Block type, the same in both orders
_PCAPNG_BYTE_ORDERS: Final = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}
_PCAPNG_IDB: Final = 1
_PCAPNG_EPB: Final = 6
_IF_TSRESOL: Final = 9
_IF_TSOFFSET: Final = 14
_LINKTYPE_ETHERNET: Final = 1
_MAX_PCAP_RECORD: Final = 262_144  # libpcap's largest snapshot length
_MAX_PCAPNG_BLOCK: Final = 16 * 1024 * 1024  # Wireshark's limit

_VLAN_TPIDS: Final = frozenset({0x8100, 0x88A8})
_ETHERTYPE_IPV4: Final = 0x0800
_IPPROTO_UDP: Final = 17
_U16_BE: Final = struct.Struct("!H")

_IEXTP_VERSION: Final = 1
# version, reserved, message protocol id, channel id, session id, payload length, message count,
# stream offset, first message sequence number, send time
_IEXTP_HEADER: Final = struct.Struct("<BxHIIHHQQq")
_MESSAGE_LENGTH: Final = struct.Struct("<H")
_QUOTE_UPDATE_TYPE: Final = 0x51
_TRADE_REPORT_TYPE: Final = 0x54
# type, flags, timestamp, symbol, bid size, bid price, ask price, ask size
_QUOTE_UPDATE: Final = struct.Struct("<BBq8sIqqI")
# type, sale condition flags, timestamp, symbol, size, price, trade id
_TRADE_REPORT: Final = struct.Struct("<BBq8sIqq")
_PRINTABLE_ASCII: Final = re.compile(rb"[ -~]+")


@dataclass(slots=True)
class IexStats:
    """Counters of one read, advancing as its iterator is consumed."""

    records: int = 0  # packets read whole from the capture file
    packets: int = 0  # IEX-TP segments whose header checked out
    messages: int = 0  # IEX-TP messages framed, of every type
    events: int = 0  # quote updates and trade reports decoded
    malformed: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class IexEvent:
    """An event with the capture time of its packet (ns since the epoch), for paced replay."""

    capture_ns: int
    event: TopsEvent


def read_pcap(
    path: str | Path,
    stats: IexStats | None = None,
    on_malformed: MalformedCallback | None = None,
) -> Iterator[IexEvent]:
    """The events of a capture file, gzip-compressed or not."""
    with _open_capture(Path(path)) as stream:
        yield from parse_stream(stream, stats, on_malformed)


def parse_stream(
    stream: BinaryIO,
    stats: IexStats | None = None,
    on_malformed: MalformedCallback | None = None,
) -> Iterator[IexEvent]:
    """The events of an uncompressed pcap or pcapng byte stream."""
    report = _Reporter(stats, on_malformed)
    for capture_ns, frame in _frames(stream, report):
        payload = _udp_payload(frame, report)
        if payload is not None:
            for event in _decode_segment(payload, report):
                yield IexEvent(capture_ns, event)


def parse_iextp_payload(
    payload: Payload,
    stats: IexStats | None = None,
    on_malformed: MalformedCallback | None = None,
) -> Iterator[TopsEvent]:
    """The events of one IEX-TP segment (a UDP payload)."""
    return _decode_segment(payload, _Reporter(stats, on_malformed))


class _Reporter:
    """Counts a malformed piece and passes it on to the caller's callback."""

    __slots__ = ("_callback", "stats")

    def __init__(self, stats: IexStats | None, callback: MalformedCallback | None) -> None:
        self.stats = stats if stats is not None else IexStats()
        self._callback = callback

    def __call__(self, kind: str, detail: str) -> None:
        self.stats.malformed[kind] += 1
        if self._callback is not None:
            self._callback(kind, detail)


class _StreamLost(Exception):
    """The capture's framing can no longer be followed: count ``kind`` and stop."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


# --- the capture file ----------------------------------------------------------------------


def _open_capture(path: Path) -> BinaryIO:
    with path.open("rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    return cast(BinaryIO, gzip.open(path, "rb")) if compressed else path.open("rb")


def _read(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes; a broken compressed stream becomes a :class:`_StreamLost`."""
    try:
        return stream.read(size)
    except EOFError as exc:  # gzip: the data ends before the end-of-stream marker
        raise _StreamLost("truncated_record", f"compressed stream cut short: {exc}") from exc
    except (OSError, zlib.error) as exc:
        raise _StreamLost("read_error", str(exc)) from exc


def _read_exact(stream: BinaryIO, size: int, what: str) -> bytes:
    data = _read(stream, size)
    if len(data) < size:
        raise _StreamLost("truncated_record", f"{what}: {len(data)} of {size} bytes")
    return data


def _frames(stream: BinaryIO, report: _Reporter) -> Iterator[tuple[int, bytes]]:
    """(capture time in ns, Ethernet frame) for each packet of a pcap or pcapng stream."""
    try:
        magic = _read(stream, 4)
        if magic == _PCAPNG_SHB:
            yield from _pcapng_frames(stream, report)
        elif magic in _PCAP_MAGICS:
            yield from _pcap_frames(stream, *_PCAP_MAGICS[magic], report)
        else:
            report("bad_pcap_header", f"not a pcap or pcapng file (starts {magic.hex()!r})")
    except _StreamLost as lost:
        report(lost.kind, lost.detail)


def _pcap_frames(
    stream: BinaryIO, endian: str, tick_ns: int, report: _Reporter
) -> Iterator[tuple[int, bytes]]:
    rest = _read(stream, 20)  # version, zone, sigfigs, snaplen, link type
    if len(rest) < 20:
        report("bad_pcap_header", f"pcap global header cut at {4 + len(rest)} bytes")
        return
    linktype = struct.unpack_from(endian + "I", rest, 16)[0] & 0xFFFF
    if linktype != _LINKTYPE_ETHERNET:
        report("unsupported_linktype", f"pcap link type {linktype}")
        return
    record = struct.Struct(endian + "IIII")
    while head := _read(stream, record.size):
        if len(head) < record.size:
            raise _StreamLost("truncated_record", f"record header cut at {len(head)} bytes")
        seconds, fraction, captured, _original = record.unpack(head)
        if captured > _MAX_PCAP_RECORD:
            raise _StreamLost("bad_record_length", f"pcap record of {captured} bytes")
        frame = _read_exact(stream, captured, "pcap record")
        report.stats.records += 1
        yield seconds * _NS_PER_S + fraction * tick_ns, frame


class _Interface(NamedTuple):
    """A pcapng interface: its link type and how its timestamps count."""

    linktype: int
    tsresol: int  # if_tsresol: 10**-n seconds, or 2**-n when the high bit is set
    tsoffset_s: int


def _pcapng_frames(stream: BinaryIO, report: _Reporter) -> Iterator[tuple[int, bytes]]:
    try:
        endian = _section_header(stream)
    except _StreamLost as lost:
        kind = "bad_pcap_header" if lost.kind == "truncated_record" else lost.kind
        raise _StreamLost(kind, lost.detail) from None
    interfaces: list[_Interface] = []
    while block_type := _read(stream, 4):
        if len(block_type) < 4:
            raise _StreamLost("truncated_record", "pcapng block type cut short")
        if block_type == _PCAPNG_SHB:
            endian, interfaces = _section_header(stream), []
            continue
        body = _block_body(stream, endian)
        kind = struct.unpack(endian + "I", block_type)[0]
        if kind == _PCAPNG_IDB:
            interfaces.append(_interface(body, endian, report))
        elif kind == _PCAPNG_EPB:
            packet = _packet(body, endian, interfaces, report)
            if packet is not None:
                report.stats.records += 1
                yield packet


def _section_header(stream: BinaryIO) -> str:
    """The byte order of a section whose 4-byte block type has just been read."""
    head = _read_exact(stream, 8, "pcapng section header")
    endian = _PCAPNG_BYTE_ORDERS.get(head[4:])
    if endian is None:
        raise _StreamLost("bad_pcap_header", f"pcapng byte-order magic {head[4:].hex()}")
    length = struct.unpack_from(endian + "I", head)[0]
    if length < 28 or length % 4 or length > _MAX_PCAPNG_BLOCK:
        raise _StreamLost("bad_pcap_header", f"pcapng section header of {length} bytes")
    _read_exact(stream, length - 12, "pcapng section header")
    return endian


def _block_body(stream: BinaryIO, endian: str) -> bytes:
    """The body of a block whose type has just been read, without the trailing length."""
    length = struct.unpack(endian + "I", _read_exact(stream, 4, "pcapng block length"))[0]
    if length < 12 or length % 4 or length > _MAX_PCAPNG_BLOCK:
        raise _StreamLost("bad_record_length", f"pcapng block of {length} bytes")
    return _read_exact(stream, length - 8, "pcapng block")[:-4]


def _interface(body: bytes, endian: str, report: _Reporter) -> _Interface:
    """An Interface Description Block; a broken one still takes its index, unusable."""
    if len(body) < 8:
        report("bad_pcapng_block", f"interface description of {len(body)} bytes")
        return _Interface(-1, 6, 0)
    linktype = struct.unpack_from(endian + "H", body)[0]
    if linktype != _LINKTYPE_ETHERNET:
        report("unsupported_linktype", f"pcapng interface link type {linktype}")
    options = _options(body[8:], endian)
    resolution = options.get(_IF_TSRESOL, b"\x06")[:1] or b"\x06"
    offset = options.get(_IF_TSOFFSET, b"")
    offset_s = struct.unpack(endian + "q", offset)[0] if len(offset) == 8 else 0
    return _Interface(linktype, resolution[0], offset_s)


def _options(data: bytes, endian: str) -> dict[int, bytes]:
    """A block's options by code (first occurrence); a malformed tail is ignored."""
    found: dict[int, bytes] = {}
    position = 0
    while position + 4 <= len(data):
        code, size = struct.unpack_from(endian + "HH", data, position)
        if code == 0:  # opt_endofopt
            break
        found.setdefault(code, data[position + 4 : position + 4 + size])
        position += 4 + (size + 3) // 4 * 4
    return found


def _packet(
    body: bytes, endian: str, interfaces: list[_Interface], report: _Reporter
) -> tuple[int, bytes] | None:
    """An Enhanced Packet Block's (capture ns, frame) if it is an Ethernet frame."""
    if len(body) < 20:
        report("bad_pcapng_block", f"enhanced packet block of {len(body)} bytes")
        return None
    interface_id, high, low, captured, _original = struct.unpack_from(endian + "5I", body)
    if captured > len(body) - 20:
        report("bad_pcapng_block", f"{captured} captured bytes in a {len(body)}-byte block")
        return None
    if interface_id >= len(interfaces):
        report("bad_pcapng_block", f"packet on undeclared interface {interface_id}")
        return None
    interface = interfaces[interface_id]
    if interface.linktype != _LINKTYPE_ETHERNET:  # already reported with its interface
        return None
    return _ticks_to_ns(high << 32 | low, interface), body[20 : 20 + captured]


def _ticks_to_ns(ticks: int, interface: _Interface) -> int:
    resolution = interface.tsresol
    if resolution & 0x80:
        ns = ticks * _NS_PER_S >> (resolution & 0x7F)
    elif resolution <= 9:
        ns = ticks * 10 ** (9 - resolution)
    else:
        ns = ticks // 10 ** (resolution - 9)
    return ns + interface.tsoffset_s * _NS_PER_S


# --- Ethernet, IPv4, UDP -------------------------------------------------------------------


def _udp_payload(frame: bytes, report: _Reporter) -> memoryview | None:
    ip = _ipv4_offset(frame, report)
    return None if ip is None else _udp_in_ipv4(frame, ip, report)


def _ipv4_offset(frame: bytes, report: _Reporter) -> int | None:
    """Where the IPv4 header starts, past Ethernet II and any VLAN tags."""
    position = 12  # the EtherType, or a VLAN tag's protocol identifier
    while True:
        if len(frame) < position + 2:
            report("truncated_frame", f"Ethernet header cut at {len(frame)} bytes")
            return None
        ethertype = _U16_BE.unpack_from(frame, position)[0]
        if ethertype not in _VLAN_TPIDS:
            break
        position += 4
    if ethertype != _ETHERTYPE_IPV4:
        report("not_ipv4", f"EtherType 0x{ethertype:04x}")
        return None
    return position + 2


def _udp_in_ipv4(frame: bytes, ip: int, report: _Reporter) -> memoryview | None:
    """The UDP payload of the IPv4 packet at ``ip``, bounded by the IP and UDP lengths."""
    if len(frame) < ip + 20:
        report("truncated_frame", f"IPv4 header cut at {len(frame) - ip} bytes")
        return None
    if frame[ip] >> 4 != 4:
        report("not_ipv4", f"IP version {frame[ip] >> 4}")
        return None
    header = (frame[ip] & 0x0F) * 4
    total = _U16_BE.unpack_from(frame, ip + 2)[0]
    if header < 20 or total < header:
        report("bad_ip_header", f"header length {header}, total length {total}")
        return None
    if ip + total > len(frame):
        report("truncated_frame", f"IPv4 packet of {total} bytes, {len(frame) - ip} captured")
        return None
    if _U16_BE.unpack_from(frame, ip + 6)[0] & 0x3FFF:  # more fragments, or a fragment offset
        report("ip_fragment", "IPv4 fragment")
        return None
    if frame[ip + 9] != _IPPROTO_UDP:
        report("not_udp", f"IP protocol {frame[ip + 9]}")
        return None
    udp = ip + header
    if total - header < 8:
        report("truncated_frame", f"UDP header cut at {total - header} bytes")
        return None
    length = _U16_BE.unpack_from(frame, udp + 4)[0]
    if not 8 <= length <= total - header:
        report("bad_udp_length", f"UDP length {length} in {total - header} bytes")
        return None
    return memoryview(frame)[udp + 8 : udp + length]


# --- IEX-TP and TOPS -----------------------------------------------------------------------


def _decode_segment(payload: Payload, report: _Reporter) -> Iterator[TopsEvent]:
    count = _message_count(payload, report)
    if count is None:
        return
    report.stats.packets += 1
    position, framed = _IEXTP_HEADER.size, 0
    while position < len(payload):
        start = position + _MESSAGE_LENGTH.size
        if start > len(payload):
            report("message_overrun", f"length prefix cut at offset {position}")
            return
        length = _MESSAGE_LENGTH.unpack_from(payload, position)[0]
        position = start + length
        if position > len(payload):
            report(
                "message_overrun",
                f"{length}-byte message at offset {start} "
                f"runs past the {len(payload)}-byte segment",
            )
            return
        framed += 1
        report.stats.messages += 1
        if (event := _decode_message(payload, start, length, report)) is not None:
            report.stats.events += 1
            yield event
    if framed != count:
        report("message_count_mismatch", f"header says {count} messages, found {framed}")


def _message_count(payload: Payload, report: _Reporter) -> int | None:
    """The segment header's message count, if the header can be trusted."""
    if len(payload) < _IEXTP_HEADER.size:
        report("truncated_iextp_header", f"{len(payload)}-byte UDP payload")
        return None
    version, _protocol, _channel, _session, length, count, *_ = _IEXTP_HEADER.unpack_from(payload)
    if version != _IEXTP_VERSION:
        report("unsupported_iextp_version", f"IEX-TP version {version}")
        return None
    if _IEXTP_HEADER.size + length != len(payload):
        report(
            "payload_length_mismatch",
            f"header says {length} payload bytes, datagram has {len(payload) - _IEXTP_HEADER.size}",
        )
        return None
    return int(count)


def _decode_message(
    payload: Payload, start: int, length: int, report: _Reporter
) -> TopsEvent | None:
    if length == 0:
        report("short_message", "empty message")
        return None
    kind = payload[start]
    if kind == _QUOTE_UPDATE_TYPE:
        return _quote_update(payload, start, length, report)
    if kind == _TRADE_REPORT_TYPE:
        return _trade_report(payload, start, length, report)
    return None


def _quote_update(
    payload: Payload, start: int, length: int, report: _Reporter
) -> BookUpdate | None:
    if length < _QUOTE_UPDATE.size:
        report("short_message", f"{length}-byte quote update, needs {_QUOTE_UPDATE.size}")
        return None
    _, _flags, timestamp, raw_symbol, bid_size, bid, ask, ask_size = _QUOTE_UPDATE.unpack_from(
        payload, start
    )
    symbol = _symbol(raw_symbol, report)
    if symbol is None:
        return None
    return BookUpdate(symbol, _price(bid), bid_size, _price(ask), ask_size, timestamp)


def _trade_report(
    payload: Payload, start: int, length: int, report: _Reporter
) -> TradeReport | None:
    if length < _TRADE_REPORT.size:
        report("short_message", f"{length}-byte trade report, needs {_TRADE_REPORT.size}")
        return None
    _, _flags, timestamp, raw_symbol, size, price, _trade_id = _TRADE_REPORT.unpack_from(
        payload, start
    )
    symbol = _symbol(raw_symbol, report)
    if symbol is None:
        return None
    return TradeReport(symbol, _price(price), size, timestamp)


def _symbol(raw: bytes, report: _Reporter) -> str | None:
    """The space-padded ASCII symbol, stripped."""
    symbol = raw.strip(b" ")
    if not _PRINTABLE_ASCII.fullmatch(symbol):
        report("bad_symbol", f"symbol bytes {raw.hex()}")
        return None
    return symbol.decode("ascii")


def _price(units: int) -> Decimal:
    """$0.0001 units as an exact Decimal, trailing zeros trimmed down to two places.

    Built from a string so that no decimal context (precision, rounding) can touch it.
    """
    exponent = -4
    while exponent < -2 and units % 10 == 0:
        units //= 10
        exponent += 1
    return Decimal(f"{units}E{exponent}")
