"""Two deployments on one Redis server never meet: every key and channel is under the
deployment's namespace (pub/sub ignores database numbers, so db numbers alone were not enough)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from services.infra import keys
from services.infra.container import Services
from services.market_data.quote_store import quote_key, quotes_channel
from services.orders.order_events import user_channel
from services.orders.order_store import order_stream


@pytest.fixture
def restore_namespace() -> Iterator[None]:
    before = keys.current()
    yield
    keys._namespace = before  # the process's own, for the tests after this one


def test_the_namespace_comes_from_the_database_unless_named() -> None:
    a = keys.namespace_for("postgresql://u:p@db.example:5432/trading")
    b = keys.namespace_for("postgresql://u:p@db.example:5432/trading_staging")
    c = keys.namespace_for("postgresql://u:p@other.example:6432/trading")
    assert len({a, b, c}) == 3
    assert keys.namespace_for("postgresql://x@db.example/trading") == a  # the default port
    assert keys.namespace_for("postgresql://u@h/db", "blue {prod}") == "blue-prod-"
    assert not any(ch in a for ch in "{}: ")  # cluster hash tags in the names stay valid


async def test_one_deployment_hears_nothing_the_other_publishes(
    services: Services, restore_namespace: None
) -> None:
    redis = services.redis
    keys.configure(None, "deployment-a")
    channel_a, key_a = quotes_channel(), quote_key("AAPL")
    keys.configure(None, "deployment-b")
    channel_b, key_b = quotes_channel(), quote_key("AAPL")
    assert (channel_a, key_a) != (channel_b, key_b)
    assert order_stream(3) == "deployment-b:orders:{3}"
    assert user_channel(uuid.UUID(int=7)) == f"deployment-b:user:{{{uuid.UUID(int=7)}}}"
    pubsub = redis.pubsub()
    await pubsub.subscribe(channel_b)
    await pubsub.get_message(timeout=1.0)  # the confirmation
    try:
        await redis.publish(channel_a, "from a")
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5) is None
        await redis.publish(channel_b, "from b")
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
        assert message is not None and message["data"] == "from b"
    finally:
        await pubsub.aclose()
