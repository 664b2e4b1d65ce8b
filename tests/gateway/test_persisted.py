"""Persisted queries without a server: manifest parsing, and the DocumentResolver's rules."""

from __future__ import annotations

import hashlib
import json
from typing import Any, cast
from uuid import uuid4

import pytest

from gateway.graphql_schema import build_schema
from gateway.persisted import DocumentResolver, PersistedQueryError, apq_key
from services.partners.registry import (
    APOLLO_FORMAT,
    ManifestError,
    Partner,
    TrustedDocument,
    check_against_schema,
    normalize_hash,
    parse_manifest,
)

ME = "query Me { me { id email } }"
CLOCK = "query Clock { clock { isOpen } }"
LOGOUT = "mutation Logout { logout }"
MAX_BYTES = 4096


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def apollo(*operations: dict[str, Any]) -> str:
    return json.dumps({"format": APOLLO_FORMAT, "version": 1, "operations": list(operations)})


def op(body: str, name: str = "Op", kind: str = "query", id_: str | None = None) -> dict[str, Any]:
    return {"id": id_ or sha(body), "name": name, "type": kind, "body": body}


# --- manifests ---------------------------------------------------------------------------------


def test_an_apollo_manifest_is_parsed_and_verified() -> None:
    documents = parse_manifest(
        apollo(op(ME, "Me"), op(LOGOUT, "Logout", "mutation")), max_document_bytes=MAX_BYTES
    )
    assert documents == [
        TrustedDocument(sha(ME), ME, "Me", "query"),
        TrustedDocument(sha(LOGOUT), LOGOUT, "Logout", "mutation"),
    ]


def test_a_codegen_map_is_parsed_and_verified() -> None:
    manifest = json.dumps({sha(ME): ME, f"sha256:{sha(CLOCK).upper()}": CLOCK})
    documents = parse_manifest(manifest, max_document_bytes=MAX_BYTES)
    assert [(d.sha256, d.body) for d in documents] == [(sha(ME), ME), (sha(CLOCK), CLOCK)]


def test_the_same_document_twice_is_kept_once() -> None:
    documents = parse_manifest(apollo(op(ME), op(ME)), max_document_bytes=MAX_BYTES)
    assert len(documents) == 1


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("{}", "no operations"),
        (apollo(), "no operations"),
        (json.dumps({"format": "relay", "operations": []}), "unknown manifest format"),
        (json.dumps({"format": APOLLO_FORMAT, "version": 2, "operations": []}), "version"),
        (json.dumps({"format": APOLLO_FORMAT, "version": 1, "operations": {}}), "must be a list"),
        (apollo("nope"), "must be an object"),  # type: ignore[arg-type]
        (apollo({"id": sha(ME), "name": "Me", "type": "query"}), 'string "body"'),
        (apollo(op(ME, kind="fragment")), '"type" must be one of'),
        (apollo(op(ME, id_="abc")), "not a sha256"),
        (apollo(op(ME, id_=sha(CLOCK))), "does not match its body"),
        (apollo(op("query { me { id }")), "does not parse"),
        (apollo(op("fragment F on User { id }")), "has no operation"),
        (apollo(op(ME, kind="mutation")), 'is a query, but the manifest says "mutation"'),
        (apollo(op("query Big { me { id } }" + " " * MAX_BYTES)), "more than the 4096"),
        (json.dumps({sha(ME): 42}), "is not a document"),
        (json.dumps({hashlib.sha1(ME.encode()).hexdigest(): ME}), "hashAlgorithm: 'sha256'"),
        (json.dumps({sha(ME): CLOCK}), "does not match its body"),
    ],
)
def test_a_bad_manifest_is_refused_with_a_clear_error(manifest: str, message: str) -> None:
    with pytest.raises(ManifestError) as raised:
        parse_manifest(manifest, max_document_bytes=MAX_BYTES)
    assert message in str(raised.value)


