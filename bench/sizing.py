"""The capacity model's arithmetic: measured CPU per unit of work and a target load in, processes,
cores, PostgreSQL, Redis and PgBouncer sizing out. Pure functions, no I/O (bench/capacity.py
measures the costs; tests/bench/test_capacity.py checks the arithmetic).

Units: CPU costs in microseconds of one core per unit of work (1,000,000 us/s = one core busy);
rates per second. A Python process (the API, each worker) runs one event loop, so it uses at most
one core: a process kind needs ceil(cores / (1 core x utilization)) processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

US = 1_000_000.0


@dataclass(frozen=True)
class Costs:
    """What one unit of work costs, as measured (bench/capacity.py says by what)."""

    api_us_per_order: float  # placeOrder accepted: HTTP, auth, limits, batched transaction, XADD
    matcher_us_per_fill: float  # an execution decided, committed and its events written
    relay_us_per_order: float  # the outbox relay publishing the order's events
    fills_per_order: float  # executions per accepted order in the measured mix
    pg_us_per_order: float  # the bench database's PostgreSQL backends
    pg_held_s_per_order: float  # backend-seconds in a transaction (active or idle in one) per order
    wal_bytes_per_order: float
    redis_us_per_order: float  # Redis main thread (INFO cpu), the idle baseline taken out
    redis_commands_per_order: float  # INFO commandstats, the idle baseline taken out
    feed_us_per_quote: float  # simulator -> parse -> XADD
    quote_cache_us_per_quote: float  # stream -> coalesce -> HSET + publish
    redis_us_per_quote: float
    api_dispatch_us_per_quote: float  # each API process, per quote ingested, whatever its sockets
    api_us_per_delivery: float  # each quote delivered to one WebSocket subscriber
    api_bytes_per_socket: float  # API resident memory per open WebSocket
    api_us_per_read: float  # a portfolio query
    pg_us_per_read: float
    alerts_us_per_check: float  # one quote checked against the alert index


@dataclass(frozen=True)
class Load:
    """The target: what the platform must carry at the busiest minute (the open)."""

    users: int = 1_000_000
    orders_per_s: float = 3_000.0
    symbols: int = 10_000
    updates_per_symbol_s: float = 1.0
    websockets: int = 100_000
    symbols_per_socket: int = 10  # a watchlist screen: each socket follows 10 symbols
    reads_per_s: float = 5_000.0  # portfolio reads: 100,000 signed-in users, one every 20 s

    @property
    def quotes_per_s(self) -> float:
        return self.symbols * self.updates_per_symbol_s

    @property
    def deliveries_per_s(self) -> float:
        """Quote deliveries to sockets (every followed symbol updates at the symbol rate)."""
        return (
            self.websockets * min(self.symbols_per_socket, self.symbols) * self.updates_per_symbol_s
        )


@dataclass(frozen=True)
class Assumptions:
    utilization: float = 0.6  # plan each core at 60% busy: 40% headroom for bursts and failover
    sockets_per_api: int = 10_000  # open WebSockets one API process is given at most
    redis_core: float = 1.0  # a Redis shard's commands run on one thread
    pg_connection_margin: float = 2.0  # server connections = backends in a transaction x this
    pool_per_process: int = 20  # TRADEQL_DB_POOL_SIZE: client connections each process may open
    standby_matchers: int = 1  # a spare that takes a dead matcher's partitions (its leases)


@dataclass
class Row:
    component: str
    driver: str
    cores: float
    processes: int
    note: str = ""


@dataclass
class Sizing:
    rows: list[Row] = field(default_factory=list)
    pg: dict[str, float] = field(default_factory=dict)
    redis: dict[str, float] = field(default_factory=dict)
    pgbouncer: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def app_cores(self) -> float:
        return sum(r.cores for r in self.rows)

    @property
    def app_processes(self) -> int:
        return sum(r.processes for r in self.rows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": [asdict(r) for r in self.rows],
            "app_cores": self.app_cores,
            "app_processes": self.app_processes,
            "postgresql": self.pg,
            "redis": self.redis,
            "pgbouncer": self.pgbouncer,
            "warnings": self.warnings,
        }


def cores(us_per_unit: float, units_per_s: float) -> float:
    """Cores busy doing `units_per_s` units of `us_per_unit` each."""
    return max(us_per_unit, 0.0) * max(units_per_s, 0.0) / US


def processes_for(demand_cores: float, utilization: float) -> int:
    """Single-core processes needed to carry `demand_cores` with each at most `utilization` busy
    (at least one)."""
    if not 0 < utilization <= 1:
        raise ValueError("utilization must be in (0, 1]")
    return max(1, math.ceil(demand_cores / utilization - 1e-9))


def fit_fixed_and_per_unit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(fixed cores, us per unit) of cores = fixed + units/s x us / 1e6, least squares over
    (units/s, cores) points. One point, equal rates or a negative slope (noise): no fixed part,
    the mean cost per unit."""
    usable = [(x, y) for x, y in points if x > 0]
    if not usable:
        return 0.0, 0.0
    mean_ratio = sum(y / x for x, y in usable) / len(usable) * US
    if len({x for x, _ in usable}) < 2:
        return 0.0, mean_ratio
    n = len(usable)
    mx, my = sum(x for x, _ in usable) / n, sum(y for _, y in usable) / n
    slope = sum((x - mx) * (y - my) for x, y in usable) / sum((x - mx) ** 2 for x, _ in usable)
    fixed = my - slope * mx
    if slope <= 0 or fixed < 0:
        return 0.0, mean_ratio
    return fixed, slope * US


