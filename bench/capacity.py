"""The capacity model: CPU per unit of work of each process kind, PostgreSQL and Redis cost per
order, and what a target load (1 million users, 3,000 orders/s at the open, 10,000 symbols at
1 update/s, 100,000 open WebSockets) needs: processes, cores, PostgreSQL, Redis and PgBouncer.

Each part runs the existing benchmark's machinery briefly, on databases of its own and a private
redis-server (INFO cpu and commandstats then count only this run's work):

* ``orders`` (bench/orders.py): closed loop at ``--in-flight`` orders, for each point of the curve
  (``--points 1x1 2x1 2x2``: API workers x matcher processes, the matchers splitting the partitions
  with TRADEQL_MATCHER_PARTITIONS): orders/s and p95; CPU per accepted order (API, relay, the bench
  database's PostgreSQL backends), per fill (matcher); WAL bytes (pg_current_wal_lsn, the whole
  server) and Redis CPU and commands per order, an idle window's rate taken out of each.
* ``quotes`` (bench/quotes.py): 10,000 symbols x 1/s with two numbers of WebSocket subscribers:
  feed and quote cache CPU per quote, the API's fixed dispatch cost and its cost per delivered
  quote (a line through the two), memory per socket.
* ``reads`` (bench/reads.py): portfolio queries, closed loop: API and PostgreSQL CPU per read.
* ``alerts`` (bench/alerts.py e2e): the real checker at 10,000 quotes/s: CPU per quote checked.

The per-unit figures go through bench/sizing.py into the table. ``--from-json`` recomputes the
table from an earlier run's costs (other loads, other assumptions) without measuring.

    .venv/bin/python -m bench.capacity --out docs/capacity.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from bench import alerts, orders, quotes, reads, sizing
from bench import harness as h

DATABASE = "tradeql_bench_capacity"
REDIS_DB = 12


def _per(cpu_percent: float, rate: float) -> float:
    """us of CPU per unit from a CPU % of one core and units/s."""
    return 1e4 * max(cpu_percent, 0.0) / rate if rate > 0 else 0.0


# Orders: the curve and the per-order costs


def orders_args(args: argparse.Namespace, database: str) -> argparse.Namespace:
    return orders.build_parser().parse_args([
        "--database", database, "--redis-db", str(args.redis_db), "--concurrency", str(args.in_flight),
        "--users", str(args.users), "--symbols", str(args.order_symbols), "--market-share", "1",
        "--sell-share", "0.3", "--max-quantity", "2", "--warmup", str(args.warmup),
        "--duration", str(args.duration), "--drain", "10", "--settle", "30", "--no-reference",
        "--request-timeout", "10",
    ])  # fmt: skip


def idle_window(system: orders.System, env: dict[str, str], seconds: float) -> dict[str, Any]:
    """The servers' and processes' rates with the system up and no orders (the feed, the quote
    cache, the relay's polls, other people's databases): taken out of each order's share."""
    groups: dict[str, Any] = {
        "api": lambda: h.process_tree(system.procs["api"].pid),
        "matcher": lambda: [m.pid for m in system.matchers],
        "relay": [system.procs["relay"].pid],
        "postgres (bench db)": h.database_backends(env["DATABASE_URL"], system.args.database),
        "postgres": h.pg_tree(system.postmaster),
    }
    cpu, servers = (
        h.CpuWindow(groups).start(),
        h.ServerWindow(env["DATABASE_URL"], env["REDIS_URL"]),
    )
    servers.start()
    h.sleep_watching(seconds, system.servers, tick=cpu.tick)
    return {"cpu": cpu.stop(), "servers": servers.stop()}


