"""The `up` group: a crashing child is restarted, one that keeps crashing stops the group."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from gateway.supervisor import Child, Supervisor


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_child_that_keeps_crashing_stops_the_whole_group_loudly(tmp_path: Path) -> None:
    marker = tmp_path / "healthy-was-stopped"
    healthy = Child(
        "healthy",
        python(
            "import signal, sys, time, pathlib\n"
            f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(marker)!r}).touch(),"
            " sys.exit(0)))\n"
            "time.sleep(60)"
        ),
    )
    crasher = Child("crasher", python("import sys; sys.exit(3)"))
    supervisor = Supervisor([healthy, crasher], {}, grace=5, max_restarts=3, base_backoff=0.01)

    started = time.monotonic()
    code = supervisor.run(install_signal_handlers=False)

    assert code == 1
    assert len(crasher.restarts) == 3
    assert marker.exists(), "the healthy child must be stopped, not left running"
    assert healthy.process is not None and healthy.process.poll() is not None
    assert time.monotonic() - started < 30


def test_a_crashed_child_is_restarted(tmp_path: Path) -> None:
    counter = tmp_path / "starts"
    flaky = Child(
        "flaky",
        python(
            "import pathlib, sys, time\n"
            f"p = pathlib.Path({str(counter)!r})\n"
            "n = int(p.read_text()) if p.exists() else 0\n"
            "p.write_text(str(n + 1))\n"
            "sys.exit(1) if n == 0 else time.sleep(60)"
        ),
    )
    supervisor = Supervisor([flaky], {}, grace=5, max_restarts=3, base_backoff=0.01)
    thread = threading.Thread(target=supervisor.run, kwargs={"install_signal_handlers": False})
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            counter.exists() and counter.read_text() == "2" and flaky.running()
        ):
            time.sleep(0.05)
        assert counter.read_text() == "2"
        assert flaky.running()
    finally:
        supervisor.stop()
        thread.join(20)
    assert not flaky.running()
