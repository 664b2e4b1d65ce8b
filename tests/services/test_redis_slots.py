"""The key layout for Redis Cluster: what one script, one multi-key command or one consumer
touches together is in one hash slot (the hash tags of services/infra/keys.py), and what should
spread does. No server needed: the slots are computed as the cluster computes them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from gateway.ratelimit import Bucket, Limit
from services.accounts import sessions
from services.alerts.price_alerts import alert_channel, changes_channel
from services.infra import keys
from services.infra.redis import slot_groups, slot_of
from services.infra.streams import quote_stream
from services.market_data.quote_store import partition_quotes_channel, quote_channels, quote_key
from services.orders.order_events import user_channel
from services.orders.order_store import order_stream
from services.portfolio.holdings_version import key_prefix, version_key
from workers.matcher import lease_key

PARTITIONS = 16


@pytest.fixture(autouse=True)
def namespace() -> Iterator[None]:
    before = keys.current()
    keys.configure("postgresql://u@db.example:5432/trading")
    yield
    keys._namespace = before


def test_slot_of_is_the_cluster_s_own_hash_of_the_tag() -> None:
    assert slot_of("anything:{user-1}:x") == key_slot(b"user-1")
    assert "{" not in keys.current() and "}" not in keys.current()


def test_a_users_keys_and_channels_share_one_slot() -> None:
    users = [uuid.uuid4() for _ in range(50)]
    for user in users:
        names = [version_key(user), user_channel(user), alert_channel(user)]
        assert len({slot_of(n) for n in names}) == 1, names
    # ...and users spread over the cluster
    assert len({slot_of(version_key(u)) for u in users}) > 40


def test_the_session_lookup_builds_the_users_holdings_key_as_the_writers_do() -> None:
    """On one server the lookup script reads `prefix .. '{' .. user .. '}'`: the key writers
    delete. On a cluster it is in another slot than the session, so the script is told not to."""
    user = uuid.uuid4()
    assert f"{key_prefix()}{{{user}}}" == version_key(user)
    _, args = sessions.lookup_key_and_args("ab" * 32)
    assert args[2] == key_prefix()
    _, args = sessions.lookup_key_and_args("ab" * 32, cluster=True)
    assert args[2] == ""


def test_a_session_and_its_rate_limit_bucket_share_the_tokens_slot() -> None:
    token_hash = sessions.hash_token("a-token")
    session_key, _ = sessions.lookup_key_and_args(token_hash, cluster=True)
    bucket = Bucket(Limit("session", 20, 60), token_hash)
    assert slot_of(session_key) == slot_of(bucket.key)
    address = Bucket(Limit("ip", 100, 300), "203.0.113.9")
    partner = Bucket(Limit("partner", 200, 600), "cd" * 32)
    # the address's and the partner key's buckets are the request's other slots
    assert len({slot_of(b.key) for b in (bucket, address, partner)}) == 3


def test_a_stream_partitions_keys_and_channel_share_one_slot() -> None:
    slots = set()
    for p in range(PARTITIONS):
        names = [quote_stream(p), order_stream(p), lease_key(p), partition_quotes_channel(p)]
        assert len({slot_of(n) for n in names}) == 1, names
        slots.add(slot_of(quote_stream(p)))
    assert len(slots) == PARTITIONS  # each partition a slot of its own


def test_each_quote_is_in_its_symbols_slot() -> None:
    assert slot_of(quote_key("AAPL")) == key_slot(b"AAPL")
    symbols = [f"S{i:04d}" for i in range(200)]
    assert len({slot_of(quote_key(s)) for s in symbols}) > 190


def test_quote_channels_one_on_a_server_one_per_partition_on_a_cluster() -> None:
    assert quote_channels(PARTITIONS, cluster=False) == [keys.ns("md:quotes")]
    assert quote_channels(PARTITIONS, cluster=True) == [
        partition_quotes_channel(p) for p in range(PARTITIONS)
    ]


def test_the_global_channels_are_single_names_in_the_namespace() -> None:
    for channel in (changes_channel(), sessions.revoked_channel()):
        assert channel.startswith(keys.current() + ":") and "{" not in channel


class _OneServer:  # what slot_groups is told about a client: not a cluster
    pass


def test_slot_groups_one_group_on_a_server() -> None:
    names = [version_key(uuid.uuid4()) for _ in range(5)]
    assert slot_groups(_OneServer(), names) == [[0, 1, 2, 3, 4]]  # type: ignore[arg-type]


def test_slot_groups_by_slot_on_a_cluster() -> None:
    from redis.asyncio.cluster import RedisCluster

    client = RedisCluster(host="127.0.0.1", port=7000)  # never connected: routing is local
    users = [uuid.uuid4(), uuid.uuid4()]
    names = [version_key(users[0]), version_key(users[1]), user_channel(users[0])]
    assert sorted(slot_groups(client, names)) == sorted([[0, 2], [1]])
