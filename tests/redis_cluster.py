"""A real three-master Redis Cluster for tests: `redis-server --cluster-enabled yes` three times
on free ports in a temporary folder, joined with `redis-cli --cluster create`. Needs Redis 7+
(sharded pub/sub): Debian's `redis-server` and `redis-tools`; without them the caller skips."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MASTERS = 3
BUS_OFFSET = 10_000  # a node's cluster bus listens on its port + 10000


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port whose bus port (+10000) is free too, both below 65536."""
    for _ in range(200):
        port = random.randint(20_000, 50_000)
        if _bindable(port) and _bindable(port + BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def missing_binaries() -> str | None:
    """Why a cluster cannot be started here (None: it can)."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        return "redis-server and redis-cli are needed (Debian: redis-server, redis-tools)"
    version = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    major = version.split("v=", 1)[-1].split(".", 1)[0]
    if not major.isdigit() or int(major) < 7:
        return f"Redis 7 or newer is needed for sharded pub/sub, found: {version.strip()}"
    return None


@dataclass
class RedisClusterServers:
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tradeql-cluster-")))
    ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Any one node: the client finds the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> str:
        server = shutil.which("redis-server")
        assert server is not None, missing_binaries()
        try:
            for _ in range(MASTERS):
                port = cluster_port()
                node = self.folder / str(port)
                node.mkdir()
                self.ports.append(port)
                argv = [
                    server, "--port", str(port), "--bind", "127.0.0.1",
                    "--cluster-enabled", "yes", "--cluster-config-file", str(node / "nodes.conf"),
                    "--cluster-node-timeout", "2000", "--dir", str(node),
                    "--save", "", "--appendonly", "no",
                ]  # fmt: skip
                self.processes.append(
                    subprocess.Popen(
                        argv,
                        stdout=(node / "redis.log").open("ab"),
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            for port in self.ports:
                self._wait(lambda port=port: self._cli(port, "ping") == "PONG", "node start")
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            created = subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *nodes,
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout}")
            for port in self.ports:
                self._wait(
                    lambda port=port: "cluster_state:ok" in self._cli(port, "cluster", "info"),
                    "cluster state ok",
                )
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        shutil.rmtree(self.folder, ignore_errors=True)

    def node_keys(self) -> list[int]:
        """How many keys each master holds (the layout spreads them over the cluster)."""
        return [int(self._cli(port, "dbsize") or 0) for port in self.ports]

    @staticmethod
    def _cli(port: int, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip()

    @staticmethod
    def _wait(ready: object, what: str, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                if ready():  # type: ignore[operator]
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Redis Cluster: {what} not reached in {within:.0f}s")
