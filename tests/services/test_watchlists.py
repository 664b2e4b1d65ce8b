"""`services/watchlists/lists.py` against the real database: order, duplicates, names, limits (also under
concurrency), unknown symbols, ownership, cascades, audit rows, and one query for all the lists."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from services.errors import DomainError, InvalidInput, LimitExceeded, NotFound, UnknownSymbol
from services.infra.container import Services
from services.watchlists.lists import Watchlist, Watchlists
from tests.trading import listed, trader, unique_symbol

MAX_LISTS = 3
MAX_SYMBOLS = 4


@pytest.fixture
def lists(services: Services) -> Watchlists:
    """The service with small limits, so tests reach them quickly."""
    return Watchlists(services.engine, max_lists=MAX_LISTS, max_symbols=MAX_SYMBOLS)


@pytest.fixture
async def owner(services: Services) -> UUID:
    return await trader(services, cash="0")


@pytest.fixture
async def other(services: Services) -> UUID:
    return await trader(services, cash="0")


@pytest.fixture
async def syms(services: Services) -> list[str]:
    """Eight freshly listed symbols of this test's own."""
    names = [unique_symbol("W") for _ in range(8)]
    await listed(services, *names)
    return names


def name() -> str:
    return f"list {uuid.uuid4().hex[:8]}"


async def audit_actions(services: Services, watchlist_id: UUID) -> list[tuple[str, Any]]:
    async with services.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT action, details FROM audit_log WHERE entity_type = 'watchlist' "
                "AND entity_id = :id ORDER BY id"
            ),
            {"id": str(watchlist_id)},
        )
        return [(r.action, r.details) for r in rows]


async def item_rows(services: Services, watchlist_id: UUID) -> int:
    async with services.engine.connect() as conn:
        count = (
            await conn.execute(
                text("SELECT count(*) FROM watchlist_items WHERE watchlist_id = :w"),
                {"w": watchlist_id},
            )
        ).scalar_one()
    return int(count)


