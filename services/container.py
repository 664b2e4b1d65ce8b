"""Everything long-lived a process needs, built once from the settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.accounts import Cash
from services.db import create_engine
from services.passwords import Passwords
from services.redis import create_redis
from services.sessions import SessionStore
from services.settings import Settings
from services.users import Accounts


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    redis: Redis
    passwords: Passwords = field(init=False)
    users: Accounts = field(init=False)
    sessions: SessionStore = field(init=False)
    cash: Cash = field(init=False)

    def __post_init__(self) -> None:
        self.passwords = Passwords(self.settings)
        self.users = Accounts(self.engine, self.settings, self.passwords)
        self.sessions = SessionStore(self.engine, self.redis, self.settings)
        self.cash = Cash(self.engine, self.settings)

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        return cls(settings=settings, engine=create_engine(settings), redis=create_redis(settings))

    async def close(self) -> None:
        await self.redis.aclose()
        await self.engine.dispose()
