"""A circuit breaker for Prometheus: stop asking a server that keeps failing, probe it now and then.

Why: a Prometheus that is down or overloaded answers every query of a pass with a timeout; a
pass of 13 queries would then spend 13 timeouts, and the next pass the same, while the asking
adds to the overload. After `threshold` failures in a row the breaker opens: queries fail at
once for `cooldown_s`, then one probe is let through (half-open); its success closes the
breaker, its failure opens it again for twice as long (up to `max_cooldown_s`).

Pure state with an injected clock; thread-safe (queries run on several threads).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


@dataclass
class CircuitBreaker:
    threshold: int = 3
    cooldown_s: float = 10.0
    max_cooldown_s: float = 120.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    current_cooldown_s: float = 0.0
    probing: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {self.threshold!r}")
        if not self.cooldown_s > 0 or self.max_cooldown_s < self.cooldown_s:
            raise ValueError("cooldown_s must be > 0 and max_cooldown_s >= cooldown_s")

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return CLOSED
        if self.clock() - self.opened_at >= self.current_cooldown_s:
            return HALF_OPEN
        return OPEN

    def allow(self) -> bool:
        """Whether a query may go out now (in half-open state, only one probe at a time)."""
        with self._lock:
            state = self.state
            if state == CLOSED:
                return True
            if state == HALF_OPEN and not self.probing:
                self.probing = True
                return True
            return False

    def succeeded(self) -> None:
        with self._lock:
            self.failures, self.opened_at, self.current_cooldown_s, self.probing = 0, None, 0.0, False

    def failed(self) -> None:
        with self._lock:
            self.failures += 1
            if self.probing:  # the probe failed: open again, for longer
                self.current_cooldown_s = min(self.max_cooldown_s, 2 * self.current_cooldown_s)
                self.opened_at, self.probing = self.clock(), False
            elif self.opened_at is None and self.failures >= self.threshold:
                self.opened_at, self.current_cooldown_s = self.clock(), self.cooldown_s

    def describe(self) -> str:
        if self.opened_at is None:
            return "circuit closed"
        left = max(0.0, self.current_cooldown_s - (self.clock() - self.opened_at))
        return (f"circuit open after {self.failures} failed queries in a row; next try in {left:.0f} s")