def test_documents_are_checked_against_the_served_schema() -> None:
    schema = build_schema()._schema
    good = parse_manifest(apollo(op(ME), op(CLOCK)), max_document_bytes=MAX_BYTES)
    check_against_schema(good, schema)
    bad = parse_manifest(
        apollo(op("query Bad { me { password } }", "Bad")), max_document_bytes=MAX_BYTES
    )
    with pytest.raises(ManifestError, match=r"\(Bad\) is not valid against the schema"):
        check_against_schema(bad, schema)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (sha(ME), sha(ME)),
        (sha(ME).upper(), sha(ME)),
        (f"sha256:{sha(ME)}", sha(ME)),
        ("abc", None),
        (42, None),
        (None, None),
    ],
)
def test_normalize_hash(value: object, expected: str | None) -> None:
    assert normalize_hash(value) == expected


# --- the resolver ------------------------------------------------------------------------------


class FakeRedis:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.calls: list[tuple[str, str, int | None]] = []

    async def getex(self, key: str, ex: int | None = None) -> str | None:
        self.calls.append(("getex", key, ex))
        return self.data.get(key)

    async def set(self, key: str, value: str, ex: int | None = None) -> None:
        self.calls.append(("set", key, ex))
        self.data[key] = value


class FakePartners:
    KEY = "tqp_good"

    def __init__(self) -> None:
        self.partner = Partner(uuid4(), "acme", 1)
        self.documents = {sha(ME): ME}

    async def authenticate(self, api_key: str) -> Partner | None:
        return self.partner if api_key == self.KEY else None

    async def document(self, partner: Partner, sha256: str) -> str | None:
        assert partner == self.partner
        return self.documents.get(sha256)


@pytest.fixture
def redis() -> FakeRedis:
    return FakeRedis()


@pytest.fixture
def resolver(redis: FakeRedis) -> DocumentResolver:
    return DocumentResolver(
        cast(Any, redis),
        cast(Any, FakePartners()),
        ttl_seconds=600,
        max_document_bytes=MAX_BYTES,
        max_tokens=2000,
    )


def pq(hash_: object, version: object = 1) -> dict[str, Any]:
    return {"persistedQuery": {"version": version, "sha256Hash": hash_}}


async def resolve(resolver: DocumentResolver, **kwargs: Any) -> str | None:
    args: dict[str, Any] = {
        "query": None,
        "extensions": None,
        "document_id": None,
        "api_key": None,
        "method": "POST",
    }
    return await resolver.resolve(**(args | kwargs))


async def refused(resolver: DocumentResolver, **kwargs: Any) -> PersistedQueryError:
    with pytest.raises(PersistedQueryError) as raised:
        await resolve(resolver, **kwargs)
    return raised.value


async def test_an_ordinary_request_is_untouched_and_costs_no_redis_call(
    resolver: DocumentResolver, redis: FakeRedis
) -> None:
    assert await resolve(resolver, query=ME, extensions={"tracing": True}) == ME
    assert await resolve(resolver) is None
    assert redis.calls == []


async def test_the_apq_round_trip(resolver: DocumentResolver, redis: FakeRedis) -> None:
    error = await refused(resolver, extensions=pq(sha(ME)))
    assert (error.code, error.message, error.http_status) == (
        "PERSISTED_QUERY_NOT_FOUND",
        "PersistedQueryNotFound",
        200,
    )
    assert error.formatted == {
        "message": "PersistedQueryNotFound",
        "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"},
    }
    assert await resolve(resolver, query=ME, extensions=pq(sha(ME))) == ME
    assert redis.data[apq_key(sha(ME))] == ME
    assert ("set", apq_key(sha(ME)), 600) in redis.calls
    redis.calls.clear()
    assert await resolve(resolver, extensions=pq(sha(ME).upper())) == ME
    assert redis.calls == [("getex", apq_key(sha(ME)), 600)]  # use refreshes the TTL


