"""Watchlists: a user's named lists of symbols, in the order they were added.

Every use case is one transaction and takes the owner's id: a list of someone else's is
`NotFound`, exactly like a missing one. Limits are counted under a row lock (the user's row when
creating a list, the list's row when adding to it), so concurrent requests at the limit can never
both get past it. Each change writes its audit row in the transaction that makes it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.errors import InvalidInput, LimitExceeded, NotFound, UnknownSymbol
from services.infra import audit
from services.infra.replica import ReadRouter
from services.market_data.securities import is_valid_symbol, normalize_symbol

MAX_NAME_LENGTH = 100
# Control characters and line breaks have no place in a list's name (the database refuses the
# control characters too).
_REFUSED_IN_NAMES = {"Cc", "Zl", "Zp"}

_SELECT_LISTS = text(
    "SELECT w.id, w.name, w.created_at, ARRAY(SELECT i.symbol FROM watchlist_items i "
    "WHERE i.watchlist_id = w.id ORDER BY i.position) AS symbols "
    "FROM watchlists w WHERE w.user_id = :u ORDER BY w.created_at, w.id"
)


@dataclass(frozen=True, slots=True)
class Watchlist:
    id: UUID
    name: str
    symbols: tuple[str, ...]
    created_at: datetime


def normalize_name(name: str) -> str:
    """Trimmed, 1-100 characters, no control characters; else InvalidInput on `name`."""
    trimmed = name.strip()
    if not trimmed:
        raise InvalidInput("give the watchlist a name", field="name")
    if len(trimmed) > MAX_NAME_LENGTH:
        raise InvalidInput(f"a name has at most {MAX_NAME_LENGTH} characters", field="name")
    if any(unicodedata.category(c) in _REFUSED_IN_NAMES for c in trimmed):
        raise InvalidInput("a name cannot hold control characters or line breaks", field="name")
    return trimmed


def normalize_symbols(symbols: Sequence[str], field: str) -> list[str]:
    """Upper-cased and trimmed, duplicates dropped (the first occurrence keeps its place)."""
    normalized: list[str] = []
    for symbol in symbols:
        clean = normalize_symbol(symbol)
        if not is_valid_symbol(clean):
            raise InvalidInput(f"{symbol[:40]!r} is not a symbol", field=field)
        normalized.append(clean)
    return list(dict.fromkeys(normalized))


async def _require_listed(conn: AsyncConnection, symbols: Sequence[str], field: str) -> None:
    if not symbols:
        return
    rows = await conn.execute(
        text("SELECT symbol FROM securities WHERE symbol = ANY(:s) AND active"),
        {"s": list(symbols)},
    )
    known = {r.symbol for r in rows}
    unknown = [s for s in symbols if s not in known]
    if unknown:
        raise UnknownSymbol(f"not a listed security: {', '.join(unknown)}", field=field)


class Watchlists:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_lists: int,
        max_symbols: int,
        reads: ReadRouter | None = None,
    ) -> None:
        self._engine = engine
        self._reads = reads
        self.max_lists = max_lists
        self.max_symbols = max_symbols

    async def lists(self, user_id: UUID) -> list[Watchlist]:
        """All of the user's lists in creation order, each with its symbols: one query (on the
        replica once it has the user's last change)."""
        engine = await self._reads.engine_for(user_id) if self._reads else self._engine
        async with engine.connect() as conn:
            rows = await conn.execute(_SELECT_LISTS, {"u": user_id})
            return [Watchlist(r.id, r.name, tuple(r.symbols), r.created_at) for r in rows]

    async def create(self, user_id: UUID, name: str, symbols: Sequence[str] = ()) -> Watchlist:
        """A new list, with its first symbols in the order given (duplicates dropped). Every
        symbol must be listed, or nothing is created."""
        name = normalize_name(name)
        wanted = normalize_symbols(symbols, "symbols")
        if len(wanted) > self.max_symbols:
            raise LimitExceeded(
                f"a watchlist holds at most {self.max_symbols} symbols", field="symbols"
            )
        async with self._writing(user_id) as conn:
            await _require_listed(conn, wanted, "symbols")
            await self._lock_owner(conn, user_id)
            count = (
                await conn.execute(
                    text("SELECT count(*) FROM watchlists WHERE user_id = :u"), {"u": user_id}
                )
            ).scalar_one()
            if count >= self.max_lists:
                raise LimitExceeded(f"you can have at most {self.max_lists} watchlists")
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO watchlists (user_id, name) VALUES (:u, :n) "
                        "ON CONFLICT DO NOTHING RETURNING id, created_at"
                    ),
                    {"u": user_id, "n": name},
                )
            ).first()
            if row is None:
                raise InvalidInput(f"you already have a watchlist named {name!r}", field="name")
            if wanted:
                await conn.execute(
                    text(
                        "INSERT INTO watchlist_items (watchlist_id, symbol, position) "
                        "SELECT :w, s.symbol, s.n - 1 "
                        "FROM unnest(CAST(:s AS text[])) WITH ORDINALITY AS s(symbol, n)"
                    ),
                    {"w": row.id, "s": wanted},
                )
            await self._audit(conn, user_id, "watchlist.created", row.id, name=name, symbols=wanted)
            return Watchlist(row.id, name, tuple(wanted), row.created_at)

    async def add(self, user_id: UUID, watchlist_id: UUID, symbol: str) -> Watchlist:
        """Appends the symbol. One already there is left where it is: no error, no duplicate."""
        (wanted,) = normalize_symbols([symbol], "symbol")
        async with self._writing(user_id) as conn:
            current = await self._locked(conn, user_id, watchlist_id)
            if wanted in current.symbols:
                return current
            await _require_listed(conn, [wanted], "symbol")
            if len(current.symbols) >= self.max_symbols:
                raise LimitExceeded(
                    f"a watchlist holds at most {self.max_symbols} symbols", field="symbol"
                )
            await conn.execute(
                text(
                    "INSERT INTO watchlist_items (watchlist_id, symbol, position) "
                    "SELECT :w, :s, COALESCE(max(position) + 1, 0) "
                    "FROM watchlist_items WHERE watchlist_id = :w"
                ),
                {"w": watchlist_id, "s": wanted},
            )
            await self._audit(conn, user_id, "watchlist.symbol_added", watchlist_id, symbol=wanted)
            return Watchlist(
                current.id, current.name, (*current.symbols, wanted), current.created_at
            )

    async def remove(self, user_id: UUID, watchlist_id: UUID, symbol: str) -> Watchlist:
        """Takes the symbol out; one that is not in the list is NotFound on `symbol`."""
        wanted = normalize_symbol(symbol)
        async with self._writing(user_id) as conn:
            current = await self._locked(conn, user_id, watchlist_id)
            if wanted not in current.symbols:
                raise NotFound(f"{wanted} is not in this watchlist", field="symbol")
            await conn.execute(
                text("DELETE FROM watchlist_items WHERE watchlist_id = :w AND symbol = :s"),
                {"w": watchlist_id, "s": wanted},
            )
            await self._audit(
                conn, user_id, "watchlist.symbol_removed", watchlist_id, symbol=wanted
            )
            remaining = tuple(s for s in current.symbols if s != wanted)
            return Watchlist(current.id, current.name, remaining, current.created_at)

    async def delete(self, user_id: UUID, watchlist_id: UUID) -> None:
        """Deletes the list and its symbols (ON DELETE CASCADE)."""
        async with self._writing(user_id) as conn:
            current = await self._locked(conn, user_id, watchlist_id, field="id")
            await conn.execute(text("DELETE FROM watchlists WHERE id = :w"), {"w": watchlist_id})
            await self._audit(
                conn,
                user_id,
                "watchlist.deleted",
                watchlist_id,
                name=current.name,
                symbols=list(current.symbols),
            )

    @asynccontextmanager
    async def _writing(self, user_id: UUID) -> AsyncIterator[AsyncConnection]:
        """A transaction changing the user's lists; once committed, their next read of the
        lists waits for the replica to have it."""
        async with self._engine.begin() as conn:
            yield conn
        if self._reads is not None:
            await self._reads.note_commit([user_id])

    async def _lock_owner(self, conn: AsyncConnection, user_id: UUID) -> None:
        """Serializes the creation of one user's lists. NO KEY UPDATE: inserts that merely
        reference the user (sessions, keys) are not held up."""
        row = (
            await conn.execute(
                text("SELECT id FROM users WHERE id = :u FOR NO KEY UPDATE"), {"u": user_id}
            )
        ).first()
        if row is None:
            raise NotFound("no such user")

    async def _locked(
        self,
        conn: AsyncConnection,
        user_id: UUID,
        watchlist_id: UUID,
        field: str = "watchlistId",
    ) -> Watchlist:
        """The user's list, its row locked for the rest of the transaction; else NotFound.

        The symbols are read by a second statement, so they are those committed once the lock
        is held: a statement's snapshot is taken before it waits for a lock."""
        row = (
            await conn.execute(
                text(
                    "SELECT id, name, created_at FROM watchlists "
                    "WHERE id = :w AND user_id = :u FOR UPDATE"
                ),
                {"w": watchlist_id, "u": user_id},
            )
        ).first()
        if row is None:
            raise NotFound("no such watchlist", field=field)
        symbols = await conn.execute(
            text("SELECT symbol FROM watchlist_items WHERE watchlist_id = :w ORDER BY position"),
            {"w": watchlist_id},
        )
        return Watchlist(row.id, row.name, tuple(r.symbol for r in symbols), row.created_at)

    async def _audit(
        self,
        conn: AsyncConnection,
        user_id: UUID,
        action: str,
        watchlist_id: UUID,
        **details: object,
    ) -> None:
        await audit.record(
            conn,
            user_id=user_id,
            action=action,
            entity_type="watchlist",
            entity_id=str(watchlist_id),
            details=details,
        )
