"""Where the time goes: py-spy on running processes, or cProfile on an in-process quote cache.

py-spy samples a live process from outside (`record --nonblocking -f raw`); its raw output has
one line per distinct stack, `frame;frame;...;leaf count`. Only samples of active threads are
written (idle ones, blocked in a system call, are left out), so `samples / (rate x seconds)` is
the share of time the process was running *or runnable*: on a machine short of CPU it can be near
100% while the process got far less CPU, which is then a measure of how starved it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")
# Frames under every sample of a process (entry points, the event loop): left out of the
# "including callees" list, where they would only push the informative ones off the top.
_SPINE_FILES = (
    "<frozen runpy>",
    "_click/core.py",
    "typer/main.py",
    "typer/core.py",
    "asyncio/runners.py",
    "asyncio/base_events.py",
    "asyncio/events.py",
    "gateway/cli.py",
    "uvicorn/main.py",
    "uvicorn/_compat.py",
    "uvicorn/server.py",
    "workers/runner.py",
)


def find_py_spy(install: bool) -> tuple[str | None, str]:
    """The py-spy executable (installing it into this venv with pip if asked); and a note."""
    local = Path(sys.executable).parent / "py-spy"
    if local.exists():
        return str(local), ""
    found = shutil.which("py-spy")
    if found:
        return found, ""
    if not install:
        return None, "py-spy is not installed"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "py-spy"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"pip install py-spy failed: {exc}"
    if done.returncode != 0 or not local.exists():
        return None, f"pip install py-spy failed: {done.stderr.strip()[-300:]}"
    return str(local), "installed py-spy into the venv (pip install py-spy)"


class PySpyRecording:
    """One `py-spy record` of one process for a fixed number of seconds."""

    def __init__(
        self, exe: str, name: str, pid: int, seconds: float, rate: int, out_dir: Path
    ) -> None:
        self.name = name
        self.pid = pid
        self.seconds = max(1, round(seconds))
        self.rate = rate
        self.out = out_dir / f"py-spy-{name}-{pid}.txt"
        self.log = out_dir / f"py-spy-{name}-{pid}.log"
        self.argv = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(self.seconds),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(self.out),
            "--nonblocking",
        ]
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def finish(self, timeout: float) -> tuple[bool, str]:
        """Wait for it; (succeeded, error text)."""
        if self.popen is None:
            return False, "not started"
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
            return False, "py-spy did not finish in time"
        if self.popen.returncode != 0 or not self.out.exists():
            with contextlib.suppress(OSError):
                return False, self.log.read_text(errors="replace").strip()[-500:]
            return False, f"py-spy exited with {self.popen.returncode}"
        return True, ""

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)


@dataclass
class FlatProfile:
    samples: int
    self_counts: dict[str, int]
    total_counts: dict[str, int]


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    parts = match["file"].replace("\\", "/").split("/")
    short = "/".join(parts[-2:])
    return f"{match['func']} ({short})"


def parse_raw(text: str) -> FlatProfile:
    samples = 0
    self_counts: dict[str, int] = {}
    total_counts: dict[str, int] = {}
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        samples += count
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for name in set(frames):
            total_counts[name] = total_counts.get(name, 0) + count
    return FlatProfile(samples, self_counts, total_counts)


def summarize(recording: PySpyRecording, top: int) -> str:
    profile = parse_raw(recording.out.read_text(errors="replace"))
    expected = recording.rate * recording.seconds
    lines = [
        f"py-spy: {recording.name} (pid {recording.pid}): {profile.samples:,} on-CPU samples "
        f"at {recording.rate} Hz over {recording.seconds} s -> active ~"
        f"{100 * profile.samples / max(expected, 1):.0f}% of the time (running, or runnable "
        "and waiting for a CPU: compare with its CPU %)"
    ]
    if not profile.samples:
        return lines[0]
    lines.append(f"  {'self %':>7} {'total %':>8}  function (by own time)")
    for name, count in sorted(profile.self_counts.items(), key=lambda kv: -kv[1])[:top]:
        share = 100 * count / profile.samples
        inclusive = 100 * profile.total_counts.get(name, 0) / profile.samples
        lines.append(f"  {share:7.1f} {inclusive:8.1f}  {name}")
    lines.append(f"  {'self %':>7} {'total %':>8}  function (by time including callees)")
    inclusive_counts = [
        (name, count)
        for name, count in profile.total_counts.items()
        if not name.endswith(tuple(f"({f})" for f in _SPINE_FILES))
    ]
    for name, count in sorted(inclusive_counts, key=lambda kv: -kv[1])[:top]:
        share = 100 * profile.self_counts.get(name, 0) / profile.samples
        inclusive = 100 * count / profile.samples
        lines.append(f"  {share:7.1f} {inclusive:8.1f}  {name}")
    return "\n".join(lines)


def cprofile_quote_cache(seconds: float, top: int) -> str:
    """Run the quote cache in this process under cProfile for `seconds` (the py-spy fallback).

    It joins the same consumer group as the quote cache process would, so stop that one first
    to give this one all of the load. cProfile itself slows Python code down, often by 2x.
    """
    from services.infra.redis import create_redis
    from services.infra.settings import get_settings
    from workers.quotes import QuoteCache

    profiler = cProfile.Profile()

    async def run() -> None:
        settings = get_settings()
        redis = create_redis(settings)
        cache = QuoteCache(redis, settings)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        profiler.enable()
        try:
            await cache.run(stop)
        finally:
            profiler.disable()
            await redis.aclose()

    asyncio.run(run())
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    out.write(f"cProfile: quote cache in-process for {seconds:.0f} s, by own time\n")
    stats.sort_stats("tottime").print_stats(top)
    out.write("by cumulative time\n")
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def serve_under_cprofile(out: Path, serve: Callable[[], None]) -> None:
    """Run `serve()` (an API or the matcher, until SIGTERM) in this process under cProfile
    switched by signals: SIGUSR1 starts profiling, SIGUSR2 stops it and writes the stats to
    `out` (pstats format, written whole then renamed)."""
    profiler = cProfile.Profile()

    def start(signum: int, frame: FrameType | None) -> None:
        profiler.enable()

    def stop(signum: int, frame: FrameType | None) -> None:
        profiler.disable()
        tmp = out.with_suffix(".tmp")
        profiler.dump_stats(str(tmp))
        os.replace(tmp, out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    serve()
