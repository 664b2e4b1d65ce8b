"""Where the API's time goes during a reads window: py-spy samples grouped by layer, or (the
fallback when py-spy cannot attach) the API run under cProfile switched by signals.

Grouping: each py-spy sample is charged to the layer of its innermost frame that belongs to a
known layer (the file path decides: `graphql/` is graphql-core's execution, `strawberry/` its
wrapper, `sqlalchemy/` and `asyncpg/` the SQL client side, `redis/` the Redis client, `json/`
JSON encoding, `uvicorn/`, `httptools`, `starlette/` HTTP, `asyncio/`/`uvloop` the event loop,
and the project's own `schema/`, `resolvers/`, `services/`, `gateway/`). Time spent inside
PostgreSQL or Redis themselves is not in these samples (it is their CPU, reported apart); the
API's side of a query (building it, decoding rows) is.

The fallback wrapper:

    python -m bench.reads_profile --port P --out FILE

SIGUSR1 starts cProfile, SIGUSR2 stops it and writes the stats (pstats, written then renamed);
SIGTERM stops the API as `tradeql api` would. cProfile slows Python code (often 2x).
"""

from __future__ import annotations

import argparse
import io
import pstats
import sys
from collections.abc import Sequence
from pathlib import Path

from bench._profile import _frame_name, parse_raw, serve_under_cprofile

# (layer, path prefixes). py-spy names files relative to their sys.path entry
# ("graphql/execution/execute.py", "services/portfolio/valuation.py"); absolute paths are cut the same way.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("JSON encoding/decoding (json, orjson)", ("json/", "orjson")),
    ("SQL client: asyncpg", ("asyncpg/",)),
    ("SQL client: SQLAlchemy (pool, pre-ping, transactions, result rows)", ("sqlalchemy/",)),
    ("Redis client: redis-py", ("redis/",)),
    ("GraphQL validation (graphql-core)", ("graphql/validation/",)),
    ("GraphQL parsing (graphql-core)", ("graphql/language/",)),
    ("GraphQL execution (graphql-core)", ("graphql/",)),
    ("GraphQL (strawberry: view, extensions, resolver wrappers, DataLoader)", ("strawberry/",)),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("logging", ("logging/",)),
    ("HTTP server (uvicorn, httptools, h11)", ("uvicorn/", "httptools", "h11/")),
    ("ASGI (starlette)", ("starlette/",)),
    ("app: schema/ (types, scalars)", ("schema/",)),
    ("app: resolvers/", ("resolvers/",)),
    ("app: services/", ("services/",)),
    ("app: gateway/ (view, middleware, metrics)", ("gateway/",)),
]
# Phases recognised anywhere on the stack: validation walks the document with graphql/language's
# visitor, which would otherwise be charged to parsing.
WHOLE_STACK: list[tuple[str, str]] = [
    ("GraphQL validation (graphql-core)", "graphql/validation/validate.py"),
    ("GraphQL parsing (graphql-core)", "graphql/language/parser.py"),
]
EVENT_LOOP = "event loop: asyncio/uvloop Python frames"
LOOP_C = "event loop C code (uvloop I/O, callbacks) or runnable waiting for a CPU"
OTHER = "other (stdlib: contextlib, decimal, uuid, typing, ...)"
_SITE = ("site-packages/", "/work/main/")


def _path(frame: str) -> str:
    """'func (path/to/file.py:12)' -> 'path/to/file.py', relative to site-packages or the repo."""
    inside = frame.rpartition(" (")[2].rstrip(")")
    path = inside.rsplit(":", 1)[0].replace("\\", "/")
    for marker in _SITE:
        if marker in path:
            path = path.rsplit(marker, 1)[1]
    return path


def layer_of(path: str) -> str | None:
    for layer, prefixes in LAYERS:
        if path.startswith(prefixes):
            return layer
    return None


def _raw_frames(stack: str) -> list[str]:
    return [f for f in stack.split(";") if f]


def layer_of_stack(frames: list[str]) -> str:
    """The layer of the innermost frame that belongs to a library or the app; asyncio frames
    count only when nothing else is on the stack (a library's I/O is the library's)."""
    if frames and frames[-1].startswith("Runner.run "):
        return LOOP_C
    for layer, marker in WHOLE_STACK:
        if any(marker in frame for frame in frames):
            return layer
    saw_loop = False
    for frame in reversed(frames):
        path = _path(frame)
        found = layer_of(path)
        if found is not None:
            return found
        saw_loop = saw_loop or path.startswith(("asyncio/", "uvloop"))
    return EVENT_LOOP if saw_loop else OTHER


