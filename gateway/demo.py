"""Demo data for `tradeql up`: a signed-up user with cash, created once."""

from __future__ import annotations

import logging
from decimal import Decimal

from sqlalchemy import text

from services.errors import EmailTaken
from services.infra.container import Services

log = logging.getLogger("tradeql.demo")

DEMO_EMAIL = "demo@tradeql.dev"
DEMO_PASSWORD = "tradeql-demo-password"
DEMO_CASH = Decimal("100000.00")


async def seed_demo_data(services: Services) -> None:
    try:
        await services.users.register(DEMO_EMAIL, DEMO_PASSWORD)
    except EmailTaken:
        pass
    async with services.engine.connect() as conn:
        user_id = (
            await conn.execute(
                text("SELECT id FROM users WHERE lower(email) = :e"), {"e": DEMO_EMAIL}
            )
        ).scalar_one()
    await services.cash.deposit(user_id, DEMO_CASH, "demo-initial-deposit")
    log.info("demo user %s (password %s) has cash", DEMO_EMAIL, DEMO_PASSWORD)
