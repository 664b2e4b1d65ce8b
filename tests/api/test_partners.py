"""Persisted queries through the real API: APQ over HTTP (POST, GET) and WebSocket, and partners
registered with the CLI, whose API keys run only their trusted documents."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from gql import Client, GraphQLRequest
from gql.client import AsyncClientSession
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport
from graphql import parse, print_ast

from gateway.persisted import apq_key
from services.infra.container import Services
from services.infra.settings import Settings
from services.partners.registry import PartnerError, parse_manifest
from tests.trading import listed, quote, unique_symbol

ROOT = Path(__file__).resolve().parents[2]


def printed(document: str) -> str:
    """A document as gql sends it (and as a manifest generator writes it): printed from its AST."""
    return print_ast(parse(document))


ME = printed("query Me { me { id email } }")
CLOCK = printed("query Clock { clock { isOpen } }")
SECURITY = printed('query Security { security(symbol: "AAPL") { symbol } }')


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def unique(document: str) -> str:
    """The same operation under a fresh name, so its hash was never stored before."""
    name = document.split()[1]
    return document.replace(name, f"{name}_{uuid.uuid4().hex[:10]}", 1)


def persisted(hash_: str, version: int = 1) -> dict[str, Any]:
    return {"persistedQuery": {"version": version, "sha256Hash": hash_}}


def code_of(body: dict[str, Any]) -> str:
    return str(body["errors"][0]["extensions"]["code"])


# --- Apollo's APQ protocol as a client link, on top of gql (which has no APQ of its own) --------


class APQRequest(GraphQLRequest):
    """A request carrying extensions.persistedQuery: the hash alone first, as Apollo's link does."""

    def __init__(self, document: str, *, hash_only: bool, **kwargs: Any) -> None:
        super().__init__(document, **kwargs)
        self.hash_only = hash_only
        self.sha256 = sha(print_ast(self.document))  # the text gql really sends
        self.extensions = persisted(self.sha256)

    @property
    def payload(self) -> dict[str, Any]:
        payload = super().payload
        if self.hash_only:
            del payload["query"]
        return payload


async def execute_apq(session: AsyncClientSession, document: str) -> tuple[dict[str, Any], bool]:
    """(result, whether the hash alone was enough)."""
    try:
        return await session.execute(APQRequest(document, hash_only=True)), True
    except TransportQueryError as exc:
        assert exc.errors, exc
        assert exc.errors[0]["message"] == "PersistedQueryNotFound"
        assert exc.errors[0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
    return await session.execute(APQRequest(document, hash_only=False)), False


def http_transport(api_url: str, headers: dict[str, str] | None = None) -> HTTPXAsyncTransport:
    return HTTPXAsyncTransport(url=f"{api_url}/graphql", headers=headers or {}, timeout=30)


def ws_transport(api_url: str, init_payload: dict[str, Any] | None = None) -> WebsocketsTransport:
    return WebsocketsTransport(
        url=api_url.replace("http://", "ws://") + "/graphql",
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
        init_payload=init_payload or {},
        connect_timeout=10,
        close_timeout=2,
    )


# --- APQ for first-party clients ---------------------------------------------------------------


async def test_apq_with_a_real_client_over_http(
    api_url: str, app_services: Services, user: dict[str, str]
) -> None:
    document = unique(ME)
    headers = {"Authorization": f"Bearer {user['token']}"}
    async with Client(transport=http_transport(api_url, headers)) as session:
        result, hit = await execute_apq(session, document)
        assert (result["me"]["id"], hit) == (user["id"], False)
        result, hit = await execute_apq(session, document)
        assert (result["me"]["id"], hit) == (user["id"], True)
    key = apq_key(APQRequest(document, hash_only=True).sha256)
    ttl = await app_services.redis.ttl(key)
    assert app_services.settings.apq_ttl_seconds - 60 < ttl <= app_services.settings.apq_ttl_seconds


async def test_the_apq_protocol_by_hand_over_post_and_get(api_url: str) -> None:
    document = unique(CLOCK)
    hash_only = {"extensions": persisted(sha(document))}
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        response = await http.post("/graphql", json=hash_only)
        assert response.status_code == 200
        assert response.json() == {
            "errors": [
                {
                    "message": "PersistedQueryNotFound",
                    "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"},
                }
            ]
        }
        # GET, hash only, with a browser-like Accept: still a GraphQL answer, not the GraphiQL page
        params = {"extensions": json.dumps(hash_only["extensions"])}
        response = await http.get("/graphql", params=params, headers={"Accept": "*/*"})
        assert response.status_code == 200
        assert code_of(response.json()) == "PERSISTED_QUERY_NOT_FOUND"

        response = await http.post("/graphql", json={"query": document, **hash_only})
        assert response.status_code == 200
        assert isinstance(response.json()["data"]["clock"]["isOpen"], bool)

        response = await http.post("/graphql", json=hash_only)
        assert response.status_code == 200
        assert "clock" in response.json()["data"]
        response = await http.get("/graphql", params=params)
        assert response.status_code == 200
        assert "clock" in response.json()["data"]


