"""Group commit of order changes (`services/orders/group_commit.py` over `fills.apply`): many
orders, accounts and symbols in one transaction, each judged alone in submission order; a stale
or broken change fails only itself; an outage is waited out, never blamed on an order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from sqlalchemy import text

from services.accounts.reconcile import find_differences
from services.infra.container import Services
from services.orders import fills
from services.orders.fills import Execute, Mark, StaleOrder, Work
from services.orders.group_commit import GroupCommit
from services.orders.order_model import Event, Side, Status
from tests.services.test_fills_service import account, fill, new_trader, place_limit, position
from tests.trading import cut_database

D = Decimal


@pytest.fixture
async def committer(services: Services) -> AsyncIterator[GroupCommit]:
    group = GroupCommit(services.engine, services.redis, max_group=100)
    yield group
    await group.close()


async def test_many_orders_of_one_account_and_symbol_commit_as_one_group(
    services: Services, committer: GroupCommit
) -> None:
    trader = await new_trader(services, cash="10000.00")
    other = await new_trader(services, cash="10000.00")
    orders = [await place_limit(services, trader, Side.BUY, "2", "50.00") for _ in range(3)]
    orders.append(await place_limit(services, other, Side.BUY, "1", "40.00"))
    futures = [
        committer.submit(Work(o, Execute([fill(str(o.quantity), "49.995")]), f"req-{i}"))
        for i, o in enumerate(orders)
    ]
    outcomes = await asyncio.gather(*futures)
    assert committer.groups == 1 and committer.changes == 4
    assert [o.order.status for o in outcomes] == [Status.FILLED] * 4
    assert all(
        o.order.version == placed.version + 1 for o, placed in zip(outcomes, orders, strict=True)
    )
    assert [u.event for o in outcomes for u in o.updates] == [Event.FILL] * 4
    # one position, the three fills threaded through it: 6 shares costing 3 x 99.99
    held = await position(services, trader)
    assert held is not None and (held["quantity"], held["cost_basis"]) == (D(6), D("299.97"))
    assert await account(services, trader) == (D("10000.00") - D("299.97"), D(0))
    async with services.engine.connect() as conn:
        audit_requests = (
            await conn.execute(
                text(
                    "SELECT entity_id, request_id FROM audit_log WHERE action = 'order.filled' "
                    "AND entity_id = ANY(:ids)"
                ),
                {"ids": [str(o.id) for o in orders]},
            )
        ).all()
    assert dict(audit_requests) == {str(o.id): f"req-{i}" for i, o in enumerate(orders)}
    assert await find_differences(services.engine) == []


async def test_a_stale_change_fails_alone_and_its_neighbours_commit(
    services: Services, committer: GroupCommit
) -> None:
    trader = await new_trader(services)
    first = await place_limit(services, trader, Side.BUY, "1", "10.00")
    second = await place_limit(services, trader, Side.BUY, "1", "10.00")
    async with services.engine.begin() as conn:  # the second moves on behind the caller's back
        await fills.mark(conn, second, status=Status.SUBMITTED)
    good = committer.submit(Work(first, Execute([fill("1", "10.00")])))
    stale = committer.submit(Work(second, Execute([fill("1", "10.00")])))
    assert (await good).order.status is Status.FILLED
    with pytest.raises(StaleOrder, match="changed"):
        await stale
    assert committer.groups == 1
    assert await find_differences(services.engine) == []


async def test_a_change_that_breaks_its_group_breaks_only_itself(
    services: Services, committer: GroupCommit
) -> None:
    trader = await new_trader(services)
    good = await place_limit(services, trader, Side.BUY, "1", "10.00")
    bad = await place_limit(services, trader, Side.BUY, "1", "10.00")
    # A fill the account cannot pay for: the database refuses the negative cash (a CHECK), so
    # the whole group rolls back and each change goes again alone.
    broken = Work(bad, Execute([fill("1", "20000.00")]))
    futures = [
        committer.submit(Work(good, Execute([fill("1", "10.00")]))),
        committer.submit(broken),
    ]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert not isinstance(results[0], BaseException) and results[0].order.status is Status.FILLED
    assert isinstance(results[1], Exception)
    async with services.engine.connect() as conn:
        executions = (
            await conn.execute(
                text("SELECT count(*) FROM executions WHERE order_id = :o"), {"o": bad.id}
            )
        ).scalar_one()
    assert executions == 0
    assert await find_differences(services.engine) == []


async def test_two_changes_of_one_order_go_in_two_groups_in_order(
    services: Services, committer: GroupCommit
) -> None:
    trader = await new_trader(services)
    order = await place_limit(services, trader, Side.BUY, "2", "10.00")
    first = committer.submit(Work(order, Mark(status=Status.SUBMITTED, event=Event.ACCEPTED)))
    second = committer.submit(Work(order, Mark(triggered=True)))
    submitted = await first
    marked = await second
    assert submitted.order.version == order.version + 1
    assert [u.event for u in submitted.updates] == [Event.ACCEPTED]
    assert marked.order.version == order.version + 2 and marked.order.triggered
    assert marked.order.status is Status.SUBMITTED
    assert committer.groups == 2


async def test_an_outage_is_waited_out_and_the_group_then_commits(
    services: Services, committer: GroupCommit
) -> None:
    """The database refuses connections and its backends are terminated while a group is
    pending: the group is retried until the database is back, and nothing is refused."""
    trader = await new_trader(services)
    orders = [await place_limit(services, trader, Side.BUY, "1", "10.00") for _ in range(5)]
    await cut_database(services, cut=True)
    try:
        futures = [committer.submit(Work(o, Execute([fill("1", "9.99")]))) for o in orders]
        await asyncio.sleep(1.0)
        assert not any(f.done() for f in futures)  # waiting, not failing
    finally:
        await cut_database(services, cut=False)
    outcomes = await asyncio.wait_for(asyncio.gather(*futures), 30)
    assert [o.order.status for o in outcomes] == [Status.FILLED] * 5
    assert await find_differences(services.engine) == []