def order_costs(r: orders.Result, idle: dict[str, Any]) -> dict[str, Any]:
    """Per accepted order (and per fill), each process's idle rate taken out."""
    rate, fills = r.accepted_rate, r.executions_rate
    base = idle["cpu"]

    def busy(name: str) -> float:
        return max(r.cpu.get(name, 0.0) - base.get(name, 0.0), 0.0)

    s, b = r.servers, idle["servers"]
    seconds, orders_n = s.get("seconds", 0.0), rate * s.get("seconds", 0.0)
    idle_s = max(b.get("seconds", 0.0), 1e-9)

    def minus_idle(during: float | None, idle_total: float | None) -> float | None:
        if during is None or idle_total is None or orders_n <= 0:
            return None
        return max(during - idle_total / idle_s * seconds, 0.0) / orders_n

    redis_cpu = minus_idle(s.get("redis_cpu_s"), b.get("redis_cpu_s"))
    calls = {
        k: v2
        for k, v in s.get("calls", {}).items()
        if (v2 := minus_idle(v, b.get("calls", {}).get(k, 0.0))) and v2 >= 0.01
    }
    return {
        "accepted_per_s": rate,
        "fills_per_s": fills,
        "fills_per_order": fills / rate if rate else 0.0,
        "api_us_per_order": _per(busy("api"), rate),
        "matcher_us_per_fill": _per(busy("matcher"), fills),
        "relay_us_per_order": _per(busy("relay"), rate),
        "pg_us_per_order": _per(busy("postgres (bench db)"), rate),
        "pg_server_us_per_order": _per(busy("postgres"), rate),
        "pg_active_backends": r.pg_active,
        "pg_in_transaction_backends": r.pg_in_transaction,
        "pg_held_s_per_order": (r.pg_in_transaction or 0.0) / rate if rate else 0.0,
        "pg_commits_per_order": r.pg.get("xact_commit", 0.0) / max(orders_n, 1e-9),
        "wal_bytes_per_order": minus_idle(s.get("wal", {}).get("lsn"), b.get("wal", {}).get("lsn")),
        "wal_records_per_order": minus_idle(
            s.get("wal", {}).get("records"), b.get("wal", {}).get("records")
        ),
        "wal_fpi_per_order": minus_idle(s.get("wal", {}).get("fpi"), b.get("wal", {}).get("fpi")),
        "redis_us_per_order": None if redis_cpu is None else redis_cpu * 1e6,
        "redis_commands_per_order": sum(calls.values()),
        "redis_commands": dict(sorted(calls.items(), key=lambda kv: -kv[1])[:10]),
        "idle": {
            "cpu": base,
            "seconds": b.get("seconds"),
            "wal_bytes_per_s": (b.get("wal", {}).get("lsn") or 0.0) / idle_s,
            "redis_cpu_per_s": (b.get("redis_cpu_s") or 0.0) / idle_s,
        },
    }


def measure_orders(args: argparse.Namespace, run: h.Run, redis_base: str) -> dict[str, Any]:
    """The curve's points on a PostgreSQL server of the run's own (WAL and server CPU are then
    this run's only), or the machine's server when none can be made."""
    server = h.PrivatePostgres(run.registry)
    saved = os.environ.get("DATABASE_URL")
    try:
        os.environ["DATABASE_URL"] = server.start()
        private = True
    except h.BenchError as exc:
        print(f"no private PostgreSQL ({exc}): the machine's server, shared", flush=True)
        private = False
    try:
        return _measure_orders(args, run, redis_base) | {"private_postgres": private}
    finally:
        run.stop_others()
        server.stop()
        if saved is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = saved


def _measure_orders(args: argparse.Namespace, run: h.Run, redis_base: str) -> dict[str, Any]:
    oargs = orders_args(args, args.database)
    env = h.bench_env(oargs, redis_base) | {
        "TRADEQL_VENUE_FAULTS": "EDGX=0,ARCA=0,IEXG=0",
        "TRADEQL_PASSWORD_HASH_TIME_COST": "1",
        "TRADEQL_PASSWORD_HASH_MEMORY_KIB": "8192",
        "TRADEQL_FEED_SIM_RATE": "1",
    }
    admin = h.server_urls()[0]
    partitions = h.settings_for(env).quote_partitions
    postmaster = h.postmaster_pid(admin)
    h.recreate_database(admin, oargs.database)
    h.migrate(env["DATABASE_URL"])
    symbols = h.load_securities(env, oargs.symbols)
    (symbols_file := run.log_dir / "order-symbols.json").write_text(json.dumps(symbols))
    profiler = h.Profiler(oargs, run.log_dir)
    points: list[dict[str, Any]] = []
    for n, (workers, matchers) in enumerate(args.points):
        print(f"\norders: {workers} API worker(s) x {matchers} matcher(s), {args.in_flight} in "
              f"flight, {args.warmup:g} s warm-up + {args.duration:g} s ...", flush=True)  # fmt: skip
        h.redis_client(env["REDIS_URL"]).flushdb()
        oargs.run_id = int(time.time()) * 10 + n  # new users each point
        system = orders.System(run, env, oargs, partitions)
        system.postmaster = postmaster
        try:
            system.start(symbols, workers, matchers)
            client, _ = orders.start_client(run, system, oargs, symbols_file, 1)
            idle = idle_window(system, env, args.idle)
            result = orders.Result("closed", float(args.in_flight))
            servers = h.ServerWindow(env["DATABASE_URL"], env["REDIS_URL"])
            orders.run_scenario(result, system, client, oargs, postmaster, profiler, servers)
        finally:
            run.stop_others()
        point = {
            "api_workers": workers, "matchers": matchers, "in_flight": args.in_flight,
            "accepted_per_s": result.accepted_rate, "accept_ms": result.accept_ms,
            "fill_ms": result.fill_ms, "failed": sum(result.client.get("failed", {}).values()),
            "refused": dict(result.client.get("refused", {})), "cpu": result.cpu,
            "other_cpu": others(result.cpu), "notes": result.notes,
            "costs": order_costs(result, idle),
        }  # fmt: skip
        points.append(point)
        print(format_point(point), flush=True)
    code, text = h.run_tradeql(env, "check", check=False)
    return {"points": points, "books_balance": code == 0, "check": text[-500:]}


