"""The repository keeps the served schema as `schema.graphql`, so a reader (or a client's
codegen) has it without running anything: it must be what the server serves."""

from __future__ import annotations

from pathlib import Path

from gateway.graphql_schema import build_schema

COMMITTED = Path(__file__).resolve().parents[2] / "schema.graphql"


def test_the_committed_schema_is_the_served_one() -> None:
    served = build_schema().as_str() + "\n"
    assert COMMITTED.read_text() == served, (
        "schema.graphql is out of date: run `tradeql schema --out schema.graphql`"
    )
