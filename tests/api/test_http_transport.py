"""GraphQL over HTTP: methods, malformed requests, masking, health and metrics."""

from __future__ import annotations

import gc
import re

import pytest
from strawberry.http.async_base_view import AsyncBaseHTTPView

from gateway.view import GraphQLView
from services.infra.container import Services
from tests.graphql_client import GraphQLClient


async def test_a_query_over_get(gql: GraphQLClient) -> None:
    response = await gql.http.get("/graphql", params={"query": "{ me { id } }"})
    assert response.status_code == 200
    assert response.json() == {"data": {"me": None}}


async def test_a_mutation_over_get_is_405(gql: GraphQLClient) -> None:
    response = await gql.http.get("/graphql", params={"query": "mutation { logout }"})
    assert response.status_code == 405
    assert response.json()["errors"][0]["extensions"]["code"] == "METHOD_NOT_ALLOWED"


async def test_graphiql_is_served_to_browsers(gql: GraphQLClient) -> None:
    response = await gql.http.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert "graphiql" in response.text.lower()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[1, 2", "application/json"),
        (b'{"query": 42}', "application/json"),
        (b'{"query": "{ me { id } }", "variables": "nope"}', "application/json"),
        (b"query { me { id } }", "text/plain"),
    ],
)
async def test_malformed_requests_are_4xx_with_a_json_body(
    gql: GraphQLClient, body: bytes, content_type: str
) -> None:
    response = await gql.http.post("/graphql", content=body, headers={"Content-Type": content_type})
    assert 400 <= response.status_code < 500
    payload = response.json()
    assert payload["errors"][0]["message"]
    assert payload["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("{ me { id }", "GRAPHQL_PARSE_FAILED"),
        ("{ me { nope } }", "GRAPHQL_VALIDATION_FAILED"),
        ("{ notAField }", "GRAPHQL_VALIDATION_FAILED"),
        ("", "BAD_REQUEST"),
    ],
)
async def test_malformed_graphql_is_400_with_a_code(
    gql: GraphQLClient, query: str, code: str
) -> None:
    response = await gql.post(query)
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == code


async def test_an_internal_error_is_masked_and_carries_the_request_id(
    gql: GraphQLClient,
    user: dict[str, str],
    app_services: Services,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(_user_id: object) -> None:
        raise RuntimeError("database password is hunter2")

    monkeypatch.setattr(app_services.portfolios, "holdings", broken)
    response = await gql.post("{ portfolio { cash } }", token=user["token"])
    assert response.status_code == 200
    error = response.json()["errors"][0]
    request_id = response.headers["x-request-id"]
    assert "hunter2" not in response.text
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "requestId": request_id}
    assert request_id in error["message"]
    assert any(
        "hunter2" in r.getMessage() and getattr(r, "request_id", None) == request_id
        for r in caplog.records
    )


async def test_a_callers_request_id_is_kept(gql: GraphQLClient) -> None:
    response = await gql.http.post(
        "/graphql", json={"query": "{ me { id } }"}, headers={"X-Request-ID": "trace-abc-123"}
    )
    assert response.headers["x-request-id"] == "trace-abc-123"


async def test_health_readiness_and_metrics(gql: GraphQLClient) -> None:
    assert (await gql.http.get("/healthz")).json() == {"status": "ok"}
    ready = await gql.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "postgres": "ok", "redis": "ok"}
    await gql.http.post("/graphql", json={"query": "query WhoAmI { me { id } }"})
    metrics = (await gql.http.get("/metrics")).text
    assert (
        'tradeql_graphql_operations_total{operation="WhoAmI",outcome="ok",type="query"}' in metrics
    )
    assert "tradeql_graphql_operation_seconds_bucket" in metrics
    assert "tradeql_websockets_open" in metrics
    assert 'tradeql_db_pool_connections{state="checkedout"}' in metrics
    assert 'tradeql_http_request_seconds_count{method="POST",path="/graphql"' in metrics


