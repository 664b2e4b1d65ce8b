"""The capacity model's arithmetic (bench/sizing.py): given per-unit costs and a load, the
processes and cores it asks for. Behaviour, not timing: no process is started here."""

from __future__ import annotations

import dataclasses

import pytest

from bench.sizing import (
    Assumptions,
    Costs,
    Load,
    api_processes,
    cores,
    fit_fixed_and_per_unit,
    format_table,
    processes_for,
    size,
)

COSTS = Costs(
    api_us_per_order=1000.0, matcher_us_per_fill=500.0, relay_us_per_order=10.0,
    fills_per_order=1.0, pg_us_per_order=800.0, pg_held_s_per_order=0.002,
    wal_bytes_per_order=10_000.0, redis_us_per_order=100.0, redis_commands_per_order=12.0,
    feed_us_per_quote=20.0, quote_cache_us_per_quote=30.0, redis_us_per_quote=10.0,
    api_dispatch_us_per_quote=5.0, api_us_per_delivery=50.0, api_bytes_per_socket=50_000.0,
    api_us_per_read=700.0, pg_us_per_read=0.0, alerts_us_per_check=15.0,
)  # fmt: skip
SMALL = Load(orders_per_s=300.0, symbols=1000, websockets=1000, symbols_per_socket=10,
             reads_per_s=100.0)  # fmt: skip


def row(sizing: object, component: str) -> object:
    return next(r for r in sizing.rows if r.component == component)  # type: ignore[attr-defined]


def test_cores_are_cost_times_rate() -> None:
    assert cores(1000.0, 3000.0) == pytest.approx(3.0)
    assert cores(50.0, 1_000_000.0) == pytest.approx(50.0)
    assert cores(-5.0, 100.0) == 0.0  # a negative (noisy) cost never lowers the total


def test_processes_keep_each_core_below_the_utilization() -> None:
    assert processes_for(3.0, 0.6) == 5  # 3 / 0.6 = 5 exactly
    assert processes_for(3.01, 0.6) == 6
    assert processes_for(0.0, 0.6) == 1  # every kind runs at least once
    assert processes_for(1.0, 1.0) == 1
    with pytest.raises(ValueError):
        processes_for(1.0, 0.0)


def test_a_line_through_two_points_separates_the_fixed_cost() -> None:
    fixed, per_unit = fit_fixed_and_per_unit([(1_000.0, 0.15), (10_000.0, 0.6)])
    assert fixed == pytest.approx(0.1)
    assert per_unit == pytest.approx(50.0)


def test_noise_that_bends_the_line_downwards_falls_back_to_the_mean_cost() -> None:
    fixed, per_unit = fit_fixed_and_per_unit([(1_000.0, 0.2), (10_000.0, 0.1)])
    assert fixed == 0.0
    assert per_unit == pytest.approx((200.0 + 10.0) / 2)
    assert fit_fixed_and_per_unit([(500.0, 0.05)]) == (0.0, pytest.approx(100.0))
    assert fit_fixed_and_per_unit([]) == (0.0, 0.0)


def test_api_processes_pay_the_dispatch_each_and_hold_every_socket() -> None:
    a = Assumptions(utilization=0.6, sockets_per_api=10_000)
    n, total = api_processes(5.0, 0.1, 0, a)
    assert n == 10  # 5 / (0.6 - 0.1)
    assert total == pytest.approx(5.0 + 10 * 0.1)
    n, _ = api_processes(0.5, 0.1, 100_000, a)
    assert n == 10  # the sockets, not the CPU, decide
    with pytest.raises(ValueError, match="split the symbols"):
        api_processes(1.0, 0.6, 0, a)


def test_the_target_load_sized_from_known_costs() -> None:
    load, a = Load(), Assumptions()
    sizing = size(COSTS, load, a)
    assert load.deliveries_per_s == 1_000_000
    api = row(sizing, "API (tradeql api)")
    # orders 3 + reads 3.5 + deliveries 50 cores, dispatch 0.05 per process: 56.5 / 0.55 -> 103
    assert api.processes == 103  # type: ignore[attr-defined]
    assert api.cores == pytest.approx(56.5 + 103 * 0.05)  # type: ignore[attr-defined]
    matcher = row(sizing, "matcher")
    assert matcher.cores == pytest.approx(1.5)  # type: ignore[attr-defined]
    assert matcher.processes == 3 + 1  # type: ignore[attr-defined]  # 1.5 / 0.6 -> 3, a standby
    assert row(sizing, "alert checker").cores == pytest.approx(0.15)  # type: ignore[attr-defined]
    assert sizing.pg["backend_cores"] == pytest.approx(2.4)
    assert sizing.pg["cores"] == pytest.approx(4.0)
    assert sizing.pg["wal_mb_per_s"] == pytest.approx(30.0)
    assert sizing.pg["wal_gb_per_hour"] == pytest.approx(108.0)
    assert sizing.pg["backends_in_transaction"] == pytest.approx(6.0)
    assert sizing.pgbouncer["server_connections"] == 12
    # API, matchers (standby included) and the relay each open a pool of 20
    assert sizing.pgbouncer["client_connections"] == (103 + 4 + 1) * 20
    assert sizing.redis["cores"] == pytest.approx(0.3 + 0.1)
    assert sizing.redis["shards"] == 1
    assert sizing.redis["commands_per_s_orders"] == pytest.approx(36_000)
    assert sizing.app_processes == sum(r.processes for r in sizing.rows)
    table = format_table(sizing, load, a)
    assert "API (tradeql api)" in table and "PgBouncer" in table


def test_the_load_scales_what_it_drives_and_nothing_else() -> None:
    small, double = size(COSTS, SMALL), size(COSTS, dataclasses.replace(SMALL, orders_per_s=600.0))
    assert row(double, "matcher").cores == pytest.approx(2 * row(small, "matcher").cores)  # type: ignore[attr-defined]
    assert double.pg["wal_mb_per_s"] == pytest.approx(2 * small.pg["wal_mb_per_s"])
    assert row(double, "feed").cores == row(small, "feed").cores  # type: ignore[attr-defined]


def test_a_busier_redis_needs_more_shards() -> None:
    busy = dataclasses.replace(COSTS, redis_us_per_order=1000.0)  # 3 cores at 3,000 orders/s
    sizing = size(busy, Load(), Assumptions(utilization=0.5))
    assert sizing.redis["shards"] == 7  # (3 + 0.1) / 0.5 -> 6.2 -> 7


def test_a_heavy_dispatch_is_flagged() -> None:
    heavy = dataclasses.replace(COSTS, api_dispatch_us_per_quote=20.0)  # 0.2 cores per process
    assert any("partition the quote channels" in w for w in size(heavy, Load()).warnings)
    assert not size(COSTS, Load()).warnings
