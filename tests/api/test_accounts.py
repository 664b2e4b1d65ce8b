"""Accounts and sessions through the real HTTP API: register, login, logout, me, deposit."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import text

from services.accounts import cash as accounts_service
from services.infra.container import Services
from services.infra.keys import ns
from tests.graphql_client import STRONG_PASSWORD, GraphQLClient
from tests.trading import book_fill, listed, quote, unique_symbol

REGISTER = """mutation($e: String!, $p: String!) {
  register(email: $e, password: $p) { token user { email } errors { code field message } } }"""
LOGIN = """mutation($e: String!, $p: String!) {
  login(email: $e, password: $p) { token expiresAt user { id email } errors { code field } } }"""
ME = "{ me { id email createdAt } }"
PORTFOLIO = "{ portfolio { cash buyingPower } }"
DEPOSIT = """mutation($a: Decimal!, $k: String!) {
  deposit(amount: $a, idempotencyKey: $k) {
    portfolio { cash buyingPower } errors { code field message } } }"""


def new_email() -> str:
    return f"u-{uuid.uuid4().hex[:10]}@Example.com"


def error_codes(body: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in body.get("errors", [])]


async def test_register_returns_a_working_session(gql: GraphQLClient) -> None:
    email = new_email()
    body = await gql(REGISTER, {"e": email, "p": STRONG_PASSWORD})
    payload = body["data"]["register"]
    assert payload["errors"] == []
    me = await gql(ME, token=payload["token"])
    assert me["data"]["me"]["email"] == payload["user"]["email"]
    assert me["data"]["me"]["createdAt"].endswith("Z")


@pytest.mark.parametrize(
    ("email", "password", "code", "field"),
    [
        ("not-an-email", STRONG_PASSWORD, "INVALID_INPUT", "email"),
        ("a@", STRONG_PASSWORD, "INVALID_INPUT", "email"),
        ("x" * 300 + "@example.com", STRONG_PASSWORD, "INVALID_INPUT", "email"),
        (None, "short1!", "WEAK_PASSWORD", "password"),
        (None, "password123", "WEAK_PASSWORD", "password"),
        (None, "aaaaaaaaaaaa", "WEAK_PASSWORD", "password"),
        (None, "1234567890", "WEAK_PASSWORD", "password"),
        (None, "x" * 300, "INVALID_INPUT", "password"),
    ],
)
async def test_register_refuses_bad_input(
    gql: GraphQLClient, email: str | None, password: str, code: str, field: str
) -> None:
    body = await gql(REGISTER, {"e": email or new_email(), "p": password})
    payload = body["data"]["register"]
    assert payload["token"] is None
    assert [(e["code"], e["field"]) for e in payload["errors"]] == [(code, field)]


async def test_a_password_made_of_the_email_is_weak(gql: GraphQLClient) -> None:
    body = await gql(REGISTER, {"e": "margaretthatcher@example.com", "p": "margaretthatcher"})
    assert body["data"]["register"]["errors"][0]["code"] == "WEAK_PASSWORD"


async def test_email_is_taken_ignoring_case(gql: GraphQLClient) -> None:
    email = new_email()
    await gql.register_user(email)
    body = await gql(REGISTER, {"e": email.upper(), "p": STRONG_PASSWORD})
    assert body["data"]["register"]["errors"][0]["code"] == "EMAIL_TAKEN"


async def test_login_issues_a_new_session(gql: GraphQLClient, user: dict[str, str]) -> None:
    body = await gql(LOGIN, {"e": user["email"].upper(), "p": user["password"]})
    payload = body["data"]["login"]
    assert payload["errors"] == []
    assert payload["token"] != user["token"]
    assert payload["user"]["id"] == user["id"]
    me = await gql(ME, token=payload["token"])
    assert me["data"]["me"]["id"] == user["id"]


@pytest.mark.parametrize("case", ["wrong password", "unknown email", "malformed email"])
async def test_login_failures_are_indistinguishable(
    gql: GraphQLClient, user: dict[str, str], case: str
) -> None:
    email, password = {
        "wrong password": (user["email"], "not-the-right-password"),
        "unknown email": (new_email(), user["password"]),
        "malformed email": ("nobody", user["password"]),
    }[case]
    body = await gql(LOGIN, {"e": email, "p": password})
    payload = body["data"]["login"]
    assert payload["token"] is None
    assert payload["errors"] == [{"code": "INVALID_CREDENTIALS", "field": None}]


async def test_login_of_an_unknown_email_still_verifies_a_hash(
    app_services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same work either way: an unknown email is checked against a decoy argon2 hash."""
    seen: list[str | None] = []
    real = app_services.passwords._hasher

    class SpyHasher:
        def verify(self, stored: str, password: str) -> bool:
            seen.append(stored)
            return bool(real.verify(stored, password))

    monkeypatch.setattr(app_services.passwords, "_hasher", SpyHasher())
    with pytest.raises(Exception, match="incorrect"):
        await app_services.users.login(new_email(), STRONG_PASSWORD)
    assert len(seen) == 1 and seen[0] and seen[0].startswith("$argon2id$")


