"""Prometheus text scraping and latency histograms for the benchmarks.

Latencies are kept as histograms of 0.1 ms buckets (bucket -> count): exact enough for
percentiles in milliseconds, cheap to update per message and small to send between processes.
"""

from __future__ import annotations

import math
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

BUCKETS_PER_MS = 10  # latency histogram resolution: 0.1 ms

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
# Loopback only, and never through a proxy that the environment may name.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def parse_prometheus(text: str) -> list[Sample]:
    samples: list[Sample] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, raw_labels, raw_value = match.groups()
        try:
            value = float(raw_value)
        except ValueError:
            continue
        labels = dict(_LABEL.findall(raw_labels or ""))
        samples.append(Sample(name, labels, value))
    return samples


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET http://127.0.0.1:{port}{path}: (status, body); raises OSError when nothing answers."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")


def scrape(port: int, timeout: float = 2.0) -> list[Sample]:
    status, body = http_get(port, "/metrics", timeout)
    if status != 200:
        raise OSError(f"metrics on port {port} answered {status}")
    return parse_prometheus(body)


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def by_label(samples: Iterable[Sample], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in samples:
        if s.name == name:
            key = s.labels.get(label, "")
            out[key] = out.get(key, 0.0) + s.value
    return out


def histogram_delta(
    before: Iterable[Sample], after: Iterable[Sample], name: str
) -> list[tuple[float, float]]:
    """[(upper bound in seconds, cumulative count)] of a Prometheus histogram over an interval."""
    start = {s.labels.get("le", ""): s.value for s in before if s.name == f"{name}_bucket"}
    rows: list[tuple[float, float]] = []
    for s in after:
        if s.name != f"{name}_bucket":
            continue
        le = s.labels.get("le", "")
        bound = math.inf if le == "+Inf" else float(le)
        rows.append((bound, s.value - start.get(le, 0.0)))
    return sorted(rows)


def histogram_quantile(rows: list[tuple[float, float]], q: float) -> float | None:
    """The upper bound of the bucket holding the q-quantile (None without observations)."""
    if not rows or rows[-1][1] <= 0:
        return None
    wanted = q * rows[-1][1]
    for bound, cumulative in rows:
        if cumulative >= wanted:
            return bound
    return rows[-1][0]


def merge_histograms(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for histogram in histograms:
        for bucket, count in histogram.items():
            merged[int(bucket)] = merged.get(int(bucket), 0) + int(count)
    return merged


def percentiles(histogram: Mapping[int, int], qs: Iterable[float]) -> dict[float, float | None]:
    """Percentiles in ms from a 0.1 ms-bucket histogram (each bucket reported at its upper edge)."""
    wanted = sorted(qs)
    count = sum(histogram.values())
    out: dict[float, float | None] = dict.fromkeys(wanted)
    if count == 0:
        return out
    cumulative = 0
    pending = list(wanted)
    for bucket in sorted(histogram):
        cumulative += histogram[bucket]
        while pending and cumulative >= pending[0] * count:
            out[pending.pop(0)] = (bucket + 1) / BUCKETS_PER_MS
        if not pending:
            break
    for q in pending:  # rounding at q = 1.0
        out[q] = (max(histogram) + 1) / BUCKETS_PER_MS
    return out
