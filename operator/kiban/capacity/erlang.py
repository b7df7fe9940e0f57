"""M/M/c (Erlang C) waiting-time maths, stable for thousands of servers.

Erlang B is computed by its recursion B(k) = a B(k-1) / (k + a B(k-1)), which never forms
a^c / c! and so neither overflows nor loses precision for large c; Erlang C follows from it.
Percentiles are given as numbers in (0, 100), e.g. 95 for p95.
"""

from __future__ import annotations

import math

from kiban.capacity.founding import require_positive


def require_percentile(percentile: float, field: str = "percentile") -> float:
    """Percentiles are in (0, 100): 95 means p95."""
    if not isinstance(percentile, (int, float)) or not 0.0 < percentile < 100.0:
        raise ValueError(f"{field} must be in (0, 100), got {percentile!r}")
    return float(percentile)


def require_servers(servers: int) -> int:
    if isinstance(servers, bool) or not isinstance(servers, int) or servers < 1:
        raise ValueError(f"servers must be an integer >= 1, got {servers!r}")
    return servers


def erlang_b(servers: int, offered_load: float) -> float:
    """Blocking probability of M/M/c/c with offered load a = lambda / mu."""
    c = require_servers(servers)
    if offered_load < 0 or math.isnan(offered_load):
        raise ValueError(f"offered_load must be >= 0, got {offered_load!r}")
    b = 1.0
    for k in range(1, c + 1):
        b = offered_load * b / (k + offered_load * b)
    return b


def _stable_load(arrival_rate: float, service_rate: float, servers: int) -> float:
    lam = require_positive(arrival_rate, "arrival_rate")
    mu = require_positive(service_rate, "service_rate")
    c = require_servers(servers)
    if lam >= c * mu:
        raise ValueError(
            f"arrival_rate ({lam}) must be below servers * service_rate ({c * mu}) "
            "for a stable M/M/c queue"
        )
    return lam / mu


def wait_probability(arrival_rate: float, service_rate: float, servers: int) -> float:
    """Erlang C: probability an arrival has to wait, C = c B / (c - a (1 - B))."""
    a = _stable_load(arrival_rate, service_rate, servers)
    b = erlang_b(servers, a)
    return servers * b / (servers - a * (1.0 - b))


def utilization(arrival_rate: float, service_rate: float, servers: int) -> float:
    """rho = lambda / (c mu), the busy fraction of each server."""
    return _stable_load(arrival_rate, service_rate, servers) / servers


def mean_wait(arrival_rate: float, service_rate: float, servers: int) -> float:
    """W_q = C / (c mu - lambda), in the reciprocal unit of the rates."""
    c_wait = wait_probability(arrival_rate, service_rate, servers)
    return c_wait / (servers * service_rate - arrival_rate)


def wait_tail(arrival_rate: float, service_rate: float, servers: int, wait: float) -> float:
    """P(W > t) = C exp(-(c mu - lambda) t) for t >= 0."""
    if wait < 0 or math.isnan(wait):
        raise ValueError(f"wait must be >= 0, got {wait!r}")
    c_wait = wait_probability(arrival_rate, service_rate, servers)
    return c_wait * math.exp(-(servers * service_rate - arrival_rate) * wait)


def wait_percentile(
    arrival_rate: float, service_rate: float, servers: int, percentile: float
) -> float:
    """The waiting time not exceeded by `percentile` % of arrivals (0 when few ever wait)."""
    q = require_percentile(percentile) / 100.0
    c_wait = wait_probability(arrival_rate, service_rate, servers)
    if c_wait <= 1.0 - q:
        return 0.0
    return math.log(c_wait / (1.0 - q)) / (servers * service_rate - arrival_rate)


def servers_needed(
    arrival_rate: float,
    service_rate: float,
    wait_target: float,
    percentile: float = 95.0,
    max_servers: int = 1_000_000,
) -> int:
    """Smallest c whose `percentile` waiting time is at most wait_target."""
    lam = require_positive(arrival_rate, "arrival_rate")
    mu = require_positive(service_rate, "service_rate")
    if wait_target < 0 or math.isnan(wait_target):
        raise ValueError(f"wait_target must be >= 0, got {wait_target!r}")
    require_percentile(percentile)
    c = math.floor(lam / mu) + 1
    while c <= max_servers:
        if wait_percentile(lam, mu, c, percentile) <= wait_target:
            return c
        c += 1
    raise ValueError(f"no server count up to max_servers={max_servers} meets the wait target")
