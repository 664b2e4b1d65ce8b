"""The double-entry ledger: every movement of cash or shares is entries that sum to zero."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

USD = "USD"
BANK = "external:bank"
VENUE = "external:venue"
CASH = "cash"
POSITION = "position"


@dataclass(frozen=True, slots=True)
class Entry:
    book: str
    asset: str
    amount: Decimal
    account_id: UUID | None = None


class UnbalancedTransaction(ValueError):
    pass


def check_balanced(entries: list[Entry]) -> None:
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for entry in entries:
        totals[entry.asset] += entry.amount
    unbalanced = {asset: total for asset, total in totals.items() if total != 0}
    if unbalanced:
        raise UnbalancedTransaction(f"entries do not sum to zero: {unbalanced}")


async def post(conn: AsyncConnection, *, kind: str, reference: str, entries: list[Entry]) -> int:
    """Write one ledger transaction. The database checks the balance again at commit."""
    check_balanced(entries)
    transaction_id = (
        await conn.execute(
            text("INSERT INTO ledger_transactions (kind, reference) VALUES (:k, :r) RETURNING id"),
            {"k": kind, "r": reference},
        )
    ).scalar_one()
    await conn.execute(
        text(
            "INSERT INTO ledger_entries (transaction_id, account_id, book, asset, amount) "
            "VALUES (:t, :account_id, :book, :asset, :amount)"
        ),
        [
            {
                "t": transaction_id,
                "account_id": e.account_id,
                "book": e.book,
                "asset": e.asset,
                "amount": e.amount,
            }
            for e in entries
        ],
    )
    return int(transaction_id)


def cash_transfer(account_id: UUID, amount: Decimal, counterparty: str) -> list[Entry]:
    """`amount` of cash into the account (out of it when negative), from `counterparty`."""
    return [
        Entry(book=CASH, asset=USD, amount=amount, account_id=account_id),
        Entry(book=counterparty, asset=USD, amount=-amount),
    ]
