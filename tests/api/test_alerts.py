"""Price alerts through the real GraphQL API: create, list, cancel, and alertTriggered live."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from gql import Client
from gql import gql as document
from gql.transport.websockets import WebsocketsTransport

from services.infra.container import Services
from tests.graphql_client import GraphQLClient
from tests.trading import eventually, listed, quote, unique_symbol
from workers.alerts import AlertChecker

FIELDS = "id symbol condition threshold status createdAt triggeredAt triggeredPrice"
CREATE = f"""mutation($s: String!, $c: AlertCondition!, $t: Decimal!) {{
  createPriceAlert(symbol: $s, condition: $c, threshold: $t) {{
    alert {{ {FIELDS} }} errors {{ code message field }} }} }}"""
CANCEL = f"""mutation($id: ID!) {{ cancelPriceAlert(id: $id) {{
  alert {{ {FIELDS} }} errors {{ code message field }} }} }}"""
LIST = f"query($s: AlertStatus) {{ alerts(status: $s) {{ {FIELDS} }} }}"


@pytest.fixture
async def symbol(services: Services) -> str:
    name = unique_symbol("P")
    await listed(services, name)
    await quote(services, name, "50.00", "50.02", "50.01")
    return name


async def create(
    gql: GraphQLClient, token: str, symbol: str, condition: str, threshold: Any
) -> dict[str, Any]:
    body = await gql(CREATE, {"s": symbol, "c": condition, "t": threshold}, token=token)
    assert "errors" not in body, body
    payload: dict[str, Any] = body["data"]["createPriceAlert"]
    return payload


async def created(gql: GraphQLClient, token: str, symbol: str, *args: Any) -> dict[str, Any]:
    payload = await create(gql, token, symbol, *args)
    assert payload["errors"] == [], payload
    alert: dict[str, Any] = payload["alert"]
    return alert


async def listed_alerts(gql: GraphQLClient, token: str, status: str | None = None) -> list[str]:
    body = await gql(LIST, {"s": status}, token=token)
    assert "errors" not in body, body
    return [a["id"] for a in body["data"]["alerts"]]


@pytest.fixture
async def checker(services: Services) -> AsyncIterator[AlertChecker]:
    running = AlertChecker(services, consumer=f"api-test-{uuid.uuid4().hex[:8]}")
    stop = asyncio.Event()
    task = asyncio.create_task(running.run(stop))
    await asyncio.wait_for(running.ready.wait(), 20)
    yield running
    stop.set()
    await asyncio.wait_for(task, 15)


async def watched_by(checker: AlertChecker, alert_id: str) -> None:
    async def held() -> bool:
        return uuid.UUID(alert_id) in checker.index

    await eventually(held, 5.0)


async def test_create_answers_with_the_active_alert(
    gql: GraphQLClient, user: dict[str, str], symbol: str
) -> None:
    alert = await created(gql, user["token"], symbol.lower(), "ABOVE", "55.5")
    assert uuid.UUID(alert["id"])
    assert {k: alert[k] for k in ("symbol", "condition", "threshold", "status")} == {
        "symbol": symbol,
        "condition": "ABOVE",
        "threshold": "55.5000",
        "status": "ACTIVE",
    }
    assert (alert["triggeredAt"], alert["triggeredPrice"]) == (None, None)
    made = datetime.fromisoformat(alert["createdAt"].replace("Z", "+00:00"))
    assert abs(made - datetime.now(UTC)) < timedelta(seconds=10)
    below = await created(gql, user["token"], symbol, "BELOW", "0.1234")
    assert (below["condition"], below["threshold"]) == ("BELOW", "0.1234")


@pytest.mark.parametrize(
    ("symbol_given", "threshold", "code", "field"),
    [
        ("NOSUCH1", "10", "UNKNOWN_SYMBOL", "symbol"),
        ("not a symbol!", "10", "UNKNOWN_SYMBOL", "symbol"),
        (None, "0", "INVALID_INPUT", "threshold"),
        (None, "-5", "INVALID_INPUT", "threshold"),
        (None, "10.00001", "INVALID_INPUT", "threshold"),
        (None, "99999999", "INVALID_INPUT", "threshold"),
    ],
)
async def test_create_refuses_with_a_code_and_the_field_at_fault(
    gql: GraphQLClient,
    user: dict[str, str],
    symbol: str,
    symbol_given: str | None,
    threshold: str,
    code: str,
    field: str,
) -> None:
    payload = await create(gql, user["token"], symbol_given or symbol, "ABOVE", threshold)
    assert payload["alert"] is None
    assert [(e["code"], e["field"]) for e in payload["errors"]] == [(code, field)]
    assert payload["errors"][0]["message"]
    assert await listed_alerts(gql, user["token"]) == []


@pytest.mark.parametrize(
    "variables",
    [{"c": "ABOVE", "t": 10.5}, {"c": "ABOVE", "t": "ten"}, {"c": "SIDEWAYS", "t": "10"}],
)
async def test_a_malformed_alert_is_refused_before_anything_runs(
    gql: GraphQLClient, user: dict[str, str], symbol: str, variables: dict[str, Any]
) -> None:
    response = await gql.post(CREATE, {"s": symbol, **variables}, token=user["token"])
    assert response.status_code == 400
    assert "data" not in response.json()  # a request error: no data entry


async def test_a_user_is_limited_to_the_configured_active_alerts(
    gql: GraphQLClient,
    user: dict[str, str],
    symbol: str,
    app_services: Services,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app_services.settings, "alert_max_active", 2)
    first = await created(gql, user["token"], symbol, "ABOVE", "60")
    await created(gql, user["token"], symbol, "BELOW", "40")
    payload = await create(gql, user["token"], symbol, "ABOVE", "70")
    assert payload["alert"] is None
    assert [e["code"] for e in payload["errors"]] == ["LIMIT_EXCEEDED"]
    assert "2" in payload["errors"][0]["message"]
    other = await gql.register_user()
    await created(gql, other["token"], symbol, "ABOVE", "70")  # per user
    await gql(CANCEL, {"id": first["id"]}, token=user["token"])
    await created(gql, user["token"], symbol, "ABOVE", "70")  # a cancel frees a place


async def test_alerts_lists_the_users_own_newest_first_and_by_status(
    gql: GraphQLClient, user: dict[str, str], symbol: str
) -> None:
    other = await gql.register_user()
    theirs = await created(gql, other["token"], symbol, "ABOVE", "51")
    one = await created(gql, user["token"], symbol, "ABOVE", "51")
    two = await created(gql, user["token"], symbol, "BELOW", "49")
    await gql(CANCEL, {"id": two["id"]}, token=user["token"])
    assert await listed_alerts(gql, user["token"]) == [two["id"], one["id"]]
    assert await listed_alerts(gql, user["token"], "ACTIVE") == [one["id"]]
    assert await listed_alerts(gql, user["token"], "CANCELLED") == [two["id"]]
    assert await listed_alerts(gql, user["token"], "TRIGGERED") == []
    assert await listed_alerts(gql, other["token"]) == [theirs["id"]]


async def test_cancel_answers_with_the_cancelled_alert_once(
    gql: GraphQLClient, user: dict[str, str], symbol: str
) -> None:
    alert = await created(gql, user["token"], symbol, "ABOVE", "51")
    body = await gql(CANCEL, {"id": alert["id"]}, token=user["token"])
    payload = body["data"]["cancelPriceAlert"]
    assert payload["errors"] == []
    assert {**payload["alert"], "status": "ACTIVE"} == alert
    assert payload["alert"]["status"] == "CANCELLED"
    again = (await gql(CANCEL, {"id": alert["id"]}, token=user["token"]))["data"]
    assert again["cancelPriceAlert"]["alert"] is None
    assert [(e["code"], e["field"]) for e in again["cancelPriceAlert"]["errors"]] == [
        ("NOT_CANCELLABLE", "id")
    ]


@pytest.mark.parametrize("whose", ["someone else's", "nobody's", "not an id"])
async def test_cancel_finds_only_the_users_own_alerts(
    gql: GraphQLClient, user: dict[str, str], symbol: str, whose: str
) -> None:
    other = await gql.register_user()
    theirs = await created(gql, other["token"], symbol, "ABOVE", "51")
    alert_id = {
        "someone else's": theirs["id"],
        "nobody's": str(uuid.uuid4()),
        "not an id": "alert-1",
    }[whose]
    body = await gql(CANCEL, {"id": alert_id}, token=user["token"])
    payload = body["data"]["cancelPriceAlert"]
    assert payload["alert"] is None
    assert [(e["code"], e["field"]) for e in payload["errors"]] == [("NOT_FOUND", "id")]
    assert await listed_alerts(gql, other["token"], "ACTIVE") == [theirs["id"]]


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        (LIST, {}),
        (CREATE, {"s": "AAPL", "c": "ABOVE", "t": "10"}),
        (CANCEL, {"id": str(uuid.uuid4())}),
    ],
)
async def test_alerts_need_a_session(
    gql: GraphQLClient, query: str, variables: dict[str, Any]
) -> None:
    body = await gql(query, variables)
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_a_triggered_alert_shows_its_price_and_time(
    gql: GraphQLClient, user: dict[str, str], symbol: str, checker: AlertChecker, services: Services
) -> None:
    alert = await created(gql, user["token"], symbol, "BELOW", "49.5")
    await watched_by(checker, alert["id"])
    crossing = await quote(services, symbol, "49.40", "49.42", "49.41")

    async def triggered() -> bool:
        return await listed_alerts(gql, user["token"], "TRIGGERED") == [alert["id"]]

    await eventually(triggered)
    (shown,) = (await gql(LIST, {"s": "TRIGGERED"}, token=user["token"]))["data"]["alerts"]
    assert (shown["status"], shown["triggeredPrice"], shown["threshold"]) == (
        "TRIGGERED",
        "49.4100",
        "49.5000",
    )
    at = datetime.fromisoformat(shown["triggeredAt"].replace("Z", "+00:00"))
    assert abs(at.timestamp() - crossing.timestamp_ns / 1e9) < 0.001  # the quote's source time
    body = await gql(CANCEL, {"id": alert["id"]}, token=user["token"])
    assert [e["code"] for e in body["data"]["cancelPriceAlert"]["errors"]] == ["NOT_CANCELLABLE"]


def _transport(api_url: str, token: str | None) -> WebsocketsTransport:
    return WebsocketsTransport(
        url=api_url.replace("http://", "ws://") + "/graphql",
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
        init_payload={"Authorization": f"Bearer {token}"} if token else {},
        close_timeout=2,
    )


async def test_alert_triggered_reaches_the_owner_over_websocket(
    api_url: str,
    gql: GraphQLClient,
    user: dict[str, str],
    symbol: str,
    checker: AlertChecker,
    services: Services,
) -> None:
    other = await gql.register_user()
    subscription = document(f"subscription {{ alertTriggered {{ {FIELDS} }} }}")
    async with (
        Client(transport=_transport(api_url, user["token"])) as session,
        aclosing(session.subscribe(subscription)) as triggers,
    ):
        # gql sends the subscription on the first read: start reading, then act.
        first = asyncio.ensure_future(anext(triggers))
        await asyncio.sleep(0.5)
        theirs = await created(gql, other["token"], symbol, "ABOVE", "52")
        mine = await created(gql, user["token"], symbol, "ABOVE", "53")
        cancelled = await created(gql, user["token"], symbol, "ABOVE", "52.5")
        await gql(CANCEL, {"id": cancelled["id"]}, token=user["token"])
        await watched_by(checker, theirs["id"])
        await watched_by(checker, mine["id"])
        await quote(services, symbol, "52.00", "52.02", "52.00")  # only someone else's

        async def theirs_triggered() -> bool:
            return await listed_alerts(gql, other["token"], "TRIGGERED") == [theirs["id"]]

        await eventually(theirs_triggered)
        await asyncio.sleep(0.3)
        assert not first.done()  # someone else's alert never reaches this user
        await quote(services, symbol, "53.10", "53.12", "53.10")
        received = (await asyncio.wait_for(first, 5))["alertTriggered"]
        assert received["id"] == mine["id"]
        assert (received["status"], received["triggeredPrice"], received["threshold"]) == (
            "TRIGGERED",
            "53.1000",
            "53.0000",
        )
        assert received["triggeredAt"] is not None
        nothing_more = asyncio.ensure_future(anext(triggers))
        await quote(services, symbol, "54", "54.02", "54")
        await asyncio.sleep(0.5)
        assert not nothing_more.done()  # once only, and never the cancelled one
        nothing_more.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await nothing_more


async def test_alert_triggered_needs_a_session(api_url: str) -> None:
    async with Client(transport=_transport(api_url, None)) as session:
        with pytest.raises(Exception, match=r"UNAUTHENTICATED|sign in"):
            async for _ in session.subscribe(document("subscription { alertTriggered { id } }")):
                pass
