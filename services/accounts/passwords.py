"""Password hashing (argon2id, via argon2-cffi) and the strength rule (via zxcvbn)."""

from __future__ import annotations

import asyncio
from functools import cached_property

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from zxcvbn import zxcvbn

from services.errors import InvalidInput, WeakPassword
from services.infra.settings import Settings

MAX_PASSWORD_LENGTH = 256
# zxcvbn's matching is super-linear; its verdict on the first 64 characters is the one that counts.
STRENGTH_CHECK_PREFIX = 64


class Passwords:
    """Hashes in a worker thread: argon2id is deliberately slow and must not block the loop."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._hasher = PasswordHasher(
            time_cost=settings.password_hash_time_cost,
            memory_cost=settings.password_hash_memory_kib,
            parallelism=settings.password_hash_parallelism,
        )

    @cached_property
    def _decoy_hash(self) -> str:
        """A real hash to verify against when the email is unknown, so both paths cost the same."""
        return self._hasher.hash("decoy password that matches nothing")

    def check_strength(self, password: str, *, user_inputs: list[str]) -> None:
        if len(password) > MAX_PASSWORD_LENGTH:
            raise InvalidInput(
                f"password must be at most {MAX_PASSWORD_LENGTH} characters", field="password"
            )
        if len(password) < self._settings.password_min_length:
            raise WeakPassword(
                f"password must be at least {self._settings.password_min_length} characters",
                field="password",
            )
        verdict = zxcvbn(password[:STRENGTH_CHECK_PREFIX], user_inputs=user_inputs)
        if verdict["score"] < self._settings.password_min_score:
            hint = verdict["feedback"].get("warning") or "it is too easy to guess"
            raise WeakPassword(f"password is too weak: {hint}".rstrip("."), field="password")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        target = stored_hash or self._decoy_hash
        try:
            ok = await asyncio.to_thread(self._hasher.verify, target, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return bool(ok) and stored_hash is not None

    def needs_rehash(self, stored_hash: str) -> bool:
        return self._hasher.check_needs_rehash(stored_hash)
