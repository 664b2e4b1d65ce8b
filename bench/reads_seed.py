"""Setup of the reads benchmark: users, accounts, sessions, orders (FILLED, nothing reserved),
executions, positions and the ledger written by a handful of `INSERT ... SELECT` statements over
`generate_series` in one transaction, so 200 users with 500 orders each take seconds. The books
balance (`tradeql check` passes): each user has one deposit (bank -> cash); order i of a user
trades symbol `i % positions` of its holdings, every order a BUY of 10 except a symbol's last, a
SELL of 5, near the symbol's base price (positions at average cost, realized P&L from the sell,
as services/portfolio/positions.py computes them); every other BUY fills in two executions; one
`fill.bench` ledger transaction per user moves the net cash and shares from the venue. Session
tokens are random; only their sha256 hex is stored, as services/accounts/sessions.py does.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

SYMBOL_STRIDE = 13  # user u holds symbols (u * 13 + j) % N, j < positions: distinct per user
DEPOSIT_HEADROOM = Decimal("100000")
PASSWORD = "violet-harbor-lantern-42"  # every user's, one real argon2id hash: `signIn` works


@dataclass(frozen=True)
class SeedPlan:
    users: int
    positions: int
    orders: int  # per user


@dataclass
class SeedResult:
    tokens: list[str]
    symbols: list[str]
    orders: int
    executions: int
    positions: int
    ledger_entries: int
    seconds: float


# Per-order facts, computed once into a temporary table; everything else is derived from it.
# `rounds` is how many orders the user has in that symbol; the last of them is the sell.
_PLAN_SQL = """
CREATE TEMP TABLE bench_orders ON COMMIT DROP AS
SELECT p.*,
       CASE WHEN p.is_sell THEN 'SELL' ELSE 'BUY' END AS side,
       CASE WHEN p.is_sell THEN 5 ELSE 10 END::numeric AS qty,
       round(p.base * (1 + ((p.k * 7 + p.uidx) % 11 - 5) * 0.002), 2) AS price,
       (NOT p.is_sell AND p.k % 2 = 0) AS split
  FROM (SELECT gen_random_uuid() AS id, u.user_id, u.account_id, u.idx AS uidx, g.i,
               g.i / {positions} AS k, s.symbol, s.base,
               ((({orders} - 1 - g.i % {positions}) / {positions}) + 1) >= 2
                 AND g.i / {positions} = ({orders} - 1 - g.i % {positions}) / {positions}
                 AS is_sell,
               now() - ({orders} - g.i) * interval '{step_ms} milliseconds'
                 - u.idx * interval '1 millisecond' AS created_at
          FROM bench_users u
         CROSS JOIN generate_series(0, {orders} - 1) AS g(i)
          JOIN bench_symbols s ON s.idx = (u.idx * {stride} + g.i % {positions}) % {symbols}) p
"""

_ORDERS_SQL = """
INSERT INTO orders (id, user_id, account_id, symbol, side, type, time_in_force, quantity,
                    limit_price, status, filled_quantity, filled_value, reserved_cash,
                    reserved_quantity, version, idempotency_key, created_at, updated_at, filled_at)
SELECT id, user_id, account_id, symbol, side, 'LIMIT', 'DAY', qty, price, 'FILLED', qty,
       qty * price, 0, 0, 2, 'bench-reads-' || i, created_at,
       created_at + interval '1 second', created_at + interval '1 second'
  FROM bench_orders
"""

_EXECUTIONS_SQL = """
INSERT INTO executions (order_id, user_id, symbol, side, quantity, price, venue,
                        venue_execution_id, executed_at)
SELECT o.id, o.user_id, o.symbol, o.side, part.q, o.price, part.venue,
       'bench:' || o.id || ':' || part.n, o.created_at + part.n * interval '100 milliseconds'
  FROM bench_orders o
 CROSS JOIN LATERAL (VALUES (1, CASE WHEN o.split THEN 4 ELSE o.qty END, 'EDGX'),
                            (2, CASE WHEN o.split THEN o.qty - 4 END, 'ARCA'))
       AS part(n, q, venue)
 WHERE part.q IS NOT NULL
"""

# Each order's history (services/orders/order_history.py), so `tradeql check` rebuilds it:
# accepted, then its fills (the seeded orders are FILLED at version 2).
_EVENTS_SQL = """
INSERT INTO order_events (id, created_at, user_id, order_id, version, kind, status, quantity,
                          price, venue, execution_id)
