"""Guards through the real API: document limits (depth, aliases, tokens), body size,
introspection and GraphiQL off, rate limits (HTTP and WebSocket) and WebSocket limits.

The shared test server runs the default document and body limits with the rate limits relaxed;
a second API process (`guarded`) runs tight rate and WebSocket limits. It believes
X-Forwarded-For from 127.0.0.1, so each test counts against an address of its own."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import websockets
from graphql import GraphQLSchema, Lexer, Source, TokenKind, parse, specified_rules, validate
from graphql import build_schema as build_sdl_schema
from websockets.typing import Subprotocol

from gateway.graphql_schema import build_schema
from gateway.guards import query_limit_rules
from services.infra.container import Services
from services.infra.settings import Settings
from tests.api_process import api_process
from tests.contract import contract_text
from tests.graphql_client import ACCEPT, GraphQLClient
from tests.trading import listed, unique_symbol

GUARDED_ENV = {
    "TRADEQL_RATE_LIMIT_SESSION_PER_SECOND": "1",
    "TRADEQL_RATE_LIMIT_SESSION_BURST": "4",
    "TRADEQL_RATE_LIMIT_PARTNER_PER_SECOND": "1",
    "TRADEQL_RATE_LIMIT_PARTNER_BURST": "2",
    "TRADEQL_RATE_LIMIT_IP_PER_SECOND": "1",
    "TRADEQL_RATE_LIMIT_IP_BURST": "10",
    "TRADEQL_TRUSTED_PROXIES": "127.0.0.1",
    "TRADEQL_WS_CONNECTION_INIT_TIMEOUT_SECONDS": "0.5",
    "TRADEQL_WS_MAX_SUBSCRIPTIONS": "2",
    "TRADEQL_GRAPHIQL": "false",
    "TRADEQL_INTROSPECTION": "false",
}

# --- the biggest realistic documents of the contract ---------------------------------------------

QUOTE = "symbol bid ask bidSize askSize last volume timestamp"
BAR = "start open high low close volume"
ORDER = """id idempotencyKey symbol side type timeInForce quantity notional limitPrice stopPrice
  status filledQuantity averageFillPrice rejectReason createdAt updatedAt filledAt
  executions { id quantity price venue executedAt }"""
PORTFOLIO = f"""cash buyingPower marketValue equity realizedPnl unrealizedPnl
  positions {{ symbol quantity reservedQuantity averageCost costBasis marketValue unrealizedPnl
    unrealizedPnlPercent quote {{ {QUOTE} }} }}"""

PORTFOLIO_SCREEN = f"""query PortfolioScreen {{
  me {{ id email createdAt }}
  portfolio {{
    {PORTFOLIO}
    day: history(span: DAY) {{ timestamp equity }}
    week: history(span: WEEK) {{ timestamp equity }}
    month: history(span: MONTH) {{ timestamp equity }}
    year: history(span: YEAR) {{ timestamp equity }}
    all: history(span: ALL) {{ timestamp equity }}
  }}
  clock {{ now isOpen nextOpen nextClose }}
}}"""

ORDER_HISTORY = f"""query OrderHistory($status: [OrderStatus!], $symbol: String, $first: Int! = 50,
    $after: String) {{
  open: orders(status: [PENDING, SUBMITTED, PARTIALLY_FILLED], first: 100) {{
    edges {{ cursor node {{ ...OrderFields }} }}
    pageInfo {{ hasNextPage endCursor }}
  }}
  history: orders(status: $status, symbol: $symbol, first: $first, after: $after) {{
    edges {{ cursor node {{ ...OrderFields }} }}
    pageInfo {{ hasNextPage endCursor }}
  }}
}}
fragment OrderFields on Order {{ {ORDER} }}"""

WATCHLISTS_SCREEN = f"""query WatchlistsScreen($from: DateTime, $to: DateTime) {{
  watchlists {{
    id name symbols
    securities {{
      symbol name quote {{ {QUOTE} }}
      intraday: bars(interval: MINUTE, from: $from, to: $to) {{ {BAR} }}
      fiveMinutes: bars(interval: FIVE_MINUTES, from: $from, to: $to) {{ {BAR} }}
      hourly: bars(interval: HOUR, from: $from, to: $to) {{ {BAR} }}
      daily: bars(interval: DAY, from: $from, to: $to) {{ {BAR} }}
    }}
  }}
}}"""

SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "SPY", "QQQ", "JPM"]
COMPARE_SECURITIES = (
    "query Compare {\n"
    + "\n".join(
        f'  s{i}: security(symbol: "{s}") {{ symbol name quote {{ {QUOTE} }} '
        f"bars(interval: DAY) {{ {BAR} }} }}"
        for i, s in enumerate([*SYMBOLS, *SYMBOLS])
    )
    + f"\n  quotes(symbols: {json.dumps(SYMBOLS)}) {{ {QUOTE} }}\n}}"
)

HOME_SCREEN = f"""query Home($from: DateTime) {{
  me {{ id email createdAt }}
  portfolio {{ {PORTFOLIO} history(span: DAY) {{ timestamp equity }} }}
  orders(first: 20) {{ edges {{ cursor node {{ {ORDER} }} }} pageInfo {{ hasNextPage endCursor }} }}
  watchlists {{ id name symbols securities {{ symbol name quote {{ {QUOTE} }}
    bars(interval: MINUTE, from: $from) {{ {BAR} }} }} }}
  alerts(status: ACTIVE) {{ id symbol condition threshold status createdAt triggeredAt
    triggeredPrice }}
  clock {{ now isOpen nextOpen nextClose }}
}}"""

PLACE_ORDER = f"""mutation Place($input: PlaceOrderInput!) {{
  placeOrder(input: $input) {{ order {{ {ORDER} }} errors {{ code message field }} }}
}}"""

SUBSCRIPTIONS = f"""subscription Live {{
  orderUpdates {{ event order {{ {ORDER} }} execution {{ id quantity price venue executedAt }} }}
}}"""

PORTFOLIO_SUBSCRIPTION = f"subscription LivePortfolio {{ portfolio {{ {PORTFOLIO} }} }}"

REALISTIC = {
    "portfolio screen": PORTFOLIO_SCREEN,
    "order history": ORDER_HISTORY,
    "watchlists screen": WATCHLISTS_SCREEN,
    "compare 20 securities": COMPARE_SECURITIES,
    "home screen": HOME_SCREEN,
    "place order": PLACE_ORDER,
    "order updates": SUBSCRIPTIONS,
    "live portfolio": PORTFOLIO_SUBSCRIPTION,
}


def token_count(document: str) -> int:
    lexer, count = Lexer(Source(document)), 0
    while lexer.advance().kind != TokenKind.EOF:
        count += 1
    return count


@pytest.fixture(scope="module")
def contract() -> GraphQLSchema:
    return build_sdl_schema(contract_text())


@pytest.mark.parametrize("name", sorted(REALISTIC))
def test_the_default_limits_let_every_realistic_contract_document_through(
    contract: GraphQLSchema, name: str
) -> None:
    """Against the contract (so parts not built yet count too), with the served limits."""
    defaults = Settings()
    document = REALISTIC[name]
    assert token_count(document) < defaults.max_tokens / 2, "keep a margin for growth"
    rules = query_limit_rules(
        max_depth=defaults.max_query_depth, max_aliases=defaults.max_aliases, introspection=False
    )
    parsed = parse(document, max_tokens=defaults.max_tokens)
    assert validate(contract, parsed, [*specified_rules, *rules]) == []


@pytest.fixture(scope="module")
def served() -> GraphQLSchema:
    return build_sdl_schema(build_schema().as_str())


@pytest.mark.parametrize(
    "name", sorted(n for n in REALISTIC if not REALISTIC[n].startswith("subscription"))
)
async def test_realistic_documents_run_through_the_api(
    gql: GraphQLClient, user: dict[str, str], services: Services, served: GraphQLSchema, name: str
) -> None:
    unserved = validate(served, parse(REALISTIC[name]))
    if unserved:
        pytest.skip(f"not served yet: {unserved[0].message}")
    symbols = [unique_symbol("G"), unique_symbol("G")]
    await listed(services, *symbols)
    created = await gql(
        'mutation($s: [String!]!) { createWatchlist(name: "Tech", symbols: $s) '
        "{ errors { code } } }",
        {"s": symbols},
        token=user["token"],
    )
    assert created["data"]["createWatchlist"]["errors"] == []
    variables = {}
    if name == "place order":
        variables = {
            "input": {"symbol": symbols[0], "side": "BUY", "quantity": "1", "idempotencyKey": "k"}
        }
    response = await gql.post(REALISTIC[name], variables, token=user["token"])
    assert response.status_code == 200, response.text
    assert "errors" not in response.json(), response.json()


# --- document limits ----------------------------------------------------------------------------


async def refused(gql: GraphQLClient, document: str, token: str | None = None) -> dict[str, Any]:
    response = await gql.post(document, token=token)
    assert response.status_code == 400, response.text
    body: dict[str, Any] = response.json()
    assert body.get("data") is None  # refused before execution
    return body


def codes(body: dict[str, Any]) -> set[str]:
    return {e["extensions"]["code"] for e in body["errors"]}


async def test_600_aliases_are_refused_with_a_code(gql: GraphQLClient) -> None:
    body = await refused(gql, "{ " + " ".join(f"a{i}: __typename" for i in range(600)) + " }")
    assert codes(body) == {"TOO_MANY_ALIASES"}
    assert body["errors"][0]["extensions"]["maxAliases"] == 30
    assert "600 aliases" in body["errors"][0]["message"]


async def test_aliased_mutations_over_the_limit_run_none_of_them(
    gql: GraphQLClient, user: dict[str, str]
) -> None:
    deposits = " ".join(
        f'd{i}: deposit(amount: "1.00", idempotencyKey: "alias-{i}") {{ errors {{ code }} }}'
        for i in range(31)
    )
    body = await refused(gql, f"mutation {{ {deposits} }}", token=user["token"])
    assert codes(body) == {"TOO_MANY_ALIASES"}
    portfolio = await gql("{ portfolio { cash } }", token=user["token"])
    assert portfolio["data"]["portfolio"]["cash"] == "0.00"


async def test_a_depth_50_document_is_refused_with_a_code(gql: GraphQLClient) -> None:
    document = "{ me " + "{ a " * 49 + "{ id }" + " }" * 49 + " }"
    body = await refused(gql, document)
    assert "QUERY_TOO_DEEP" in codes(body)
    deep = next(e for e in body["errors"] if e["extensions"]["code"] == "QUERY_TOO_DEEP")
    assert deep["extensions"]["maxDepth"] == 12
    assert "exceeds maximum operation depth of 12" in deep["message"]


async def test_too_many_tokens_are_refused_with_a_code(gql: GraphQLClient) -> None:
    body = await refused(gql, "{ me { " + "id " * 2100 + "} }")
    assert codes(body) == {"TOO_MANY_TOKENS"}
    assert body["errors"][0]["extensions"]["maxTokens"] == 2000


async def test_a_2mb_document_is_413_before_it_is_read(gql: GraphQLClient) -> None:
    document = "{ me { id } }" + " " * 2_000_000
    response = await gql.post(document)
    assert response.status_code == 413
    error = response.json()["errors"][0]
    assert error["extensions"] == {"code": "PAYLOAD_TOO_LARGE", "maxBytes": 256 * 1024}


async def test_a_chunked_2mb_body_is_413(gql: GraphQLClient) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"query": "{ me { id } }", "pad": "'
        for _ in range(32):
            yield b"x" * 65_536
        yield b'"}'

    response = await gql.http.post(
        "/graphql", content=body(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_a_body_under_the_limit_is_served(gql: GraphQLClient) -> None:
    response = await gql.post("{ me { id } }" + " " * 200_000)
    assert response.status_code == 200
    assert response.json() == {"data": {"me": None}}


async def test_introspection_is_refused_when_off(gql: GraphQLClient) -> None:
    for document in ("{ __schema { types { name } } }", '{ __type(name: "Query") { name } }'):
        body = await refused(gql, document)
        assert codes(body) == {"INTROSPECTION_DISABLED"}
    assert (await gql("{ __typename }")) == {"data": {"__typename": "Query"}}


async def test_introspection_is_answered_when_on(app_services: Services) -> None:
    schema = build_schema(Settings(introspection=True))
    result = await schema.execute(
        "{ __schema { queryType { name } } }", context_value=SimpleNamespace(services=app_services)
    )
    assert result.errors is None
    assert result.data == {"__schema": {"queryType": {"name": "Query"}}}


async def test_limit_errors_carry_their_code_over_websocket(api_url: str) -> None:
    async with websockets.connect(
        ws_url(api_url), subprotocols=[Subprotocol("graphql-transport-ws")], close_timeout=2
    ) as ws:
        await init(ws)
        aliases = "{ " + " ".join(f"a{i}: __typename" for i in range(40)) + " }"
        await subscribe(ws, "1", aliases)
        message = await receive(ws)
        assert message["type"] == "error"
        assert message["payload"][0]["extensions"]["code"] == "TOO_MANY_ALIASES"
        await subscribe(ws, "2", "{ __schema { types { name } } }")
        message = await receive(ws)
        assert message["payload"][0]["extensions"]["code"] == "INTROSPECTION_DISABLED"


# --- the guarded server: tight rate limits and WebSocket limits -----------------------------------


@pytest.fixture(scope="module")
def guarded(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second API process, on the same PostgreSQL and Redis, with tight limits."""
    with api_process(tmp_path_factory.mktemp("guarded"), env={**os.environ, **GUARDED_ENV}) as (
        _,
        url,
    ):
        yield url


