"""Group commit for changes to orders: what many callers submit meanwhile is one transaction.

A caller submits a change (`fills.Work`) and gets a future. A single task takes whatever is
queued (up to `max_group`), applies it with `fills.apply` in one transaction (one WAL flush for
the group, a fixed number of round trips), publishes every event of the group in one Redis
round trip (the owners' cached holdings retired first), then resolves the futures in submission
order. So a symbol's orders, submitted in arrival order, are applied in arrival order.

Failures:
- an infrastructure failure (PostgreSQL down or restarting, a dead connection, a deadlock) is
  retried with backoff for as long as it lasts: never blamed on an order;
- a group that fails for any other reason is applied again one change at a time, so a change
  that breaks a group breaks only itself (its future gets the error);
- a change whose order moved on since its caller looked gets `StaleOrder`, without failing its
  neighbours;
- events that cannot be published (Redis down) are logged; the commit stands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.infra.redis import RedisClient
from services.infra.replica import ReadRouter
from services.infra.retry import until_it_works
from services.orders import fills
from services.orders.fills import Outcome, StaleOrder, Work

log = logging.getLogger("tradeql.group_commit")


@dataclass(slots=True)
class _Submitted:
    work: Work
    future: asyncio.Future[Outcome]


class GroupCommit:
    def __init__(
        self,
        engine: AsyncEngine,
        redis: RedisClient,
        *,
        max_group: int = 500,
        reads: ReadRouter | None = None,
        partitions: int = 1,
    ) -> None:
        self._engine = engine
        self._reads = reads
        self._redis = redis
        self._max_group = max_group
        self._partitions = partitions  # the matcher's stream partitions (quote_partitions)
        self._queue: list[_Submitted] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.groups = 0  # committed, for metrics and tests
        self.changes = 0

    def submit(self, work: Work) -> asyncio.Future[Outcome]:
        """Queue `work`; the future resolves once its group committed (or says why not)."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append(_Submitted(work, future))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="order-group-commit")
        return future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for submitted in self._queue:
            if not submitted.future.done():
                submitted.future.cancel()
        self._queue.clear()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(0)  # let callers woken by the last group submit theirs
            group = self._take()
            try:
                await self._commit(group)
            except asyncio.CancelledError:
                self._queue[:0] = group
                raise
            except Exception as exc:  # never leave a caller waiting
                log.exception("order group of %d failed", len(group))
                for submitted in group:
                    if not submitted.future.done():
                        submitted.future.set_exception(exc)

    def _take(self) -> list[_Submitted]:
        """The oldest changes, one per order, at most `max_group`; the rest wait their turn."""
        group: list[_Submitted] = []
        rest: list[_Submitted] = []
        seen: set[object] = set()
        for submitted in self._queue:
            order_id = submitted.work.order.id
            if submitted.future.cancelled():
                continue
            if order_id in seen or len(group) >= self._max_group:
                rest.append(submitted)
                seen.add(order_id)  # a later change of that order stays behind it
                continue
            seen.add(order_id)
            group.append(submitted)
        self._queue = rest
        return group

    async def _commit(self, group: list[_Submitted]) -> None:
        try:
            results = await self._transact([s.work for s in group])
        except Exception:
            if len(group) == 1:
                raise
            log.warning("order group of %d failed; applying each alone", len(group), exc_info=True)
            results = []
            for submitted in group:
                try:
                    results += await self._transact([submitted.work])
                except Exception as exc:
                    results.append(exc)  # type: ignore[arg-type]
        outcomes = [r for r in results if isinstance(r, Outcome)]
        if self._reads is not None:  # the owners' next history reads wait for the replica
            await self._reads.note_commit(u.order.user_id for o in outcomes for u in o.updates)
        await self._publish(outcomes)
        self.groups += 1
        self.changes += len(group)
        for submitted, result in zip(group, results, strict=True):
            if submitted.future.done():
                continue
            if isinstance(result, Outcome):
                submitted.future.set_result(result)
            else:
                submitted.future.set_exception(result)

    async def _transact(self, works: list[Work]) -> list[Outcome | StaleOrder]:
        async for attempt in until_it_works(log, f"a group of {len(works)} order changes"):
            with attempt:
                async with self._engine.begin() as conn:
                    return await fills.apply(conn, works)
        raise AssertionError("unreachable: the retry loop returns or raises")

    async def _publish(self, outcomes: list[Outcome]) -> None:
        """The group's events, and the matcher told of orders its changes moved beside their
        own (order classes' legs and siblings), in one round trip."""
        updates = [u for o in outcomes for u in o.updates]
        linked = [order for o in outcomes for order in o.linked]
        try:
            await fills.publish(self._redis, updates, linked, self._partitions)
        except (RedisError, OSError) as exc:  # the matcher's sweep finds the legs anyway
            log.warning("%d order events not published: %s", len(updates), exc)
