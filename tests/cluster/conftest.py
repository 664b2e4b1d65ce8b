"""One real three-master Redis Cluster for the tests of this folder (tests/redis_cluster.py),
skipped with the reason where redis-server/redis-cli 7+ are missing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_cluster import RedisClusterServers, missing_binaries


@pytest.fixture(scope="package")
def cluster_servers() -> Iterator[RedisClusterServers]:
    if reason := missing_binaries():
        pytest.skip(reason)
    servers = RedisClusterServers()
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()