def address() -> str:
    """An address of this test's own (the guarded server believes 127.0.0.1's X-Forwarded-For)."""
    n = uuid.uuid4().int
    return f"10.{n % 250}.{n // 250 % 250}.{n // 62500 % 250 + 1}"


class Guarded:
    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http, self.url = http, url
        self.address = address()

    async def post(self, query: str = "{ __typename }", **headers: str) -> httpx.Response:
        return await self.http.post(
            "/graphql",
            json={"query": query},
            headers={"X-Forwarded-For": self.address, "Accept": ACCEPT, **headers},
        )


@pytest.fixture
async def client(guarded: str) -> AsyncIterator[Guarded]:
    async with httpx.AsyncClient(base_url=guarded, timeout=30) as http:
        yield Guarded(http, guarded)


def assert_rate_limited(response: httpx.Response, limit: str) -> int:
    assert response.status_code == 429, response.text
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    (error,) = response.json()["errors"]
    assert error["extensions"] == {
        "code": "RATE_LIMITED",
        "retryAfter": retry_after,
        "limit": limit,
    }
    return retry_after


async def test_a_session_over_its_limit_gets_429_then_recovers(
    client: Guarded, user: dict[str, str]
) -> None:
    auth = {"Authorization": f"Bearer {user['token']}"}
    statuses = [(await client.post("{ me { id } }", **auth)).status_code for _ in range(4)]
    assert statuses == [200] * 4
    retry_after = assert_rate_limited(await client.post("{ me { id } }", **auth), "session")
    assert retry_after == 1  # one request a second
    client.address = address()  # another address, the same session: still limited
    assert_rate_limited(await client.post("{ me { id } }", **auth), "session")
    await asyncio.sleep(retry_after + 0.1)
    recovered = await client.post("{ me { id } }", **auth)
    assert recovered.json() == {"data": {"me": {"id": user["id"]}}}


