"""Cash accounts: balances and deposits."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.accounts import ledger
from services.errors import NotFound
from services.infra import audit, idempotency
from services.infra.redis import RedisClient
from services.infra.settings import Settings
from services.money import parse_cash_amount
from services.portfolio.holdings_version import forget_now

DEPOSIT_SCOPE = "deposit"
log = logging.getLogger("tradeql.accounts")


@dataclass(frozen=True, slots=True)
class Balances:
    account_id: UUID
    cash: Decimal
    reserved_cash: Decimal

    @property
    def buying_power(self) -> Decimal:
        """Cash less what open buy orders hold back, never below zero."""
        return max(self.cash - self.reserved_cash, Decimal("0.00"))


async def read_balances(conn: AsyncConnection, user_id: UUID, *, lock: bool = False) -> Balances:
    sql = "SELECT id, cash, reserved_cash FROM accounts WHERE user_id = :u"
    row = (await conn.execute(text(sql + (" FOR UPDATE" if lock else "")), {"u": user_id})).first()
    if row is None:
        raise NotFound("no account for this user")
    return Balances(row.id, row.cash, row.reserved_cash)


class Cash:
    def __init__(self, engine: AsyncEngine, redis: RedisClient, settings: Settings) -> None:
        self._engine = engine
        self._redis = redis
        self._settings = settings

    async def balances(self, user_id: UUID) -> Balances:
        async with self._engine.connect() as conn:
            return await read_balances(conn, user_id)

    async def deposit(self, user_id: UUID, amount: Decimal, idempotency_key: str) -> Balances:
        """A simulated bank transfer in. The same key never moves money twice."""
        amount = parse_cash_amount(amount, "amount", maximum=self._settings.deposit_max)
        key = idempotency.validate_key(idempotency_key)
        fingerprint = idempotency.request_fingerprint({"amount": str(amount)})
        balances = await self._deposit(user_id, amount, key, fingerprint)
        try:
            await forget_now(self._redis, [user_id])
        except (RedisError, OSError) as exc:  # the money moved: a cached copy ages out instead
            log.warning("cached holdings of %s not retired after a deposit: %s", user_id, exc)
        return balances

    async def _deposit(
        self, user_id: UUID, amount: Decimal, key: str, fingerprint: str
    ) -> Balances:
        async with self._engine.begin() as conn:
            claim = await idempotency.claim(
                conn, user_id=user_id, scope=DEPOSIT_SCOPE, key=key, fingerprint=fingerprint
            )
            if not claim.is_new:
                return await read_balances(conn, user_id)
            row = (
                await conn.execute(
                    text(
                        "UPDATE accounts SET cash = cash + :a, updated_at = now() "
                        "WHERE user_id = :u RETURNING id, cash, reserved_cash"
                    ),
                    {"a": amount, "u": user_id},
                )
            ).first()
            if row is None:
                raise NotFound("no account for this user")
            transaction_id = await ledger.post(
                conn,
                kind="deposit",
                reference=key,
                entries=ledger.cash_transfer(row.id, amount, ledger.BANK),
            )
            await idempotency.attach_resource(
                conn, user_id=user_id, scope=DEPOSIT_SCOPE, key=key, resource_id=str(transaction_id)
            )
            await audit.record(
                conn,
                user_id=user_id,
                action="cash.deposited",
                entity_type="account",
                entity_id=str(row.id),
                details={"amount": str(amount), "ledger_transaction": transaction_id},
            )
            return Balances(row.id, row.cash, row.reserved_cash)
