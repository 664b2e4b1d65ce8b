"""Build IEX TOPS 1.6 captures byte by byte, from the specifications, for the reader's tests.

Nothing here comes from the reader under test: each field is laid down in specification order with
its width and byte order spelled out. TOPS 1.6 and IEX-TP 1.25 are little-endian; Ethernet, IPv4 and
UDP are in network order; pcap and pcapng are in the order their writer picks. Keyword arguments
that a well-formed capture never needs (lengths, counts, versions, protocols) exist so that a test
can break exactly one field.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

# 2024-03-15 13:30:00 UTC, a market open.
BASE_NS = 1_710_509_400 * 1_000_000_000
NS_PER_S = 1_000_000_000
IEX_MULTICAST = bytes([233, 215, 21, 4])
IEX_TOPS_PORT = 10378
TOPS_PROTOCOL_ID = 0x8003

Price = Decimal | str


def u8(value: int) -> bytes:
    return value.to_bytes(1, "little")


def u16le(value: int) -> bytes:
    return value.to_bytes(2, "little")


def u32le(value: int) -> bytes:
    return value.to_bytes(4, "little")


def i64le(value: int) -> bytes:
    return value.to_bytes(8, "little", signed=True)


def u16be(value: int) -> bytes:
    return value.to_bytes(2, "big")


def price_units(price: Price) -> int:
    """A price in the TOPS Price type: $0.0001 units; refuses anything finer."""
    units = Decimal(price) * 10_000
    if units != units.to_integral_value():
        raise ValueError(f"{price} is not a multiple of $0.0001")
    return int(units)


def symbol_field(symbol: str | bytes) -> bytes:
    """The TOPS String type: 8 bytes of ASCII, left-justified, space-filled. Bytes go in as they are."""
    if isinstance(symbol, bytes):
        if len(symbol) != 8:
            raise ValueError("a raw symbol is exactly 8 bytes")
        return symbol
    return symbol.encode("ascii").ljust(8, b" ")


# --- TOPS 1.6 messages ---------------------------------------------------------------------


def quote_update(
    symbol: str | bytes,
    bid: Price,
    bid_size: int,
    ask: Price,
    ask_size: int,
    timestamp_ns: int,
    *,
    flags: int = 0,
) -> bytes:
    """Quote Update Message, 'Q' (0x51), 42 bytes."""
    return b"".join(
        [
            b"Q",  # 0, 1: message type
            u8(flags),  # 1, 1: flags (symbol availability, market session)
            i64le(timestamp_ns),  # 2, 8: timestamp
            symbol_field(symbol),  # 10, 8: symbol
            u32le(bid_size),  # 18, 4: bid size
            i64le(price_units(bid)),  # 22, 8: bid price
            i64le(price_units(ask)),  # 30, 8: ask price
            u32le(ask_size),  # 38, 4: ask size
        ]
    )


def trade_report(
    symbol: str | bytes,
    price: Price,
    size: int,
    timestamp_ns: int,
    *,
    trade_id: int = 1,
    flags: int = 0,
) -> bytes:
    """Trade Report Message, 'T' (0x54), 38 bytes."""
    return b"".join(
        [
            b"T",  # 0, 1: message type
            u8(flags),  # 1, 1: sale condition flags
            i64le(timestamp_ns),  # 2, 8: timestamp
            symbol_field(symbol),  # 10, 8: symbol
            u32le(size),  # 18, 4: size
            i64le(price_units(price)),  # 22, 8: price
            i64le(trade_id),  # 30, 8: trade id
        ]
    )


def system_event(event: str, timestamp_ns: int) -> bytes:
    """System Event Message, 'S' (0x53), 10 bytes; ``event`` is one of O S R M E C."""
    return b"S" + event.encode("ascii") + i64le(timestamp_ns)


def security_directory(
    symbol: str,
    timestamp_ns: int,
    *,
    round_lot: int = 100,
    adjusted_poc: Price = "0",
    luld_tier: int = 1,
    flags: int = 0,
) -> bytes:
    """Security Directory Message, 'D' (0x44), 31 bytes."""
    return b"".join(
        [
            b"D",
            u8(flags),
            i64le(timestamp_ns),
            symbol_field(symbol),
            u32le(round_lot),
            i64le(price_units(adjusted_poc)),
            u8(luld_tier),
        ]
    )


def trading_status(symbol: str, timestamp_ns: int, *, status: str = "T", reason: str = "") -> bytes:
    """Trading Status Message, 'H' (0x48), 22 bytes."""
    return b"".join(
        [
            b"H",
            status.encode("ascii"),
            i64le(timestamp_ns),
            symbol_field(symbol),
            reason.encode("ascii").ljust(4, b" "),
        ]
    )


# --- IEX-TP 1.25 ---------------------------------------------------------------------------


def iextp_packet(
    messages: Sequence[bytes],
    *,
    first_sequence: int = 1,
    stream_offset: int = 0,
    send_time_ns: int = BASE_NS,
    channel_id: int = 1,
    session_id: int = 1_150_681_088,
    protocol_id: int = TOPS_PROTOCOL_ID,
    version: int = 1,
    payload_length: int | None = None,
    message_count: int | None = None,
) -> bytes:
    """One IEX-TP segment: the 40-byte header, then each message behind its 2-byte length."""
    payload = b"".join(u16le(len(message)) + message for message in messages)
    header = b"".join(
        [
            u8(version),  # 0, 1: version
            b"\x00",  # 1, 1: reserved
            u16le(protocol_id),  # 2, 2: message protocol id
            u32le(channel_id),  # 4, 4: channel id
            u32le(session_id),  # 8, 4: session id
            u16le(len(payload) if payload_length is None else payload_length),  # 12, 2
            u16le(len(messages) if message_count is None else message_count),  # 14, 2
            i64le(stream_offset),  # 16, 8: stream offset
            i64le(first_sequence),  # 24, 8: first message sequence number
            i64le(send_time_ns),  # 32, 8: send time
        ]
    )
    return header + payload


# --- Ethernet II, IPv4, UDP ----------------------------------------------------------------


def ipv4_checksum(header: bytes) -> int:
    total = sum(int.from_bytes(header[i : i + 2], "big") for i in range(0, len(header), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(
    payload: bytes,
    *,
    vlan_ids: Sequence[int] = (),
    ethertype: int = 0x0800,
    ip_version: int = 4,
    ip_options: bytes = b"",
    ip_header_words: int | None = None,
    ip_total_length: int | None = None,
    fragment: int = 0x4000,  # don't fragment, offset 0
    ip_protocol: int = 17,
    udp_length: int | None = None,
    source: bytes = bytes([10, 0, 0, 7]),
    destination: bytes = IEX_MULTICAST,
    source_port: int = 10378,
    destination_port: int = IEX_TOPS_PORT,
    trailer: bytes = b"",
) -> bytes:
    """An Ethernet II frame carrying ``payload`` in UDP over IPv4, lengths computed.

    ``vlan_ids`` adds one 802.1Q tag per id; ``trailer`` is bytes after the IP packet, as
    Ethernet padding or a frame check sequence would be. The UDP checksum is 0 (none).
    """
    udp = (
        b"".join(
            [
                u16be(source_port),
                u16be(destination_port),
                u16be(len(payload) + 8 if udp_length is None else udp_length),
                u16be(0),  # checksum: none
            ]
        )
        + payload
    )
    if len(ip_options) % 4:
        raise ValueError("IPv4 options fill whole 32-bit words")
    words = 5 + len(ip_options) // 4 if ip_header_words is None else ip_header_words
    total = 20 + len(ip_options) + len(udp) if ip_total_length is None else ip_total_length
    header = (
        b"".join(
            [
                u8(ip_version << 4 | words),
                u8(0),
                u16be(total),
                u16be(0x1C46),
                u16be(fragment),
                u8(64),
                u8(ip_protocol),
                u16be(0),
                source,
                destination,
            ]
        )
        + ip_options
    )
    header = header[:10] + u16be(ipv4_checksum(header)) + header[12:]
    tags = b"".join(u16be(0x8100) + u16be(vlan_id) for vlan_id in vlan_ids)
    ethernet = bytes.fromhex("01005e571504") + bytes.fromhex("0a1b2c3d4e5f") + tags
    return ethernet + u16be(ethertype) + header + udp + trailer


# --- capture files -------------------------------------------------------------------------


def default_capture_times(count: int) -> list[int]:
    """One packet per millisecond from BASE_NS: whole microseconds, so any pcap holds them."""
    return [BASE_NS + i * 1_000_000 for i in range(count)]


def pcap_file(
    frames: Sequence[bytes],
    nanosecond: bool = True,
    *,
    big_endian: bool = False,
    capture_ns: Sequence[int] | None = None,
    linktype: int = 1,
    snaplen: int = 262_144,
) -> bytes:
    """A classic pcap file: the 24-byte global header, then a 16-byte header per record."""
    order: Literal["little", "big"] = "big" if big_endian else "little"
    times = default_capture_times(len(frames)) if capture_ns is None else capture_ns
    per_tick = 1 if nanosecond else 1000

    def u16(value: int) -> bytes:
        return value.to_bytes(2, order)

    def u32(value: int) -> bytes:
        return value.to_bytes(4, order)

    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    parts = [u32(magic), u16(2), u16(4), u32(0), u32(0), u32(snaplen), u32(linktype)]
    for frame, ns in zip(frames, times, strict=True):
        seconds, fraction = divmod(ns, NS_PER_S)
        parts += [u32(seconds), u32(fraction // per_tick), u32(len(frame)), u32(len(frame)), frame]
    return b"".join(parts)


def pcapng_file(
    frames: Sequence[bytes],
    *,
    big_endian: bool = False,
    capture_ns: Sequence[int] | None = None,
    tsresol: int | None = 9,
    linktype: int = 1,
) -> bytes:
    """A pcapng file as IEX publishes them: a section header, one interface, enhanced packets.

    ``tsresol`` is the interface's if_tsresol byte (None: the option is left out, microseconds).
    """
    order: Literal["little", "big"] = "big" if big_endian else "little"
    times = default_capture_times(len(frames)) if capture_ns is None else capture_ns

    def u16(value: int) -> bytes:
        return value.to_bytes(2, order)

    def u32(value: int) -> bytes:
        return value.to_bytes(4, order)

    def option(code: int, value: bytes) -> bytes:
        return u16(code) + u16(len(value)) + value + b"\x00" * (-len(value) % 4)

    def block(block_type: int, body: bytes) -> bytes:
        length = 12 + len(body)
        return u32(block_type) + u32(length) + body + u32(length)

    comment = b"File created by merging: \nFile1: TOPS1.6A.pcap \n"
    section = block(
        0x0A0D0D0A,
        b"".join(
            [
                u32(0x1A2B3C4D),
                u16(1),
                u16(0),
                b"\xff" * 8,  # byte order, version 1.0, length unknown
                option(1, comment),
                option(0, b""),
            ]
        ),
    )
    resolution = b"" if tsresol is None else option(9, u8(tsresol))
    interface = block(1, u16(linktype) + u16(0) + u32(262_144) + resolution + option(0, b""))
    packets = [
        block(
            6,
            b"".join(
                [
                    u32(0),
                    u32(ticks >> 32),
                    u32(ticks & 0xFFFFFFFF),
                    u32(len(frame)),
                    u32(len(frame)),
                    frame,
                    b"\x00" * (-len(frame) % 4),
                ]
            ),
        )
        for frame, ticks in ((f, _ticks(ns, tsresol)) for f, ns in zip(frames, times, strict=True))
    ]
    return section + interface + b"".join(packets)


def _ticks(ns: int, tsresol: int | None) -> int:
    """Nanoseconds in an interface's time unit (exact for the tests' whole microseconds)."""
    resolution = 6 if tsresol is None else tsresol
    if resolution & 0x80:
        return (ns << (resolution & 0x7F)) // NS_PER_S
    if resolution <= 9:
        return ns // 10 ** (9 - resolution)
    return ns * 10 ** (resolution - 9)