async def test_a_subscription_over_http_counts_like_a_request(
    client: Guarded, user: dict[str, str]
) -> None:
    """Each SSE or multipart stream opened is one request of its session's (and address's)."""
    headers = {
        "X-Forwarded-For": client.address,
        "Authorization": f"Bearer {user['token']}",
        "Accept": "text/event-stream",
    }
    body = {"query": "subscription { orderUpdates { event } }"}
    statuses = []
    for _ in range(5):
        async with client.http.stream("POST", "/graphql", json=body, headers=headers) as stream:
            statuses.append(stream.status_code)
    assert statuses == [200] * 4 + [429]


async def test_an_address_over_its_limit_gets_429_but_health_and_metrics_still_answer(
    client: Guarded,
) -> None:
    assert [(await client.post()).status_code for _ in range(10)] == [200] * 10
    assert_rate_limited(await client.post(), "ip")
    headers = {"X-Forwarded-For": client.address}
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.http.get(path, headers=headers)).status_code == 200
    client.address = address()
    assert (await client.post()).status_code == 200


async def test_a_partner_key_over_its_limit_gets_429(client: Guarded) -> None:
    # An unknown key: the limiter counts it before the key is checked (401), so guessing keys
    # is rate limited too.
    key = {"X-API-Key": f"pk_{uuid.uuid4().hex}"}
    assert [(await client.post(**key)).status_code for _ in range(2)] == [401, 401]
    assert_rate_limited(await client.post(**key), "partner")
    assert (await client.post()).status_code == 200  # the address alone still has room


