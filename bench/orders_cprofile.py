"""The py-spy fallback of the orders benchmark: the API or the matcher, in this process, under
cProfile switched by signals.

    python -m bench.orders_cprofile --role api --port P --out FILE
    python -m bench.orders_cprofile --role matcher --metrics-port M --out FILE

SIGUSR1 starts profiling (the thread of the event loop, where all the Python work happens),
SIGUSR2 stops it and writes the stats to `--out` (pstats format, written whole then renamed).
SIGTERM stops the process as `tradeql api` / `tradeql matcher` would. cProfile slows Python code
down (often 2x), so the rates measured with it are lower than without.
"""

from __future__ import annotations

import argparse
import io
import pstats
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._profile import serve_under_cprofile

IDLE_CALLS = ("'poll' of 'select.epoll'", "'select' of 'select.epoll'", "'poll' of 'select.poll'")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.orders_cprofile")
    parser.add_argument("--role", choices=("api", "matcher"), required=True)
    parser.add_argument("--port", type=int, default=8000, help="api: the port")
    parser.add_argument("--metrics-port", type=int, default=0, help="matcher: metrics port")
    parser.add_argument("--out", type=Path, required=True, help="where the stats go")
    args = parser.parse_args(argv)

    def serve() -> None:
        from gateway import cli

        if args.role == "api":
            cli.api(host="127.0.0.1", port=args.port, workers=1)
        else:
            cli.matcher(metrics_port=args.metrics_port)

    serve_under_cprofile(args.out, serve)
    return 0


def summarize(path: Path, name: str, seconds: float, top: int) -> str:
    """The top functions of one stats file, by own time and by time including callees."""
    text = io.StringIO()
    stats = pstats.Stats(str(path), stream=text)
    total = getattr(stats, "total_tt", 0.0)
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = getattr(stats, "stats", {})
    waiting = sum(v[2] for k, v in raw.items() if any(w in k[2] for w in IDLE_CALLS))
    busy = total - waiting
    text.write(
        f"cProfile: {name}: {total:.1f} s of profiled wall time over a {seconds:.0f} s window, "
        f"{waiting:.1f} s of it waiting in epoll -> ~{100 * busy / max(seconds, 1e-9):.0f}% of "
        "one core busy (times are wall time: a call includes the time the process was "
        "descheduled in it; cProfile itself slows Python code down)\n"
        "by own time\n"
    )
    stats.sort_stats("tottime").print_stats(top)
    text.write("by cumulative time\n")
    stats.sort_stats("cumulative").print_stats(top)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
