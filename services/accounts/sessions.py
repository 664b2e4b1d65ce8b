"""Session tokens: 256 random bits, only a hash stored, cached in Redis, revocable at once."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from prometheus_client import Counter
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.infra import audit
from services.infra.db import single_read
from services.infra.keys import ns, tag
from services.infra.redis import RedisClient, is_cluster, publish
from services.infra.settings import Settings
from services.portfolio.holdings_version import HOLDINGS_TOKEN_LUA, TOKEN_TTL_SECONDS, key_prefix

log = logging.getLogger("tradeql.sessions")
CACHE_FAILURES = Counter(
    "tradeql_session_cache_failures_total",
    "Session cache reads and writes that failed in Redis (the lookup then read PostgreSQL)",
)
FAILURE_LOG_INTERVAL_SECONDS = 10.0

MAX_TOKEN_LENGTH = 128


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: UUID
    user_id: UUID
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class IssuedSession:
    token: str
    session: SessionInfo


# Lua: the cached session under `key` and its user's holdings token (minted from `fresh` when
# none is held; `ttl` its lifetime, `prefix` the token keys' prefix): false when not cached,
# {session} when it names no user, else {session, token}. Also run by the rate limiter's script
# (gateway/ratelimit.py), so an HTTP request needs one round trip for both.
SESSION_LOOKUP_LUA = (
    HOLDINGS_TOKEN_LUA
    + """
local function session_lookup(key, fresh, ttl, prefix)
  local cached = redis.call('GET', key)
  if not cached then
    return false
  end
  local ok, data = pcall(cjson.decode, cached)
  if not ok or type(data) ~= 'table' or type(data['u']) ~= 'string' then
    return {cached}
  end
  if prefix == '' then  -- a cluster: the user's token is in another slot, read apart
    return {cached}
  end
  return {cached, holdings_token(prefix .. '{' .. data['u'] .. '}', fresh, ttl)}
end
"""
)
_LOOKUP = SESSION_LOOKUP_LUA + "return session_lookup(KEYS[1], ARGV[1], ARGV[2], ARGV[3])"


@dataclass(frozen=True, slots=True)
class CachedLookup:
    """What `session_lookup` answered for one token, fetched by someone else (the rate limiter)
    at the start of the request: `found` as the script returned it (None: not cached)."""

    token: str
    found: list[str] | None


def lookup_key_and_args(token_hash: str, *, cluster: bool = False) -> tuple[str, list[str]]:
    """The key and arguments of `session_lookup` for the token of `token_hash`. In a cluster
    the user's holdings token lives in the user's slot, not the session's, so the lookup leaves
    it out (the holdings cache reads it when a request needs it)."""
    prefix = "" if cluster else key_prefix()
    return _cache_key(token_hash), [uuid.uuid4().hex, str(TOKEN_TTL_SECONDS), prefix]


def revoked_channel() -> str:
    """Where a revoked session's id is announced: every API process closes its sockets."""
    return ns("tq:sessions:revoked")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _cache_key(token_hash: str) -> str:
    return ns(f"tq:session:{tag(token_hash)}")


async def issue(conn: AsyncConnection, settings: Settings, user_id: UUID) -> IssuedSession:
    token = secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + timedelta(seconds=settings.session_ttl_seconds)
    session_id = (
        await conn.execute(
            text(
                "INSERT INTO sessions (user_id, token_hash, expires_at) "
                "VALUES (:u, :h, :e) RETURNING id"
            ),
            {"u": user_id, "h": hash_token(token), "e": expires_at},
        )
    ).scalar_one()
    return IssuedSession(token, SessionInfo(session_id, user_id, expires_at))