def api_processes(variable_cores: float, dispatch_cores: float, sockets: int,
                  a: Assumptions) -> tuple[int, float]:  # fmt: skip
    """(API processes, their cores): each process also pays `dispatch_cores` (every quote reaches
    every process that holds sockets), so n >= variable / (utilization - dispatch), and n holds
    every socket at `sockets_per_api` each."""
    room = a.utilization - dispatch_cores
    if room <= 0:
        raise ValueError(
            f"one API process spends {dispatch_cores:.2f} cores on the quote dispatch alone, more "
            f"than its {a.utilization:.2f}: split the symbols across API processes"
        )
    by_cpu = max(1, math.ceil(variable_cores / room - 1e-9))
    by_sockets = math.ceil(sockets / a.sockets_per_api) if sockets else 1
    n = max(by_cpu, by_sockets)
    return n, variable_cores + n * dispatch_cores


def size(c: Costs, load: Load, a: Assumptions | None = None) -> Sizing:
    """The deployment `load` needs at the measured costs `c`."""
    a = a or Assumptions()
    out = Sizing()
    quotes, fills = load.quotes_per_s, load.orders_per_s * c.fills_per_order
    api_orders = cores(c.api_us_per_order, load.orders_per_s)
    api_reads = cores(c.api_us_per_read, load.reads_per_s)
    api_deliveries = cores(c.api_us_per_delivery, load.deliveries_per_s)
    dispatch = cores(c.api_dispatch_us_per_quote, quotes)
    n_api, api_total = api_processes(
        api_orders + api_reads + api_deliveries, dispatch, load.websockets, a
    )
    socket_gb = c.api_bytes_per_socket * load.websockets / 1e9
    out.rows.append(Row(
        "API (tradeql api)",
        f"{load.orders_per_s:,.0f} orders/s + {load.reads_per_s:,.0f} portfolio reads/s + "
        f"{load.deliveries_per_s:,.0f} quote deliveries/s to {load.websockets:,} sockets",
        api_total, n_api,
        f"orders {api_orders:.1f}, reads {api_reads:.1f}, deliveries {api_deliveries:.1f}, "
        f"dispatch {dispatch:.2f} x {n_api} processes; sockets {socket_gb:.1f} GB of memory",
    ))  # fmt: skip
    matcher = cores(c.matcher_us_per_fill, fills)
    n_matcher = processes_for(matcher, a.utilization)
    out.rows.append(Row(
        "matcher", f"{fills:,.0f} fills/s", matcher, n_matcher + a.standby_matchers,
        f"{n_matcher} active (TRADEQL_MATCHER_PARTITIONS split; TRADEQL_QUOTE_PARTITIONS >= "
        f"{n_matcher}) + {a.standby_matchers} standby",
    ))  # fmt: skip
    for name, driver, demand in (
        ("outbox relay", f"{load.orders_per_s:,.0f} orders/s", cores(c.relay_us_per_order, load.orders_per_s)),
        ("feed", f"{quotes:,.0f} quotes/s", cores(c.feed_us_per_quote, quotes)),
        ("quote cache", f"{quotes:,.0f} quotes/s", cores(c.quote_cache_us_per_quote, quotes)),
        ("alert checker", f"{quotes:,.0f} quotes/s checked", cores(c.alerts_us_per_check, quotes)),
    ):  # fmt: skip
        out.rows.append(Row(name, driver, demand, processes_for(demand, a.utilization)))
    pg_cores = cores(c.pg_us_per_order, load.orders_per_s) + cores(
        c.pg_us_per_read, load.reads_per_s
    )
    held = c.pg_held_s_per_order * load.orders_per_s
    wal = c.wal_bytes_per_order * load.orders_per_s
    out.pg = {
        "backend_cores": pg_cores,
        "cores": pg_cores / a.utilization,
        "backends_in_transaction": held,
        "wal_mb_per_s": wal / 1e6,
        "wal_gb_per_hour": wal * 3600 / 1e9,
        "orders_per_s": load.orders_per_s,
    }
    clients = sum(
        r.processes
        for r in out.rows
        if r.component in ("API (tradeql api)", "matcher", "outbox relay")
    )
    out.pgbouncer = {
        "server_connections": max(4, math.ceil(held * a.pg_connection_margin)),
        "client_connections": clients * a.pool_per_process,
    }
    redis_cores = cores(c.redis_us_per_order, load.orders_per_s) + cores(
        c.redis_us_per_quote, quotes
    )
    out.redis = {
        "cores": redis_cores,
        "shards": processes_for(redis_cores, a.redis_core * a.utilization),
        "commands_per_s_orders": c.redis_commands_per_order * load.orders_per_s,
    }
    if dispatch > a.utilization / 4:
        out.warnings.append(
            f"every API process spends {dispatch:.2f} cores on receiving all {quotes:,.0f} "
            "quotes/s: at this rate, partition the quote channels across API processes"
        )
    return out


