"""The live `quotes` subscription through a real WebSocket client (gql)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from decimal import Decimal
from typing import Any

import pytest
import websockets
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport

from gateway.metrics import REGISTRY
from services.infra.container import Services
from services.market_data.marketdata import Quote, encode_batch
from services.market_data.quote_hub import QuoteEvent, QuoteSubscription
from services.market_data.quote_store import quotes_channel
from services.market_data.securities import Security

SUBSCRIBE = gql(
    "subscription($s: [String!]!) { quotes(symbols: $s) { symbol bid ask last volume timestamp } }"
)
SYMBOLS = ["SUBA", "SUBB", "SUBC", "SUBD", "SUBE", "SUBF", "SUBG"]  # SUBG: never quoted


def quote(symbol: str, bid: str, ts: int | None = None) -> Quote:
    price = Decimal(bid)
    return Quote(
        symbol,
        price,
        price + Decimal("0.02"),
        100,
        100,
        price + Decimal("0.01"),
        10,
        ts or time.time_ns(),
    )


async def publish(services: Services, *quotes: Quote) -> None:
    """What the quote cache does: write the hashes, then publish the batch."""
    written = await services.quote_store.write(list(quotes))
    await services.redis.publish(quotes_channel(), encode_batch(written))


@pytest.fixture(autouse=True)
async def listed(services: Services) -> None:
    await services.securities.load([Security(s, f"{s} Corp", "NASDAQ") for s in SYMBOLS])


def transport(api_url: str, protocol: str = WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL) -> Any:
    return WebsocketsTransport(
        url=api_url.replace("http://", "ws://") + "/graphql",
        subprotocols=[protocol],
        connect_timeout=10,
        close_timeout=2,
    )


async def take(
    stream: AsyncIterator[dict[str, Any]], n: int, timeout: float = 5
) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [(await anext(stream))["quotes"] for _ in range(n)]

    return await asyncio.wait_for(collect(), timeout)


@pytest.mark.parametrize(
    ("protocol", "a", "b"),
    [
        (WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL, "SUBA", "SUBB"),
        (WebsocketsTransport.APOLLO_SUBPROTOCOL, "SUBD", "SUBE"),
    ],
)
async def test_current_quotes_first_then_every_change_of_the_symbols_asked(
    api_url: str, services: Services, protocol: str, a: str, b: str
) -> None:
    await publish(services, quote(a, "50.00"))
    async with Client(transport=transport(api_url, protocol)) as session:
        async with aclosing(session.subscribe(SUBSCRIBE, variable_values={"s": [a, b]})) as stream:
            first = await take(stream, 1)
            assert first[0]["symbol"] == a and first[0]["bid"] == "50.0000"
            await asyncio.sleep(0.2)  # the subscription is registered once the snapshot is sent
            await publish(services, quote("SUBC", "1.00"), quote(b, "20.00"))
            await publish(services, quote(a, "50.10"))
            changes = await take(stream, 2)
        assert [(c["symbol"], c["bid"]) for c in changes] == [(b, "20.0000"), (a, "50.1000")]


def events_made(how: str) -> float:
    return REGISTRY.get_sample_value("tradeql_subscription_events_total", {"how": how}) or 0.0


async def test_two_subscribers_of_one_document_share_each_quotes_result(
    api_url: str, services: Services
) -> None:
    """Each published quote is projected once for the document and shared with the second
    subscriber; a document with a fragment is executed by graphql-core, with the same data."""
    fragment = gql(
        "subscription($s: [String!]!) { quotes(symbols: $s) { ...Q } }"
        " fragment Q on Quote { symbol bid ask last volume timestamp }"
    )
    async with (
        Client(transport=transport(api_url)) as one,
        Client(transport=transport(api_url)) as two,
        Client(transport=transport(api_url)) as three,
    ):
        streams = [
            one.subscribe(SUBSCRIBE, variable_values={"s": ["SUBF"]}),
            two.subscribe(SUBSCRIBE, variable_values={"s": ["SUBF", "SUBG"]}),
            three.subscribe(fragment, variable_values={"s": ["SUBF"]}),
        ]
        async with aclosing(streams[0]), aclosing(streams[1]), aclosing(streams[2]):
            await publish(services, quote("SUBF", "7.00"))
            await asyncio.gather(*(take(s, 1) for s in streams))  # the snapshots
            await asyncio.sleep(0.2)
            before = {how: events_made(how) for how in ("shared", "projected", "executed")}
            await publish(services, quote("SUBF", "7.10"))
            got = await asyncio.gather(*(take(s, 1) for s in streams))
            made = {how: events_made(how) - before[how] for how in before}
    assert got[0] == got[1] == got[2]
    assert got[0][0]["bid"] == "7.1000"
    assert made == {"shared": 1, "projected": 1, "executed": 1}


async def test_unknown_symbols_are_refused(api_url: str) -> None:
    async with Client(transport=transport(api_url)) as session:
        with pytest.raises(Exception, match="unknown symbols: NOPE1") as raised:
            async for _ in session.subscribe(SUBSCRIBE, variable_values={"s": ["SUBA", "NOPE1"]}):
                pass
    assert "UNKNOWN_SYMBOL" in str(getattr(raised.value, "errors", ""))


async def test_too_many_symbols_are_refused(api_url: str) -> None:
    async with Client(transport=transport(api_url)) as session:
        with pytest.raises(Exception, match="at most 200 symbols"):
            async for _ in session.subscribe(
                SUBSCRIBE, variable_values={"s": [f"X{i}" for i in range(201)]}
            ):
                pass


async def test_a_slow_client_does_not_slow_the_others(api_url: str, services: Services) -> None:
    """A client that stops reading its socket (a raw one, with a receive queue of one message,
    so TCP backpressure reaches the server) while another keeps up: the other one still gets
    every change promptly, and the stalled one is conflated rather than queued without bound."""
    ws_url = api_url.replace("http://", "ws://") + "/graphql"
    async with websockets.connect(
        ws_url, subprotocols=["graphql-transport-ws"], max_queue=1, max_size=2**16, close_timeout=1
    ) as stalled:
        await stalled.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(await stalled.recv())["type"] == "connection_ack"
        await stalled.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {
                        "query": 'subscription { quotes(symbols: ["SUBC"]) { symbol bid } }'
                    },
                }
            )
        )
        async with (
            Client(transport=transport(api_url)) as fast,
            aclosing(fast.subscribe(SUBSCRIBE, variable_values={"s": ["SUBC"]})) as fast_stream,
        ):
            await publish(services, quote("SUBC", "2.00"))
            await take(fast_stream, 1)
            await asyncio.sleep(0.2)
            started = time.monotonic()
            for i in range(1500):
                await publish(services, quote("SUBC", f"{3 + i / 100:.2f}"))
            seen: list[dict[str, Any]] = []
            while not seen or seen[-1]["bid"] != "17.9900":
                seen += await take(fast_stream, 1)
            elapsed = time.monotonic() - started
        bids = [Decimal(q["bid"]) for q in seen]
        assert bids == sorted(bids), "never older than what was delivered"
        assert elapsed < 10


async def test_conflation_keeps_the_newest_quote_per_symbol() -> None:
    subscription = QuoteSubscription(["AAA", "BBB"])
    for i in range(1000):
        subscription.offer("AAA", QuoteEvent(f"AAA|{i}|{i + 1}|1|1|{i}|1|{1000 + i}"))
    subscription.offer("BBB", QuoteEvent("BBB|5|6|1|1|5|1|42"))
    quotes = await asyncio.wait_for(subscription.next_quotes(), 1)
    assert [(q.symbol, q.bid) for q in quotes] == [("AAA", Decimal(999)), ("BBB", Decimal(5))]
    assert subscription.conflated == 999
    subscription.offer(
        "AAA", QuoteEvent("AAA|1|2|1|1|1|1|5")
    )  # older than what was delivered: dropped
    subscription.offer("BBB", QuoteEvent("BBB|7|8|1|1|7|1|43"))
    quotes = await asyncio.wait_for(subscription.next_quotes(), 1)
    assert [(q.symbol, q.bid) for q in quotes] == [("BBB", Decimal(7))]
