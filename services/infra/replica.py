"""Reads that may go to a streaming replica (DATABASE_REPLICA_URL), and what keeps them honest.

A read that tolerates a replica's delay (order history, portfolio history, bars, securities,
watchlists) asks `ReadRouter.engine_for(user_id)`; everything that moves money, and every read
that must see the user's own last write, stays on the primary. Read-your-writes: after a commit
that changes what a user reads from the replica, `note_commit(user_ids)` records the primary's WAL
position for each of them in Redis (shared by every process); a read of that user then waits up
to `TRADEQL_DB_REPLICA_WAIT_MS` for the replica to replay past it, else reads the primary. A
replica lagging past `TRADEQL_DB_REPLICA_MAX_LAG_SECONDS`, or unreachable, is skipped. Without a
replica every call returns the primary and nothing is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.infra import keys
from services.infra.db import single_read
from services.infra.redis import RedisClient

log = logging.getLogger(__name__)

_PROBE = text(
    "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn, CASE WHEN pg_last_wal_receive_lsn() = "
    "pg_last_wal_replay_lsn() THEN 0 ELSE coalesce(extract(epoch FROM now() - "
    "pg_last_xact_replay_timestamp()), 0) END"
)
# The insert position, not pg_current_wal_lsn() (the write position): with asynchronous commit
# (synchronous_commit = off) a commit may return before its record is written out, and the
# write position can still be short of it.
_CURRENT_LSN = text("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
# Keep the larger position: two commits of one user may record out of order.
_RECORD = """
local current = redis.call('GET', KEYS[1])
if current == false or tonumber(current) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
"""
_POLL_SECONDS = 0.005
_UNKNOWN = -1


def lsn_key(user_id: UUID) -> str:
    return keys.ns(f"user:{{{user_id}}}:lsn")


@dataclass
class _Replay:
    lsn: int  # bytes of WAL replayed (pg_lsn less 0/0)
    lag: float
    at: float  # monotonic


class ReadRouter:
    def __init__(
        self,
        primary: AsyncEngine,
        replica: AsyncEngine | None,
        redis: RedisClient,
        *,
        max_lag_seconds: float,
        wait_seconds: float,
        probe_seconds: float = 0.25,
    ) -> None:
        self.primary, self.replica = primary, replica
        self._redis = redis
        self._max_lag = max_lag_seconds
        self._wait = wait_seconds
        self._probe_every = probe_seconds
        self._replay: _Replay | None = None
        # Reads asked for, by the server that served them (the API's /metrics reads them).
        self.served = {"replica": 0, "primary": 0}
        self._down_until = 0.0
        self._probing: asyncio.Lock = asyncio.Lock()
        self._record = redis.register_script(_RECORD)
        # A recorded position outlives the longest lag a used replica may have: past it, any
        # replica within the bound has replayed the write anyway.
        self._ttl = max(1, int(max_lag_seconds) + 1)

    async def engine_for(self, user_id: UUID | None = None) -> AsyncEngine:
        """The replica if it may serve this read, else the primary."""
        engine = await self._choose(user_id)
        self.served["replica" if engine is self.replica else "primary"] += 1
        return engine

    @property
    def lag_seconds(self) -> float | None:
        """The replica's replay lag as last probed (None: no replica, or not probed yet)."""
        return self._replay.lag if self._replay is not None else None

    async def _choose(self, user_id: UUID | None) -> AsyncEngine:
        if self.replica is None:
            return self.primary
        replay = await self._replay_state(max_age=self._probe_every)
        if replay is None or replay.lag > self._max_lag:
            return self.primary
        if user_id is None:
            return self.replica
        needed = await self._needed(user_id)
        if needed == _UNKNOWN:
            return self.primary
        if needed is None or replay.lsn >= needed:
            return self.replica
        deadline = time.monotonic() + self._wait
        while time.monotonic() < deadline:
            await asyncio.sleep(_POLL_SECONDS)
            replay = await self._replay_state(max_age=0)
            if replay is None or replay.lag > self._max_lag:
                return self.primary
            if replay.lsn >= needed:
                return self.replica
        return self.primary

    async def _needed(self, user_id: UUID) -> int | None:
        """The WAL position the user's reads must see (None: no recent write; `_UNKNOWN`:
        Redis did not answer, so only the primary is sure to have it)."""
        try:
            raw = await self._redis.get(lsn_key(user_id))
        except (RedisError, OSError) as exc:
            log.warning("a user's last write position is unavailable (%s): primary", exc)
            return _UNKNOWN
        return int(raw) if raw is not None else None

    async def _replay_state(self, *, max_age: float) -> _Replay | None:
        """The replica's replay position and lag, probed at most every `max_age` seconds (one
        probe at a time: concurrent readers share it); None while the replica is unreachable."""
        assert self.replica is not None
        now = time.monotonic()
        if now < self._down_until:
            return None
        if self._replay is not None and now - self._replay.at <= max_age:
            return self._replay
        async with self._probing:
            if self._replay is not None and time.monotonic() - self._replay.at <= max_age:
                return self._replay
            probed_at = time.monotonic()
            try:
                async with single_read(self.replica) as conn:
                    row = (await conn.execute(_PROBE)).one()
            except (DBAPIError, InterfaceError, OSError, TimeoutError) as exc:
                log.warning("the replica is unreachable (%s): reads go to the primary", exc)
                self._down_until = time.monotonic() + 1.0
                return None
            if row[0] is None:  # not a standby (or recovery over): never serve from it
                log.warning("DATABASE_REPLICA_URL is not a standby: reads go to the primary")
                self._down_until = time.monotonic() + 5.0
                return None
            self._replay = _Replay(int(row[0]), float(row[1]), probed_at)
            return self._replay

    async def note_commit(self, user_ids: Iterable[UUID]) -> None:
        """Record, for each user, that their reads must see the primary as it is now (call after
        the commit). Best effort: a failure is logged, and those reads may then be stale for
        at most the replica's lag bound."""
        users = set(user_ids)
        if self.replica is None or not users:
            return
        try:
            async with single_read(self.primary) as conn:
                position = int((await conn.execute(_CURRENT_LSN)).scalar_one())
            # one script call per user's key, sent at once: each key is in its user's slot, so
            # this works on a Redis Cluster as on one server
            await asyncio.gather(
                *(
                    self._record(keys=[lsn_key(user_id)], args=[position, self._ttl])
                    for user_id in users
                )
            )
        except (DBAPIError, InterfaceError, RedisError, OSError) as exc:
            log.warning("write positions of %d users not recorded: %s", len(users), exc)
