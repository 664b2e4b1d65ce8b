"""The private-API guard refuses untested library releases, and says what to do."""

from __future__ import annotations

import logging

import pytest

from services.infra import compat


def test_the_installed_libraries_are_the_tested_ones() -> None:
    assert compat.untested_versions() == {}
    compat.check_versions()


def test_an_untested_release_refuses_to_start_with_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(compat.ALLOW_UNTESTED, raising=False)
    monkeypatch.setitem(compat.TESTED, "strawberry-graphql", "0.1")
    monkeypatch.setitem(compat.TESTED, "no-such-distribution", "1.0")
    assert set(compat.untested_versions()) == {"strawberry-graphql", "no-such-distribution"}
    with pytest.raises(compat.UntestedLibraryError) as refused:
        compat.check_versions()
    message = str(refused.value)
    assert "strawberry-graphql" in message and "tested: 0.1.x" in message
    assert "no-such-distribution not installed" in message
    assert "constraints.txt" in message and compat.ALLOW_UNTESTED in message


def test_allowed_untested_releases_start_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(compat.ALLOW_UNTESTED, "true")
    monkeypatch.setitem(compat.TESTED, "graphql-core", "9.9")
    with caplog.at_level(logging.WARNING, logger="tradeql.compat"):
        compat.check_versions()
    assert "graphql-core" in caplog.text and "TRADEQL_PROJECTION=false" in caplog.text
