"""Throttling password guessing, per sign-in attempt (the request rate limiter counts requests).

Per e-mail: from the `free`-th consecutive failure on, each attempt waits 2^(n - free) seconds
after the last failure (n failures so far), at most `max_wait`; a success resets it. An attempt
counts as a failure the moment it is let through, atomically (one Lua script), so parallel
guesses cannot all pass before the first is judged; a success then clears the count.
Per client address: failed sign-ins only, at most `address_limit` per `address_window`, so many
users signing up or in from one address (an office, a load test) are not held back.

Redis keeps only a hash of the e-mail. Should Redis fail, sign-in goes on unthrottled (as the
request rate limiter does), logged.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass

from redis.exceptions import RedisError

from services.infra.keys import ns, tag
from services.infra.redis import RedisClient, is_cluster

log = logging.getLogger("tradeql.login_throttle")

# KEYS: the e-mail's failures hash, the address's failure counter.
# ARGV: now (ms), free failures, max wait (ms), address limit, ttl of the e-mail's hash (s).
# Returns the milliseconds to wait (0: let through, counted as a failure until it succeeds).
# On a Redis Cluster the two keys are in different hash slots: the address is checked first by a
# call of its own (KEYS[1] the address's counter, same ARGV), then the e-mail's part runs alone.
_ADDRESS_CHECK = """
local address_failures = tonumber(redis.call('GET', {address}) or '0')
if address_failures >= tonumber(ARGV[4]) then
  local ttl = redis.call('PTTL', {address})
  return math.max(ttl, 1)
end
"""
_EMAIL = """
local failures = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local last = tonumber(redis.call('HGET', KEYS[1], 'at') or '0')
local now, free, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if failures >= free then
  local wait = math.min(2 ^ (failures - free) * 1000, cap)
  if now < last + wait then
    return last + wait - now
  end
end
redis.call('HSET', KEYS[1], 'n', failures + 1, 'at', now)
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 0
"""
_BEGIN = _ADDRESS_CHECK.format(address="KEYS[2]") + _EMAIL
_BEGIN_ADDRESS = _ADDRESS_CHECK.format(address="KEYS[1]") + "return 0"


@dataclass(frozen=True, slots=True)
class ThrottleRules:
    free: int = 5
    max_wait_seconds: float = 900.0
    address_limit: int = 100
    address_window_seconds: int = 600


def wait_after(failures: int, rules: ThrottleRules) -> float:
    """Seconds an attempt waits after the last of `failures` consecutive failures."""
    if failures < rules.free:
        return 0.0
    return float(min(2 ** (failures - rules.free), rules.max_wait_seconds))


class LoginThrottle:
    def __init__(self, redis: RedisClient, rules: ThrottleRules) -> None:
        self._redis = redis
        self._rules = rules
        self._begin = redis.register_script(_BEGIN)
        self._split = is_cluster(redis)
        self._begin_address = redis.register_script(_BEGIN_ADDRESS)
        self._begin_email = redis.register_script(_EMAIL)

    @staticmethod
    def _email_key(email: str) -> str:
        digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()
        return ns(f"login:fail:{tag(digest)}")

    @staticmethod
    def _address_key(address: str) -> str:
        return ns(f"login:fail-ip:{tag(address)}")

    async def begin(self, email: str, address: str) -> float:
        """0 to go ahead (the attempt counts as a failure until `succeeded`), else the seconds
        to wait before trying again."""
        rules = self._rules
        args = [
            int(time.time() * 1000),
            rules.free,
            int(rules.max_wait_seconds * 1000),
            rules.address_limit,
            int(rules.max_wait_seconds) + 86_400,
        ]
        try:
            if self._split:
                wait_ms = await self._begin_address(keys=[self._address_key(address)], args=args)
                if not int(wait_ms):
                    wait_ms = await self._begin_email(keys=[self._email_key(email)], args=args)
            else:
                wait_ms = await self._begin(
                    keys=[self._email_key(email), self._address_key(address)], args=args
                )
        except (RedisError, OSError) as exc:
            log.warning("login throttle unavailable, attempt let through: %s", exc)
            return 0.0
        return math.ceil(int(wait_ms) / 1000) if int(wait_ms) > 0 else 0.0

    async def failed(self, address: str) -> None:
        """A failed attempt from `address` (the e-mail's was counted when it began)."""
        key = self._address_key(address)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                # the window starts with the first failure (SET NX EX: RedisClient 6.2 has no EXPIRE NX)
                pipe.set(key, 0, ex=self._rules.address_window_seconds, nx=True)
                pipe.incr(key)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("login throttle unavailable, failure not counted: %s", exc)

    async def succeeded(self, email: str) -> None:
        try:
            await self._redis.delete(self._email_key(email))
        except (RedisError, OSError) as exc:
            log.warning("login throttle unavailable, failures not reset: %s", exc)
