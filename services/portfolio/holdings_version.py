"""The per-user token that vouches for cached holdings (services/portfolio/holdings_cache.py), and how a
writer retires it: kept apart so that every writer can import it without the cache."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from services.infra.keys import ns, tag
from services.infra.redis import RedisClient, RedisPipeline

TOKEN_TTL_SECONDS = 3600  # a token that expired only costs its user one read of PostgreSQL

# A Lua function for the scripts that read tokens: the token under `key`, minted from `fresh` (a
# random value) when none is held.
HOLDINGS_TOKEN_LUA = """
local function holdings_token(key, fresh, ttl)
  local token = redis.call('GET', key)
  if not token then
    token = fresh
    redis.call('SET', key, token, 'EX', ttl)
  end
  return token
end
"""


def key_prefix() -> str:
    """What every token's key starts with (the session lookup script appends the user id)."""
    return ns("holdings:v:")


def version_key(user_id: UUID) -> str:
    """`holdings:v:{<user id>}`: in the user's hash slot (the session lookup script builds it
    the same way from the prefix)."""
    return f"{key_prefix()}{tag(user_id)}"


def _keys(user_ids: Iterable[UUID]) -> list[str]:
    return sorted({version_key(u) for u in user_ids})


def forget(pipe: RedisPipeline, user_ids: Iterable[UUID]) -> None:
    """Queue the retirement of these users' tokens: after the commit, before answering."""
    if keys := _keys(user_ids):
        pipe.delete(*keys)


async def forget_now(redis: RedisClient, user_ids: Iterable[UUID]) -> None:
    """`forget` in a round trip of its own, for a writer that publishes nothing else."""
    if keys := _keys(user_ids):
        await redis.delete(*keys)
