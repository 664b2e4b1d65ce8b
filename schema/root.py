"""The served schema: Query, Mutation and Subscription, wired to the resolvers."""

from __future__ import annotations

import strawberry

from resolvers import accounts
from schema.accounts import AuthPayload, DepositPayload, Portfolio, User


@strawberry.type
class Query:
    me: User | None = strawberry.field(
        resolver=accounts.me, description="the signed-in user, or null without a session"
    )
    portfolio: Portfolio = strawberry.field(resolver=accounts.portfolio)


@strawberry.type
class Mutation:
    register: AuthPayload = strawberry.mutation(resolver=accounts.register)
    login: AuthPayload = strawberry.mutation(resolver=accounts.login)
    logout: bool = strawberry.mutation(
        resolver=accounts.logout,
        description="ends the current session; its token stops working at once, on every server",
    )
    deposit: DepositPayload = strawberry.mutation(
        resolver=accounts.deposit,
        description="simulated bank transfer into the account's cash",
    )
