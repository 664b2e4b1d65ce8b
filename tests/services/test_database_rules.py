"""Rules the database itself enforces, whatever the application does."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from services.accounts import ledger
from services.infra import audit
from services.infra.container import Services


async def _an_account(services: Services) -> uuid.UUID:
    async with services.engine.begin() as conn:
        user_id = (
            await conn.execute(
                text("INSERT INTO users (email, password_hash) VALUES (:e, 'x') RETURNING id"),
                {"e": f"db-{uuid.uuid4().hex[:8]}@example.com"},
            )
        ).scalar_one()
        return (
            await conn.execute(
                text("INSERT INTO accounts (user_id) VALUES (:u) RETURNING id"), {"u": user_id}
            )
        ).scalar_one()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET action = 'forged'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ],
)
async def test_the_audit_log_refuses_update_delete_and_truncate(
    services: Services, statement: str
) -> None:
    async with services.engine.begin() as conn:
        await audit.record(
            conn, user_id=None, action="test.recorded", entity_type="test", entity_id="1"
        )
    with pytest.raises(DBAPIError, match="append-only"):
        async with services.engine.begin() as conn:
            await conn.execute(text(statement))
    async with services.engine.connect() as conn:
        count = (
            await conn.execute(
                text("SELECT count(*) FROM audit_log WHERE action = 'test.recorded'")
            )
        ).scalar_one()
    assert count >= 1


async def test_public_has_no_update_or_delete_privilege_on_the_audit_log(
    services: Services,
) -> None:
    async with services.engine.connect() as conn:
        granted = (
            await conn.execute(
                text(
                    "SELECT has_table_privilege('public', 'audit_log', 'UPDATE') "
                    "OR has_table_privilege('public', 'audit_log', 'DELETE')"
                )
            )
        ).scalar_one()
    assert granted is False


@pytest.mark.parametrize(
    "statement", ["UPDATE ledger_entries SET amount = 1", "DELETE FROM ledger_entries"]
)
async def test_ledger_entries_are_append_only(services: Services, statement: str) -> None:
    account_id = await _an_account(services)
    async with services.engine.begin() as conn:
        await ledger.post(
            conn,
            kind="test",
            reference="r",
            entries=ledger.cash_transfer(account_id, Decimal("5.00"), ledger.BANK),
        )
        # The cash the entry moves, so the books of the shared test database still balance.
        await conn.execute(
            text("UPDATE accounts SET cash = cash + 5 WHERE id = :a"), {"a": account_id}
        )
    with pytest.raises(DBAPIError, match="append-only"):
        async with services.engine.begin() as conn:
            await conn.execute(text(statement))


async def test_an_unbalanced_ledger_transaction_is_refused_at_commit(services: Services) -> None:
    account_id = await _an_account(services)
    with pytest.raises(DBAPIError, match="does not balance"):
        async with services.engine.begin() as conn:
            transaction_id = (
                await conn.execute(
                    text("INSERT INTO ledger_transactions (kind) VALUES ('test') RETURNING id")
                )
            ).scalar_one()
            await conn.execute(
                text(
                    "INSERT INTO ledger_entries (transaction_id, account_id, book, asset, amount) "
                    "VALUES (:t, :a, 'cash', 'USD', 10)"
                ),
                {"t": transaction_id, "a": account_id},
            )


def test_the_ledger_refuses_unbalanced_entries_before_the_database_does() -> None:
    with pytest.raises(ledger.UnbalancedTransaction):
        ledger.check_balanced([ledger.Entry("cash", "USD", Decimal("1"), uuid.uuid4())])
    ledger.check_balanced(ledger.cash_transfer(uuid.uuid4(), Decimal("3.10"), ledger.BANK))


async def test_cash_can_never_go_negative(services: Services) -> None:
    account_id = await _an_account(services)
    with pytest.raises(DBAPIError, match="check"):
        async with services.engine.begin() as conn:
            await conn.execute(
                text("UPDATE accounts SET cash = cash - 0.01 WHERE id = :a"), {"a": account_id}
            )


async def test_emails_are_unique_ignoring_case(services: Services) -> None:
    email = f"case-{uuid.uuid4().hex[:8]}@example.com"
    async with services.engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO users (email, password_hash) VALUES (:e, 'x')"), {"e": email}
        )
    with pytest.raises(DBAPIError, match="users_email_lower_key"):
        async with services.engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO users (email, password_hash) VALUES (:e, 'x')"),
                {"e": email.upper()},
            )