async def test_apq_registers_over_get_too(api_url: str) -> None:
    document = unique(CLOCK)
    extensions = json.dumps(persisted(sha(document)))
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        response = await http.get("/graphql", params={"query": document, "extensions": extensions})
        assert "clock" in response.json()["data"]
        response = await http.get("/graphql", params={"extensions": extensions})
        assert "clock" in response.json()["data"]


async def test_a_hash_that_does_not_match_the_query_is_refused_and_not_stored(
    api_url: str, app_services: Services
) -> None:
    document, other = unique(CLOCK), unique(CLOCK)
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        response = await http.post(
            "/graphql", json={"query": document, "extensions": persisted(sha(other))}
        )
        assert response.status_code == 400
        assert code_of(response.json()) == "PERSISTED_QUERY_HASH_MISMATCH"
        response = await http.post("/graphql", json={"extensions": persisted(sha(other))})
        assert code_of(response.json()) == "PERSISTED_QUERY_NOT_FOUND"
    assert await app_services.redis.exists(apq_key(sha(other)), apq_key(sha(document))) == 0


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"extensions": persisted(sha(CLOCK), version=2)}, "PERSISTED_QUERY_NOT_SUPPORTED"),
        ({"extensions": persisted("not-a-hash")}, "PERSISTED_QUERY_INVALID"),
        ({"documentId": "sha1:abc"}, "PERSISTED_QUERY_INVALID"),
    ],
)
async def test_unsupported_or_malformed_persisted_queries_are_400(
    api_url: str, body: dict[str, Any], code: str
) -> None:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        response = await http.post("/graphql", json=body)
    assert response.status_code == 400
    assert code_of(response.json()) == code


async def test_a_persisted_mutation_over_get_is_405(api_url: str) -> None:
    document = unique("mutation Logout { logout }")
    extensions = persisted(sha(document))
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        registered = await http.post("/graphql", json={"query": document, "extensions": extensions})
        assert registered.status_code == 200, registered.text
        response = await http.get("/graphql", params={"extensions": json.dumps(extensions)})
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert code_of(response.json()) == "METHOD_NOT_ALLOWED"


async def test_apq_over_websocket_query_and_subscription(
    api_url: str, services: Services, user: dict[str, str]
) -> None:
    symbol = unique_symbol("PQ")
    await listed(services, symbol)
    await quote(services, symbol, "10.00", "10.02")
    payload = {"Authorization": f"Bearer {user['token']}"}
    document = unique(ME)
    subscription = unique(
        f'subscription Quotes {{ quotes(symbols: ["{symbol}"]) {{ symbol bid }} }}'
    )
    async with Client(transport=ws_transport(api_url, payload)) as session:
        result, hit = await execute_apq(session, document)
        assert (result["me"]["id"], hit) == (user["id"], False)
        result, hit = await execute_apq(session, document)
        assert (result["me"]["id"], hit) == (user["id"], True)

        with pytest.raises(TransportQueryError) as raised:
            await anext(session.subscribe(APQRequest(subscription, hash_only=True)))
        assert raised.value.errors
        assert raised.value.errors[0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
        for hash_only in (False, True):
            stream = session.subscribe(APQRequest(subscription, hash_only=hash_only))
            first = await asyncio.wait_for(anext(stream), 10)
            await stream.aclose()
            assert first["quotes"] == {"symbol": symbol, "bid": "10.0000"}


# --- partners ----------------------------------------------------------------------------------


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`tradeql ...` in a child process, with DATABASE_URL/REDIS_URL of the test servers."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ),
        timeout=120,
    )


def apollo_manifest(*bodies: str) -> str:
    operations = [
        {"id": sha(b), "name": b.split()[1], "type": b.split()[0], "body": b} for b in bodies
    ]
    return json.dumps(
        {"format": "apollo-persisted-query-manifest", "version": 1, "operations": operations}
    )


def codegen_manifest(*bodies: str) -> str:
    return json.dumps({sha(b): b for b in bodies})