def layers_from_raw(text: str) -> tuple[int, dict[str, int]]:
    """(samples, samples per layer) of a py-spy raw file (`frame;frame;...;leaf count`)."""
    samples = 0
    per_layer: dict[str, int] = {}
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        chosen = layer_of_stack(_raw_frames(stack))
        per_layer[chosen] = per_layer.get(chosen, 0) + count
    return samples, per_layer


# Stages of a request, charged when any frame of the sample is in the named function.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("GraphQL validation (ValidationCache.on_validate -> validate)", ("validate (graphql/",)),
    ("pool pre-ping on checkout (BEGIN; ';'; ROLLBACK)", ("_async_ping (",)),
    ("rollback when a connection goes back to the pool", ("AsyncConnection.close (",)),
    ("rate limit check (RateLimitMiddleware: one Redis script call)", ("RateLimiter.hit (",)),
    (
        "session lookup (SessionStore.authenticate)",
        ("authenticate (services/accounts/sessions.py)",),
    ),
    ("holdings SQL (Portfolios.holdings)", ("holdings (services/portfolio/valuation.py)",)),
    ("history SQL (OrderStore.history)", ("history (services/orders/order_store.py)",)),
    (
        "executions SQL (OrderStore.executions_for)",
        ("executions_for (services/orders/order_store.py)",),
    ),
    ("quotes from Redis (QuoteStore.read)", ("read (services/market_data/quote_store.py)",)),
    ("valuation math (services/portfolio.value)", ("value (services/portfolio/valuation.py)",)),
    ("to_order / to_position mapping", ("to_order (resolvers/orders.py)", "to_position (")),
    ("response JSON encoding", ("encode_json (", "dumps (json/__init__.py)")),
]


def stages_from_raw(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        names = {_frame_name(f) for f in _raw_frames(stack)}
        for stage, needles in STAGES:
            if any(n in name for name in names for n in needles):
                out[stage] = out.get(stage, 0) + int(count_text)
    return out


def summarize_layers(raw_path: Path, name: str, rate: int, seconds: float, top: int) -> str:
    text = raw_path.read_text(errors="replace")
    samples, per_layer = layers_from_raw(text)
    if not samples:
        return f"py-spy {name}: no samples"
    busy = 100 * samples / max(rate * seconds, 1)
    lines = [
        f"py-spy {name}: {samples:,} on-CPU samples at {rate} Hz over {seconds:.0f} s "
        f"(busy ~{busy:.0f}% of one core); by layer of the innermost known frame:"
    ]
    for layer, count in sorted(per_layer.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {100 * count / samples:5.1f}%  {layer}")
    lines.append("  by request stage (samples with the function on the stack; they overlap):")
    for stage, count in sorted(stages_from_raw(text).items(), key=lambda kv: -kv[1]):
        lines.append(f"  {100 * count / samples:5.1f}%  {stage}")
    flat = parse_raw(text)
    lines.append(f"  top {top} functions by own time (self %, total %):")
    for func, count in sorted(flat.self_counts.items(), key=lambda kv: -kv[1])[:top]:
        inclusive = 100 * flat.total_counts.get(func, 0) / samples
        lines.append(f"  {100 * count / samples:5.1f} {inclusive:6.1f}  {func}")
    return "\n".join(lines)


def summarize_cprofile(path: Path, name: str, seconds: float, top: int) -> str:
    stats = pstats.Stats(str(path))
    total = float(getattr(stats, "total_tt", 0.0)) or 1e-9
    per_layer: dict[str, float] = {}
    raw = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, _func), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        layer = layer_of(_path(f"x ({filename}:0)")) or OTHER
        per_layer[layer] = per_layer.get(layer, 0.0) + tottime
    lines = [
        f"cProfile {name}: {total:.1f} s of profiled CPU over {seconds:.0f} s "
        f"(~{100 * total / max(seconds, 1e-9):.0f}% of one core, inflated by cProfile); by layer:"
    ]
    for layer, spent in sorted(per_layer.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {100 * spent / total:5.1f}%  {layer}")
    out = io.StringIO()
    pstats.Stats(str(path), stream=out).sort_stats("tottime").print_stats(top)
    lines += [line for line in out.getvalue().splitlines() if line.strip()][-top - 1 :]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reads_profile")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="where the stats go")
    args = parser.parse_args(argv)

    def serve() -> None:
        from gateway import cli

        cli.api(host="127.0.0.1", port=args.port, workers=1, reuse_port=False)

    serve_under_cprofile(args.out, serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
