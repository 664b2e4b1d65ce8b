"""Current quotes in Redis: one hash `quote:{SYMBOL}` each, written only forward in time."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from redis.exceptions import NoScriptError

from services.infra.keys import ns, tag
from services.infra.redis import RedisClient, is_cluster
from services.market_data.marketdata import FIELD_SEPARATOR, RECORD_SEPARATOR, Quote, encode_quote

FIELDS = ("bid", "ask", "bid_size", "ask_size", "last", "volume", "ts")

# Writes each quote whose source time is not older than the stored one, in one call for a whole
# batch sent as one argument (the window's records, as on the stream: packing 8 arguments a quote
# cost the quote cache more than all its other work); returns the 1-based positions written.
# On one server the keys are built inside the script (ARGV[2] the prefix); in a cluster, where a
# script may touch one hash slot only, each quote is its own call with its key in KEYS (pipelined
# per node). Two quote-cache processes that read the same symbol out of order can therefore never
# move a quote back in time. Source times are nanoseconds,
# beyond the 53 bits of a Lua number (tonumber would round them to 256 ns): they are compared
# exactly, as strings of decimal digits.
_WRITE_NEWER = """
local function digits(s)
  return (string.gsub(s, '^0+(%d)', '%1'))
end
local function not_after(a, b)
  a, b = digits(a), digits(b)
  if #a ~= #b then
    return #a < #b
  end
  return a <= b
end
local written = {}
local i = 0
for line in string.gmatch(ARGV[1], '[^\\n]+') do
  i = i + 1
  local f = {}
  for field in string.gmatch(line, '[^|]+') do
    f[#f + 1] = field
  end
  local key = KEYS[i] or ('{' .. f[1] .. '}')
  key = ARGV[2] .. key
  local stored = redis.call('HGET', key, 'ts')
  if (not stored) or not_after(stored, f[8]) then
    redis.call('HSET', key, 'bid', f[2], 'ask', f[3], 'bid_size', f[4], 'ask_size', f[5],
      'last', f[6], 'volume', f[7], 'ts', f[8])
    written[#written + 1] = i
  end
end
return written
"""


def quotes_channel() -> str:
    """Where each coalescing window's changed quotes are published (one message a window), on
    one Redis server."""
    return ns("md:quotes")


def partition_quotes_channel(partition: int) -> str:
    """In a cluster: a stream partition's share of each window, a sharded channel in the
    partition's slot (one channel for every quote would put all of them on one node)."""
    return ns(f"md:quotes:live:{tag(partition)}")


def quote_channels(partitions: int, cluster: bool) -> list[str]:
    """The channels an API process listens to for live quotes."""
    if cluster:
        return [partition_quotes_channel(p) for p in range(partitions)]
    return [quotes_channel()]


def quote_key(symbol: str) -> str:
    return ns(f"quote:{tag(symbol)}")


class QuoteStore:
    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._write_newer = redis.register_script(_WRITE_NEWER)

    async def write(self, quotes: Sequence[Quote]) -> list[Quote]:
        """Store a batch in one round trip; return the quotes that were newer than what was held."""
        records = [encode_quote(q).split(FIELD_SEPARATOR) for q in quotes]
        written = await self.write_records(records)
        return [quotes[i] for i in written]

    async def write_records(self, records: Sequence[list[str]]) -> list[int]:
        """The hot path of the quote cache: records already split into their wire fields
        (symbol, bid, ask, bid_size, ask_size, last, volume, ts), so nothing is parsed twice.
        Returns the 0-based positions of the records that were written."""
        if not records:
            return []
        if is_cluster(self._redis):
            return await self._write_per_slot(records)
        payload = RECORD_SEPARATOR.join(FIELD_SEPARATOR.join(r) for r in records)
        written = await self._write_newer(keys=[], args=[payload, ns("quote:")])
        return [i - 1 for i in written]

    async def _write_per_slot(self, records: Sequence[list[str]]) -> list[int]:
        """One script call per quote, each with its key declared, pipelined (a round trip per
        node); a NOSCRIPT (first use, or a node restarted or flushed its scripts) loads the script
        on every master and sends the window again."""
        sha = self._write_newer.sha
        for attempt in range(2):
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for record in records:
                        pipe.evalsha(sha, 1, quote_key(record[0]), FIELD_SEPARATOR.join(record), "")
                    replies = await pipe.execute()
                return [i for i, reply in enumerate(replies) if reply]
            except NoScriptError:
                if attempt:
                    raise
                await self._redis.script_load(_WRITE_NEWER)
        raise AssertionError("unreachable")

    async def read(self, symbols: Sequence[str]) -> list[Quote | None]:
        """Many symbols in one round trip (a pipeline of HGETALL), in the order asked."""
        if not symbols:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for symbol in symbols:
                pipe.hgetall(quote_key(symbol))
            rows = await pipe.execute()
        return [_from_hash(symbol, row) for symbol, row in zip(symbols, rows, strict=True)]


def _from_hash(symbol: str, row: dict[str, str]) -> Quote | None:
    if not row or "ts" not in row:
        return None
    return Quote(
        symbol=symbol,
        bid=Decimal(row["bid"]),
        ask=Decimal(row["ask"]),
        bid_size=int(row["bid_size"]),
        ask_size=int(row["ask_size"]),
        last=Decimal(row["last"]),
        volume=int(row["volume"]),
        timestamp_ns=int(row["ts"]),
    )