async def test_without_a_session_me_is_null_and_private_fields_are_unauthenticated(
    gql: GraphQLClient,
) -> None:
    assert (await gql(ME))["data"] == {"me": None}
    body = await gql(PORTFOLIO)
    assert error_codes(body) == ["UNAUTHENTICATED"]
    body = await gql(DEPOSIT, {"a": "10", "k": "k"})
    assert error_codes(body) == ["UNAUTHENTICATED"]
    assert error_codes(await gql("mutation { logout }")) == ["UNAUTHENTICATED"]


@pytest.mark.parametrize("token", ["forged-token", "x" * 43, "a" * 5000, "Bearer", "tok.with.dots"])
async def test_a_forged_token_is_no_session(gql: GraphQLClient, token: str) -> None:
    response = await gql.http.post(
        "/graphql", json={"query": ME}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200
    assert response.json()["data"] == {"me": None}
    body = await gql(PORTFOLIO, token=token)
    assert error_codes(body) == ["UNAUTHENTICATED"]


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "token-without-scheme"])
async def test_a_malformed_authorization_header_is_no_session(
    gql: GraphQLClient, header: str
) -> None:
    response = await gql.http.post(
        "/graphql", json={"query": ME}, headers={"Authorization": header}
    )
    assert response.json()["data"] == {"me": None}


async def test_an_expired_token_stops_working(
    gql: GraphQLClient, user: dict[str, str], services: Services
) -> None:
    assert (await gql(ME, token=user["token"]))["data"]["me"] is not None  # now cached in Redis
    async with services.engine.begin() as conn:
        await conn.execute(
            text("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = :u"),
            {"u": uuid.UUID(user["id"])},
        )
    await services.redis.flushdb()  # the cache holds the old expiry; PostgreSQL is the truth
    assert (await gql(ME, token=user["token"]))["data"]["me"] is None


async def test_logout_revokes_at_once_even_when_cached(
    gql: GraphQLClient, user: dict[str, str], services: Services
) -> None:
    other = await gql(LOGIN, {"e": user["email"], "p": user["password"]})
    other_token = other["data"]["login"]["token"]
    assert (await gql(ME, token=user["token"]))["data"]["me"] is not None
    assert (await gql("mutation { logout }", token=user["token"]))["data"] == {"logout": True}
    assert (await gql(ME, token=user["token"]))["data"]["me"] is None
    assert error_codes(await gql("mutation { logout }", token=user["token"])) == ["UNAUTHENTICATED"]
    # Only that session ends: the user's other session still works.
    assert (await gql(ME, token=other_token))["data"]["me"]["id"] == user["id"]
    # And a process that never saw the logout (a fresh store over the same Redis) agrees.
    assert await services.sessions.authenticate(user["token"]) is None