async def test_a_document_id_is_a_hash_too(resolver: DocumentResolver, redis: FakeRedis) -> None:
    redis.data[apq_key(sha(ME))] = ME
    assert await resolve(resolver, document_id=f"sha256:{sha(ME)}") == ME
    assert await resolve(resolver, document_id=sha(ME), extensions=pq(sha(ME))) == ME
    error = await refused(resolver, extensions=pq(sha(ME), version=2))
    assert error.formatted["message"] == "PersistedQueryNotSupported"
    error = await refused(resolver, document_id=sha(CLOCK), extensions=pq(sha(ME)))
    assert (error.code, error.http_status) == ("PERSISTED_QUERY_INVALID", 400)


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"query": CLOCK, "extensions": pq(sha(ME))}, "PERSISTED_QUERY_HASH_MISMATCH"),
        ({"extensions": pq(sha(ME), version=2)}, "PERSISTED_QUERY_NOT_SUPPORTED"),
        ({"extensions": pq(sha(ME), version=None)}, "PERSISTED_QUERY_NOT_SUPPORTED"),
        ({"extensions": pq("abc")}, "PERSISTED_QUERY_INVALID"),
        ({"extensions": pq(None)}, "PERSISTED_QUERY_INVALID"),
        ({"extensions": {"persistedQuery": "yes"}}, "PERSISTED_QUERY_INVALID"),
        ({"document_id": "not-a-hash"}, "PERSISTED_QUERY_INVALID"),
        ({"document_id": 42}, "PERSISTED_QUERY_INVALID"),
    ],
)
async def test_bad_persisted_requests_are_400(
    resolver: DocumentResolver, redis: FakeRedis, kwargs: dict[str, Any], code: str
) -> None:
    error = await refused(resolver, **kwargs)
    assert (error.code, error.http_status) == (code, 400)
    assert redis.data == {}


@pytest.mark.parametrize(
    ("query", "method"),
    [
        ("query Big { me { id } }" + " " * MAX_BYTES, "POST"),  # too large to keep
        ("query { me { id }", "POST"),  # does not parse: strawberry will say so
        (LOGOUT, "GET"),  # a mutation over GET: strawberry answers 405
    ],
)
async def test_some_verified_documents_run_but_are_not_stored(
    resolver: DocumentResolver, redis: FakeRedis, query: str, method: str
) -> None:
    assert await resolve(resolver, query=query, extensions=pq(sha(query)), method=method) == query
    assert redis.data == {}


async def test_a_mutation_registered_over_post_is_stored(
    resolver: DocumentResolver, redis: FakeRedis
) -> None:
    assert await resolve(resolver, query=LOGOUT, extensions=pq(sha(LOGOUT))) == LOGOUT
    assert redis.data == {apq_key(sha(LOGOUT)): LOGOUT}


async def test_a_partner_runs_its_documents_only(
    resolver: DocumentResolver, redis: FakeRedis
) -> None:
    key = FakePartners.KEY
    assert await resolve(resolver, api_key=key, extensions=pq(sha(ME))) == ME
    assert await resolve(resolver, api_key=key, document_id=sha(ME)) == ME
    assert await resolve(resolver, api_key=key, document_id=sha(ME), query=ME) == ME
    for kwargs in (
        {"query": ME},  # a raw query, even one of its own documents
        {"extensions": pq(sha(CLOCK))},  # not one of its documents
        {"document_id": sha(CLOCK), "query": CLOCK},  # nor by sending the text along
        {},
    ):
        error = await refused(resolver, api_key=key, **kwargs)
        assert (error.code, error.http_status) == ("PERSISTED_QUERY_NOT_ALLOWED", 403), kwargs
    error = await refused(resolver, api_key=key, document_id=sha(ME), query=CLOCK)
    assert error.code == "PERSISTED_QUERY_HASH_MISMATCH"
    assert redis.calls == []  # partners never read or write the APQ store


@pytest.mark.parametrize("key", ["tqp_wrong", "", "x" * 500])
async def test_a_wrong_key_is_401_before_anything_else(
    resolver: DocumentResolver, key: str
) -> None:
    for kwargs in ({"document_id": sha(ME)}, {"query": ME}, {"extensions": pq("abc")}):
        error = await refused(resolver, api_key=key, **kwargs)
        assert (error.code, error.http_status) == ("INVALID_API_KEY", 401)
    assert error.response().headers["www-authenticate"].startswith("ApiKey")
