"""Password guessing is throttled per attempt: per e-mail after consecutive failures, per address
for failed sign-ins only, and one sign-in per operation (aliases are no way around it)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.accounts.login_throttle import LoginThrottle, ThrottleRules, wait_after
from services.infra.container import Services
from tests.api.test_accounts import LOGIN
from tests.graphql_client import GraphQLClient


async def test_the_sixth_failure_in_a_row_waits_and_a_success_resets_it(
    gql: GraphQLClient, user: dict[str, str]
) -> None:
    wrong = {"e": user["email"], "p": "not-the-password-at-all"}
    for _ in range(5):
        body = await gql(LOGIN, wrong)
        assert body["data"]["login"]["errors"][0]["code"] == "INVALID_CREDENTIALS"
    throttled = await gql.post(LOGIN, wrong)
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == "1"
    (error,) = throttled.json()["errors"]
    assert error["extensions"] == {"code": "RATE_LIMITED", "retryAfter": 1}
    # the right password too waits its turn: no guess is judged while throttled
    right = {"e": user["email"], "p": user["password"]}
    assert (await gql.post(LOGIN, right)).status_code == 429
    await asyncio.sleep(1.1)
    body = await gql(LOGIN, right)
    assert body["data"]["login"]["token"]
    for _ in range(5):  # reset by the success: five more failures before any wait
        body = await gql(LOGIN, wrong)
        assert body["data"]["login"]["errors"][0]["code"] == "INVALID_CREDENTIALS"


@pytest.mark.parametrize("field", ["login", "register"])
async def test_a_second_sign_in_in_one_operation_is_refused_before_execution(
    gql: GraphQLClient, user: dict[str, str], field: str
) -> None:
    args = f'email: "{user["email"]}", password: "{user["password"]}"'
    query = (
        f"mutation {{ a: {field}({args}) {{ token }} "
        f"... on Mutation {{ b: {field}({args}) {{ token }} }} }}"
    )
    response = await gql.post(query)
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert "data" not in response.json()  # refused before execution: no data entry


async def test_failures_from_one_address_are_limited_and_signing_in_elsewhere_is_not(
    services: Services,
) -> None:
    throttle = LoginThrottle(services.redis, ThrottleRules(address_limit=3))
    here, elsewhere = f"198.51.100.{uuid.uuid4().int % 250}", "203.0.113.7"
    emails = [f"guess-{uuid.uuid4().hex[:8]}@example.com" for _ in range(4)]
    for email in emails[:3]:
        assert await throttle.begin(email, here) == 0
        await throttle.failed(here)
    assert await throttle.begin(emails[3], here) > 0  # a fourth e-mail from the same address
    assert await throttle.begin(emails[3], elsewhere) == 0
    successes = [f"ok-{uuid.uuid4().hex[:8]}@example.com" for _ in range(10)]
    for email in successes:  # signing many users in from one address is never held back
        assert await throttle.begin(email, elsewhere) == 0
        await throttle.succeeded(email)


def test_waits_double_from_the_fifth_failure_and_stop_at_the_cap() -> None:
    rules = ThrottleRules(free=5, max_wait_seconds=900)
    assert [wait_after(n, rules) for n in (0, 4, 5, 6, 7, 14, 15, 40)] == [
        0, 0, 1, 2, 4, 512, 900, 900,
    ]  # fmt: skip
