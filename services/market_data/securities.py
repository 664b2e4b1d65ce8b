"""The securities universe: loaded from the NASDAQ Trader symbol directory, looked up by symbol."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.infra.db import single_read
from services.infra.replica import ReadRouter

NASDAQ_HEADER = (
    "Symbol|Security Name|Market Category|Test Issue|Financial Status|Round Lot Size|ETF|NextShares"
)
OTHER_HEADER = (
    "ACT Symbol|Security Name|Exchange|CQS Symbol|ETF|Round Lot Size|Test Issue|NASDAQ Symbol"
)
FOOTER_PREFIX = "File Creation Time:"
OTHER_EXCHANGES = {"A": "NYSE MKT", "N": "NYSE", "P": "NYSE ARCA", "Z": "BATS", "V": "IEX"}
SYMBOL_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9.$^=+-]{0,13}$")
MAX_SYMBOL_LENGTH = 14


@dataclass(frozen=True, slots=True)
class Security:
    symbol: str
    name: str
    exchange: str
    is_etf: bool = False
    round_lot: int = 100


class DirectoryFormatError(ValueError):
    """The file is not a symbol directory in the NASDAQ Trader format."""


# What `up` and the simulator trade by default: the names a user expects to find.
DEFAULT_UNIVERSE: tuple[Security, ...] = (
    Security("AAPL", "Apple Inc. - Common Stock", "NASDAQ"),
    Security("MSFT", "Microsoft Corporation - Common Stock", "NASDAQ"),
    Security("GOOGL", "Alphabet Inc. - Class A Common Stock", "NASDAQ"),
    Security("GOOG", "Alphabet Inc. - Class C Capital Stock", "NASDAQ"),
    Security("AMZN", "Amazon.com, Inc. - Common Stock", "NASDAQ"),
    Security("NVDA", "NVIDIA Corporation - Common Stock", "NASDAQ"),
    Security("META", "Meta Platforms, Inc. - Class A Common Stock", "NASDAQ"),
    Security("TSLA", "Tesla, Inc. - Common Stock", "NASDAQ"),
    Security("NFLX", "Netflix, Inc. - Common Stock", "NASDAQ"),
    Security("AMD", "Advanced Micro Devices, Inc. - Common Stock", "NASDAQ"),
    Security("INTC", "Intel Corporation - Common Stock", "NASDAQ"),
    Security("AVGO", "Broadcom Inc. - Common Stock", "NASDAQ"),
    Security("COST", "Costco Wholesale Corporation - Common Stock", "NASDAQ"),
    Security("BRK.B", "Berkshire Hathaway Inc. Class B Common Stock", "NYSE"),
    Security("JPM", "JPMorgan Chase & Co. Common Stock", "NYSE"),
    Security("V", "Visa Inc. Class A Common Stock", "NYSE"),
    Security("MA", "Mastercard Incorporated Class A Common Stock", "NYSE"),
    Security("WMT", "Walmart Inc. Common Stock", "NYSE"),
    Security("JNJ", "Johnson & Johnson Common Stock", "NYSE"),
    Security("XOM", "Exxon Mobil Corporation Common Stock", "NYSE"),
    Security("KO", "The Coca-Cola Company Common Stock", "NYSE"),
    Security("DIS", "The Walt Disney Company Common Stock", "NYSE"),
    Security("BAC", "Bank of America Corporation Common Stock", "NYSE"),
    Security("F", "Ford Motor Company Common Stock", "NYSE"),
    Security("SPY", "SPDR S&P 500 ETF Trust", "NYSE ARCA", is_etf=True),
    Security("QQQ", "Invesco QQQ Trust, Series 1", "NASDAQ", is_etf=True),
    Security("IWM", "iShares Russell 2000 ETF", "NYSE ARCA", is_etf=True),
    Security("VOO", "Vanguard S&P 500 ETF", "NYSE ARCA", is_etf=True),
)


def normalize_symbol(symbol: str) -> str:
    return symbol.strip().upper()


def is_valid_symbol(symbol: str) -> bool:
    return bool(SYMBOL_PATTERN.match(symbol))


def parse_directory(content: str, *, source: str = "file") -> list[Security]:
    """Parse `nasdaqlisted.txt` or `otherlisted.txt`: strict about the header, the field count
    and the `File Creation Time` footer; test issues (flagged `Y`) are skipped."""
    lines = [line.rstrip("\r") for line in content.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DirectoryFormatError(f"{source}: empty")
    header = lines[0].lstrip("\ufeff")
    if header not in (NASDAQ_HEADER, OTHER_HEADER):
        raise DirectoryFormatError(f"{source}: line 1 is not a NASDAQ Trader directory header")
    if not lines[-1].startswith(FOOTER_PREFIX):
        raise DirectoryFormatError(f"{source}: no '{FOOTER_PREFIX}' footer: the file is truncated")
    parse_row = _nasdaq_row if header == NASDAQ_HEADER else _other_row
    width = header.count("|") + 1
    securities: list[Security] = []
    for number, line in enumerate(lines[1:-1], start=2):
        fields = line.split("|")
        if len(fields) != width:
            raise DirectoryFormatError(
                f"{source}: line {number} has {len(fields)} fields, expected {width}"
            )
        security = parse_row(fields, f"{source}: line {number}")
        if security is not None:
            securities.append(security)
    return securities


def _flag(value: str, where: str, name: str) -> bool:
    if value not in ("Y", "N", ""):
        raise DirectoryFormatError(f"{where}: {name} must be Y or N, not {value!r}")
    return value == "Y"


def _round_lot(value: str, where: str) -> int:
    if not value.isdigit() or int(value) <= 0:
        raise DirectoryFormatError(f"{where}: round lot size {value!r} is not a positive integer")
    return int(value)


def _checked_symbol(value: str, where: str) -> str:
    symbol = value.strip()
    if not is_valid_symbol(symbol):
        raise DirectoryFormatError(f"{where}: {symbol!r} is not a symbol")
    return symbol


def _nasdaq_row(fields: list[str], where: str) -> Security | None:
    symbol, name, _category, test_issue, _status, round_lot, etf, _next_shares = fields
    if _flag(test_issue, where, "Test Issue"):
        return None
    return Security(
        _checked_symbol(symbol, where),
        name.strip(),
        "NASDAQ",
        _flag(etf, where, "ETF"),
        _round_lot(round_lot, where),
    )


def _other_row(fields: list[str], where: str) -> Security | None:
    symbol, name, exchange, _cqs, etf, round_lot, test_issue, _nasdaq = fields
    if _flag(test_issue, where, "Test Issue"):
        return None
    if exchange not in OTHER_EXCHANGES:
        raise DirectoryFormatError(f"{where}: unknown exchange code {exchange!r}")
    return Security(
        _checked_symbol(symbol, where),
        name.strip(),
        OTHER_EXCHANGES[exchange],
        _flag(etf, where, "ETF"),
        _round_lot(round_lot, where),
    )


def synthetic_universe(count: int) -> list[Security]:
    """Made-up symbols for benchmarks at a scale the real directory does not reach."""
    return [Security(f"SYN{i:05d}", f"Synthetic security {i}", "SIM") for i in range(count)]


async def upsert(conn: AsyncConnection, securities: Iterable[Security]) -> int:
    rows = [
        {"s": s.symbol, "n": s.name, "e": s.exchange, "etf": s.is_etf, "lot": s.round_lot}
        for s in securities
    ]
    if rows:
        await conn.execute(
            text(
                "INSERT INTO securities (symbol, name, exchange, is_etf, round_lot) "
                "VALUES (:s, :n, :e, :etf, :lot) ON CONFLICT (symbol) DO UPDATE SET "
                "name = EXCLUDED.name, exchange = EXCLUDED.exchange, is_etf = EXCLUDED.is_etf, "
                "round_lot = EXCLUDED.round_lot, active = true, updated_at = now()"
            ),
            rows,
        )
    return len(rows)


class Securities:
    def __init__(self, engine: AsyncEngine, reads: ReadRouter | None = None) -> None:
        self._engine = engine
        self._reads = reads

    async def by_symbols(self, symbols: Sequence[str]) -> list[Security | None]:
        """One query for many symbols, in the order asked (the DataLoader's batch function)."""
        wanted = [normalize_symbol(s) for s in symbols]
        engine = await self._reads.engine_for() if self._reads else self._engine
        async with single_read(engine) as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT symbol, name, exchange, is_etf, round_lot FROM securities "
                        "WHERE symbol = ANY(:s) AND active"
                    ),
                    {"s": [s for s in wanted if is_valid_symbol(s)]},
                )
            ).all()
        found = {
            r.symbol: Security(r.symbol, r.name, r.exchange, r.is_etf, r.round_lot) for r in rows
        }
        return [found.get(s) for s in wanted]

    async def active_symbols(self) -> list[str]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT symbol FROM securities WHERE active ORDER BY symbol")
            )
            return [r.symbol for r in rows]

    async def load(self, securities: Iterable[Security]) -> int:
        async with self._engine.begin() as conn:
            return await upsert(conn, securities)
