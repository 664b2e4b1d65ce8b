"""Through the JavaScript clients themselves, run with Node against the real server: the official
GraphQL-over-HTTP audit (graphql-http's `auditServer`), with no failure and no warning, and the
`graphql-sse` client in its distinct connections mode. Their node_modules are installed at test
time into tests/http_audit/node_modules (git-ignored), from the committed package-lock.json."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.infra.container import Services
from services.infra.settings import Settings
from tests.api_process import api_process
from tests.trading import listed, quote, unique_symbol

HERE = Path(__file__).resolve().parents[1] / "http_audit"
STAMP = HERE / "node_modules" / ".tradeql-lock-sha256"


@pytest.fixture(scope="module")
def node_clients() -> Path:
    """tests/http_audit with its node_modules installed (npm ci, once per lock file)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(
            "node and npm are needed for the JavaScript clients (apt-get install nodejs npm)"
        )
    lock = hashlib.sha256((HERE / "package-lock.json").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text() != lock:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"npm ci failed: {done.stderr}"
        STAMP.write_text(lock)
    return HERE


async def node(clients: Path, script: str, *args: str, timeout: float = 60) -> str:
    process = await asyncio.create_subprocess_exec(
        "node",
        script,
        *args,
        cwd=clients,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode == 0, err.decode()
    return out.decode()


@pytest.fixture
def introspective_api(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """The API as `tradeql up` serves it, introspection on: the audit's variable checks ask
    `__type(name: $id)`, which a server with introspection off refuses (by design)."""
    env = {**os.environ, "TRADEQL_INTROSPECTION": "true"}
    with api_process(tmp_path, env=env) as (_, url):
        yield url


async def test_the_graphql_over_http_audit_passes_without_warnings(
    node_clients: Path, introspective_api: str
) -> None:
    results: list[dict[str, Any]] = json.loads(
        await node(node_clients, "audit.mjs", f"{introspective_api}/graphql")
    )
    assert len(results) > 20  # the audit ran
    not_ok = [r for r in results if r["status"] != "ok"]
    assert not_ok == [], json.dumps(not_ok, indent=1)


async def test_the_graphql_sse_client_subscribes_and_completes(
    node_clients: Path, api_url: str, services: Services
) -> None:
    symbol = unique_symbol("J")
    await listed(services, symbol)
    await quote(services, symbol, "50.00", "50.02")
    query = f'subscription {{ quotes(symbols: ["{symbol}"]) {{ symbol bid }} }}'
    client = asyncio.ensure_future(
        node(node_clients, "sse_client.mjs", f"{api_url}/graphql", query, "2")
    )
    await asyncio.sleep(1.5)  # the client has the current quote; move it
    await quote(services, symbol, "50.10", "50.12")
    lines = [json.loads(line) for line in (await client).splitlines()]
    assert lines == [
        {"data": {"quotes": {"symbol": symbol, "bid": "50.0000"}}},
        {"data": {"quotes": {"symbol": symbol, "bid": "50.1000"}}},
        "disposed",
    ]
    # a private subscription without a session: the error at once, then the stream completes
    # (graphql-sse would retry a refused request; here nothing is retried)
    private = await node(
        node_clients,
        "sse_client.mjs",
        f"{api_url}/graphql",
        "subscription { orderUpdates { event } }",
        "5",
        timeout=10,
    )
    (line,) = [json.loads(text) for text in private.splitlines()]
    assert line["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
