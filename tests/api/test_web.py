"""The browser side over HTTP: GraphiQL's page and the web app reference nothing outside the
server, every file they reference is served with its media type, cache headers and (GraphiQL's)
integrity hash, and every vendored library keeps its license."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from gateway.app import create_app
from gateway.web import STATIC_DIR
from services.infra.settings import Settings
from tests.graphql_client import GraphQLClient

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
# An address in a page: a scheme or a protocol-relative host.
ADDRESS = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s\"'%)]*", re.IGNORECASE)
# A module's static imports, at the start of a line: `import ... from "x"`, `export ... from "x"`,
# `import "x"` (not the same words inside a string, such as an error message's example).
MODULE_IMPORT = re.compile(
    r"""^\s*(?:import|export)\b(?:[^;"']*?\bfrom)?\s*["']([^"']+)["']""", re.MULTILINE
)


class References(HTMLParser):
    """Every URL a page loads: script src, link href, img src, and the import map's targets;
    with each one's `integrity`, when it has one."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: dict[str, str | None] = {}
        self.import_map: dict[str, str] = {}
        self._in_import_map = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script" and found.get("type") == "importmap":
            self._in_import_map = True
        for name in ("src", "href"):
            url = found.get(name)
            if url and tag in ("script", "link", "img", "iframe") and not url.startswith("data:"):
                self.urls[url] = found.get("integrity")

    def handle_endtag(self, tag: str) -> None:
        self._in_import_map = False

    def handle_data(self, data: str) -> None:
        if self._in_import_map and data.strip():
            self.import_map.update(json.loads(data)["imports"])
            self.urls.update(dict.fromkeys(self.import_map.values()))


def references(html: str) -> References:
    parser = References()
    parser.feed(html)
    return parser


def is_external(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.scheme or parts.netloc) or url.startswith("//")


def sri(body: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode()


async def fetch_asset(http: httpx.AsyncClient, url: str) -> httpx.Response:
    response = await http.get(url)
    assert response.status_code == 200, url
    return response


async def test_graphiql_loads_nothing_from_outside_and_every_asset_is_served(
    gql: GraphQLClient,
) -> None:
    page = await gql.http.get("/graphql", headers=BROWSER)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    refs = references(page.text)
    assert "GraphiQL" in page.text
    assert refs.urls, "the page references no script or style"
    assert [u for u in refs.urls if is_external(u)] == []
    # nor any address in its inline script (the favicon's SVG namespace is a name, not a fetch)
    assert set(ADDRESS.findall(page.text)) <= {"http://www.w3.org/2000/svg"}
    kinds = set()
    for url, integrity in refs.urls.items():
        response = await fetch_asset(gql.http, url)
        kind = response.headers["content-type"].split(";")[0]
        kinds.add(kind)
        assert kind in ("text/javascript", "text/css"), url
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert integrity == sri(response.content), url  # the hash the CDN page had
    assert kinds == {"text/javascript", "text/css"}


async def test_the_web_app_loads_nothing_from_outside_and_every_module_is_served(
    gql: GraphQLClient,
) -> None:
    page = await gql.http.get("/", headers=BROWSER)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    refs = references(page.text)
    assert "graphql-ws" in refs.import_map
    # Follow the module graph from the page: every import resolves to a served file.
    pending = [u for u in refs.urls if not is_external(u)]
    assert [u for u in refs.urls if is_external(u)] == []
    seen: set[str] = set()
    while pending:
        url = pending.pop()
        if url in seen:
            continue
        seen.add(url)
        response = await fetch_asset(gql.http, url)
        if url.endswith(".js"):
            assert response.headers["content-type"].startswith("text/javascript"), url
            for target in MODULE_IMPORT.findall(response.text):
                target = refs.import_map.get(target, target)
                assert not is_external(target), f"{url} imports {target}"
                pending.append(urljoin(url, target))
    app_files = {f"/static/app/{f.name}" for f in (STATIC_DIR / "app").glob("*.[jc]s*")}
    assert app_files and app_files <= seen  # every module of the app is reached
    assert "/static/vendor/graphql-ws@6.4.2/common-CGW11Fyb.js" in seen


async def test_app_files_are_revalidated_and_answer_304_when_unchanged(
    gql: GraphQLClient,
) -> None:
    first = await gql.http.get("/static/app/app.js")
    assert first.headers["cache-control"] == "no-cache"
    again = await gql.http.get(
        "/static/app/app.js", headers={"If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304
    assert again.headers["cache-control"] == "no-cache"
    # Counted as one path in the metrics, not one series per file.
    metrics = (await gql.http.get("/metrics")).text
    assert 'method="GET",path="/static",status="304"' in metrics
    assert "app.js" not in metrics


@pytest.mark.parametrize(
    "path",
    ["/static/../gateway/web.py", "/static/%2e%2e/web.py", "/static/vendor/nothing.js", "/static/"],
)
async def test_nothing_outside_the_static_folder_is_served(gql: GraphQLClient, path: str) -> None:
    response = await gql.http.get(path)
    assert response.status_code == 404
    assert "STATIC_DIR" not in response.text


async def test_static_files_take_no_writes(gql: GraphQLClient) -> None:
    response = await gql.http.post("/static/app/app.js", content=b"x")
    assert response.status_code == 405


def test_every_vendored_library_keeps_its_license() -> None:
    folders = [p for p in (STATIC_DIR / "vendor").iterdir() if p.is_dir()]
    assert {f.name.rsplit("@", 1)[0] for f in folders} == {
        "react",
        "react-dom",
        "js-cookie",
        "graphiql",
        "graphiql-plugin-explorer",
        "graphql-ws",
    }
    for folder in folders:
        licenses = list(folder.glob("LICENSE*"))
        assert licenses, f"{folder.name} has no license"
        assert "MIT" in licenses[0].read_text() or "Permission is hereby granted" in (
            licenses[0].read_text()
        )
    assert "Patrick Arminio" in Path(STATIC_DIR / "graphiql.LICENSE").read_text()


async def test_the_app_is_not_served_when_switched_off(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"web_app": False}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        assert (await http.get("/", headers=BROWSER)).status_code == 404
        # GraphiQL's files stay served: its page needs them whatever the app's setting.
        assert (await http.get("/static/vendor/graphiql@3.8.3/graphiql.min.js")).status_code == 200
