"""Watchlists through the real GraphQL API: order, duplicates, names, limits (also under
concurrency), unknown symbols, ownership, cascades, securities with quotes, and the cost of
listing many lists (the same number of SQL statements and one Redis round trip)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio.client import Pipeline
from sqlalchemy import event, text

from services.infra.container import Services
from tests.graphql_client import GraphQLClient
from tests.trading import listed, quote, unique_symbol

FIELDS = "id name symbols securities { symbol name quote { last bid ask } }"
LISTS = f"{{ watchlists {{ {FIELDS} }} }}"
ERRORS = "errors { code message field }"
CREATE = f"""mutation($n: String!, $s: [String!]!) {{
  createWatchlist(name: $n, symbols: $s) {{ watchlist {{ {FIELDS} }} {ERRORS} }} }}"""
CREATE_EMPTY = f"""mutation($n: String!) {{
  createWatchlist(name: $n) {{ watchlist {{ {FIELDS} }} {ERRORS} }} }}"""
ADD = f"""mutation($w: ID!, $s: String!) {{
  addToWatchlist(watchlistId: $w, symbol: $s) {{ watchlist {{ {FIELDS} }} {ERRORS} }} }}"""
REMOVE = f"""mutation($w: ID!, $s: String!) {{
  removeFromWatchlist(watchlistId: $w, symbol: $s) {{ watchlist {{ {FIELDS} }} {ERRORS} }} }}"""
DELETE = f"""mutation($id: ID!) {{ deleteWatchlist(id: $id) {{ deleted {ERRORS} }} }}"""


@pytest.fixture
async def syms(services: Services) -> list[str]:
    """Six freshly listed symbols; the first three have quotes, the others none yet."""
    names = [unique_symbol("L") for _ in range(6)]
    await listed(services, *names)
    for i, name in enumerate(names[:3]):
        await quote(services, name, f"{10 + i}.00", f"{10 + i}.02", f"{10 + i}.01")
    return names


def codes(payload: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(e["code"], e["field"]) for e in payload["errors"]]


async def create(
    gql: GraphQLClient, token: str, name: str, symbols: Sequence[str] = ()
) -> dict[str, Any]:
    body = await gql(CREATE, {"n": name, "s": list(symbols)}, token=token)
    payload: dict[str, Any] = body["data"]["createWatchlist"]
    return payload


async def created(
    gql: GraphQLClient, token: str, name: str, symbols: Sequence[str] = ()
) -> dict[str, Any]:
    payload = await create(gql, token, name, symbols)
    assert payload["errors"] == [], payload
    watchlist: dict[str, Any] = payload["watchlist"]
    return watchlist


async def mutate(gql: GraphQLClient, query: str, token: str, **variables: Any) -> dict[str, Any]:
    body = await gql(query, variables, token=token)
    assert "errors" not in body, body
    payload: dict[str, Any] = next(iter(body["data"].values()))
    return payload


async def lists_of(gql: GraphQLClient, token: str) -> list[dict[str, Any]]:
    body = await gql(LISTS, token=token)
    assert "errors" not in body, body
    found: list[dict[str, Any]] = body["data"]["watchlists"]
    return found


@dataclass
class Cost:
    statements: list[str] = field(default_factory=list)
    redis_round_trips: int = 0
    quote_reads: list[list[str]] = field(default_factory=list)


@contextmanager
def measured(app_services: Services, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cost]:
    """SQL statements, Redis round trips (commands and pipelines) and quote reads of the API
    process while the block runs."""
    cost = Cost()

    def on_sql(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        cost.statements.append(statement)

    real_command = app_services.redis.execute_command
    real_pipeline = Pipeline.execute
    real_read = app_services.quote_mirror.read

    async def command(*args: Any, **kwargs: Any) -> Any:
        cost.redis_round_trips += 1
        return await real_command(*args, **kwargs)

    async def pipeline(self: Pipeline, *args: Any, **kwargs: Any) -> Any:
        cost.redis_round_trips += 1
        return await real_pipeline(self, *args, **kwargs)

    async def read(symbols: Sequence[str]) -> Any:
        cost.quote_reads.append(list(symbols))
        return await real_read(symbols)

    event.listen(app_services.engine.sync_engine, "before_cursor_execute", on_sql)
    monkeypatch.setattr(app_services.redis, "execute_command", command)
    monkeypatch.setattr(Pipeline, "execute", pipeline)
    monkeypatch.setattr(app_services.quote_mirror, "read", read)
    try:
        yield cost
    finally:
        event.remove(app_services.engine.sync_engine, "before_cursor_execute", on_sql)
        monkeypatch.undo()


def name() -> str:
    return f"list {uuid.uuid4().hex[:8]}"


# Creating and listing


async def test_create_keeps_the_order_drops_duplicates_and_shows_securities_with_quotes(
    gql: GraphQLClient, user: dict[str, str], syms: list[str]
) -> None:
    a, b, c, d = syms[:4]
    watchlist = await created(gql, user["token"], "  Tech ", [c, a.lower(), d, f" {c} ", b, a])
    assert watchlist["name"] == "Tech"
    assert watchlist["symbols"] == [c, a, d, b]
    assert watchlist["securities"] == [
        {
            "symbol": c,
            "name": f"{c} Test Corp",
            "quote": {"last": "12.0100", "bid": "12.0000", "ask": "12.0200"},
        },
        {
            "symbol": a,
            "name": f"{a} Test Corp",
            "quote": {"last": "10.0100", "bid": "10.0000", "ask": "10.0200"},
        },
        {"symbol": d, "name": f"{d} Test Corp", "quote": None},
        {
            "symbol": b,
            "name": f"{b} Test Corp",
            "quote": {"last": "11.0100", "bid": "11.0000", "ask": "11.0200"},
        },
    ]
    assert await lists_of(gql, user["token"]) == [watchlist]


async def test_symbols_default_to_none_and_lists_come_in_creation_order(
    gql: GraphQLClient, user: dict[str, str], syms: list[str]
) -> None:
    body = await gql(CREATE_EMPTY, {"n": "Zeta"}, token=user["token"])
    empty = body["data"]["createWatchlist"]["watchlist"]
    assert (empty["symbols"], empty["securities"]) == ([], [])
    second = await created(gql, user["token"], "Alpha", [syms[1], syms[0]])
    third = await created(gql, user["token"], "Mid", [syms[2]])
    found = await lists_of(gql, user["token"])
    assert [w["id"] for w in found] == [empty["id"], second["id"], third["id"]]
    assert [w["symbols"] for w in found] == [[], [syms[1], syms[0]], [syms[2]]]
    assert [[s["symbol"] for s in w["securities"]] for w in found] == [
        [],
        [syms[1], syms[0]],
        [syms[2]],
    ]


async def test_a_new_user_has_no_lists(gql: GraphQLClient, user: dict[str, str]) -> None:
    assert await lists_of(gql, user["token"]) == []


@pytest.mark.parametrize(
    ("symbols", "code", "field"),
    [
        (["NOSUCH1"], "UNKNOWN_SYMBOL", "symbols"),
        (["{0}", "NOSUCH2", "{1}"], "UNKNOWN_SYMBOL", "symbols"),
        (["{0}", "bad symbol!"], "INVALID_INPUT", "symbols"),
        (["{0}", ""], "INVALID_INPUT", "symbols"),
    ],
)
async def test_a_bad_symbol_creates_nothing(
    gql: GraphQLClient,
    user: dict[str, str],
    syms: list[str],
    symbols: list[str],
    code: str,
    field: str,
) -> None:
    payload = await create(gql, user["token"], name(), [s.format(*syms) for s in symbols])
    assert payload["watchlist"] is None
    assert codes(payload) == [(code, field)]
    assert await lists_of(gql, user["token"]) == []


@pytest.mark.parametrize("bad", ["", "   ", "x" * 101, "two\nlines"])
async def test_a_bad_name_is_invalid_input(
    gql: GraphQLClient, user: dict[str, str], bad: str
) -> None:
    payload = await create(gql, user["token"], bad)
    assert codes(payload) == [("INVALID_INPUT", "name")]
    assert await lists_of(gql, user["token"]) == []


async def test_a_duplicate_name_ignoring_case_is_invalid_input(
    gql: GraphQLClient, user: dict[str, str]
) -> None:
    await created(gql, user["token"], "Dividends")
    payload = await create(gql, user["token"], " DIVIDENDS ")
    assert codes(payload) == [("INVALID_INPUT", "name")]
    other = await gql.register_user()
    await created(gql, other["token"], "Dividends")  # names are per user
    assert [w["name"] for w in await lists_of(gql, user["token"])] == ["Dividends"]


# Adding, removing, deleting


async def test_add_appends_and_a_repeat_is_a_quiet_success(
    gql: GraphQLClient, user: dict[str, str], syms: list[str]
) -> None:
    watchlist = await created(gql, user["token"], name(), [syms[2]])
    await mutate(gql, ADD, user["token"], w=watchlist["id"], s=syms[0])
    payload = await mutate(gql, ADD, user["token"], w=watchlist["id"], s=syms[1].lower())
    assert payload["errors"] == []
    assert payload["watchlist"]["symbols"] == [syms[2], syms[0], syms[1]]
    assert [s["symbol"] for s in payload["watchlist"]["securities"]] == [syms[2], syms[0], syms[1]]
    again = await mutate(gql, ADD, user["token"], w=watchlist["id"], s=syms[2])
    assert again == payload
    assert (await lists_of(gql, user["token"]))[0]["symbols"] == [syms[2], syms[0], syms[1]]


async def test_add_an_unknown_or_malformed_symbol(
    gql: GraphQLClient, user: dict[str, str], syms: list[str]
) -> None:
    watchlist = await created(gql, user["token"], name(), [syms[0]])
    for symbol, expected in (("NOSUCH", "UNKNOWN_SYMBOL"), ("bad symbol!", "INVALID_INPUT")):
        payload = await mutate(gql, ADD, user["token"], w=watchlist["id"], s=symbol)
        assert payload["watchlist"] is None
        assert codes(payload) == [(expected, "symbol")]
    assert (await lists_of(gql, user["token"]))[0]["symbols"] == [syms[0]]


async def test_remove_keeps_the_rest_in_order(
    gql: GraphQLClient, user: dict[str, str], syms: list[str]
) -> None:
    watchlist = await created(gql, user["token"], name(), syms[:4])
    payload = await mutate(gql, REMOVE, user["token"], w=watchlist["id"], s=syms[1].lower())
    assert payload["errors"] == []
    assert payload["watchlist"]["symbols"] == [syms[0], syms[2], syms[3]]
    readded = await mutate(gql, ADD, user["token"], w=watchlist["id"], s=syms[1])
    assert readded["watchlist"]["symbols"] == [syms[0], syms[2], syms[3], syms[1]]


async def test_removing_a_symbol_not_in_the_list_is_not_found(
    gql: GraphQLClient, user: dict[str, str], syms: list[str]
) -> None:
    watchlist = await created(gql, user["token"], name(), [syms[0]])
    for symbol in (syms[1], "NOSUCH"):
        payload = await mutate(gql, REMOVE, user["token"], w=watchlist["id"], s=symbol)
        assert payload["watchlist"] is None
        assert codes(payload) == [("NOT_FOUND", "symbol")]


async def test_delete_removes_the_list_and_its_symbols(
    gql: GraphQLClient, user: dict[str, str], syms: list[str], services: Services
) -> None:
    kept = await created(gql, user["token"], "Kept", syms[:2])
    gone = await created(gql, user["token"], "Gone", syms[:3])
    assert await mutate(gql, DELETE, user["token"], id=gone["id"]) == {
        "deleted": True,
        "errors": [],
    }
    assert await lists_of(gql, user["token"]) == [kept]
    async with services.engine.connect() as conn:
        items = (
            await conn.execute(
                text("SELECT count(*) FROM watchlist_items WHERE watchlist_id = :w"),
                {"w": gone["id"]},
            )
        ).scalar_one()
    assert items == 0
    again = await mutate(gql, DELETE, user["token"], id=gone["id"])
    assert (again["deleted"], codes(again)) == (False, [("NOT_FOUND", "id")])
    payload = await mutate(gql, ADD, user["token"], w=gone["id"], s=syms[0])
    assert codes(payload) == [("NOT_FOUND", "watchlistId")]


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "", "123", str(uuid.uuid4())])
async def test_an_id_that_names_no_list_is_not_found(
    gql: GraphQLClient, user: dict[str, str], syms: list[str], bad_id: str
) -> None:
    for query in (ADD, REMOVE):
        payload = await mutate(gql, query, user["token"], w=bad_id, s=syms[0])
        assert (payload["watchlist"], codes(payload)) == (None, [("NOT_FOUND", "watchlistId")])
    payload = await mutate(gql, DELETE, user["token"], id=bad_id)
    assert (payload["deleted"], codes(payload)) == (False, [("NOT_FOUND", "id")])


# Only the owner


async def test_someone_elses_list_is_not_found_and_not_listed(
    gql: GraphQLClient, user: dict[str, str], syms: list[str]
) -> None:
    mine = await created(gql, user["token"], "Mine", syms[:2])
    intruder = await gql.register_user()
    token = intruder["token"]
    for query, symbol in ((ADD, syms[2]), (ADD, syms[0]), (REMOVE, syms[0]), (REMOVE, syms[3])):
        payload = await mutate(gql, query, token, w=mine["id"], s=symbol)
        assert (payload["watchlist"], codes(payload)) == (None, [("NOT_FOUND", "watchlistId")])
    payload = await mutate(gql, DELETE, token, id=mine["id"])
    assert (payload["deleted"], codes(payload)) == (False, [("NOT_FOUND", "id")])
    assert await lists_of(gql, token) == []
    assert await lists_of(gql, user["token"]) == [mine]


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        (LISTS, {}),
        (CREATE, {"n": "x", "s": []}),
        (ADD, {"w": str(uuid.uuid4()), "s": "AAPL"}),
        (REMOVE, {"w": str(uuid.uuid4()), "s": "AAPL"}),
        (DELETE, {"id": str(uuid.uuid4())}),
    ],
)
async def test_every_field_needs_a_session(
    gql: GraphQLClient, query: str, variables: dict[str, Any]
) -> None:
    body = await gql(query, variables)
    assert body["data"] is None
    assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAUTHENTICATED"]


# Limits


async def test_at_most_the_configured_number_of_lists(
    gql: GraphQLClient, user: dict[str, str], app_services: Services
) -> None:
    limit = app_services.settings.watchlist_max_lists
    made = [await created(gql, user["token"], f"list {i}") for i in range(limit)]
    payload = await create(gql, user["token"], "one too many")
    assert (payload["watchlist"], codes(payload)) == (None, [("LIMIT_EXCEEDED", None)])
    await mutate(gql, DELETE, user["token"], id=made[0]["id"])
    await created(gql, user["token"], "room again")
    assert len(await lists_of(gql, user["token"])) == limit


@pytest.fixture
async def many_syms(services: Services, app_services: Services) -> list[str]:
    """One more listed symbol than a list may hold."""
    names = [unique_symbol("M") for _ in range(app_services.settings.watchlist_max_symbols + 1)]
    await listed(services, *names)
    return names


async def test_at_most_the_configured_number_of_symbols(
    gql: GraphQLClient, user: dict[str, str], many_syms: list[str]
) -> None:
    *allowed, extra = many_syms
    payload = await create(gql, user["token"], name(), many_syms)
    assert codes(payload) == [("LIMIT_EXCEEDED", "symbols")]
    full = await created(gql, user["token"], name(), [*allowed, allowed[0], allowed[1]])
    assert full["symbols"] == allowed
    payload = await mutate(gql, ADD, user["token"], w=full["id"], s=extra)
    assert (payload["watchlist"], codes(payload)) == (None, [("LIMIT_EXCEEDED", "symbol")])
    repeat = await mutate(gql, ADD, user["token"], w=full["id"], s=allowed[-1])
    assert (repeat["errors"], repeat["watchlist"]["symbols"]) == ([], allowed)


async def test_concurrent_adds_at_the_limit_never_exceed_it(
    gql: GraphQLClient, user: dict[str, str], many_syms: list[str]
) -> None:
    limit = len(many_syms) - 1
    watchlist = await created(gql, user["token"], name(), many_syms[: limit - 1])
    extra = many_syms[limit - 1 :]  # two symbols for one free place
    payloads = await asyncio.gather(
        *(
            mutate(gql, ADD, user["token"], w=watchlist["id"], s=symbol)
            for symbol in [*extra, *extra, *extra]
        )
    )
    won = {p["watchlist"]["symbols"][-1] for p in payloads if not p["errors"]}
    refused = [codes(p) for p in payloads if p["errors"]]
    assert len(won) == 1
    assert refused and all(c == [("LIMIT_EXCEEDED", "symbol")] for c in refused)
    (final,) = await lists_of(gql, user["token"])
    assert len(final["symbols"]) == limit
    assert final["symbols"][-1] in won


async def test_concurrent_creates_at_the_limit_never_exceed_it(
    gql: GraphQLClient, user: dict[str, str], app_services: Services
) -> None:
    limit = app_services.settings.watchlist_max_lists
    for i in range(limit - 1):
        await created(gql, user["token"], f"list {i}")
    payloads = await asyncio.gather(*(create(gql, user["token"], name()) for _ in range(6)))
    assert sum(1 for p in payloads if not p["errors"]) == 1
    assert sorted(codes(p) for p in payloads if p["errors"]) == [[("LIMIT_EXCEEDED", None)]] * 5
    assert len(await lists_of(gql, user["token"])) == limit


# What listing costs


async def test_ten_lists_cost_what_one_costs(
    gql: GraphQLClient,
    syms: list[str],
    app_services: Services,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same SQL statements and Redis round trips for 1 list as for 10: the lists with their
    symbols in one query, every security in one, every quote in one Redis pipeline."""
    one, ten = await gql.register_user(), await gql.register_user()
    await created(gql, one["token"], name(), syms[:4])
    for i in range(10):
        await created(gql, ten["token"], f"list {i}", syms[i % 3 : i % 3 + 4])

    query = "{ watchlists { id symbols securities { symbol name quote { last } } } }"
    costs: dict[int, Cost] = {}
    for lists, who in ((1, one), (10, ten)):
        await gql(query, token=who["token"])  # warm: the session is cached, the document parsed
        with measured(app_services, monkeypatch) as cost:
            body = await gql(query, token=who["token"])
        assert "errors" not in body, body
        assert len(body["data"]["watchlists"]) == lists
        costs[lists] = cost
    assert len(costs[1].statements) == len(costs[10].statements) == 2, costs[10].statements
    assert costs[1].redis_round_trips == costs[10].redis_round_trips
    assert len(costs[1].quote_reads) == len(costs[10].quote_reads) == 1
    assert sorted(costs[10].quote_reads[0]) == sorted(syms[:6])  # each symbol asked for once