async def add_partner(
    tmp_path: Path, name: str, manifest: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"{name}-{uuid.uuid4().hex[:6]}.json"
    path.write_text(manifest, encoding="utf-8")
    return await cli("partners", "add", name, "--manifest", str(path), *extra)


async def register_in_process(services: Services, name: str, manifest: str) -> str:
    """What `partners add` does, without a child process, for tests about something else."""
    documents = parse_manifest(manifest, max_document_bytes=4096)
    registration = await services.partners.register(name, documents)
    assert registration.api_key is not None
    return registration.api_key


async def registered_key(tmp_path: Path, name: str, manifest: str) -> str:
    done = await add_partner(tmp_path, name, manifest)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    assert key.startswith("tqp_") and len(key) > 40, done.stdout
    return key


class Partner:
    """Calls as a partner would: X-API-Key, and a document named by hash or documentId."""

    def __init__(self, http: httpx.AsyncClient, key: str, token: str | None = None) -> None:
        self.http = http
        self.headers = {"X-API-Key": key}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    async def post(self, body: dict[str, Any]) -> httpx.Response:
        return await self.http.post("/graphql", json=body, headers=self.headers)

    async def by_hash(self, document: str) -> httpx.Response:
        return await self.post({"extensions": persisted(sha(document))})

    async def by_id(self, document: str) -> httpx.Response:
        return await self.post({"documentId": f"sha256:{sha(document)}"})


def refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert code_of(response.json()) == code


@pytest.fixture
def names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"acme-{suffix}", f"globex-{suffix}"


async def test_partners_run_only_their_documents(
    settings: Settings, api_url: str, tmp_path: Path, user: dict[str, str], names: tuple[str, str]
) -> None:
    acme, globex = names
    acme_key, globex_key = await asyncio.gather(  # both formats, through the CLI
        registered_key(tmp_path, acme, apollo_manifest(ME, CLOCK)),
        registered_key(tmp_path, globex, codegen_manifest(SECURITY)),
    )
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        partner = Partner(http, acme_key)
        response = await partner.by_hash(CLOCK)
        assert response.status_code == 200 and "clock" in response.json()["data"]
        response = await partner.by_id(CLOCK)
        assert response.status_code == 200 and "clock" in response.json()["data"]
        response = await http.get(
            "/graphql", params={"documentId": sha(CLOCK)}, headers=partner.headers
        )
        assert response.status_code == 200 and "clock" in response.json()["data"]
        response = await Partner(http, globex_key).by_id(SECURITY)
        assert response.status_code == 200 and "security" in response.json()["data"]

        refused(await partner.post({"query": CLOCK}), 403, "PERSISTED_QUERY_NOT_ALLOWED")
        refused(await partner.by_hash(unique(CLOCK)), 403, "PERSISTED_QUERY_NOT_ALLOWED")
        refused(await partner.by_hash(SECURITY), 403, "PERSISTED_QUERY_NOT_ALLOWED")
        refused(await partner.by_id(SECURITY), 403, "PERSISTED_QUERY_NOT_ALLOWED")
        refused(
            await http.get("/graphql", params={"query": CLOCK}, headers=partner.headers),
            403,
            "PERSISTED_QUERY_NOT_ALLOWED",
        )
        refused(await Partner(http, globex_key).by_hash(ME), 403, "PERSISTED_QUERY_NOT_ALLOWED")
        refused(await Partner(http, "tqp_" + "x" * 43).by_hash(CLOCK), 401, "INVALID_API_KEY")
        refused(await Partner(http, "").by_hash(CLOCK), 401, "INVALID_API_KEY")

        # the key authorizes documents; a user's session token still says who acts
        anonymous = await partner.by_hash(ME)
        assert anonymous.json() == {"data": {"me": None}}
        as_user = await Partner(http, acme_key, user["token"]).by_id(ME)
        assert as_user.json()["data"]["me"] == {"id": user["id"], "email": user["email"]}

    # and through a real client, which sends only the hash
    async with Client(transport=http_transport(api_url, {"X-API-Key": acme_key})) as session:
        result = await session.execute(APQRequest(CLOCK, hash_only=True))
        assert isinstance(result["clock"]["isOpen"], bool)


async def test_a_partner_over_websocket(
    services: Services, api_url: str, user: dict[str, str], names: tuple[str, str]
) -> None:
    key = await register_in_process(services, names[0], apollo_manifest(ME))
    payload = {"X-API-Key": key, "Authorization": f"Bearer {user['token']}"}
    async with Client(transport=ws_transport(api_url, payload)) as session:
        result = await session.execute(APQRequest(ME, hash_only=True))
        assert result["me"]["id"] == user["id"]
        with pytest.raises(TransportQueryError) as raised:
            await session.execute(GraphQLRequest(CLOCK))
        assert raised.value.errors
        assert raised.value.errors[0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_ALLOWED"
    payload["X-API-Key"] = "tqp_wrong"
    async with Client(transport=ws_transport(api_url, payload)) as session:
        with pytest.raises(TransportQueryError) as raised:
            await session.execute(APQRequest(ME, hash_only=True))
        assert raised.value.errors
        assert raised.value.errors[0]["extensions"]["code"] == "INVALID_API_KEY"


async def test_list_revoke_replace_and_rotate(
    settings: Settings, services: Services, api_url: str, tmp_path: Path, names: tuple[str, str]
) -> None:
    acme, globex = names
    acme_key = await register_in_process(services, acme, apollo_manifest(ME, CLOCK))
    globex_key = await register_in_process(services, globex, codegen_manifest(CLOCK))
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        acme_partner, globex_partner = Partner(http, acme_key), Partner(http, globex_key)
        assert (await acme_partner.by_hash(CLOCK)).status_code == 200  # now cached

        listed_ = await cli("partners", "list")
        assert listed_.returncode == 0, listed_.stderr
        rows = {line.split()[0]: line.split() for line in listed_.stdout.splitlines()[1:]}
        assert rows[acme][1:3] == ["active", "2"] and rows[globex][1:3] == ["active", "1"]
        for secret in (acme_key, globex_key):
            assert secret not in listed_.stdout
            assert hashlib.sha256(secret.encode()).hexdigest() not in listed_.stdout

        revoked = await cli("partners", "revoke", acme)
        assert revoked.returncode == 0, revoked.stderr
        refused(await acme_partner.by_hash(CLOCK), 401, "INVALID_API_KEY")  # at once
        summaries = {p.name: p for p in await services.partners.summaries() if p.name == acme}
        assert summaries[acme].active is False and summaries[acme].revoked_at is not None
        with pytest.raises(PartnerError, match="no active partner"):
            await services.partners.revoke(acme)

        # add again with a new manifest: documents replaced, the key kept (and no key printed)
        assert (await globex_partner.by_hash(CLOCK)).status_code == 200
        replaced = await add_partner(tmp_path, globex, apollo_manifest(ME))
        assert replaced.returncode == 0, replaced.stderr
        assert "tqp_" not in replaced.stdout and "unchanged" in replaced.stdout
        refused(await globex_partner.by_hash(CLOCK), 403, "PERSISTED_QUERY_NOT_ALLOWED")
        assert (await globex_partner.by_hash(ME)).json() == {"data": {"me": None}}

        # --rotate-key: a new key, printed last; the old one stops at once
        rotated = await add_partner(tmp_path, globex, apollo_manifest(ME), "--rotate-key")
        assert rotated.returncode == 0, rotated.stderr
        new_key = rotated.stdout.strip().splitlines()[-1]
        assert new_key.startswith("tqp_") and new_key != globex_key
        refused(await globex_partner.by_hash(ME), 401, "INVALID_API_KEY")
        assert (await Partner(http, new_key).by_hash(ME)).json() == {"data": {"me": None}}

        # a revoked name can be registered again, with a new key
        fresh_key = await register_in_process(services, acme, codegen_manifest(CLOCK))
        assert fresh_key != acme_key
        assert (await Partner(http, fresh_key).by_hash(CLOCK)).status_code == 200
        refused(await acme_partner.by_hash(CLOCK), 401, "INVALID_API_KEY")


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("{ not json", "not valid JSON"),
        (codegen_manifest(CLOCK).replace(sha(CLOCK), sha(ME)), "does not match its body"),
        (codegen_manifest("query Broken { clock { isOpen }"), "does not parse"),
        (apollo_manifest("query Nope { clock { nope } }"), "not valid against the schema"),
    ],
)
async def test_a_bad_manifest_stores_nothing_and_exits_1(
    settings: Settings, services: Services, tmp_path: Path, manifest: str, message: str
) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    done = await add_partner(tmp_path, name, manifest)
    assert done.returncode == 1
    assert "error: " in done.stderr and message in done.stderr
    assert "tqp_" not in done.stdout
    assert name not in [p.name for p in await services.partners.summaries()]


async def test_a_bad_partner_name_is_refused(services: Services) -> None:
    documents = parse_manifest(codegen_manifest(CLOCK), max_document_bytes=4096)
    for name in ("no spaces please", "-dash-first", "x" * 65, ""):
        with pytest.raises(PartnerError, match="invalid partner name"):
            await services.partners.register(name, documents)