SELECT gen_random_uuid(), t.at, t.user_id, t.order_id, t.version, t.kind, t.status, t.quantity,
       t.price, t.venue, t.execution_id
  FROM (SELECT o.created_at AS at, o.user_id, o.id AS order_id, 0 AS version, 'ACCEPTED' AS kind,
               'PENDING' AS status, o.qty AS quantity, o.price, NULL AS venue,
               NULL::uuid AS execution_id, 0 AS n
          FROM bench_orders o
        UNION ALL
        SELECT e.executed_at, e.user_id, e.order_id, 2,
               CASE WHEN e.venue = 'ARCA' OR NOT o.split THEN 'FILL' ELSE 'PARTIAL_FILL' END,
               CASE WHEN e.venue = 'ARCA' OR NOT o.split THEN 'FILLED' ELSE 'PARTIALLY_FILLED' END,
               e.quantity, e.price, e.venue, e.id, CASE WHEN e.venue = 'ARCA' THEN 2 ELSE 1 END
          FROM executions e JOIN bench_orders o ON o.id = e.order_id) t
 ORDER BY t.order_id, t.n
"""

# Average cost: every buy of a symbol comes before its one sell, so the sell removes
# round(cost x sold / held) and realizes its value less that (services/positions.apply_sell).
_POSITIONS_SQL = """
CREATE TEMP TABLE bench_positions ON COMMIT DROP AS
SELECT account_id, symbol, bought, buy_value, sold, sell_value,
       CASE WHEN sold > 0 THEN round(buy_value * sold / bought, 2) ELSE 0 END AS removed
  FROM (SELECT account_id, symbol,
               sum(qty) FILTER (WHERE side = 'BUY') AS bought,
               sum(qty * price) FILTER (WHERE side = 'BUY') AS buy_value,
               coalesce(sum(qty) FILTER (WHERE side = 'SELL'), 0) AS sold,
               coalesce(sum(qty * price) FILTER (WHERE side = 'SELL'), 0) AS sell_value
          FROM bench_orders GROUP BY account_id, symbol) t;
INSERT INTO positions (account_id, symbol, quantity, reserved_quantity, cost_basis, realized_pnl)
SELECT account_id, symbol, bought - sold, 0, buy_value - removed, sell_value - removed
  FROM bench_positions;
"""

_ACCOUNTS_SQL = """
CREATE TEMP TABLE bench_cash ON COMMIT DROP AS
SELECT u.user_id, u.account_id, c.deposit, c.net
  FROM bench_users u
  JOIN (SELECT account_id,
               ceil(sum(qty * price) FILTER (WHERE side = 'BUY') / 1000) * 1000 + $1 AS deposit,
               coalesce(sum(qty * price) FILTER (WHERE side = 'SELL'), 0)
                 - sum(qty * price) FILTER (WHERE side = 'BUY') AS net
          FROM bench_orders GROUP BY account_id) c ON c.account_id = u.account_id;
INSERT INTO accounts (id, user_id, cash, reserved_cash)
SELECT account_id, user_id, deposit + net, 0 FROM bench_cash;
"""

_LEDGER_SQL = """
INSERT INTO ledger_transactions (kind, reference)
SELECT kind, kind || ':' || user_id FROM bench_cash CROSS JOIN (VALUES ('deposit'), ('fill.bench'))
       AS k(kind);
INSERT INTO ledger_entries (transaction_id, account_id, book, asset, amount)
SELECT t.id, e.account_id, e.book, e.asset, e.amount
  FROM bench_cash c
  JOIN ledger_transactions t ON t.reference = 'deposit:' || c.user_id
 CROSS JOIN LATERAL (VALUES (c.account_id, 'cash', 'USD', c.deposit),
                            (NULL::uuid, 'external:bank', 'USD', -c.deposit))
       AS e(account_id, book, asset, amount);
INSERT INTO ledger_entries (transaction_id, account_id, book, asset, amount)
SELECT t.id, e.account_id, e.book, e.asset, e.amount
  FROM bench_cash c
  JOIN ledger_transactions t ON t.reference = 'fill.bench:' || c.user_id
 CROSS JOIN LATERAL (VALUES (c.account_id, 'cash', 'USD', c.net),
                            (NULL::uuid, 'external:venue', 'USD', -c.net))
       AS e(account_id, book, asset, amount)
 WHERE c.net <> 0;
INSERT INTO ledger_entries (transaction_id, account_id, book, asset, amount)
SELECT t.id, e.account_id, e.book, p.symbol, e.amount
  FROM bench_positions p
  JOIN bench_cash c ON c.account_id = p.account_id
  JOIN ledger_transactions t ON t.reference = 'fill.bench:' || c.user_id
 CROSS JOIN LATERAL (VALUES (p.account_id, 'position', p.bought - p.sold),
                            (NULL::uuid, 'external:venue', p.sold - p.bought))
       AS e(account_id, book, amount)
 WHERE p.bought <> p.sold;
