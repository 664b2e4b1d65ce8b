"""Each user's balances and positions, kept in the API process and checked on every use against
a per-user version token in Redis.

Why: a portfolio request spent about a quarter of its CPU reading and decoding position rows
that change only when their owner trades or moves cash.

Why it is exact: every commit that changes an account's cash or positions is followed, before
the writer answers anyone, by the deletion of the owner's token (`forget`; order events queue it
in the pipeline that publishes them). A reader takes the token, minting a new random one when
none is held, *before* it reads PostgreSQL, and keeps what it read under that token. A read that
raced a commit is therefore kept under a token that the commit's deletion retires: it is never
served again. What a token cannot cover is a writer that dies between its commit and the
deletion (its order events are lost the same way), so entries also expire after `ttl_seconds`.
With Redis unreachable, holdings are read from PostgreSQL and nothing is kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from uuid import UUID

from cachetools import TTLCache
from redis.exceptions import RedisError

from services.infra.redis import RedisClient, slot_groups
from services.portfolio.holdings_version import HOLDINGS_TOKEN_LUA, TOKEN_TTL_SECONDS, version_key
from services.portfolio.valuation import Holdings, Portfolios

log = logging.getLogger("tradeql.holdings_cache")

# The users' tokens in the order of KEYS; a missing one is minted (ARGV[1] is random per call).
_TOKENS = (
    HOLDINGS_TOKEN_LUA
    + """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = holdings_token(key, ARGV[1] .. ':' .. i, ARGV[2])
end
return out
"""
)


class HoldingsCache:
    def __init__(
        self,
        portfolios: Portfolios,
        redis: RedisClient,
        *,
        size: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._portfolios = portfolios
        self._redis = redis
        self._tokens = redis.register_script(_TOKENS)
        self._entries: TTLCache[UUID, tuple[str, Holdings]] | None = (
            TTLCache(maxsize=size, ttl=ttl_seconds, timer=clock) if size > 0 else None
        )
        self.hits = 0
        self.misses = 0

    async def holdings(
        self, user_ids: Sequence[UUID], known: Mapping[UUID, str] | None = None
    ) -> list[Holdings | None]:
        """Like `Portfolios.holdings`: from this process while its token holds, else PostgreSQL.
        `known`: tokens already read this request, before anything of it read PostgreSQL (the
        session lookup returns the signed-in user's)."""
        entries = self._entries
        if entries is None or not user_ids:
            return await self._portfolios.holdings(user_ids)
        try:
            tokens = await self._tokens_of(user_ids, known or {})
        except (RedisError, OSError) as exc:
            log.warning("holdings tokens unavailable (%s): reading PostgreSQL", exc)
            return await self._portfolios.holdings(user_ids)
        found: list[Holdings | None] = []
        missing: list[int] = []
        for i, (user_id, token) in enumerate(zip(user_ids, tokens, strict=True)):
            entry = entries.get(user_id)
            if entry is not None and entry[0] == token:
                found.append(entry[1])
            else:
                found.append(None)
                missing.append(i)
        self.hits += len(user_ids) - len(missing)
        if missing:
            self.misses += len(missing)
            read = await self._portfolios.holdings([user_ids[i] for i in missing])
            for i, holdings in zip(missing, read, strict=True):
                found[i] = holdings
                if holdings is not None:  # no account yet: not kept, it may appear any moment
                    entries[user_ids[i]] = (tokens[i], holdings)
        return found

    def discard(self, user_id: UUID) -> None:
        """Drop this process's copy (a writer here that must see its own write whatever
        happened to the token)."""
        if self._entries is not None:
            self._entries.pop(user_id, None)

    async def _tokens_of(self, user_ids: Sequence[UUID], known: Mapping[UUID, str]) -> list[str]:
        unknown = [u for u in user_ids if u not in known]
        if not unknown:
            return [known[u] for u in user_ids]
        read = dict(zip(unknown, await self._current_tokens(unknown), strict=True))
        return [known.get(u) or read[u] for u in user_ids]

    async def _current_tokens(self, user_ids: Sequence[UUID]) -> list[str]:
        keys = [version_key(u) for u in user_ids]
        groups = slot_groups(self._redis, keys)  # a cluster: one call per user's slot, at once
        if len(groups) == 1:
            raw_one = await self._tokens(keys=keys, args=[uuid.uuid4().hex, TOKEN_TTL_SECONDS])
            return [t.decode() if isinstance(t, bytes) else str(t) for t in raw_one]
        replies = await asyncio.gather(
            *(
                self._tokens(
                    keys=[keys[i] for i in group], args=[uuid.uuid4().hex, TOKEN_TTL_SECONDS]
                )
                for group in groups
            )
        )
        raw: list[object] = [None] * len(keys)
        for group, reply in zip(groups, replies, strict=True):
            for i, token in zip(group, reply, strict=True):
                raw[i] = token
        return [t.decode() if isinstance(t, bytes) else str(t) for t in raw]
