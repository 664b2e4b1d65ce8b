"""Where the public contract is: `../shared/contract.graphql`, beside the repository. A clone on
its own has no `../shared`: the tests that read it are skipped there, except under CI
(`CI=true`), where its absence is a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CONTRACT = Path(__file__).resolve().parents[2] / "shared" / "contract.graphql"


def contract_text() -> str:
    if not CONTRACT.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the contract is missing under CI: {CONTRACT}")
        pytest.skip(f"no contract beside this clone ({CONTRACT})")
    return CONTRACT.read_text()