async def test_graphiql_is_off_unless_enabled(client: Guarded) -> None:
    response = await client.http.get(
        "/graphql", headers={"Accept": "text/html", "X-Forwarded-For": client.address}
    )
    assert "graphiql" not in response.text.lower()
    assert response.status_code == 404


async def test_introspection_is_off_by_default(client: Guarded) -> None:
    response = await client.post("{ __schema { queryType { name } } }")
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "INTROSPECTION_DISABLED"


# --- WebSockets ---------------------------------------------------------------------------------


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/graphql"


def connect(client: Guarded, protocol: str = "graphql-transport-ws") -> Any:
    return websockets.connect(
        ws_url(client.url),
        subprotocols=[Subprotocol(protocol)],
        additional_headers={"X-Forwarded-For": client.address},
        close_timeout=2,
    )


async def receive(ws: Any, timeout: float = 5) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return message


async def init(ws: Any, token: str | None = None) -> None:
    payload = {"Authorization": f"Bearer {token}"} if token else {}
    await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
    assert (await receive(ws))["type"] == "connection_ack"


async def subscribe(ws: Any, id_: str, query: str) -> None:
    await ws.send(json.dumps({"id": id_, "type": "subscribe", "payload": {"query": query}}))


async def close_code(ws: Any, timeout: float = 5) -> int:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_a_connection_attempt_over_the_limit_is_closed_with_4429(client: Guarded) -> None:
    while (await client.post()).status_code == 200:
        pass
    async with connect(client) as ws:
        assert await close_code(ws) == 4429
    client.address = address()
    async with connect(client) as ws:
        await init(ws)


