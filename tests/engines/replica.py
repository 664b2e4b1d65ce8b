"""A PostgreSQL primary and its streaming replica of the tests' own: `initdb` and
`pg_basebackup -R` from the PostgreSQL binaries on the machine, in a temporary folder, on free
ports, run as an unprivileged user (`postgres` when the tests run as root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.engines.pgbouncer import free_port

RUN_AS = "postgres"


def postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and pg_basebackup, if any."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    for initdb in reversed(found):
        if (initdb.parent / "pg_basebackup").exists():
            return initdb.parent
    return None


@dataclass(frozen=True)
class Pair:
    primary_url: str
    replica_url: str
    folder: Path
    bin: Path

    def sql_on_replica(self, sql: str) -> str:
        """The first column of the first row of `sql` on the replica, as psql prints it."""
        return _run(
            [str(self.bin / "psql"), "-At", "-c", sql, self.replica_url], capture=True
        ).strip()


def _run(argv: list[str], *, capture: bool = False) -> str:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", RUN_AS, "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stdout}{done.stderr}")
    return done.stdout if capture else ""


@contextmanager
def streaming_pair() -> Iterator[Pair]:
    """Start a primary (wal_level replica, replication allowed from 127.0.0.1 without a
    password) and a hot standby streaming from it; stop both and remove them afterwards."""
    bin = postgres_bin()
    if bin is None:
        raise FileNotFoundError("no PostgreSQL server binaries under /usr/lib/postgresql")
    folder = Path(tempfile.mkdtemp(prefix="tradeql-replica-"))
    if os.geteuid() == 0:
        shutil.chown(folder, RUN_AS, RUN_AS)
    primary, replica = folder / "primary", folder / "replica"
    primary_port, replica_port = free_port(), free_port()
    started: list[Path] = []
    try:
        _run([str(bin / "initdb"), "-D", str(primary), "-U", "postgres", "--auth=trust",
              "-E", "UTF8", "--no-sync"])  # fmt: skip
        settings = (
            f"port = {primary_port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{folder}'\nwal_level = replica\nmax_wal_senders = 4\n"
            "fsync = off\nsynchronous_commit = off\nhot_standby = on\n"
        )
        with (primary / "postgresql.conf").open("a") as conf:
            conf.write(settings)
        _start(bin, primary, started)
        _run([str(bin / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary_port),
              "-U", "postgres", "-D", str(replica), "-R", "-X", "stream"])  # fmt: skip
        with (replica / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {replica_port}\n")
        _start(bin, replica, started)
        yield Pair(
            primary_url=f"postgresql://postgres@127.0.0.1:{primary_port}/postgres",
            replica_url=f"postgresql://postgres@127.0.0.1:{replica_port}/postgres",
            folder=folder,
            bin=bin,
        )
    finally:
        for data in reversed(started):
            try:
                _run([str(bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
            except RuntimeError:
                pass
        shutil.rmtree(folder, ignore_errors=True)


def _start(bin: Path, data: Path, started: list[Path]) -> None:
    _run([str(bin / "pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-w", "start"])
    started.append(data)
