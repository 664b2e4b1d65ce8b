"""Logs for people and for collectors: JSON lines unless a person reads them at a terminal."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from gateway.logging import configure_logging, wants_json


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("setting", "tty", "expected"),
    [("auto", True, False), ("auto", False, True), ("true", True, True), ("false", False, False)],
)
def test_auto_is_readable_at_a_terminal_and_json_elsewhere(
    monkeypatch: pytest.MonkeyPatch, setting: str, tty: bool, expected: bool
) -> None:
    monkeypatch.setattr(sys, "stderr", Terminal() if tty else io.StringIO())
    assert wants_json(setting) is expected


def test_the_lines_are_what_was_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        for setting, parse in (("true", json.loads), ("false", str)):
            stream = io.StringIO()
            monkeypatch.setattr(sys, "stderr", stream)
            configure_logging("INFO", json_lines=setting)
            logging.getLogger("tradeql.test").info("hello %s", "there")
            line = stream.getvalue().strip().splitlines()[-1]
            parsed = parse(line)
            if setting == "true":
                assert parsed["message"] == "hello there" and parsed["logger"] == "tradeql.test"
            else:
                assert "hello there" in line and not line.startswith("{")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