class SessionStore:
    """Looks tokens up: Redis first, PostgreSQL (the truth) on a miss."""

    def __init__(self, engine: AsyncEngine, redis: RedisClient, settings: Settings) -> None:
        self._engine = engine
        self._redis = redis
        self._settings = settings
        self._lookup = redis.register_script(_LOOKUP)
        self._failures_since_log = 0
        self._last_failure_log = float("-inf")

    async def authenticate(self, token: str) -> SessionInfo | None:
        return (await self.authenticate_request(token))[0]

    async def authenticate_request(
        self, token: str, prefetched: CachedLookup | None = None
    ) -> tuple[SessionInfo | None, str | None]:
        """The session, and the version token of its user's holdings as of now, in the same
        round trip when the session is cached (services/portfolio/holdings_cache.py; None otherwise).
        The holdings token is only good for the request being served, never for a WebSocket
        that lives on. `prefetched`: the cache's answer for this token, already fetched."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None, None
        token_hash: str | None = None
        if prefetched is not None and prefetched.token == token:
            found = prefetched.found
        else:
            token_hash = hash_token(token)
            key, args = lookup_key_and_args(token_hash, cluster=is_cluster(self._redis))
            try:
                found = await self._lookup(keys=[key], args=args)
            except RedisError as exc:  # the cache is down or saturated: PostgreSQL is the truth
                self._cache_failed(exc)
                found = None
        if found:
            data = json.loads(found[0])
            session = SessionInfo(
                UUID(data["s"]), UUID(data["u"]), datetime.fromisoformat(data["e"])
            )
            if session.expires_at <= datetime.now(UTC):
                return None, None
            return session, (found[1] if len(found) > 1 else None)
        token_hash = token_hash or hash_token(token)
        async with single_read(self._engine) as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT id, user_id, expires_at FROM sessions WHERE token_hash = :h "
                        "AND revoked_at IS NULL AND expires_at > now()"
                    ),
                    {"h": token_hash},
                )
            ).first()
        if row is None:
            return None, None
        session = SessionInfo(row.id, row.user_id, row.expires_at)
        await self._cache(token_hash, session)
        return session, None

    async def _cache(self, token_hash: str, session: SessionInfo) -> None:
        remaining = int((session.expires_at - datetime.now(UTC)).total_seconds())
        ttl = min(self._settings.session_cache_seconds, remaining)
        if ttl <= 0:
            return
        payload = json.dumps(
            {
                "s": str(session.session_id),
                "u": str(session.user_id),
                "e": session.expires_at.isoformat(),
            }
        )
        try:
            await self._redis.set(_cache_key(token_hash), payload, ex=ttl)
        except RedisError as exc:
            self._cache_failed(exc)

    def _cache_failed(self, exc: RedisError) -> None:
        """Counted always, logged at most once per interval (an outage fails every request)."""
        CACHE_FAILURES.inc()
        self._failures_since_log += 1
        now = time.monotonic()
        if now - self._last_failure_log >= FAILURE_LOG_INTERVAL_SECONDS:
            log.warning(
                "session cache unavailable, reading sessions from PostgreSQL "
                "(%d since last report): %r",
                self._failures_since_log,
                exc,
            )
            self._last_failure_log, self._failures_since_log = now, 0

    async def ended_among(self, session_ids: Sequence[UUID]) -> set[UUID]:
        """Those of `session_ids` that are revoked or expired now."""
        if not session_ids:
            return set()
        async with single_read(self._engine) as conn:
            live = await conn.execute(
                text(
                    "SELECT id FROM sessions WHERE id = ANY(:ids) AND revoked_at IS NULL "
                    "AND expires_at > now()"
                ),
                {"ids": list(session_ids)},
            )
            return set(session_ids) - {r.id for r in live}

    async def revoke(self, token: str) -> SessionInfo | None:
        """End the session behind `token` in PostgreSQL, drop it from the cache, tell every process."""
        token_hash = hash_token(token)
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "UPDATE sessions SET revoked_at = now() WHERE token_hash = :h "
                        "AND revoked_at IS NULL RETURNING id, user_id, expires_at"
                    ),
                    {"h": token_hash},
                )
            ).first()
            if row is not None:
                await audit.record(
                    conn,
                    user_id=row.user_id,
                    action="session.revoked",
                    entity_type="session",
                    entity_id=str(row.id),
                )
        await self._redis.delete(_cache_key(token_hash))
        if row is None:
            return None
        await publish(self._redis, revoked_channel(), str(row.id))
        return SessionInfo(row.id, row.user_id, row.expires_at)
