"""Watchlists: a user's named lists of symbols."""

from __future__ import annotations

import strawberry

from schema.errors import UserError
from schema.marketdata import Security


@strawberry.type
class Watchlist:
    id: strawberry.ID
    name: str
    symbols: list[str]

    @strawberry.field
    async def securities(self, info: strawberry.Info) -> list[Security]:
        from resolvers.watchlists import watchlist_securities

        return await watchlist_securities(info, self.symbols)


@strawberry.type
class WatchlistPayload:
    watchlist: Watchlist | None = None
    errors: list[UserError] = strawberry.field(default_factory=list)


@strawberry.type
class DeletePayload:
    deleted: bool = False
    errors: list[UserError] = strawberry.field(default_factory=list)
