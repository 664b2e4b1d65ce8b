"""The served schema: Query, Mutation and Subscription, wired to the resolvers."""

from __future__ import annotations

import strawberry

from resolvers import accounts, alerts, marketdata, orders, portfolio, watchlists
from schema.accounts import ActivityConnection, AuthPayload, DepositPayload, Portfolio, User
from schema.alerts import PriceAlert, PriceAlertPayload
from schema.marketdata import MarketClock, Quote, Security
from schema.orders import Order, OrderConnection, OrderPayload, OrdersPayload, OrderUpdate
from schema.watchlists import DeletePayload, Watchlist, WatchlistPayload


@strawberry.type
class Query:
    me: User | None = strawberry.field(
        resolver=accounts.me, description="the signed-in user, or null without a session"
    )
    portfolio: Portfolio = strawberry.field(resolver=portfolio.portfolio)
    security: Security | None = strawberry.field(resolver=marketdata.security)
    quote: Quote | None = strawberry.field(resolver=marketdata.quote)
    quotes: list[Quote | None] = strawberry.field(resolver=marketdata.quotes)
    clock: MarketClock = strawberry.field(resolver=marketdata.clock)
    order: Order | None = strawberry.field(resolver=orders.order)
    orders: OrderConnection = strawberry.field(resolver=orders.orders, description="newest first")
    watchlists: list[Watchlist] = strawberry.field(resolver=watchlists.watchlists)
    alerts: list[PriceAlert] = strawberry.field(resolver=alerts.price_alerts)
    activities: ActivityConnection = strawberry.field(
        resolver=accounts.activities,
        description="the account's fills and cash movements, newest first",
    )


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
    place_order: OrderPayload = strawberry.mutation(resolver=orders.place_order)
    cancel_order: OrderPayload = strawberry.mutation(resolver=orders.cancel_order)
    replace_order: OrderPayload = strawberry.mutation(
        resolver=orders.replace_order,
        description="a new order in the old one's place, which ends REPLACED; refused once the "
        "old one has finished",
    )
    cancel_all_orders: OrdersPayload = strawberry.mutation(
        resolver=orders.cancel_all_orders, description="every open order of the account"
    )
    close_position: OrderPayload = strawberry.mutation(
        resolver=orders.close_position,
        description="a market order selling the position, or the given quantity or percentage "
        "(0-100] of it",
    )
    close_all_positions: OrdersPayload = strawberry.mutation(resolver=orders.close_all_positions)
    create_watchlist: WatchlistPayload = strawberry.mutation(resolver=watchlists.create_watchlist)
    add_to_watchlist: WatchlistPayload = strawberry.mutation(resolver=watchlists.add_to_watchlist)
    remove_from_watchlist: WatchlistPayload = strawberry.mutation(
        resolver=watchlists.remove_from_watchlist
    )
    delete_watchlist: DeletePayload = strawberry.mutation(resolver=watchlists.delete_watchlist)
    create_price_alert: PriceAlertPayload = strawberry.mutation(resolver=alerts.create_price_alert)
    cancel_price_alert: PriceAlertPayload = strawberry.mutation(resolver=alerts.cancel_price_alert)


@strawberry.type
class Subscription:
    quotes: Quote = strawberry.subscription(  # type: ignore[assignment]
        resolver=marketdata.subscribe_quotes,
        description="each symbol's current quote first, then every change",
    )
    order_updates: OrderUpdate = strawberry.subscription(  # type: ignore[assignment]
        resolver=orders.subscribe_order_updates,
        description="status changes and fills of the signed-in user's orders",
    )
    alert_triggered: PriceAlert = strawberry.subscription(  # type: ignore[assignment]
        resolver=alerts.subscribe_alert_triggered,
        description="the signed-in user's price alerts, as they trigger",
    )
    portfolio: Portfolio = strawberry.subscription(  # type: ignore[assignment]
        resolver=portfolio.subscribe_portfolio,
        description="the signed-in user's portfolio, revalued as its quotes move, at most once a second",
    )