def format_point(p: dict[str, Any]) -> str:
    c = p["costs"]
    calls = ", ".join(f"{k} {v:.1f}" for k, v in list(c["redis_commands"].items())[:6])
    return "\n".join([
        f"  {p['api_workers']} x {p['matchers']}: {p['accepted_per_s']:,.0f} orders/s accepted, "
        f"p95 accept {h.fmt(p['accept_ms'].get('p95'))} ms, p95 fill {h.fmt(p['fill_ms'].get('p95'))} "
        f"ms, {p['failed']} failed; machine CPU {p['cpu'].get('machine', 0):.0f}% of "
        f"{100 * (os.cpu_count() or 1)}, of which ~{p['other_cpu']:.0f}% others' (not this run's)",
        f"  CPU us: API {c['api_us_per_order']:,.0f}/order, matcher {c['matcher_us_per_fill']:,.0f}/fill "
        f"({c['fills_per_order']:.2f} fills/order), relay {c['relay_us_per_order']:,.0f}/order, "
        f"PostgreSQL (bench db backends) {c['pg_us_per_order']:,.0f}/order "
        f"(whole server {c['pg_server_us_per_order']:,.0f})",
        f"  PostgreSQL: {h.fmt(c['wal_bytes_per_order'], ',.0f')} WAL bytes/order "
        f"({h.fmt(c['wal_records_per_order'], '.1f')} records, {h.fmt(c['wal_fpi_per_order'], '.2f')} "
        f"full-page images), {c['pg_commits_per_order']:.2f} commits/order, "
        f"{h.fmt(c['pg_active_backends'], '.2f')} backends active, "
        f"{h.fmt(c['pg_in_transaction_backends'], '.2f')} in a transaction; Redis "
        f"{h.fmt(c['redis_us_per_order'], ',.0f')} us and {c['redis_commands_per_order']:.1f} "
        f"commands/order ({calls})",
        *(f"  note: {n}" for n in p["notes"]),
    ])  # fmt: skip


# Quotes, reads, alerts


