"""Watchlists: list, create, add, remove, delete. Every one needs a session and reaches only the
signed-in user's lists: someone else's list is NOT_FOUND, like a missing one."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import strawberry

from resolvers.context import Info, require_session
from resolvers.errors import to_user_error
from resolvers.loaders import current_loaders
from resolvers.marketdata import to_security
from schema.marketdata import Security
from schema.watchlists import DeletePayload, Watchlist, WatchlistPayload
from services.errors import DomainError, NotFound
from services.watchlists import lists as domain


def to_watchlist(found: domain.Watchlist) -> Watchlist:
    return Watchlist(id=strawberry.ID(str(found.id)), name=found.name, symbols=list(found.symbols))


def _watchlist_id(value: str, field: str) -> UUID:
    """An id that is not a UUID names no list: NotFound, like a missing one."""
    try:
        return UUID(str(value))
    except ValueError:
        raise NotFound("no such watchlist", field=field) from None


async def watchlists(info: Info) -> list[Watchlist]:
    """In creation order, each with its symbols in the order they were added."""
    session = require_session(info)
    found = await info.context.services.watchlists.lists(session.user_id)
    return [to_watchlist(w) for w in found]


async def watchlist_securities(info: Info, symbols: Sequence[str]) -> list[Security]:
    """The list's securities in its order, through the per-operation loader: all the lists of
    an operation cost one query (and their quotes one Redis round trip). A symbol delisted
    since it was added stays in `symbols` but has no security to show."""
    found = await current_loaders(info.context.services).securities.load_many(list(symbols))
    return [to_security(s) for s in found if s is not None]


async def create_watchlist(
    info: Info,
    name: str,
    symbols: list[str] = [],  # noqa: B006 (the contract's default; never mutated)
) -> WatchlistPayload:
    session = require_session(info)
    try:
        created = await info.context.services.watchlists.create(session.user_id, name, symbols)
    except DomainError as error:
        return WatchlistPayload(errors=[to_user_error(error)])
    return WatchlistPayload(watchlist=to_watchlist(created))


async def add_to_watchlist(
    info: Info, watchlist_id: strawberry.ID, symbol: str
) -> WatchlistPayload:
    return await _change_symbols(info, watchlist_id, symbol, adding=True)


async def remove_from_watchlist(
    info: Info, watchlist_id: strawberry.ID, symbol: str
) -> WatchlistPayload:
    return await _change_symbols(info, watchlist_id, symbol, adding=False)


async def _change_symbols(
    info: Info, watchlist_id: strawberry.ID, symbol: str, *, adding: bool
) -> WatchlistPayload:
    session = require_session(info)
    service = info.context.services.watchlists
    change = service.add if adding else service.remove
    try:
        list_id = _watchlist_id(watchlist_id, "watchlistId")
        changed = await change(session.user_id, list_id, symbol)
    except DomainError as error:
        return WatchlistPayload(errors=[to_user_error(error)])
    return WatchlistPayload(watchlist=to_watchlist(changed))


async def delete_watchlist(info: Info, id: strawberry.ID) -> DeletePayload:
    session = require_session(info)
    try:
        await info.context.services.watchlists.delete(session.user_id, _watchlist_id(id, "id"))
    except DomainError as error:
        return DeletePayload(errors=[to_user_error(error)])
    return DeletePayload(deleted=True)
