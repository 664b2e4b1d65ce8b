"""Rate limits in Redis: GCRA (a leaky bucket kept as one timestamp per key), in one Lua script.

Every API process shares the buckets, so N processes allow what one would. One request checks
all of its buckets (session, partner, client IP) in a single atomic round trip: it is allowed
only if every bucket has room, and a refused request uses up none of them.

On a Redis Cluster a script may touch one hash slot only. A session's bucket and its cached
session share the token's hash tag (`tq:rl:session:{<token hash>}`, `tq:session:{<token hash>}`),
so they stay one call; the address's and the partner key's buckets are in slots of their own,
checked by calls of their own, sent at once (one round trip of wall time). What that changes: a
request refused by one bucket has still used up the others that had room (a client over its
session's limit still spends from its address's), and the holdings token no longer comes back
with the session (the portfolio reads it when it needs it).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

from services.accounts.sessions import (
    SESSION_LOOKUP_LUA,
    CachedLookup,
    hash_token,
    lookup_key_and_args,
)
from services.infra.keys import ns, tag
from services.infra.redis import RedisClient, is_cluster, slot_of

# GCRA: a bucket is its "theoretical arrival time" (TAT) in microseconds of Redis' clock, so
# API processes with skewed clocks still agree. With T = 1/rate and a burst of B requests, a
# request is allowed when TAT + T - B*T <= now; it then moves TAT to max(TAT, now) + T.
# KEYS[1..count]: the buckets. ARGV: interval_us and burst for each bucket, then the cost.
_GCRA_FUNCTION = """
local function gcra(count)
  local now_parts = redis.call('TIME')
  local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
  local cost = tonumber(ARGV[2 * count + 1])
  local new_tats = {}
  local wait, refused_by = 0, 0
  for i = 1, count do
    local interval = tonumber(ARGV[2 * i - 1])
    local burst = tonumber(ARGV[2 * i])
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then tat = now end
    local new_tat = tat + interval * cost
    local allowed_at = new_tat - interval * burst
    if allowed_at > now and allowed_at - now > wait then
      wait, refused_by = allowed_at - now, i
    end
    new_tats[i] = new_tat
  end
  if refused_by > 0 then
    return {0, string.format('%.0f', wait), refused_by}
  end
  for i = 1, count do
    local ttl_ms = math.max(1, math.ceil((new_tats[i] - now) / 1000))
    redis.call('SET', KEYS[i], string.format('%.0f', new_tats[i]), 'PX', ttl_ms)
  end
  return {1, '0', 0}
end
"""
_GCRA = _GCRA_FUNCTION + "return gcra(#KEYS)"

# The same, then (when allowed) the session cached under the last key, with its user's holdings
# token (services/accounts/sessions.py: session_lookup; its three arguments follow the cost): what an
# HTTP request with a bearer token needs from Redis before it runs, in one round trip.
_GCRA_AND_SESSION = (
    SESSION_LOOKUP_LUA
    + _GCRA_FUNCTION
    + """
local count = #KEYS - 1
local decision = gcra(count)
if decision[1] == 0 then
  return decision