def format_table(s: Sizing, load: Load, a: Assumptions) -> str:
    """The sizing as a plain-text table (what bench/capacity.py prints)."""
    head = f"{'component':<20} {'cores':>7} {'procs':>6}  driver / note"
    lines = [head, "-" * 100]
    for r in s.rows:
        lines.append(f"{r.component:<20} {r.cores:>7.2f} {r.processes:>6}  {r.driver}")
        if r.note:
            lines.append(f"{'':<36}{r.note}")
    lines += [
        f"{'application':<20} {s.app_cores:>7.2f} {s.app_processes:>6}  single-core processes, "
        f"each at most {a.utilization:.0%} busy: {s.app_processes} cores to provision",
        f"{'PostgreSQL':<20} {s.pg['cores']:>7.2f} {'':>6}  backends {s.pg['backend_cores']:.2f} "
        f"cores busy; {s.pg['backends_in_transaction']:.1f} in a transaction on average; WAL "
        f"{s.pg['wal_mb_per_s']:.1f} MB/s ({s.pg['wal_gb_per_hour']:.0f} GB/hour)",
        f"{'PgBouncer':<20} {'':>7} {'':>6}  default_pool_size >= "
        f"{s.pgbouncer['server_connections']:.0f} server connections; max_client_conn >= "
        f"{s.pgbouncer['client_connections']:.0f}",
        f"{'Redis':<20} {s.redis['cores']:>7.2f} {s.redis['shards']:>6}  shards (one thread each "
        f"at {a.utilization:.0%}); {s.redis['commands_per_s_orders']:,.0f} commands/s from orders",
        *(f"warning: {w}" for w in s.warnings),
    ]
    return "\n".join(lines)