async def test_the_token_itself_is_never_stored(
    gql: GraphQLClient, user: dict[str, str], services: Services
) -> None:
    async with services.engine.connect() as conn:
        stored = (
            (
                await conn.execute(
                    text("SELECT token_hash FROM sessions WHERE user_id = :u"),
                    {"u": uuid.UUID(user["id"])},
                )
            )
            .scalars()
            .all()
        )
    assert stored and user["token"] not in stored
    assert all(len(h) == 64 for h in stored)
    keys = [k async for k in services.redis.scan_iter(ns("tq:session:*"))]
    assert not any(user["token"] in k for k in keys)


async def test_deposit_moves_money_once_per_key(gql: GraphQLClient, user: dict[str, str]) -> None:
    token = user["token"]
    first = await gql(DEPOSIT, {"a": "1500.25", "k": "dep-1"}, token=token)
    assert first["data"]["deposit"] == {
        "portfolio": {"cash": "1500.25", "buyingPower": "1500.25"},
        "errors": [],
    }
    again = await gql(DEPOSIT, {"a": "1500.25", "k": "dep-1"}, token=token)
    assert again["data"]["deposit"]["portfolio"]["cash"] == "1500.25"
    conflict = await gql(DEPOSIT, {"a": "99", "k": "dep-1"}, token=token)
    assert conflict["data"]["deposit"]["portfolio"] is None
    assert conflict["data"]["deposit"]["errors"][0]["code"] == "IDEMPOTENCY_CONFLICT"
    await gql(DEPOSIT, {"a": "10", "k": "dep-2"}, token=token)
    portfolio = await gql(PORTFOLIO, token=token)
    assert portfolio["data"]["portfolio"] == {"cash": "1510.25", "buyingPower": "1510.25"}


