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


@dataclass(frozen=True, slots=True)
class Posting:
    """One ledger transaction: its kind, what it refers to, and its balanced entries."""

    kind: str
    reference: str
    entries: list[Entry]


# One round trip for any number of transactions: ids drawn first, so each entry names its own
# transaction (a reference need not be unique); the FK is checked at the end of the statement.
_POST_MANY = text(
    """
    WITH tx AS (
        SELECT nextval(pg_get_serial_sequence('ledger_transactions', 'id')) AS id, t.kind,
               t.reference, t.ord
          FROM unnest(CAST(:kinds AS text[]), CAST(:references AS text[]))
               WITH ORDINALITY AS t(kind, reference, ord)
    ), written AS (
        INSERT INTO ledger_transactions (id, kind, reference) OVERRIDING SYSTEM VALUE
        SELECT id, kind, reference FROM tx ORDER BY ord
    ), entries AS (
        INSERT INTO ledger_entries (transaction_id, account_id, book, asset, amount)
        SELECT tx.id, e.account_id, e.book, e.asset, e.amount
          FROM unnest(CAST(:entry_tx AS bigint[]), CAST(:accounts AS uuid[]),
                      CAST(:books AS text[]), CAST(:assets AS text[]),
                      CAST(:amounts AS numeric[])) WITH ORDINALITY
               AS e(tx_ord, account_id, book, asset, amount, ord)
          JOIN tx ON tx.ord = e.tx_ord
         ORDER BY e.ord
    )
    SELECT id FROM tx ORDER BY ord
    """
)


async def post_many(conn: AsyncConnection, postings: list[Posting]) -> list[int]:
    """Write ledger transactions in one statement; their ids in order. The database checks
    each one's balance again at commit."""
    if not postings:
        return []
    for posting in postings:
        check_balanced(posting.entries)
    numbered = [(n, e) for n, p in enumerate(postings, start=1) for e in p.entries]
    rows = await conn.execute(
        _POST_MANY,
        {
            "kinds": [p.kind for p in postings],
            "references": [p.reference for p in postings],
            "entry_tx": [n for n, _ in numbered],
            "accounts": [e.account_id for _, e in numbered],
            "books": [e.book for _, e in numbered],
            "assets": [e.asset for _, e in numbered],
            "amounts": [e.amount for _, e in numbered],
        },
    )
    return [int(row.id) for row in rows]


async def post(conn: AsyncConnection, *, kind: str, reference: str, entries: list[Entry]) -> int:
    """Write one ledger transaction. The database checks the balance again at commit."""
    (transaction_id,) = await post_many(conn, [Posting(kind, reference, entries)])
    return transaction_id


def cash_transfer(account_id: UUID, amount: Decimal, counterparty: str) -> list[Entry]:
    """`amount` of cash into the account (out of it when negative), from `counterparty`."""
    return [
        Entry(book=CASH, asset=USD, amount=amount, account_id=account_id),
        Entry(book=counterparty, asset=USD, amount=-amount),
    ]
