"""Quotes, securities, bars and the clock through the real HTTP API."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import text

from services.infra.container import Services
from services.market_data.marketdata import Quote
from services.market_data.securities import Security
from tests.graphql_client import GraphQLClient

SYMBOLS = [
    Security("MDA", "Market Data A Inc.", "NASDAQ"),
    Security("MDB", "Market Data B", "NYSE"),
    Security("MD.C", "Market Data C", "NYSE"),
]


@pytest.fixture(autouse=True)
async def market(services: Services) -> None:
    await services.securities.load(SYMBOLS)
    await services.quote_store.write(
        [
            Quote(
                "MDA",
                Decimal("10.01"),
                Decimal("10.03"),
                300,
                500,
                Decimal("10.02"),
                12345,
                time.time_ns(),
            ),
            Quote(
                "MD.C",
                Decimal("0.1234"),
                Decimal("0.1240"),
                100,
                100,
                Decimal("0.1236"),
                7,
                time.time_ns(),
            ),
        ]
    )


async def test_quote_of_a_known_symbol(gql: GraphQLClient) -> None:
    body = await gql(
        '{ quote(symbol: "mda") { symbol bid ask bidSize askSize last volume timestamp } }'
    )
    quote = body["data"]["quote"]
    assert quote["symbol"] == "MDA"
    assert (quote["bid"], quote["ask"], quote["last"]) == ("10.0100", "10.0300", "10.0200")
    assert (quote["bidSize"], quote["askSize"], quote["volume"]) == (300, 500, 12345)
    assert quote["timestamp"].endswith("Z")


async def test_unknown_symbols_and_symbols_without_quotes_are_null(gql: GraphQLClient) -> None:
    body = await gql(
        '{ a: quote(symbol: "NOPE") { symbol } b: quote(symbol: "MDB") { symbol } '
        'c: quote(symbol: "not a symbol!") { symbol } d: security(symbol: "NOPE") { name } }'
    )
    assert body["data"] == {"a": None, "b": None, "c": None, "d": None}


async def test_quotes_keeps_the_order_asked_with_nulls(gql: GraphQLClient) -> None:
    body = await gql('{ quotes(symbols: ["MD.C", "NOPE", "MDA", "MDB"]) { symbol bid } }')
    assert body["data"]["quotes"] == [
        {"symbol": "MD.C", "bid": "0.1234"},
        None,
        {"symbol": "MDA", "bid": "10.0100"},
        None,
    ]


async def test_quotes_refuses_too_many_symbols(gql: GraphQLClient) -> None:
    body = await gql(
        "query($s: [String!]!) { quotes(symbols: $s) { symbol } }",
        {"s": [f"S{i}" for i in range(201)]},
    )
    assert body["errors"][0]["extensions"]["code"] == "LIMIT_EXCEEDED"


async def test_security_with_its_quote(gql: GraphQLClient) -> None:
    body = await gql('{ security(symbol: "MDA") { symbol name quote { last } } }')
    assert body["data"]["security"] == {
        "symbol": "MDA",
        "name": "Market Data A Inc.",
        "quote": {"last": "10.0200"},
    }


async def test_bars_roll_up_through_the_api(gql: GraphQLClient, services: Services) -> None:
    rows = [  # (minute, open, high, low, close, volume_start, volume_end)
        ("2026-11-24T15:00:00Z", "10.00", "10.50", "9.90", "10.20", 0, 100),
        ("2026-11-24T15:01:00Z", "10.20", "10.80", "10.10", "10.70", 100, 250),
        ("2026-11-24T15:05:00Z", "10.70", "10.75", "10.00", "10.05", 250, 300),
    ]
    async with services.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO bars_1m VALUES (:s, :t, :o, :h, :l, :c, 0, 0, :vs, :ve) "
                "ON CONFLICT DO NOTHING"
            ),
            [
                {
                    "s": "MDB",
                    "t": datetime.fromisoformat(t),
                    "o": Decimal(o),
                    "h": Decimal(h),
                    "l": Decimal(low),
                    "c": Decimal(c),
                    "vs": vs,
                    "ve": ve,
                }
                for t, o, h, low, c, vs, ve in rows
            ],
        )
    query = """query($i: BarInterval!) { security(symbol: "MDB") {
      bars(interval: $i, from: "2026-11-24T14:00:00Z", to: "2026-11-24T16:00:00Z") {
        start open high low close volume } } }"""
    minutes = (await gql(query, {"i": "MINUTE"}))["data"]["security"]["bars"]
    assert [b["start"] for b in minutes] == [
        "2026-11-24T15:00:00.000Z",
        "2026-11-24T15:01:00.000Z",
        "2026-11-24T15:05:00.000Z",
    ]
    assert minutes[0] == {
        "start": "2026-11-24T15:00:00.000Z",
        "open": "10.0000",
        "high": "10.5000",
        "low": "9.9000",
        "close": "10.2000",
        "volume": 100,
    }
    five = (await gql(query, {"i": "FIVE_MINUTES"}))["data"]["security"]["bars"]
    assert five == [
        {
            "start": "2026-11-24T15:00:00.000Z",
            "open": "10.0000",
            "high": "10.8000",
            "low": "9.9000",
            "close": "10.7000",
            "volume": 250,
        },
        {
            "start": "2026-11-24T15:05:00.000Z",
            "open": "10.7000",
            "high": "10.7500",
            "low": "10.0000",
            "close": "10.0500",
            "volume": 50,
        },
    ]
    hour = (await gql(query, {"i": "HOUR"}))["data"]["security"]["bars"]
    assert hour == [
        {
            "start": "2026-11-24T15:00:00.000Z",
            "open": "10.0000",
            "high": "10.8000",
            "low": "9.9000",
            "close": "10.0500",
            "volume": 300,
        }
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ('interval: MINUTE, from: "2026-11-25T00:00:00Z", to: "2026-11-24T00:00:00Z"', "before"),
        ('interval: MINUTE, from: "2020-01-01T00:00:00Z", to: "2026-01-01T00:00:00Z"', "at most"),
        ('interval: MINUTE, to: "0001-01-01T00:00:00Z"', "too early"),  # no span before year 1
        ('interval: DAY, from: "9999-12-31T23:59:59Z"', "before"),
    ],
)
async def test_bars_refuse_bad_ranges(gql: GraphQLClient, arguments: str, message: str) -> None:
    body = await gql(f'{{ security(symbol: "MDB") {{ bars({arguments}) {{ start }} }} }}')
    assert body["errors"][0]["extensions"]["code"] == "INVALID_INPUT"
    assert message in body["errors"][0]["message"]


async def test_bars_refuse_a_malformed_date(gql: GraphQLClient) -> None:
    response = await gql.post('{ security(symbol: "MDB") { bars(from: "yesterday") { start } } }')
    assert response.status_code == 400


async def test_clock(gql: GraphQLClient) -> None:
    clock = (await gql("{ clock { now isOpen nextOpen nextClose } }"))["data"]["clock"]
    now = datetime.fromisoformat(clock["now"].replace("Z", "+00:00"))
    assert abs((now - datetime.now(UTC)).total_seconds()) < 5
    assert clock["isOpen"] is True  # the tests run with TRADEQL_MARKET_ALWAYS_OPEN
    assert clock["nextClose"] > clock["now"]