def measure_quotes(args: argparse.Namespace, run: h.Run, redis_base: str) -> dict[str, Any]:
    qargs = quotes.build_parser().parse_args([
        "--database", args.database, "--redis-db", str(args.redis_db), "--symbols", str(args.quote_symbols),
        "--rates", "1", "--subscribers", *map(str, args.quote_subscribers),
        "--warmup", str(args.warmup), "--duration", str(args.duration),
    ])  # fmt: skip
    env = h.bench_env(qargs, redis_base)
    settings = h.settings_for(env)
    h.migrate(env["DATABASE_URL"])
    symbols = h.load_securities(env, qargs.symbols)
    (symbols_file := run.log_dir / "quote-symbols.json").write_text(json.dumps(symbols))
    profiler = h.Profiler(qargs, run.log_dir)
    scenarios: list[quotes.Result] = []
    for subscribers in qargs.subscribers:
        r = quotes.Result(qargs.symbols, 1.0, subscribers, qargs.per_subscriber)
        print(f"\nquotes: {r.label} ...", flush=True)
        quotes.run_scenario(r, run, env, settings.quote_partitions, qargs, symbols_file, profiler)
        print(quotes.format_result(r, len(scenarios) + 1, len(qargs.subscribers)), flush=True)
        scenarios.append(r)
    fixed, per_delivery = sizing.fit_fixed_and_per_unit(
        [(r.delivered_rate, r.cpu.get("api", 0.0) / 100) for r in scenarios]
    )
    biggest = max(scenarios, key=lambda r: r.connected)
    ingest = sum(r.consumed_rate for r in scenarios) / len(scenarios)
    return {
        "scenarios": [
            {
                "symbols": r.symbols,
                "rate": r.rate,
                "subscribers": r.subscribers,
                "connected": r.connected,
                "consumed_per_s": r.consumed_rate,
                "delivered_per_s": r.delivered_rate,
                "latency_ms": r.latency_ms,
                "cpu": r.cpu,
                "api_rss": r.api_rss,
                "notes": r.notes,
            }
            for r in scenarios
        ],
        "feed_us_per_quote": _mean(_per(r.cpu.get("feed", 0.0), r.feed_rate) for r in scenarios),
        "quote_cache_us_per_quote": _mean(
            _per(r.cpu.get("quotes", 0.0), r.consumed_rate) for r in scenarios
        ),
        "redis_us_per_quote": _mean(
            _per(r.cpu.get("redis", 0.0), r.consumed_rate) for r in scenarios
        ),
        "api_dispatch_cores": fixed,
        "api_dispatch_us_per_quote": fixed * 1e6 / ingest if ingest else 0.0,
        "api_us_per_delivery": per_delivery,
        "api_bytes_per_socket": (biggest.api_rss[1] - biggest.api_rss[0])
        / max(biggest.connected, 1),
    }


def _mean(values: Any) -> float:
    found = list(values)
    return sum(found) / len(found) if found else 0.0


def measure_reads(args: argparse.Namespace, run: h.Run, redis_base: str) -> dict[str, Any]:
    rargs = reads.build_parser().parse_args([
        "--database", f"{args.database}_reads", "--redis-db", str(args.redis_db), "--users", "100",
        "--positions", "20", "--orders", "40", "--concurrency", str(args.in_flight),
        "--rate", "0", "--skip-orders", "--no-check", "--warmup", str(args.warmup),
        "--duration", str(args.duration),
    ])  # fmt: skip
    env = h.bench_env(rargs, redis_base)
    print(f"\nreads: portfolio, closed loop, {args.in_flight} users ...", flush=True)
    api, client, port, market = reads.start(rargs, run, env, 1)
    r = reads.Result("portfolio", "closed", float(args.in_flight))
    try:
        postmaster = h.postmaster_pid(h.server_urls()[0])
        reads.run_scenario(
            r, env, api, client, port, rargs, postmaster, h.Profiler(rargs, run.log_dir)
        )
    finally:
        run.stop(client, api, *market)
    print(reads.format_result(r, 1, 1), flush=True)
    return {
        "reads_per_s": r.rate, "errors": r.errors,
        "latency_ms": {f"p{round(q * 100)}": v for q, v in r.latency.items()},
        "cpu": r.cpu, "api_us_per_read": _per(r.cpu.get("api", 0.0), r.rate),
        "pg_us_per_read": _per(r.cpu.get("postgres (bench db backends)", 0.0), r.rate),
    }  # fmt: skip


def measure_alerts(args: argparse.Namespace, run: h.Run) -> dict[str, Any]:
    aargs = alerts.build_parser().parse_args([
        "--part", "e2e", "--database", f"{args.database}_alerts", "--redis-db", str(args.redis_db),
        "--alerts", str(args.alerts), "--symbols", str(args.quote_symbols), "--rate",
        str(int(args.quote_symbols)), "--warmup", str(args.warmup), "--duration",
        str(args.duration),
    ])  # fmt: skip
    print(f"\nalerts: {aargs.alerts:,} alerts, {aargs.rate:,} quotes/s ...", flush=True)
    out = alerts.run_e2e(aargs, run)
    run.stop_others()
    out["alerts"] = aargs.alerts
    out["alerts_us_per_check"] = _per(out["cpu"].get("checkers", 0.0), out["checked_per_s"])
    return out


# The model


