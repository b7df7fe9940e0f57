"""The founding one-job-at-a-time GPU server calculator (M/M/1), kept as a user-facing planner.

N = (rho * mu * H) / (P_a * F * P_c) users, with mu = 60 / t_p jobs per hour
(capacity-model.md section 1). Pure functions: numbers in, numbers out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def require_open_unit(value: float, field: str) -> float:
    """Reject a value outside (0, 1): utilisations and probabilities of a stable queue."""
    if not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 < value < 1.0:
        raise ValueError(f"{field} must be in (0, 1), got {value!r}")
    return float(value)


def require_positive(value: float, field: str) -> float:
    """Reject zero, negative, NaN or infinite values for a quantity that must be > 0."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{field} must be a finite number > 0, got {value!r}")
    return float(value)


def service_rate_per_hour(processing_minutes: float) -> float:
    """mu = 60 / t_p: jobs one server completes per hour when never idle."""
    return 60.0 / require_positive(processing_minutes, "processing_minutes")


@dataclass(frozen=True)
class MM1Metrics:
    """Steady-state M/M/1 figures; times are in the reciprocal unit of the rates."""

    arrival_rate: float
    service_rate: float
    utilization: float  # rho = lambda / mu
    mean_wait: float  # W_q = rho / (mu - lambda)
    mean_time_in_system: float  # W = 1 / (mu - lambda)
    mean_queue_length: float  # L_q = rho^2 / (1 - rho)
    mean_in_system: float  # L = rho / (1 - rho)


def mm1(arrival_rate: float, service_rate: float) -> MM1Metrics:
    """M/M/1 means; the queue must be stable (arrival_rate < service_rate)."""
    lam = require_positive(arrival_rate, "arrival_rate")
    mu = require_positive(service_rate, "service_rate")
    if lam >= mu:
        raise ValueError(
            f"arrival_rate ({lam}) must be below service_rate ({mu}) for a stable M/M/1 queue"
        )
    rho = lam / mu
    return MM1Metrics(
        arrival_rate=lam,
        service_rate=mu,
        utilization=rho,
        mean_wait=rho / (mu - lam),
        mean_time_in_system=1.0 / (mu - lam),
        mean_queue_length=rho * rho / (1.0 - rho),
        mean_in_system=rho / (1.0 - rho),
    )


def users_for_capacity(
    jobs_per_hour: float,
    hours_per_day: float,
    access_probability: float,
    jobs_per_user: float,
    peak_factor: float,
) -> float:
    """Users whose busiest hour fills `jobs_per_hour`: capacity x H / (P_a x F x P_c)."""
    capacity = require_positive(jobs_per_hour, "jobs_per_hour")
    hours = require_positive(hours_per_day, "hours_per_day")
    if hours > 24:
        raise ValueError(f"hours_per_day must be at most 24, got {hours_per_day!r}")
    p_a = require_positive(access_probability, "access_probability")
    if p_a > 1:
        raise ValueError(f"access_probability must be in (0, 1], got {access_probability!r}")
    jobs = require_positive(jobs_per_user, "jobs_per_user")
    p_c = require_positive(peak_factor, "peak_factor")
    if p_c < 1:
        raise ValueError(f"peak_factor must be >= 1 (busiest hour / average), got {peak_factor!r}")
    return capacity * hours / (p_a * jobs * p_c)


def supportable_users(
    service_rate_per_hour: float,
    utilization: float,
    hours_per_day: float,
    access_probability: float,
    jobs_per_user: float,
    peak_factor: float,
) -> float:
    """N = (rho * mu * H) / (P_a * F * P_c): users whose busiest hour keeps the server at rho."""
    mu = require_positive(service_rate_per_hour, "service_rate_per_hour")
    rho = require_open_unit(utilization, "utilization")
    return users_for_capacity(rho * mu, hours_per_day, access_probability, jobs_per_user, peak_factor)


@dataclass(frozen=True)
class FoundingPlan:
    """Everything the planner prints: the answer and the rates that lead to it."""

    users: int  # whole users supported (floor of users_exact)
    users_exact: float
    service_rate_per_hour: float  # mu
    arrival_rate_per_hour: float  # lambda at the target utilisation, rho * mu (busiest hour)
    jobs_per_day_capacity: float  # rho * mu * H
    jobs_per_user_day: float  # P_a * F, expected jobs per registered user per day
    mean_wait_minutes: float  # W_q at the target utilisation
    mean_time_in_system_minutes: float  # W
    mean_queue_length: float  # L_q


def plan_founding(
    processing_minutes: float,
    utilization: float,
    hours_per_day: float,
    access_probability: float,
    jobs_per_user: float,
    peak_factor: float,
) -> FoundingPlan:
    """Run the founding calculator end to end: users plus the M/M/1 picture at the target load."""
    mu = service_rate_per_hour(processing_minutes)
    exact = supportable_users(
        mu, utilization, hours_per_day, access_probability, jobs_per_user, peak_factor
    )
    queue = mm1(utilization * mu, mu)
    return FoundingPlan(
        users=math.floor(exact + 1e-9),
        users_exact=exact,
        service_rate_per_hour=mu,
        arrival_rate_per_hour=queue.arrival_rate,
        jobs_per_day_capacity=utilization * mu * hours_per_day,
        jobs_per_user_day=access_probability * jobs_per_user,
        mean_wait_minutes=queue.mean_wait * 60.0,
        mean_time_in_system_minutes=queue.mean_time_in_system * 60.0,
        mean_queue_length=queue.mean_queue_length,
    )