"""


async def _seed(database_url: str, plan: SeedPlan) -> SeedResult:
    import asyncpg
    from argon2 import PasswordHasher

    started = time.perf_counter()
    hasher = PasswordHasher(time_cost=3, memory_cost=65_536, parallelism=2)
    password_hash = await asyncio.to_thread(hasher.hash, PASSWORD)
    tokens = [secrets.token_urlsafe(32) for _ in range(plan.users)]
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        rows = await conn.fetch("SELECT symbol FROM securities WHERE active ORDER BY symbol")
        symbols = [r["symbol"] for r in rows]
        if len(symbols) < plan.positions:
            raise RuntimeError(f"{len(symbols)} securities, fewer than {plan.positions} positions")
        # Enough monthly partitions for the history (it reaches back 20 days).
        await conn.execute(
            "SELECT ensure_order_partition(m::date) FROM generate_series("
            "date_trunc('month', now() - interval '40 days'), date_trunc('month', now()), "
            "interval '1 month') AS m"
        )
        step_ms = 20 * 86_400_000 // plan.orders  # the history spans 20 days, evenly
        async with conn.transaction():
            await conn.execute(
                "CREATE TEMP TABLE bench_symbols ON COMMIT DROP AS SELECT i::int - 1 AS idx, "
                "symbol, base FROM unnest($1::text[], $2::numeric[]) WITH ORDINALITY AS s(symbol, "
                "base, i)", symbols, [base_price(i) for i in range(len(symbols))],
            )  # fmt: skip
            hashes = [hashlib.sha256(t.encode()).hexdigest() for t in tokens]
            await conn.execute(
                "CREATE TEMP TABLE bench_users ON COMMIT DROP AS SELECT i::int - 1 AS idx, "
                "gen_random_uuid() AS user_id, gen_random_uuid() AS account_id, token_hash "
                "FROM unnest($1::text[]) WITH ORDINALITY AS u(token_hash, i)", hashes,
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO users (id, email, password_hash) "
                "SELECT user_id, 'reads-' || idx || '@bench.tradeql.dev', $1 FROM bench_users",
                password_hash,
            )
            await conn.execute(
                "INSERT INTO sessions (user_id, token_hash, expires_at) "
                "SELECT user_id, token_hash, now() + interval '7 days' FROM bench_users"
            )
            await conn.execute(_PLAN_SQL.format(  # integers only, computed here: nothing to inject
                positions=int(plan.positions), orders=int(plan.orders), step_ms=int(step_ms),
                stride=SYMBOL_STRIDE, symbols=len(symbols)))  # fmt: skip
            # Accounts first: positions reference them.
            await conn.execute(_ACCOUNTS_SQL.replace("$1", str(DEPOSIT_HEADROOM)))
            orders = int((await conn.execute(_ORDERS_SQL)).split()[-1])  # "INSERT 0 <rows>"
            executions = int((await conn.execute(_EXECUTIONS_SQL)).split()[-1])
            await conn.execute(_EVENTS_SQL)
            await conn.execute(_POSITIONS_SQL)
            positions = int(await conn.fetchval("SELECT count(*) FROM bench_positions"))
            await conn.execute(_LEDGER_SQL)
            entries = int(await conn.fetchval("SELECT count(*) FROM ledger_entries"))
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    seconds = time.perf_counter() - started
    return SeedResult(tokens, symbols, orders, executions, positions, entries, seconds)


def base_price(index: int) -> Decimal:
    """A deterministic price between $10 and $200 for the index-th symbol."""
    return Decimal(10 + (index * 37) % 190) + Decimal((index * 53) % 100) / 100


def seed_database(database_url: str, plan: SeedPlan) -> SeedResult:
    return asyncio.run(_seed(database_url, plan))


def write_quotes(redis_url: str, symbols: list[str]) -> int:
    """The current quote of every symbol, 1% above its base price, into `quote:{SYM}`
    (QuoteStore.write): how many."""
    from redis.asyncio import Redis

    from services.market_data.marketdata import Quote
    from services.market_data.quote_store import QuoteStore

    now, cent = time.time_ns(), Decimal("0.01")
    lasts = [(base_price(i) * Decimal("1.01")).quantize(cent) for i in range(len(symbols))]
    quotes = [Quote(s, p - cent, p + cent, 100, 200, p, 10_000, now)
              for s, p in zip(symbols, lasts, strict=True)]  # fmt: skip

    async def write() -> int:
        redis: Any = Redis.from_url(redis_url, decode_responses=True)
        try:
            return len(await QuoteStore(redis).write(quotes))
        finally:
            await redis.aclose()

    return asyncio.run(write())
