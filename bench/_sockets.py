"""Where bytes wait: kernel TCP queues of the processes under test, read from /proc/net/tcp.

For every socket the kernel reports `tx_queue` (sent by the process, not yet acknowledged by the
peer) and `rx_queue` (arrived, not yet read by the process). Sampled during a run, they show which
reader falls behind: the API reading Redis pub/sub, the API writing to its WebSockets, or the
client reading them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import psutil

_PROC_FILES = ("/proc/net/tcp", "/proc/net/tcp6")


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def kernel_queues() -> dict[tuple[int, int], tuple[int, int]]:
    """(local port, remote port) -> (tx_queue, rx_queue) bytes, for every TCP socket here."""
    out: dict[tuple[int, int], tuple[int, int]] = {}
    for path in _PROC_FILES:
        with contextlib.suppress(OSError):
            with open(path, encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
            for line in lines:
                parts = line.split()
                if len(parts) < 5:
                    continue
                tx, rx = (int(x, 16) for x in parts[4].split(":"))
                out[(_port(parts[1]), _port(parts[2]))] = (tx, rx)
    return out


@dataclass
class QueueWatch:
    """Max and last of three sums: API unread from Redis, API unsent to clients, client unread."""

    api_pid: int
    api_port: int
    redis_port: int
    client_pids: list[int]
    maxima: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)

    def _connections(self, pid: int) -> list[tuple[int, int]]:
        with contextlib.suppress(psutil.Error):
            return [
                (c.laddr.port, c.raddr.port)
                for c in psutil.Process(pid).net_connections(kind="tcp")
                if c.raddr
            ]
        return []

    def sample(self) -> None:
        queues = kernel_queues()
        sums = {"api_from_redis": 0, "api_to_clients": 0, "clients_unread": 0}
        for local, remote in self._connections(self.api_pid):
            tx, rx = queues.get((local, remote), (0, 0))
            if remote == self.redis_port:
                sums["api_from_redis"] += rx
            elif local == self.api_port:
                sums["api_to_clients"] += tx
        for pid in self.client_pids:
            for local, remote in self._connections(pid):
                if remote == self.api_port:
                    sums["clients_unread"] += queues.get((local, remote), (0, 0))[1]
        self.last = sums
        for key, value in sums.items():
            self.maxima[key] = max(self.maxima.get(key, 0), value)

    def summary(self) -> Mapping[str, tuple[int, int]]:
        return {k: (self.maxima.get(k, 0), self.last.get(k, 0)) for k in self.last}