def costs_from(parts: dict[str, Any]) -> sizing.Costs:
    o = parts["orders"]["points"][0]["costs"]  # the first point: one API process, one matcher
    q, r, a = parts["quotes"], parts["reads"], parts["alerts"]
    values = {
        "api_us_per_order": o["api_us_per_order"], "matcher_us_per_fill": o["matcher_us_per_fill"],
        "relay_us_per_order": o["relay_us_per_order"], "fills_per_order": o["fills_per_order"],
        # a private server: all its processes (WAL writer, checkpointer...) are the orders' work
        "pg_us_per_order": o["pg_server_us_per_order" if parts["orders"]["private_postgres"]
                             else "pg_us_per_order"],
        "pg_held_s_per_order": o["pg_held_s_per_order"],
        "wal_bytes_per_order": o["wal_bytes_per_order"] or 0.0,
        "redis_us_per_order": o["redis_us_per_order"] or 0.0,
        "redis_commands_per_order": o["redis_commands_per_order"],
        "feed_us_per_quote": q["feed_us_per_quote"],
        "quote_cache_us_per_quote": q["quote_cache_us_per_quote"],
        "redis_us_per_quote": q["redis_us_per_quote"],
        "api_dispatch_us_per_quote": q["api_dispatch_us_per_quote"],
        "api_us_per_delivery": q["api_us_per_delivery"],
        "api_bytes_per_socket": q["api_bytes_per_socket"],
        "api_us_per_read": r["api_us_per_read"], "pg_us_per_read": r["pg_us_per_read"],
        "alerts_us_per_check": a["alerts_us_per_check"],
    }  # fmt: skip
    return sizing.Costs(**values)


def format_costs(c: sizing.Costs) -> str:
    def value(x: float) -> str:
        return f"{x:>14,.1f}" if abs(x) >= 10 else f"{x:>14.4f}"

    return "\n".join(f"  {f.name:<28} {value(getattr(c, f.name))}" for f in fields(c))


def others(cpu: dict[str, float]) -> float:
    """CPU % of the machine not used by the processes measured: other people's work (the
    machine is shared), the sampling of this run itself."""
    ours = sum(v for k, v in cpu.items() if k not in ("machine", "postgres (bench db)"))
    return max(cpu.get("machine", 0.0) - ours, 0.0)


def ours_cores(p: dict[str, Any]) -> float:
    """Cores the point's own processes used (the machine's CPU less others')."""
    return max(p["cpu"].get("machine", 0.0) - p.get("other_cpu", 0.0), 0.0) / 100


def format_curve(points: list[dict[str, Any]]) -> str:
    head = (
        f"  {'API x matchers':<15} {'orders/s':>9} {'p95 accept ms':>14} {'p95 fill ms':>12} "
        f"{'machine %':>10} {'others %':>9} {'orders/s per core':>18} {'commits/order':>14}"
    )
    lines = [head]
    for p in points:
        lines.append(
            f"  {p['api_workers']} x {p['matchers']:<11} {p['accepted_per_s']:>9,.0f} "
            f"{h.fmt(p['accept_ms'].get('p95')):>14} {h.fmt(p['fill_ms'].get('p95')):>12} "
            f"{p['cpu'].get('machine', 0):>10.0f} {p.get('other_cpu', 0.0):>9.0f} "
            f"{p['accepted_per_s'] / max(ours_cores(p), 1e-9):>18,.0f} "
            f"{p['costs']['pg_commits_per_order']:>14.2f}"
        )
    return "\n".join(lines)


def report(costs: sizing.Costs, load: sizing.Load, a: sizing.Assumptions) -> sizing.Sizing:
    model = sizing.size(costs, load, a)
    print(f"\nper-unit costs (us of CPU per unit, bytes where named):\n{format_costs(costs)}")
    print(
        f"\nsizing for {load.users:,} users, {load.orders_per_s:,.0f} orders/s, {load.symbols:,} "
        f"symbols x {load.updates_per_symbol_s:g}/s, {load.websockets:,} WebSockets x "
        f"{load.symbols_per_socket} symbols, {load.reads_per_s:,.0f} portfolio reads/s; "
        f"{a.utilization:.0%} utilization per core:\n{sizing.format_table(model, load, a)}"
    )
    return model


