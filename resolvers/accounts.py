"""Accounts and sessions: register, login, logout, me, deposit, activities."""

from __future__ import annotations

from decimal import Decimal

import strawberry
from graphql import GraphQLError
from strawberry import UNSET

from resolvers.context import Info, require_session
from resolvers.errors import to_user_error
from resolvers.portfolio import holdings_written
from schema.accounts import (
    Activity,
    ActivityConnection,
    ActivityEdge,
    ActivityType,
    AuthPayload,
    DepositPayload,
    User,
)
from schema.orders import OrderSide, PageInfo
from services.accounts import activities as domain_activities
from services.accounts import users
from services.errors import DomainError


def to_user(user: users.User) -> User:
    return User(id=strawberry.ID(str(user.id)), email=user.email, created_at=user.created_at)


def _signed_in(result: users.SignedIn) -> AuthPayload:
    return AuthPayload(token=result.token, expires_at=result.expires_at, user=to_user(result.user))


async def register(info: Info, email: str, password: str) -> AuthPayload:
    try:
        return _signed_in(await info.context.services.users.register(email, password))
    except DomainError as error:
        return AuthPayload(errors=[to_user_error(error)])


async def login(info: Info, email: str, password: str) -> AuthPayload:
    """Throttled per attempt (services/accounts/login_throttle.py): a throttled attempt is a
    top-level RATE_LIMITED error with `retryAfter` (HTTP 429 with Retry-After)."""
    services, address = info.context.services, info.context.client_address
    wait = await services.login_throttle.begin(email, address)
    if wait:
        raise GraphQLError(
            f"too many failed sign-ins: try again in {wait:.0f} s",
            extensions={"code": "RATE_LIMITED", "retryAfter": int(wait)},
        )
    try:
        signed_in = await services.users.login(email, password)
    except DomainError as error:
        await services.login_throttle.failed(address)
        return AuthPayload(errors=[to_user_error(error)])
    await services.login_throttle.succeeded(email)
    return _signed_in(signed_in)


async def logout(info: Info) -> bool:
    require_session(info)
    token = info.context.token
    assert token is not None  # a session implies the token that found it
    revoked = await info.context.services.sessions.revoke(token)
    info.context.session = None
    return revoked is not None


async def me(info: Info) -> User | None:
    session = info.context.session
    if session is None:
        return None
    (user,) = await info.context.services.users.users_by_id([session.user_id])
    return to_user(user) if user else None


async def deposit(info: Info, amount: Decimal, idempotency_key: str) -> DepositPayload:
    session = require_session(info)
    try:
        await info.context.services.cash.deposit(session.user_id, amount, idempotency_key)
    except DomainError as error:
        return DepositPayload(errors=[to_user_error(error)])
    holdings_written(info, session.user_id)
    return DepositPayload(user_id=session.user_id)


async def activities(
    info: Info,
    types: list[ActivityType] | None = UNSET,
    first: int = 50,
    after: str | None = UNSET,
) -> ActivityConnection:
    """The account's fills and deposits, newest first, by keyset."""
    session = require_session(info)
    try:
        page = await info.context.services.activities.page(
            session.user_id,
            types=[domain_activities.ActivityType(t.value) for t in types or []],
            first=first,
            after=after or None,
        )
    except DomainError as error:
        raise GraphQLError(error.message, extensions={"code": "INVALID_INPUT"}) from error
    edges = [
        ActivityEdge(cursor=domain_activities.encode_cursor(a), node=_activity(a))
        for a in page.activities
    ]
    return ActivityConnection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=page.has_more, end_cursor=edges[-1].cursor if edges else None
        ),
    )


def _activity(a: domain_activities.Activity) -> Activity:
    return Activity(
        id=strawberry.ID(a.key),
        type=ActivityType(a.type.value),
        at=a.at,
        amount=a.amount,
        symbol=a.symbol,
        side=OrderSide(a.side) if a.side else None,
        quantity=a.quantity,
        price=a.price,
        order_id=strawberry.ID(str(a.order_id)) if a.order_id else None,
    )
