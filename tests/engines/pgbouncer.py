"""Debian's PgBouncer in transaction mode, started in front of a PostgreSQL server for tests and
benchmarks (on a free port of its own, stopped afterwards)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# Debian installs it outside a normal user's PATH.
CANDIDATES = ("pgbouncer", "/usr/sbin/pgbouncer")
# PgBouncer refuses to run as root; as root it is started with `-u` as this user.
RUN_AS = "postgres"


def pgbouncer_binary() -> str | None:
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Pooler:
    port: int
    log: Path

    def url_for(self, database_url: str) -> str:
        """`database_url` (of the PostgreSQL server behind) with the pooler's host and port."""
        parts = urlsplit(database_url)
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))


def _config(server_url: str, port: int, pool_size: int) -> str:
    server = urlsplit(server_url)
    return f"""[databases]
* = host={server.hostname or "127.0.0.1"} port={server.port or 5432} user={server.username or "postgres"}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 1000
server_lifetime = 3600
"""


@contextmanager
def pgbouncer(server_url: str, *, pool_size: int = 20) -> Iterator[Pooler]:
    """PgBouncer (pool_mode = transaction) in front of the PostgreSQL server of `server_url`,
    which must let its user in without a password (the tests' server: trust). Every database of
    that server is reachable through it under its own name, as `postgres` logs in there."""
    binary = pgbouncer_binary()
    if binary is None:
        raise FileNotFoundError("pgbouncer is not installed (apt-get install pgbouncer)")
    folder = Path(tempfile.mkdtemp(prefix="tradeql-pgbouncer-"))
    port = free_port()
    (folder / "pgbouncer.ini").write_text(_config(server_url, port, pool_size))
    log = folder / "pgbouncer.log"
    argv = [binary]
    if os.geteuid() == 0:
        argv += ["-u", RUN_AS]
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*argv, str(folder / "pgbouncer.ini")],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_listening(process, port, log)
        yield Pooler(port=port, log=log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on {port}: {log.read_text()}")
