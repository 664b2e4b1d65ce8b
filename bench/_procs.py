"""Child processes of a benchmark: started in their own session, logged to files, always ended.

Every process started is recorded (pid, start time, command line) in a state file, so that a
benchmark killed with SIGKILL leaves nothing behind for long: the next run ends exactly those
processes, matched by pid *and* start time, and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import psutil

ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE_SECONDS = 10.0


class BenchError(RuntimeError):
    """The benchmark cannot go on (a process died, a server did not answer in time)."""


def tradeql_argv(*args: str) -> list[str]:
    """`tradeql <args>` with this interpreter (the venv's), as `gateway.supervisor` does."""
    return [sys.executable, "-m", "gateway.cli", *args]


def log_tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])
    return "(no log)"


class Registry:
    """The state file of the processes this benchmark started and has not yet seen end."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> list[dict[str, object]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        return data if isinstance(data, list) else []

    def _save(self, entries: list[dict[str, object]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries))
        tmp.replace(self.path)

    def add(self, pid: int) -> None:
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            return
        self._save([*self._load(), {"pid": pid, "created": created}])

    def remove(self, pid: int) -> None:
        self._save([e for e in self._load() if e.get("pid") != pid])

    def end_leftovers(self) -> list[int]:
        """End the processes a previous run left (same pid and start time only)."""
        ended: list[int] = []
        for entry in self._load()[:1000]:
            pid, created = entry.get("pid"), entry.get("created")
            if not isinstance(pid, int) or not isinstance(created, float):
                continue
            try:
                process = psutil.Process(pid)
                if abs(process.create_time() - created) > 0.01:
                    continue
                process.terminate()
                try:
                    process.wait(STOP_GRACE_SECONDS)
                except psutil.TimeoutExpired:
                    process.kill()
                ended.append(pid)
            except psutil.Error:
                continue
        self._save([])
        return ended


class Managed:
    """One child process, its output in a log file (or, with `pipe=True`, stdout to the caller)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        registry: Registry,
        *,
        pipe: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.registry = registry
        self.pipe = pipe
        self.popen: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise BenchError(f"{self.name} was not started")
        return self.popen.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a", encoding="utf-8")  # closed in stop()
        self.popen = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.PIPE if self.pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if self.pipe else self._log,
            stderr=self._log,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C reaches the benchmark only; it ends the children
        )
        self.registry.add(self.popen.pid)
        if self.pipe:
            threading.Thread(target=self._read_stdout, name=f"{self.name}-out", daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise BenchError(
                f"{self.name} exited with code {self.popen.returncode}; "
                f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def send_line(self, line: str) -> None:
        assert self.popen is not None and self.popen.stdin is not None
        try:
            self.popen.stdin.write(line + "\n")
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise BenchError(f"{self.name} stopped reading its input: {exc}") from exc

    def read_line(self, timeout: float) -> str:
        """The next stdout line of a piped child; BenchError on timeout or end of output."""
        try:
            line = self._lines.get(timeout=max(0.0, timeout))
        except queue.Empty as exc:
            raise BenchError(f"{self.name}: nothing on its output within {timeout:.0f}s") from exc
        if line is None:
            self.check_alive()
            raise BenchError(f"{self.name} closed its output")
        return line

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; idempotent."""
        popen = self.popen
        if popen is not None:
            if popen.stdin is not None:
                with contextlib.suppress(OSError):
                    popen.stdin.close()
            if popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    popen.send_signal(signal.SIGTERM)
                try:
                    popen.wait(grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        popen.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        popen.wait(5)
            if popen.poll() is not None:
                self.registry.remove(popen.pid)
        if self._log is not None:
            self._log.close()
            self._log = None


def wait_until(
    what: str,
    probe: Sequence[Managed],
    check: Callable[[], bool],
    timeout: float,
    interval: float = 0.1,
) -> None:
    """Poll `check()` until it is true, at most `timeout` seconds, failing fast if a child dies."""
    deadline = time.monotonic() + timeout
    last_error = ""
    for _ in range(int(timeout / interval) + 2):
        for process in probe:
            process.check_alive()
        try:
            if check():
                return
        except Exception as exc:  # not up yet: connection refused, 503, missing group...
            last_error = f" ({type(exc).__name__}: {exc})"
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    raise BenchError(f"{what}: not ready within {timeout:.0f}s{last_error}")


def sleep_watching(
    seconds: float,
    processes: Sequence[Managed],
    interval: float = 0.5,
    tick: Callable[[], None] | None = None,
) -> None:
    """Sleep, checking every `interval` that every child is still running (and calling `tick`)."""
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / interval) + 2):
        for process in processes:
            process.check_alive()
        if tick is not None:
            tick()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(interval, remaining))


class CpuWindow:
    """CPU time of some processes (and of the whole machine) over one interval."""

    def __init__(self, pids: Mapping[str, Sequence[int]]) -> None:
        self._procs: dict[str, list[psutil.Process]] = {}
        for name, group in pids.items():
            self._procs[name] = []
            for pid in group:
                with contextlib.suppress(psutil.Error):
                    self._procs[name].append(psutil.Process(pid))
        self._start: dict[str, float] = {}
        self._wall = 0.0
        self._machine: tuple[float, float] | None = None  # (total, idle) seconds, all cores

    @staticmethod
    def _seconds(processes: Sequence[psutil.Process]) -> float:
        used = 0.0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                used += times.user + times.system
        return used

    @staticmethod
    def _machine_times() -> tuple[float, float]:
        times = psutil.cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        total = times.user + times.system + idle
        for extra in ("nice", "irq", "softirq", "steal"):
            total += getattr(times, extra, 0.0)
        return total, idle

    def start(self) -> None:
        self._start = {name: self._seconds(procs) for name, procs in self._procs.items()}
        self._machine = self._machine_times()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Percent of one core per name, plus `machine` (all cores: up to 100 x cores)."""
        wall = max(time.monotonic() - self._wall, 1e-9)
        out = {
            name: 100.0 * (self._seconds(procs) - self._start.get(name, 0.0)) / wall
            for name, procs in self._procs.items()
        }
        if self._machine is not None:
            total, idle = self._machine_times()
            busy = (total - self._machine[0]) - (idle - self._machine[1])
            out["machine"] = 100.0 * busy / wall
        return out


def raise_nofile_limit(wanted: int = 16_384) -> None:
    """Many WebSockets need many descriptors: raise the soft limit toward the hard one."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
        if soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (an API started with --workers is a supervisor and them)."""
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    return [pid]


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