def benchmark(args: argparse.Namespace, run: h.Run) -> int:
    load = sizing.Load(
        orders_per_s=args.orders_per_s, symbols=args.symbols, websockets=args.websockets,
        symbols_per_socket=args.symbols_per_socket, reads_per_s=args.reads_per_s,
    )  # fmt: skip
    assumptions = sizing.Assumptions(utilization=args.utilization)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        report(sizing.Costs(**saved["costs"]), load, assumptions)
        return 0
    started = time.monotonic()
    load_before = os.getloadavg()
    facts = {n: h.pg_fetch(h.server_urls()[0], f"SHOW {n}")[0][0]
             for n in ("server_version", "synchronous_commit", "shared_buffers")}  # fmt: skip
    print(f"capacity run: parts {' '.join(args.parts)}; {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in load_before)}; PostgreSQL {facts}; logs in {run.log_dir}", flush=True)  # fmt: skip
    redis_base = quotes.private_redis(run)  # INFO then counts this run's work only
    run.keep.add(run.children[-1])
    parts: dict[str, Any] = {}
    if "orders" in args.parts:
        parts["orders"] = measure_orders(args, run, redis_base)
    if "quotes" in args.parts:
        parts["quotes"] = measure_quotes(args, run, redis_base)
    if "reads" in args.parts:
        parts["reads"] = measure_reads(args, run, redis_base)
    if "alerts" in args.parts:
        parts["alerts"] = measure_alerts(args, run)
    if "orders" in parts:
        print(f"\nthe first points of the curve ({args.in_flight} orders in flight, closed loop):")
        print(format_curve(parts["orders"]["points"]))
    out: dict[str, Any] = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cores": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "postgresql": facts,
            "seconds": time.monotonic() - started,
        },
        "settings": {"duration": args.duration, "warmup": args.warmup, "in_flight": args.in_flight},
        "parts": parts,
    }
    if set(parts) == {"orders", "quotes", "reads", "alerts"}:
        costs = costs_from(parts)
        model = report(costs, load, assumptions)
        out |= {"costs": asdict(costs), "load": asdict(load), "assumptions": asdict(assumptions),
                "sizing": model.as_dict()}  # fmt: skip
    else:
        print("\n(not every part ran: no sizing table)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1, default=str) + "\n")
        print(f"\nwritten: {args.out}")
    print(f"capacity run: {time.monotonic() - started:.0f} s in all")
    return 0


def point(text: str) -> tuple[int, int]:
    """`2x1`: (API workers, matcher processes)."""
    workers, _, matchers = text.lower().partition("x")
    try:
        return h.positive(workers), h.positive(matchers)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected WORKERSxMATCHERS, e.g. 2x1") from None


def build_parser() -> argparse.ArgumentParser:
    p = h.parser("capacity", __doc__, database=DATABASE, redis_db=REDIS_DB, duration=10.0,
                 warmup=3.0)  # fmt: skip
    p.add_argument("--out", type=Path, help="write the figures as JSON (e.g. docs/capacity.json)")
    p.add_argument("--parts", nargs="+", choices=("orders", "quotes", "reads", "alerts"),
                   default=["orders", "quotes", "reads", "alerts"])  # fmt: skip
    p.add_argument("--points", type=point, nargs="+", default=[(1, 1), (2, 1), (2, 2)],
                   help="API workers x matcher processes, measured in turn")  # fmt: skip
    p.add_argument("--in-flight", type=h.positive, default=32, help="closed loop: requests at once")
    p.add_argument("--idle", type=h.positive_float, default=3.0,
                   help="seconds of the idle window taken out of per-order figures")  # fmt: skip
    p.add_argument("--users", type=h.positive, default=100, help="order-placing users")
    p.add_argument("--order-symbols", type=h.positive, default=20, help="symbols traded")
    p.add_argument("--quote-symbols", type=h.positive, default=10_000, help="symbols quoted, 1/s")
    p.add_argument("--quote-subscribers", type=h.positive, nargs=2, default=[100, 1000],
                   help="WebSockets of 10 symbols each, two scenarios")  # fmt: skip
    p.add_argument("--alerts", type=h.positive, default=1_000_000, help="active alerts")
    p.add_argument("--from-json", type=Path, help="only the table, from this run's costs")
    target = p.add_argument_group("the target load and the assumptions of the table")
    target.add_argument("--orders-per-s", type=h.positive_float, default=3000.0)
    target.add_argument("--symbols", type=h.positive, default=10_000)
    target.add_argument("--websockets", type=h.positive, default=100_000)
    target.add_argument("--symbols-per-socket", type=h.positive, default=10)
    target.add_argument("--reads-per-s", type=h.positive_float, default=5000.0)
    target.add_argument("--utilization", type=h.share, default=0.6, help="planned busy share")
    return p


def main() -> int:
    args = build_parser().parse_args()
    run = h.Run("capacity", args.log_dir)
    return h.execute(lambda: benchmark(args, run), run.stop_all)


if __name__ == "__main__":
    sys.exit(main())
