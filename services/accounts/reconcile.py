"""`tradeql check`: recompute balances and positions from the ledger and the executions, rebuild
every order from its events, and report every difference from what the accounts, positions and
orders say."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.orders.order_history import history_differences

CHECKS: dict[str, str] = {
    "cash differs from the ledger": """
        SELECT a.id::text AS subject, a.cash AS stored, coalesce(l.total, 0) AS computed
          FROM accounts a
          LEFT JOIN (SELECT account_id, sum(amount) AS total FROM ledger_entries
                      WHERE book = 'cash' AND asset = 'USD' GROUP BY account_id) l
            ON l.account_id = a.id
         WHERE a.cash <> coalesce(l.total, 0)""",
    "reserved cash differs from the open orders' holds": """
        SELECT a.id::text AS subject, a.reserved_cash AS stored, coalesce(o.total, 0) AS computed
          FROM accounts a
          LEFT JOIN (SELECT account_id, sum(reserved_cash) AS total FROM orders
                      WHERE status IN ('PENDING', 'SUBMITTED', 'PARTIALLY_FILLED')
                      GROUP BY account_id) o ON o.account_id = a.id
         WHERE a.reserved_cash <> coalesce(o.total, 0)""",
    "position quantity differs from the ledger": """
        SELECT p.account_id::text || ' ' || p.symbol AS subject, p.quantity AS stored,
               coalesce(l.total, 0) AS computed
          FROM positions p
          LEFT JOIN (SELECT account_id, asset, sum(amount) AS total FROM ledger_entries
                      WHERE book = 'position' GROUP BY account_id, asset) l
            ON l.account_id = p.account_id AND l.asset = p.symbol
         WHERE p.quantity <> coalesce(l.total, 0)""",
    "reserved shares differ from the open sell orders": """
        SELECT p.account_id::text || ' ' || p.symbol AS subject, p.reserved_quantity AS stored,
               coalesce(o.total, 0) AS computed
          FROM positions p
          LEFT JOIN (SELECT account_id, symbol, sum(reserved_quantity) AS total FROM orders
                      WHERE status IN ('PENDING', 'SUBMITTED', 'PARTIALLY_FILLED')
                      GROUP BY account_id, symbol) o
            ON o.account_id = p.account_id AND o.symbol = p.symbol
         WHERE p.reserved_quantity <> coalesce(o.total, 0)""",
    "filled quantity differs from the executions": """
        SELECT o.id::text AS subject, o.filled_quantity AS stored, coalesce(e.total, 0) AS computed
          FROM orders o
          LEFT JOIN (SELECT order_id, sum(quantity) AS total FROM executions GROUP BY order_id) e
            ON e.order_id = o.id
         WHERE o.filled_quantity <> coalesce(e.total, 0)""",
    "a ledger transaction does not balance": """
        SELECT transaction_id::text || ' ' || asset AS subject, sum(amount) AS stored,
               0 AS computed
          FROM ledger_entries GROUP BY transaction_id, asset HAVING sum(amount) <> 0""",
}


async def find_differences(engine: AsyncEngine) -> list[str]:
    problems: list[str] = []
    async with engine.connect() as conn:
        for name, sql in CHECKS.items():
            for row in await conn.execute(text(sql)):
                problems.append(
                    f"{name}: {row.subject}: stored {row.stored}, computed {row.computed}"
                )
    return problems + await history_differences(engine)