@contextmanager
def counted_statements(services: Services) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(services.engine.sync_engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(services.engine.sync_engine, "before_cursor_execute", count)


# Creating


async def test_a_new_list_keeps_the_order_given_and_drops_duplicates(
    lists: Watchlists, owner: UUID, syms: list[str]
) -> None:
    a, b, c = syms[:3]
    created = await lists.create(owner, "  Tech  ", [c, a.lower(), f" {c} ", b, a])
    assert (created.name, created.symbols) == ("Tech", (c, a, b))
    assert await lists.lists(owner) == [created]


async def test_a_list_may_start_empty(lists: Watchlists, owner: UUID) -> None:
    created = await lists.create(owner, "Empty")
    assert created.symbols == ()
    assert [w.symbols for w in await lists.lists(owner)] == [()]


async def test_lists_come_in_creation_order(
    lists: Watchlists, owner: UUID, syms: list[str]
) -> None:
    first = await lists.create(owner, "B first", [syms[0]])
    second = await lists.create(owner, "A second", [syms[1], syms[0]])
    third = await lists.create(owner, "C third")
    assert [w.id for w in await lists.lists(owner)] == [first.id, second.id, third.id]


async def test_an_unknown_symbol_creates_nothing(
    lists: Watchlists, owner: UUID, syms: list[str]
) -> None:
    with pytest.raises(UnknownSymbol) as caught:
        await lists.create(owner, "Mixed", [syms[0], "NOPE1", syms[1], "NOPE2"])
    assert caught.value.field == "symbols"
    assert "NOPE1" in caught.value.message and "NOPE2" in caught.value.message
    assert await lists.lists(owner) == []


async def test_a_delisted_symbol_is_unknown(
    services: Services, lists: Watchlists, owner: UUID, syms: list[str]
) -> None:
    async with services.engine.begin() as conn:
        await conn.execute(
            text("UPDATE securities SET active = false WHERE symbol = :s"), {"s": syms[0]}
        )
    with pytest.raises(UnknownSymbol):
        await lists.create(owner, "Delisted", [syms[0]])
    created = await lists.create(owner, "Listed", [syms[1]])
    with pytest.raises(UnknownSymbol) as caught:
        await lists.add(owner, created.id, syms[0])
    assert caught.value.field == "symbol"


@pytest.mark.parametrize("bad", ["", "bad symbol!", "WAYTOOLONGSYMBOL1", "-X"])
async def test_a_malformed_symbol_is_invalid_input(
    lists: Watchlists, owner: UUID, syms: list[str], bad: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        await lists.create(owner, "Malformed", [syms[0], bad])
    assert caught.value.field == "symbols"
    created = await lists.create(owner, "Fine", [syms[0]])
    with pytest.raises(InvalidInput) as caught:
        await lists.add(owner, created.id, bad)
    assert caught.value.field == "symbol"


@pytest.mark.parametrize(
    "bad", ["", "   ", "x" * 101, "line\nbreak", "tab\there", "nul\x00", "sep\u2028x"]
)
async def test_bad_names_are_invalid_input(lists: Watchlists, owner: UUID, bad: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await lists.create(owner, bad)
    assert caught.value.field == "name"
    assert await lists.lists(owner) == []


async def test_names_are_trimmed_and_may_be_100_characters_of_any_script(
    lists: Watchlists, owner: UUID
) -> None:
    long_name = "é" * 100
    assert (await lists.create(owner, f"\t {long_name} \n")).name == long_name
    assert (await lists.create(owner, "Énergie 🔋 株")).name == "Énergie 🔋 株"


async def test_a_name_is_unique_per_user_ignoring_case(
    lists: Watchlists, owner: UUID, other: UUID
) -> None:
    await lists.create(owner, "Growth")
    with pytest.raises(InvalidInput) as caught:
        await lists.create(owner, "  gROWTH ")
    assert caught.value.field == "name"
    assert (await lists.create(other, "Growth")).name == "Growth"
    assert [w.name for w in await lists.lists(owner)] == ["Growth"]


# Limits


async def test_at_most_max_lists_per_user(lists: Watchlists, owner: UUID, other: UUID) -> None:
    made = [await lists.create(owner, name()) for _ in range(MAX_LISTS)]
    with pytest.raises(LimitExceeded):
        await lists.create(owner, name())
    await lists.create(other, name())  # the limit is per user
    await lists.delete(owner, made[0].id)
    await lists.create(owner, name())
    assert len(await lists.lists(owner)) == MAX_LISTS


async def test_at_most_max_symbols_at_creation_counted_after_duplicates(
    lists: Watchlists, owner: UUID, syms: list[str]
) -> None:
    with pytest.raises(LimitExceeded) as caught:
        await lists.create(owner, name(), syms[: MAX_SYMBOLS + 1])
    assert caught.value.field == "symbols"
    assert await lists.lists(owner) == []
    with_duplicates = [*syms[:MAX_SYMBOLS], syms[0], syms[1].lower()]
    created = await lists.create(owner, name(), with_duplicates)
    assert created.symbols == tuple(syms[:MAX_SYMBOLS])


async def test_at_most_max_symbols_when_adding(
    lists: Watchlists, owner: UUID, syms: list[str]
) -> None:
    created = await lists.create(owner, name(), syms[: MAX_SYMBOLS - 1])
    full = await lists.add(owner, created.id, syms[MAX_SYMBOLS - 1])
    assert full.symbols == tuple(syms[:MAX_SYMBOLS])
    with pytest.raises(LimitExceeded):
        await lists.add(owner, created.id, syms[MAX_SYMBOLS])
    # Adding one already there is still fine at the limit: nothing changes.
    assert await lists.add(owner, created.id, syms[0]) == full
    await lists.remove(owner, created.id, syms[1])
    again = await lists.add(owner, created.id, syms[MAX_SYMBOLS])
    assert again.symbols == (syms[0], *syms[2:MAX_SYMBOLS], syms[MAX_SYMBOLS])


async def test_concurrent_adds_at_the_limit_never_exceed_it(
    services: Services, lists: Watchlists, owner: UUID, syms: list[str]
) -> None:
    for _ in range(3):
        created = await lists.create(owner, name(), syms[: MAX_SYMBOLS - 1])
        outcomes = await asyncio.gather(
            *(lists.add(owner, created.id, s) for s in syms[MAX_SYMBOLS - 1 :]),
            return_exceptions=True,
        )
        won = [o for o in outcomes if isinstance(o, Watchlist)]
        refused = [o for o in outcomes if isinstance(o, LimitExceeded)]
        assert (len(won), len(refused)) == (1, len(outcomes) - 1), outcomes
        (final,) = [w for w in await lists.lists(owner) if w.id == created.id]
        assert len(final.symbols) == MAX_SYMBOLS == await item_rows(services, created.id)
        assert final.symbols == won[0].symbols
        await lists.delete(owner, created.id)


async def test_concurrent_creates_at_the_limit_never_exceed_it(
    lists: Watchlists, owner: UUID
) -> None:
    for _ in range(MAX_LISTS - 1):
        await lists.create(owner, name())
    outcomes = await asyncio.gather(
        *(lists.create(owner, name()) for _ in range(6)), return_exceptions=True
    )
    won = [o for o in outcomes if isinstance(o, Watchlist)]
    assert len(won) == 1, outcomes
    assert all(isinstance(o, LimitExceeded) for o in outcomes if o not in won)
    assert len(await lists.lists(owner)) == MAX_LISTS


async def test_concurrent_adds_of_one_symbol_add_it_once(
    lists: Watchlists, owner: UUID, syms: list[str]
) -> None:
    created = await lists.create(owner, name(), [syms[0]])
    outcomes = await asyncio.gather(*(lists.add(owner, created.id, syms[1]) for _ in range(6)))
    assert {o.symbols for o in outcomes} == {(syms[0], syms[1])}
    assert (await lists.lists(owner))[0].symbols == (syms[0], syms[1])


# Adding and removing


async def test_adds_keep_their_order_and_a_repeat_changes_nothing(
    services: Services, lists: Watchlists, owner: UUID, syms: list[str]
) -> None:
    created = await lists.create(owner, name(), [syms[2]])
    await lists.add(owner, created.id, syms[0])
    after = await lists.add(owner, created.id, f" {syms[1].lower()} ")
    assert after.symbols == (syms[2], syms[0], syms[1])
    assert await lists.add(owner, created.id, syms[2]) == after
    assert await lists.add(owner, created.id, syms[0].lower()) == after
    assert (await lists.lists(owner))[0].symbols == (syms[2], syms[0], syms[1])
    assert await item_rows(services, created.id) == 3


async def test_remove_keeps_the_order_of_the_rest_and_a_readd_goes_last(
    lists: Watchlists, owner: UUID, syms: list[str]
) -> None:
    created = await lists.create(owner, name(), syms[:4])
    after = await lists.remove(owner, created.id, syms[1].lower())
    assert after.symbols == (syms[0], syms[2], syms[3])
    again = await lists.add(owner, created.id, syms[1])
    assert again.symbols == (syms[0], syms[2], syms[3], syms[1])
    assert (await lists.lists(owner))[0].symbols == again.symbols


async def test_removing_a_symbol_not_in_the_list_is_not_found(
    lists: Watchlists, owner: UUID, syms: list[str]
) -> None:
    created = await lists.create(owner, name(), [syms[0]])
    for absent in (syms[1], "NOSUCH", "bad symbol!"):
        with pytest.raises(NotFound) as caught:
            await lists.remove(owner, created.id, absent)
        assert caught.value.field == "symbol"
    assert (await lists.lists(owner))[0].symbols == (syms[0],)


async def test_a_delisted_symbol_stays_in_the_list_and_can_be_removed(
    services: Services, lists: Watchlists, owner: UUID, syms: list[str]
) -> None:
    created = await lists.create(owner, name(), syms[:2])
    async with services.engine.begin() as conn:
        await conn.execute(
            text("UPDATE securities SET active = false WHERE symbol = :s"), {"s": syms[0]}
        )
    assert (await lists.lists(owner))[0].symbols == (syms[0], syms[1])
    assert (await lists.add(owner, created.id, syms[0])).symbols == (syms[0], syms[1])
    assert (await lists.remove(owner, created.id, syms[0])).symbols == (syms[1],)


# Ownership


async def test_someone_elses_list_is_not_found_everywhere(
    lists: Watchlists, owner: UUID, other: UUID, syms: list[str]
) -> None:
    mine = await lists.create(owner, "Mine", syms[:2])
    attempts: dict[str, list[Coroutine[Any, Any, object]]] = {
        "watchlistId": [
            lists.add(other, mine.id, syms[2]),
            lists.add(other, mine.id, syms[0]),
            lists.remove(other, mine.id, syms[0]),
            lists.remove(other, mine.id, syms[3]),
        ],
        "id": [lists.delete(other, mine.id)],
    }
    for field, calls in attempts.items():
        for call in calls:
            with pytest.raises(NotFound) as caught:
                await call
            assert (caught.value.field, caught.value.message) == (field, "no such watchlist")
    assert await lists.lists(other) == []
    assert await lists.lists(owner) == [mine]


async def test_a_missing_list_is_not_found(lists: Watchlists, owner: UUID, syms: list[str]) -> None:
    missing = uuid.uuid4()
    for call in (
        lists.add(owner, missing, syms[0]),
        lists.remove(owner, missing, syms[0]),
        lists.delete(owner, missing),
    ):
        with pytest.raises(NotFound):
            await call


# Deleting


async def test_delete_cascades_to_the_symbols(
    services: Services, lists: Watchlists, owner: UUID, syms: list[str]
) -> None:
    kept = await lists.create(owner, "Kept", syms[:2])
    gone = await lists.create(owner, "Gone", syms[:3])
    await lists.delete(owner, gone.id)
    assert await item_rows(services, gone.id) == 0
    assert await lists.lists(owner) == [kept]
    with pytest.raises(NotFound) as caught:
        await lists.delete(owner, gone.id)
    assert caught.value.field == "id"
    with pytest.raises(NotFound):
        await lists.add(owner, gone.id, syms[0])
    assert (await lists.create(owner, "Gone")).name == "Gone"  # the name is free again


# Audit


async def test_every_change_writes_one_audit_row_and_a_repeat_none(
    services: Services, lists: Watchlists, owner: UUID, other: UUID, syms: list[str]
) -> None:
    created = await lists.create(owner, "Audited", [syms[0]])
    await lists.add(owner, created.id, syms[1])
    await lists.add(owner, created.id, syms[1])  # no change, no row
    await lists.remove(owner, created.id, syms[0])
    with pytest.raises(DomainError):
        await lists.add(other, created.id, syms[2])  # refused, no row
    await lists.delete(owner, created.id)
    assert await audit_actions(services, created.id) == [
        ("watchlist.created", {"name": "Audited", "symbols": [syms[0]]}),
        ("watchlist.symbol_added", {"symbol": syms[1]}),
        ("watchlist.symbol_removed", {"symbol": syms[0]}),
        ("watchlist.deleted", {"name": "Audited", "symbols": [syms[1]]}),
    ]
    async with services.engine.connect() as conn:
        users = (
            await conn.execute(
                text("SELECT DISTINCT user_id FROM audit_log WHERE entity_id = :id"),
                {"id": str(created.id)},
            )
        ).all()
    assert [u.user_id for u in users] == [owner]


# Queries


async def test_all_the_lists_of_a_user_cost_one_query(
    services: Services, owner: UUID, other: UUID, syms: list[str]
) -> None:
    roomy = Watchlists(services.engine, max_lists=20, max_symbols=20)
    await roomy.create(other, name(), syms[:1])
    for i in range(10):
        await roomy.create(owner, name(), syms[i % 3 : i % 3 + 5])
    with counted_statements(services) as one:
        assert len(await roomy.lists(other)) == 1
    with counted_statements(services) as ten:
        found = await roomy.lists(owner)
    assert len(found) == 10
    assert found[4].symbols == tuple(syms[1:6])
    assert len(one) == len(ten) == 1


# The database's own rules


async def test_the_database_refuses_duplicates_unknown_symbols_and_bad_names(
    services: Services, lists: Watchlists, owner: UUID, syms: list[str]
) -> None:
    created = await lists.create(owner, name(), [syms[0]])
    refused: list[tuple[str, dict[str, Any]]] = [
        (
            "INSERT INTO watchlist_items (watchlist_id, symbol, position) VALUES (:w, :s, 7)",
            {"w": created.id, "s": syms[0]},
        ),
        (
            "INSERT INTO watchlist_items (watchlist_id, symbol, position) VALUES (:w, 'NOSUCH', 8)",
            {"w": created.id},
        ),
        (
            "INSERT INTO watchlist_items (watchlist_id, symbol, position) VALUES (:w, :s, 0)",
            {"w": created.id, "s": syms[1]},
        ),
        ("INSERT INTO watchlists (user_id, name) VALUES (:u, ' padded ')", {"u": owner}),
        ("INSERT INTO watchlists (user_id, name) VALUES (:u, '')", {"u": owner}),
        ("INSERT INTO watchlists (user_id, name) VALUES (:u, repeat('x', 101))", {"u": owner}),
        ("INSERT INTO watchlists (user_id, name) VALUES (:u, 'a' || chr(10) || 'b')", {"u": owner}),
        (
            "INSERT INTO watchlists (user_id, name) VALUES (:u, upper(:n))",
            {"u": owner, "n": created.name},
        ),
    ]
    for sql, params in refused:
        with pytest.raises((IntegrityError, DBAPIError)):
            async with services.engine.begin() as conn:
                await conn.execute(text(sql), params)