end
local at = 2 * count + 2
local found = session_lookup(KEYS[count + 1], ARGV[at], ARGV[at + 1], ARGV[at + 2])
if found then
  for _, value in ipairs(found) do
    decision[#decision + 1] = value
  end
end
return decision
"""
)


@dataclass(frozen=True, slots=True)
class Limit:
    """`per_second` requests on average, `burst` of them at once after a quiet spell."""

    name: str
    per_second: float
    burst: int

    @property
    def enabled(self) -> bool:
        return self.per_second > 0 and self.burst > 0


@dataclass(frozen=True, slots=True)
class Bucket:
    """One identity (a session's token hash, a partner key's hash, an address) under one limit."""

    limit: Limit
    identity: str

    @property
    def key(self) -> str:
        return ns(f"tq:rl:{self.limit.name}:{tag(self.identity)}")


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after: float = 0.0
    """seconds until the refusing bucket has room again (0 when allowed)"""
    refused_by: Limit | None = None

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, at least 1: what `Retry-After` carries."""
        return str(max(1, math.ceil(self.retry_after)))


ALLOWED = Decision(allowed=True)


class RateLimiter:
    """Checks and takes from several buckets at once. Redis errors propagate: the caller decides
    whether to fail open."""

    def __init__(self, redis: RedisClient) -> None:
        self._cluster = is_cluster(redis)
        self._script = redis.register_script(_GCRA)
        self._with_session = redis.register_script(_GCRA_AND_SESSION)

    async def hit(self, buckets: Sequence[Bucket], cost: int = 1) -> Decision:
        buckets = [b for b in buckets if b.limit.enabled]
        if not buckets:
            return ALLOWED
        if self._cluster:
            decision, _ = await self._hit_per_slot(buckets, cost, None)
            return decision
        keys, args = _bucket_keys_and_args(buckets, cost)
        return _decision(buckets, await self._script(keys=keys, args=args))

    async def hit_and_look_up(
        self,
        buckets: Sequence[Bucket],
        session_token: str,
        cost: int = 1,
        *,
        token_hash: str | None = None,
    ) -> tuple[Decision, CachedLookup | None]:
        """`hit`, and when allowed, the cached session of `session_token` (for the view, so the
        request makes one round trip to Redis for both). `token_hash`: its hash, if the caller
        has it already."""
        buckets = [b for b in buckets if b.limit.enabled]
        token_hash = token_hash or hash_token(session_token)
        if self._cluster:
            decision, found = await self._hit_per_slot(buckets, cost, token_hash)
            return decision, (CachedLookup(session_token, found) if decision.allowed else None)
        keys, args = _bucket_keys_and_args(buckets, cost)
        session_key, session_args = lookup_key_and_args(token_hash)
        reply = await self._with_session(keys=[*keys, session_key], args=[*args, *session_args])
        decision = _decision(buckets, reply[:3])
        if not decision.allowed:
            return decision, None
        return decision, CachedLookup(session_token, [str(v) for v in reply[3:]] or None)

    async def _hit_per_slot(
        self, buckets: Sequence[Bucket], cost: int, token_hash: str | None
    ) -> tuple[Decision, list[str] | None]:
        """A cluster: one call per hash slot, all at once; the session is looked up with the
        buckets of its slot (its own bucket's). Allowed when every call allowed; the longest
        wait is the one told."""
        session_key, session_args = (
            lookup_key_and_args(token_hash, cluster=True) if token_hash else (None, [])
        )
        by_slot: dict[int, list[Bucket]] = {}
        for bucket in buckets:
            by_slot.setdefault(slot_of(bucket.key), []).append(bucket)
        session_slot = slot_of(session_key) if session_key else None
        if session_slot is not None:
            by_slot.setdefault(session_slot, [])
        calls = []
        for slot, group in by_slot.items():
            keys, args = _bucket_keys_and_args(group, cost)
            if slot == session_slot and session_key is not None:
                calls.append(
                    self._with_session(keys=[*keys, session_key], args=[*args, *session_args])
                )
            else:
                calls.append(self._script(keys=keys, args=args))
        replies = await asyncio.gather(*calls)
        decision, found = ALLOWED, None
        for (slot, group), reply in zip(by_slot.items(), replies, strict=True):
            judged = _decision(group, reply[:3])
            if not judged.allowed and (
                decision.allowed or judged.retry_after > decision.retry_after
            ):
                decision = judged
            if slot == session_slot:
                found = [str(v) for v in reply[3:]] or None
        return decision, found


def _bucket_keys_and_args(buckets: Sequence[Bucket], cost: int) -> tuple[list[str], list[str]]:
    args: list[str] = []
    for bucket in buckets:
        args += [repr(1_000_000 / bucket.limit.per_second), str(bucket.limit.burst)]
    args.append(str(cost))
    return [b.key for b in buckets], args


def _decision(buckets: Sequence[Bucket], reply: Sequence[object]) -> Decision:
    allowed, wait_us, refused_by = reply
    if int(str(allowed)):
        return ALLOWED
    return Decision(
        allowed=False,
        retry_after=int(str(wait_us)) / 1_000_000,
        refused_by=buckets[int(str(refused_by)) - 1].limit,
    )
