"""`tradeql up`: every process of the platform as one supervised group.

A child that dies is restarted with backoff; one that keeps dying stops the whole group loudly
(exit 1), so the platform is never left half-alive. SIGINT/SIGTERM stop every child in order.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("tradeql.supervisor")

MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 60.0
POLL_SECONDS = 0.2


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: deque[float] = field(default_factory=deque)
    restart_at: float | None = None

    def start(self, env: Mapping[str, str]) -> None:
        log.info("starting %s: %s", self.name, " ".join(self.argv))
        self.process = subprocess.Popen(list(self.argv), env=dict(env), stdin=subprocess.DEVNULL)
        self.restart_at = None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class GroupFailed(RuntimeError):
    pass


class Supervisor:
    def __init__(
        self,
        children: Sequence[Child],
        env: Mapping[str, str],
        grace: float,
        *,
        max_restarts: int = MAX_RESTARTS,
        base_backoff: float = 0.5,
    ) -> None:
        self.children = list(children)
        self.env = env
        self.grace = grace
        self.max_restarts = max_restarts
        self.base_backoff = base_backoff
        self._stopping = False

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("received %s: stopping the group", signal.Signals(signum).name)
        self._stopping = True

    def stop(self) -> None:
        self._stopping = True

    def run(self, *, install_signal_handlers: bool = True) -> int:
        if install_signal_handlers:
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGTERM, self._on_signal)
        try:
            for child in self.children:
                child.start(self.env)
            while not self._stopping:
                self._watch()
                time.sleep(POLL_SECONDS)
            return 0
        except GroupFailed as exc:
            log.error("%s; stopping every process", exc)
            return 1
        finally:
            self.stop_all()

    def _watch(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.running():
                continue
            if child.restart_at is None:
                code = child.process.returncode if child.process else None
                while child.restarts and now - child.restarts[0] > RESTART_WINDOW_SECONDS:
                    child.restarts.popleft()
                if len(child.restarts) >= self.max_restarts:
                    raise GroupFailed(
                        f"{child.name} exited (code {code}) {self.max_restarts} times within "
                        f"{RESTART_WINDOW_SECONDS:.0f}s"
                    )
                backoff = min(self.base_backoff * 2 ** len(child.restarts), 10.0)
                log.warning(
                    "%s exited with code %s; restarting in %.1fs", child.name, code, backoff
                )
                child.restarts.append(now)
                child.restart_at = now + backoff
            elif now >= child.restart_at:
                child.start(self.env)

    def stop_all(self) -> None:
        running = [c for c in reversed(self.children) if c.running()]
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs: killing it", child.name, self.grace)
                child.process.kill()
                child.process.wait()


def tradeql_argv(*args: str) -> list[str]:
    """Run a subcommand with this interpreter, so children use the same environment."""
    return [sys.executable, "-m", "gateway.cli", *args]


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
