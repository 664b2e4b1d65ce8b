"""Every use of another library's private API, in one place, checked against the versions it was
written for.

TradeQL reaches into a few libraries where their public API has no way to do what it needs:
strawberry's execution context (the projection and the compiled order page subclass it and read
the resolver's raw graphql-core info), strawberry's `MaskErrors` (its result hook is overridden to
skip a costly runtime Protocol check), broadcaster's backend base class and end-of-stream
exception (the platform's own Redis pub/sub backend), purgatory's async breaker class (a type for
the venue breakers) and pgserver's `pg_ctl` (to stop the embedded server cleanly). A release of any
of them may move these without notice, so importing this module checks that each installed
version is one these uses were written and tested for (`TESTED`), and refuses to start otherwise
with what to do; `TRADEQL_ALLOW_UNTESTED_LIBRARIES=true` starts anyway, with a warning (then turn
the custom execution off with `TRADEQL_PROJECTION=false` and run the differential test,
`tests/api/test_differential_execution.py`, before trusting it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from importlib import metadata
from typing import Any

log = logging.getLogger("tradeql.compat")

# Distribution -> the release series (major.minor) whose private API the code below uses.
TESTED: dict[str, str] = {
    "strawberry-graphql": "0.341",
    "graphql-core": "3.3",
    "broadcaster": "0.3",
    "purgatory": "3.0",
}
# Needed only where it is installed (the `embedded` extra).
TESTED_IF_INSTALLED: dict[str, str] = {"pgserver": "0.1"}
ALLOW_UNTESTED = "TRADEQL_ALLOW_UNTESTED_LIBRARIES"


class UntestedLibraryError(RuntimeError):
    """An installed library is not a release series the private uses were checked against."""


def _series(version: str) -> str:
    return ".".join(version.split(".")[:2])


def untested_versions() -> dict[str, str]:
    """{distribution: installed version} of each library outside its tested series."""
    found: dict[str, str] = {}
    for name, series in (TESTED | TESTED_IF_INSTALLED).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name in TESTED:
                found[name] = "not installed"
            continue
        if _series(installed) != series:
            found[name] = installed
    return found


def check_versions() -> None:
    """Refuse to run on untested releases (or warn, when allowed): see the module docstring."""
    untested = untested_versions()
    if not untested:
        return
    described = ", ".join(
        f"{name} {found} (tested: {(TESTED | TESTED_IF_INSTALLED)[name]}.x)"
        for name, found in sorted(untested.items())
    )
    message = (
        f"TradeQL uses private APIs of libraries whose installed release it was not tested with: "
        f"{described}. Install the locked versions (./scripts/install uses constraints.txt), "
        f"or set {ALLOW_UNTESTED}=true to start anyway (then TRADEQL_PROJECTION=false is the "
        f"safe choice until tests/api/test_differential_execution.py passes on these releases)."
    )
    if os.environ.get(ALLOW_UNTESTED, "").strip().lower() in ("1", "true", "yes"):
        log.warning(message)
        return
    raise UntestedLibraryError(message)


check_versions()

# The private names themselves, imported only after the check: a moved name then fails with
# the message above rather than an ImportError from deep inside the platform.
from broadcaster._backends.base import BroadcastBackend  # noqa: E402
from broadcaster._base import Unsubscribed  # noqa: E402
from purgatory.service._async.circuitbreaker import AsyncCircuitBreaker  # noqa: E402
from strawberry.extensions import MaskErrors  # noqa: E402
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext  # noqa: E402

if not callable(getattr(MaskErrors, "_process_result", None)) or not callable(
    getattr(MaskErrors, "_process_errors", None)
):  # gateway/errors.py overrides the one and calls the other
    raise UntestedLibraryError("strawberry's MaskErrors no longer has _process_result")


def raw_info(info: Any) -> Any:
    """The graphql-core `GraphQLResolveInfo` behind a strawberry `Info` (its field nodes and
    fragments, which strawberry exposes only converted, anew on every call)."""
    return info._raw_info


def graphql_core_schema(schema: Any) -> Any:
    """The graphql-core `GraphQLSchema` a strawberry `Schema` was built into (strawberry keeps it
    as `_schema`; validation and the CLI's document checks need it)."""
    return schema._schema


def embedded_pg_ctl() -> Callable[..., Any]:
    """pgserver's `pg_ctl` runner (it has no public stop that waits)."""
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

    return pg_ctl  # type: ignore[no-any-return]


__all__ = [
    "AsyncCircuitBreaker",
    "BroadcastBackend",
    "MaskErrors",
    "StrawberryGraphQLCoreExecutionContext",
    "Unsubscribed",
    "embedded_pg_ctl",
    "graphql_core_schema",
    "raw_info",
]
