"""Registration and sign-in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.accounts import sessions
from services.accounts.passwords import Passwords
from services.errors import EmailTaken, InvalidCredentials, InvalidInput
from services.infra import audit
from services.infra.settings import Settings

MAX_EMAIL_LENGTH = 254


@dataclass(frozen=True, slots=True)
class User:
    id: UUID
    email: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SignedIn:
    user: User
    token: str
    expires_at: datetime


def normalize_email(email: str) -> str:
    if len(email) > MAX_EMAIL_LENGTH:
        raise InvalidInput("email is too long", field="email")
    try:
        return validate_email(email.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InvalidInput(f"email is not valid: {exc}", field="email") from exc


class Accounts:
    """Users and their sign-in: register, login, and lookups."""

    def __init__(self, engine: AsyncEngine, settings: Settings, passwords: Passwords) -> None:
        self._engine = engine
        self._settings = settings
        self._passwords = passwords

    async def register(self, email: str, password: str) -> SignedIn:
        normalized = normalize_email(email)
        local_part = normalized.split("@", 1)[0]
        self._passwords.check_strength(password, user_inputs=[normalized, local_part, "tradeql"])
        password_hash = await self._passwords.hash(password)
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO users (email, password_hash) VALUES (:e, :p) "
                        "ON CONFLICT DO NOTHING RETURNING id, email, created_at"
                    ),
                    {"e": normalized, "p": password_hash},
                )
            ).first()
            if row is None:
                raise EmailTaken("an account with this email already exists", field="email")
            user = User(row.id, row.email, row.created_at)
            await conn.execute(text("INSERT INTO accounts (user_id) VALUES (:u)"), {"u": user.id})
            await audit.record(
                conn,
                user_id=user.id,
                action="user.registered",
                entity_type="user",
                entity_id=str(user.id),
            )
            return await self._sign_in(conn, user)

    async def login(self, email: str, password: str) -> SignedIn:
        try:
            normalized = normalize_email(email)
        except InvalidInput:
            normalized = None
        row = None
        if normalized is not None:
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(
                        text(
                            "SELECT id, email, created_at, password_hash FROM users "
                            "WHERE lower(email) = lower(:e)"
                        ),
                        {"e": normalized},
                    )
                ).first()
        # Verify even when the user is unknown, against a decoy hash, so timing tells nothing.
        valid = await self._passwords.verify(row.password_hash if row else None, password)
        if row is None or not valid:
            raise InvalidCredentials("email or password is incorrect")
        user = User(row.id, row.email, row.created_at)
        async with self._engine.begin() as conn:
            if self._passwords.needs_rehash(row.password_hash):
                await conn.execute(
                    text("UPDATE users SET password_hash = :p WHERE id = :u"),
                    {"p": await self._passwords.hash(password), "u": user.id},
                )
            return await self._sign_in(conn, user)

    async def _sign_in(self, conn: AsyncConnection, user: User) -> SignedIn:
        issued = await sessions.issue(conn, self._settings, user.id)
        await audit.record(
            conn,
            user_id=user.id,
            action="session.created",
            entity_type="session",
            entity_id=str(issued.session.session_id),
        )
        return SignedIn(user, issued.token, issued.session.expires_at)

    async def users_by_id(self, ids: list[UUID]) -> list[User | None]:
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT id, email, created_at FROM users WHERE id = ANY(:ids)"),
                    {"ids": ids},
                )
            ).all()
        found = {r.id: User(r.id, r.email, r.created_at) for r in rows}
        return [found.get(i) for i in ids]
