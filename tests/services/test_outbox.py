"""The order-event outbox: events written with their change, and the relay that publishes those
their writers did not (a writer that died between commit and publish, or Redis failing then):
exactly the missing ones, none missed behind a slow transaction, and from where the last relay
stopped."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import pytest
from redis.asyncio.client import PubSub
from sqlalchemy import text

from services.infra.container import Services
from services.orders import fills
from services.orders.fills import Execute, Work
from services.orders.group_commit import GroupCommit
from services.orders.order_events import decode_update, user_channel
from services.orders.order_model import Event, Side, Status
from services.orders.outbox import OutboxRelay
from tests.services.test_fills_service import Trader, fill, new_trader, place_limit

GRACE = 0.2


@pytest.fixture
async def trader(services: Services) -> Trader:
    return await new_trader(services)


@pytest.fixture
async def heard(services: Services, trader: Trader) -> AsyncIterator[PubSub]:
    pubsub = services.redis.pubsub()
    await pubsub.subscribe(user_channel(trader.user_id))
    await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    yield pubsub
    await pubsub.aclose()


async def messages(pubsub: PubSub, wait: float = 0.5) -> list[dict[str, Any]]:
    found = []
    deadline = asyncio.get_running_loop().time() + wait
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None:
            found.append(json.loads(message["data"]))
    return found


async def rows(services: Services, order_id: UUID) -> list[Any]:
    async with services.engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT event, version, payload FROM order_events WHERE order_id = :o "
                "ORDER BY version, event"
            ),
            {"o": order_id},
        )
        return result.all()


def relay(services: Services) -> OutboxRelay:
    return OutboxRelay(services.engine, services.redis, grace_seconds=GRACE)


async def test_each_event_is_written_with_its_change(services: Services, trader: Trader) -> None:
    order = await place_limit(services, trader, Side.BUY, "2", "10.00")
    committer = GroupCommit(services.engine, services.redis)
    try:
        await committer.submit(Work(order, Execute([fill("1", "10.00")])))
    finally:
        await committer.close()
    written = await rows(services, order.id)
    assert [(r.event, r.version) for r in written] == [
        ("ACCEPTED", order.version),
        ("PARTIAL_FILL", order.version + 1),
    ]
    assert decode_update(written[1].payload).order.filled_quantity == 1


async def test_the_relay_publishes_only_what_no_writer_did(
    services: Services, trader: Trader, heard: PubSub
) -> None:
    order = await place_limit(services, trader, Side.BUY, "3", "10.00")  # published by its writer
    # A writer that dies after its commit: the change is there, its event never published.
    async with services.engine.begin() as conn:
        await fills.execute(conn, order, [fill("1", "10.00")])
    assert [m["event"] for m in await messages(heard, 0.3)] == ["ACCEPTED"]
    await asyncio.sleep(GRACE)
    first = relay(services)
    await first.relay_once()
    assert [(m["event"], m["order"]["version"]) for m in await messages(heard)] == [
        (Event.PARTIAL_FILL.value, order.version + 1)
    ]
    # Neither this relay again nor a new one (starting from the saved watermark) repeats it.
    await first.relay_once()
    await relay(services).relay_once()
    assert await messages(heard) == []


async def test_an_event_committed_late_behind_the_watermark_is_not_missed(
    services: Services, trader: Trader, heard: PubSub
) -> None:
    order = await place_limit(services, trader, Side.BUY, "3", "10.00")
    await messages(heard, 0.3)
    running = relay(services)
    async with services.engine.connect() as slow:
        transaction = await slow.begin()
        await fills.execute(slow, order, [fill("1", "10.00")])  # written, not committed
        await asyncio.sleep(GRACE)
        await running.relay_once()  # it cannot see the row yet
        await transaction.commit()
    assert await messages(heard, 0.3) == []
    await asyncio.sleep(GRACE)
    await running.relay_once()
    assert [m["event"] for m in await messages(heard)] == [Event.PARTIAL_FILL.value]


async def test_a_change_told_to_no_subscriber_is_history_the_relay_never_publishes(
    services: Services, trader: Trader, heard: PubSub
) -> None:
    order = await place_limit(services, trader, Side.BUY, "1", "10.00")
    await messages(heard, 0.3)
    async with services.engine.begin() as conn:  # a stop's trigger tells no one
        await fills.mark(conn, order, triggered=True)
    written = await rows(services, order.id)
    assert [(r.event, r.version, r.payload) for r in written][1:] == [
        (None, order.version + 1, None)
    ]
    await asyncio.sleep(GRACE)
    await relay(services).relay_once()
    assert await messages(heard) == []
    async with services.engine.begin() as conn:
        await fills.close(conn, (await services.order_store.by_ids([order.id]))[order.id],
                          Status.CANCELLED, reason="done")  # fmt: skip
