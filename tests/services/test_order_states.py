"""The order state machine: `TRANSITIONS`/`can_transition` in Python and the database trigger
`orders_check_transition` agree on every pair of statuses."""

from __future__ import annotations

import importlib.util
import itertools
import uuid
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.infra.container import Services
from services.orders.order_model import (
    OPEN_STATUSES,
    TERMINAL_STATUSES,
    TRANSITIONS,
    Status,
    can_transition,
)

ALL_PAIRS = list(itertools.product(Status, Status))
VERSIONS = Path(__file__).resolve().parents[2] / "alembic" / "versions"
MIGRATIONS = [VERSIONS / "0003_orders.py", VERSIONS / "0009_trailing_stops_and_replace.py"]


@pytest_asyncio.fixture(scope="module")
async def owner(services: Services) -> tuple[uuid.UUID, uuid.UUID]:
    """(user id, account id) of a user made with SQL, whose orders the tests insert."""
    async with services.engine.begin() as conn:
        user_id = (
            await conn.execute(
                text("INSERT INTO users (email, password_hash) VALUES (:e, 'x') RETURNING id"),
                {"e": f"states-{uuid.uuid4().hex[:10]}@example.com"},
            )
        ).scalar_one()
        account_id = (
            await conn.execute(
                text("INSERT INTO accounts (user_id) VALUES (:u) RETURNING id"), {"u": user_id}
            )
        ).scalar_one()
    return user_id, account_id


async def insert_order(
    conn: AsyncConnection, owner: tuple[uuid.UUID, uuid.UUID], status: Status
) -> uuid.UUID:
    order_id = uuid.uuid4()
    await conn.execute(
        text(
            "INSERT INTO orders (id, user_id, account_id, symbol, side, type, time_in_force, "
            "quantity, limit_price, status, idempotency_key, reserved_cash, reserved_quantity, "
            "replaced_by) VALUES (:id, :u, :a, 'STATES', 'BUY', 'LIMIT', 'DAY', 10, 100, :status, "
            ":k, 0, 0, CASE WHEN :status = 'REPLACED' THEN gen_random_uuid() END)"
        ),
        {
            "id": order_id,
            "u": owner[0],
            "a": owner[1],
            "status": status.value,
            "k": f"states-{order_id}",
        },
    )
    return order_id


async def database_allows(
    services: Services,
    owner: tuple[uuid.UUID, uuid.UUID],
    current: Status,
    new: Status,
    *,
    # a REPLACED order names its successor (a CHECK): the update names one when it replaces
    statement: str = "UPDATE orders SET status = :new, replaced_by = CASE WHEN :new = 'REPLACED' "
    "THEN gen_random_uuid() END WHERE id = :id",
) -> bool:
    """Insert an order in `current`, try `statement` on it, and roll everything back."""
    async with services.engine.connect() as conn:
        outer = await conn.begin()
        try:
            order_id = await insert_order(conn, owner, current)
            try:
                async with conn.begin_nested():
                    result = await conn.execute(text(statement), {"new": new.value, "id": order_id})
                    assert result.rowcount == 1
                    stored = (
                        await conn.execute(
                            text("SELECT status FROM orders WHERE id = :id"), {"id": order_id}
                        )
                    ).scalar_one()
                    if "SET status" in statement:
                        assert stored == new.value
                return True
            except DBAPIError as exc:
                assert getattr(exc.orig, "sqlstate", None) == "23514", exc  # check_violation
                message = str(exc.orig)
                assert "can no longer change" in message or "cannot go from" in message, message
                return False
        finally:
            await outer.rollback()


async def test_python_transitions_equal_the_order_transitions_table(services: Services) -> None:
    async with services.engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT from_status, to_status FROM order_transitions"))
        ).all()
    in_database = {(Status(a), Status(b)) for a, b in rows}
    assert len(rows) == len(in_database)
    assert in_database == set(TRANSITIONS)


def test_python_transitions_equal_the_migration_lists() -> None:
    listed: list[tuple[str, str]] = []
    for path in MIGRATIONS:
        spec = importlib.util.spec_from_file_location(f"migration_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        listed += getattr(module, "TRANSITIONS", []) + getattr(module, "ADDED_TRANSITIONS", [])
    assert {(Status(a), Status(b)) for a, b in listed} == set(TRANSITIONS)
    assert len(listed) == len(TRANSITIONS)


def test_no_transition_leaves_a_terminal_status_or_enters_pending() -> None:
    assert all(a not in TERMINAL_STATUSES for a, _ in TRANSITIONS)
    assert all(b is not Status.PENDING for _, b in TRANSITIONS)
    assert all(a != b for a, b in TRANSITIONS)
    assert OPEN_STATUSES | TERMINAL_STATUSES == set(Status)
    assert not OPEN_STATUSES & TERMINAL_STATUSES


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        (Status.PENDING, Status.SUBMITTED, True),
        (Status.SUBMITTED, Status.PARTIALLY_FILLED, True),
        (Status.PARTIALLY_FILLED, Status.PARTIALLY_FILLED, True),  # more fills: no transition
        (Status.PENDING, Status.PENDING, True),
        (Status.PARTIALLY_FILLED, Status.FILLED, True),
        (Status.PARTIALLY_FILLED, Status.REJECTED, False),  # filled shares cannot be rejected
        (Status.PARTIALLY_FILLED, Status.SUBMITTED, False),
        (Status.SUBMITTED, Status.PENDING, False),
        (Status.FILLED, Status.FILLED, False),  # terminal: not even to itself
        (Status.CANCELLED, Status.CANCELLED, False),
        (Status.FILLED, Status.CANCELLED, False),
        (Status.CANCELLED, Status.FILLED, False),
        (Status.EXPIRED, Status.SUBMITTED, False),
        (Status.REJECTED, Status.PENDING, False),
    ],
)
def test_can_transition_on_chosen_pairs(current: Status, new: Status, allowed: bool) -> None:
    assert can_transition(current, new) is allowed


@pytest.mark.parametrize(
    ("current", "new"), ALL_PAIRS, ids=[f"{a.value}->{b.value}" for a, b in ALL_PAIRS]
)
async def test_can_transition_agrees_with_the_database_trigger(
    services: Services, owner: tuple[uuid.UUID, uuid.UUID], current: Status, new: Status
) -> None:
    expected = can_transition(current, new)
    assert expected == (
        (current, new) in TRANSITIONS or (current == new and current in OPEN_STATUSES)
    )
    assert await database_allows(services, owner, current, new) is expected


@pytest.mark.parametrize("status", list(Status), ids=[s.value for s in Status])
async def test_a_terminal_order_refuses_any_update_even_of_another_column(
    services: Services, owner: tuple[uuid.UUID, uuid.UUID], status: Status
) -> None:
    allowed = await database_allows(
        services,
        owner,
        status,
        status,
        statement="UPDATE orders SET reject_reason = 'touched', version = version + 1 "
        "WHERE id = :id AND CAST(:new AS text) IS NOT NULL",
    )
    assert allowed is (status in OPEN_STATUSES)


async def test_the_attempts_leave_no_rows_behind(
    services: Services, owner: tuple[uuid.UUID, uuid.UUID]
) -> None:
    assert await database_allows(services, owner, Status.PENDING, Status.SUBMITTED)
    async with services.engine.connect() as conn:
        count = (
            await conn.execute(
                text("SELECT count(*) FROM orders WHERE account_id = :a"), {"a": owner[1]}
            )
        ).scalar_one()
    assert count == 0