async def test_a_deposit_shows_at_once_even_when_redis_missed_retiring_the_copy(
    gql: GraphQLClient,
    user: dict[str, str],
    app_services: Services,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The payload and this process's next read show the deposit though the shared version
    token could not be retired (Redis failing just then)."""
    token = user["token"]
    await gql(DEPOSIT, {"a": "100", "k": "dep-a"}, token=token)
    assert (await gql(PORTFOLIO, token=token))["data"]["portfolio"]["cash"] == "100.00"

    async def failing(*_args: object) -> None:
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(accounts_service, "forget_now", failing)
    body = await gql(DEPOSIT, {"a": "5", "k": "dep-b"}, token=token)
    assert body["data"]["deposit"]["portfolio"]["cash"] == "105.00"
    assert (await gql(PORTFOLIO, token=token))["data"]["portfolio"]["cash"] == "105.00"


async def test_a_deposit_says_it_went_through_even_when_quotes_cannot_be_read(
    gql: GraphQLClient,
    user: dict[str, str],
    services: Services,
    app_services: Services,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The money moved: `errors` is empty, and only the portfolio, which needs quotes to be
    valued, is null with its error."""
    token = user["token"]
    user_id = uuid.UUID(user["id"])
    symbol = unique_symbol("D")
    await listed(services, symbol)
    await quote(services, symbol, "9.00", "11.00", last="10.00")
    await services.cash.deposit(user_id, Decimal("100"), "seed")
    await book_fill(services, user_id, symbol, "BUY", "1", "10.00")

    async def unreachable(*_args: object) -> None:
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(app_services.quote_mirror, "read", unreachable)
    body = await gql(
        """mutation { deposit(amount: "5", idempotencyKey: "dep-q") {
             portfolio { cash marketValue } errors { code } } }""",
        token=token,
    )
    assert body["data"]["deposit"] == {"portfolio": None, "errors": []}
    assert body["errors"][0]["path"] == ["deposit", "portfolio"]
    assert (await services.cash.balances(user_id)).cash == Decimal("95.00")  # 100 - 10 + 5


async def test_two_deposits_in_one_mutation_each_show_their_own_result(
    gql: GraphQLClient, user: dict[str, str]
) -> None:
    body = await gql(
        """mutation { a: deposit(amount: "100", idempotencyKey: "two-a") { portfolio { cash } }
                      b: deposit(amount: "50", idempotencyKey: "two-b") { portfolio { cash } } }""",
        token=user["token"],
    )
    assert body["data"]["a"]["portfolio"]["cash"] == "100.00"
    assert body["data"]["b"]["portfolio"]["cash"] == "150.00"


async def test_idempotency_keys_belong_to_their_user(gql: GraphQLClient) -> None:
    alice, bob = await gql.register_user(), await gql.register_user()
    await gql(DEPOSIT, {"a": "5", "k": "shared-key"}, token=alice["token"])
    body = await gql(DEPOSIT, {"a": "7", "k": "shared-key"}, token=bob["token"])
    assert body["data"]["deposit"]["portfolio"]["cash"] == "7.00"


@pytest.mark.parametrize(
    ("amount", "field"),
    [
        ("0", "amount"),
        ("-5", "amount"),
        ("10.001", "amount"),
        ("1000000.01", "amount"),
        ("1E+30", "amount"),
    ],
)
async def test_deposit_refuses_bad_amounts(
    gql: GraphQLClient, user: dict[str, str], amount: str, field: str
) -> None:
    body = await gql(DEPOSIT, {"a": amount, "k": f"bad-{amount}"}, token=user["token"])
    assert [(e["code"], e["field"]) for e in body["data"]["deposit"]["errors"]] == [
        ("INVALID_INPUT", field)
    ]
    portfolio = await gql(PORTFOLIO, token=user["token"])
    assert portfolio["data"]["portfolio"]["cash"] == "0.00"


@pytest.mark.parametrize("amount", [10.5, "NaN", "Infinity", "ten", True, "1" * 100])
async def test_deposit_refuses_non_decimals_before_running(
    gql: GraphQLClient, user: dict[str, str], amount: object
) -> None:
    response = await gql.post(DEPOSIT, {"a": amount, "k": "k"}, token=user["token"])
    assert response.status_code == 400
    body = response.json()
    assert "data" not in body  # a request error: no data entry
    assert "Decimal" in body["errors"][0]["message"] or "decimal" in body["errors"][0]["message"]


async def test_deposit_refuses_a_bad_idempotency_key(
    gql: GraphQLClient, user: dict[str, str]
) -> None:
    for key in ["", "   ", "k" * 256]:
        body = await gql(DEPOSIT, {"a": "1", "k": key}, token=user["token"])
        assert body["data"]["deposit"]["errors"][0]["field"] == "idempotencyKey"


async def test_fifty_concurrent_deposits_add_up_exactly(
    gql: GraphQLClient, user: dict[str, str], services: Services
) -> None:
    amounts = [Decimal(f"{i}.{i:02d}") for i in range(1, 51)]
    results = await asyncio.gather(
        *(
            gql(DEPOSIT, {"a": str(a), "k": f"c-{i}"}, token=user["token"])
            for i, a in enumerate(amounts)
        )
    )
    assert all(r["data"]["deposit"]["errors"] == [] for r in results)
    portfolio = await gql(PORTFOLIO, token=user["token"])
    assert Decimal(portfolio["data"]["portfolio"]["cash"]) == sum(amounts)
    async with services.engine.connect() as conn:
        ledger_total = (
            await conn.execute(
                text(
                    "SELECT sum(e.amount) FROM ledger_entries e JOIN accounts a "
                    "ON a.id = e.account_id WHERE a.user_id = :u AND e.book = 'cash'"
                ),
                {"u": uuid.UUID(user["id"])},
            )
        ).scalar_one()
        audits = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM audit_log WHERE user_id = :u AND action = 'cash.deposited'"
                ),
                {"u": uuid.UUID(user["id"])},
            )
        ).scalar_one()
    assert ledger_total == sum(amounts)
    assert audits == 50


async def test_concurrent_deposits_with_one_key_move_money_once(
    gql: GraphQLClient, user: dict[str, str]
) -> None:
    results = await asyncio.gather(
        *(gql(DEPOSIT, {"a": "250", "k": "same"}, token=user["token"]) for _ in range(20))
    )
    assert all(r["data"]["deposit"]["portfolio"]["cash"] == "250.00" for r in results)
    portfolio = await gql(PORTFOLIO, token=user["token"])
    assert portfolio["data"]["portfolio"]["cash"] == "250.00"