async def test_operations_over_a_socket_count_against_the_session(
    client: Guarded, user: dict[str, str]
) -> None:
    async with connect(client) as ws:
        await init(ws, user["token"])
        for i in range(4):
            await subscribe(ws, f"q{i}", "{ me { id } }")
            assert (await receive(ws))["payload"] == {"data": {"me": {"id": user["id"]}}}
            assert (await receive(ws))["type"] == "complete"
        await subscribe(ws, "q4", "{ me { id } }")
        refused = await receive(ws)
        assert refused["type"] == "error" and refused["id"] == "q4"
        (error,) = refused["payload"]
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert error["extensions"]["limit"] == "session"
        await ws.send(json.dumps({"type": "ping"}))  # the socket itself stays up
        assert (await receive(ws))["type"] == "pong"


async def test_a_socket_without_connection_init_is_closed_with_4408(client: Guarded) -> None:
    started = time.monotonic()
    async with connect(client) as ws:
        assert await close_code(ws) == 4408
    assert time.monotonic() - started < 3  # TRADEQL_WS_CONNECTION_INIT_TIMEOUT_SECONDS=0.5


async def test_subscriptions_over_the_per_socket_limit_are_refused(
    client: Guarded, gql: GraphQLClient
) -> None:
    user = await gql.register_user()
    async with connect(client) as ws:
        await init(ws, user["token"])
        await subscribe(ws, "s1", "subscription { orderUpdates { event } }")
        await subscribe(ws, "s2", "subscription { orderUpdates { event } }")
        await subscribe(ws, "s3", "subscription { orderUpdates { event } }")
        refused = await receive(ws)
        assert (refused["type"], refused["id"]) == ("error", "s3")
        assert refused["payload"][0]["message"] == "Subscription limit reached"
        await ws.send(json.dumps({"id": "s1", "type": "complete"}))
        await asyncio.sleep(0.2)
        await subscribe(ws, "s4", "subscription { orderUpdates { event } }")
        await ws.send(json.dumps({"type": "ping"}))
        assert (await receive(ws))["type"] == "pong"  # s4 took s1's place: no error before


async def test_a_websocket_message_over_the_body_limit_closes_the_socket(
    client: Guarded,
) -> None:
    async with connect(client) as ws:
        await init(ws)
        await subscribe(ws, "big", "{ me { id } }" + " " * 300_000)
        assert await close_code(ws) == 1009