async def test_metrics_time_the_garbage_collectors_pauses(gql: GraphQLClient) -> None:
    gc.collect()  # the server runs in this process: its collector is this one
    metrics = (await gql.http.get("/metrics")).text
    counted = re.search(r'tradeql_gc_pause_seconds_count\{generation="2"\} (\S+)', metrics)
    assert counted is not None and float(counted.group(1)) >= 1


async def test_readiness_fails_when_redis_is_unreachable(
    gql: GraphQLClient, app_services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down() -> bool:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(app_services.redis, "ping", down)
    ready = await gql.http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["redis"].startswith("error")
    assert ready.json()["postgres"] == "ok"


def test_the_api_hides_its_startup_objects_from_the_garbage_collector(
    api_server: tuple[str, object],
) -> None:
    """A full collection would otherwise walk the schema and every module with requests
    stopped (tens of milliseconds), and run about every second as cached valuations turn over."""
    import gc

    from gateway.app import FULL_COLLECTION_EVERY

    assert gc.get_freeze_count() > 10_000
    assert gc.get_threshold()[2] == FULL_COLLECTION_EVERY > 10


async def test_metrics_count_reads_served_by_the_processs_own_copies(
    gql: GraphQLClient, user: dict[str, str]
) -> None:
    def count(metrics: str, name: str, result: str) -> float:
        for line in metrics.splitlines():
            if line.startswith(f'{name}{{result="{result}"}}'):
                return float(line.split()[-1])
        raise AssertionError(f"{name} {result} not exposed")

    before = (await gql.http.get("/metrics")).text
    for _ in range(2):
        await gql("{ portfolio { cash } }", token=user["token"])
    after = (await gql.http.get("/metrics")).text
    name = "tradeql_holdings_cache_reads_total"
    hits = count(after, name, "hit") - count(before, name, "hit")
    misses = count(after, name, "miss") - count(before, name, "miss")
    assert (hits, misses) == (1, 1)  # read once, then served from the copy
    assert count(after, "tradeql_quote_mirror_reads_total", "miss") >= 0


@pytest.mark.parametrize(
    "body",
    [
        b"null",
        b"123",
        b'"a string"',
        b"true",
        b"[1, 2]",
        b"\xff\xfe{}",  # not UTF-8
        b'{"query": "{ me { id } }", "variables": {"x": ' + b"9" * 5000 + b"}}",
        b'{"query": "{ me { id } }", "variables": {"x": ' + b"[" * 3000 + b"]" * 3000 + b"}}",
    ],
    ids=["null", "number", "string", "bool", "list", "not-utf8", "huge-int", "deep"],
)
async def test_a_body_that_is_not_a_json_object_is_a_400_and_the_connection_lives_on(
    gql: GraphQLClient, body: bytes
) -> None:
    response = await gql.http.post(
        "/graphql", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    (error,) = response.json()["errors"]
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert (await gql("{ __typename }"))["data"] == {"__typename": "Query"}


@pytest.mark.parametrize(
    "query",
    [
        'subscription { quotes(symbols: ["AAPL"]) { bid } }',
        "subscription { orderUpdates { event } }",  # anonymous, too
    ],
)
async def test_a_subscription_sent_as_plain_json_is_a_400_naming_sse_and_the_websocket(
    gql: GraphQLClient, query: str
) -> None:
    for accept in (None, "application/json", "application/graphql-response+json"):
        headers = {"Accept": accept} if accept else {}
        response = await gql.http.post("/graphql", json={"query": query}, headers=headers)
        assert response.status_code == 400
        (error,) = response.json()["errors"]
        assert error["extensions"]["code"] == "BAD_REQUEST"
        assert "text/event-stream" in error["message"] and "WebSocket" in error["message"]


async def test_a_query_beside_a_subscription_in_one_document_still_runs(
    gql: GraphQLClient,
) -> None:
    document = "query Q { me { id } } subscription S { orderUpdates { event } }"
    response = await gql.http.post("/graphql", json={"query": document, "operationName": "Q"})
    assert response.status_code == 200
    assert response.json() == {"data": {"me": None}}


GRAPHQL_RESPONSE = "application/graphql-response+json"
APOLLO_ACCEPT = "application/graphql-response+json,application/json;q=0.9"


@pytest.mark.parametrize("accept", [GRAPHQL_RESPONSE, APOLLO_ACCEPT])
async def test_the_graphql_response_media_type_is_negotiated(
    gql: GraphQLClient, accept: str
) -> None:
    ok = await gql.http.post(
        "/graphql", json={"query": "{ __typename }"}, headers={"Accept": accept}
    )
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith(GRAPHQL_RESPONSE)
    assert ok.json() == {"data": {"__typename": "Query"}}
    # a field error is still a 200, with its data
    partial = await gql.http.post(
        "/graphql", json={"query": "{ __typename portfolio { cash } }"}, headers={"Accept": accept}
    )
    assert partial.status_code == 200 and "data" in partial.json()
    # a request error is a 400 without a `data` entry, so Apollo shows its GraphQL errors
    bad = await gql.http.post("/graphql", json={"query": "{ nope }"}, headers={"Accept": accept})
    assert bad.status_code == 400
    assert bad.headers["content-type"].startswith(GRAPHQL_RESPONSE)
    assert "data" not in bad.json() and bad.json()["errors"][0]["extensions"]["code"]


@pytest.mark.parametrize("accept", [None, "application/json", "*/*", "application/json, */*"])
async def test_plain_json_clients_keep_application_json_and_read_request_errors_from_a_200(
    gql: GraphQLClient, accept: str | None
) -> None:
    """GraphQL over HTTP, for application/json: a request error is a 200 (older clients read
    errors only from a 200), still without a `data` entry and with its code."""
    headers = {"Accept": accept} if accept else {}
    for query, code in (("{ nope }", "GRAPHQL_VALIDATION_FAILED"), ("{", "GRAPHQL_PARSE_FAILED")):
        bad = await gql.http.post("/graphql", json={"query": query}, headers=headers)
        assert bad.headers["content-type"].startswith("application/json")
        assert bad.status_code == 200 and "data" not in bad.json()
        assert bad.json()["errors"][0]["extensions"]["code"] == code


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"query": "{ __typename }"}', "application/json"),
        (b'{"query": "{ __typename }", "variables": null}', "application/json; charset=utf-8"),
        (
            b'{"query": "query Q($b: Boolean!) { __typename @include(if: $b) }", '
            b'"variables": {"b": true}, "operationName": "Q", "extensions": {"x": 1}}',
            "application/json",
        ),
        (b'{"query": 7}', "application/json"),
        (b'{"query": "{ __typename }", "variables": [1]}', "application/json"),
        (b'{"query": "{ __typename }", "extensions": "x"}', "application/json"),
        (b'[{"query": "{ __typename }"}]', "application/json"),
        (b'{"variables": {}}', "application/json"),
    ],
)
async def test_json_posts_read_directly_answer_as_strawberrys_parser_would(
    gql: GraphQLClient, body: bytes, content_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The view reads plain JSON POSTs itself (gateway/view.py `parse_http_body`): the same
    status and body as strawberry's own parser gives for each."""
    headers = {"Content-Type": content_type}
    direct = await gql.http.post("/graphql", content=body, headers=headers)
    monkeypatch.setattr(GraphQLView, "parse_http_body", AsyncBaseHTTPView.parse_http_body)
    strawberrys = await gql.http.post("/graphql", content=body, headers=headers)
    assert (direct.status_code, direct.json()) == (strawberrys.status_code, strawberrys.json())


async def test_a_media_type_in_capitals_is_json_too(gql: GraphQLClient) -> None:
    """Media types are case-insensitive (RFC 9110); strawberry's own parser refuses this one."""
    response = await gql.http.post(
        "/graphql",
        content=b'{"query": "{ __typename }"}',
        headers={"Content-Type": "Application/JSON"},
    )
    assert (response.status_code, response.json()) == (200, {"data": {"__typename": "Query"}})
