"""Azure-format LLM traces (TIMESTAMP, ContextTokens, GeneratedTokens): load, join, scale up.

A trace is three parallel numpy arrays sorted by arrival time, with time in seconds from the
trace's first request. Scaling up replicates each request with seeded jitter, so the shape of
the real trace (its bursts and its drift) survives while the rate grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kiban_serving.loadgen.trace import TraceRequest, multiply_rate, read_azure_trace


@dataclass(frozen=True)
class Trace:
    """Requests in arrival order: arrival_s from 0, prompt and output token counts."""

    name: str
    arrival_s: np.ndarray  # float64, sorted
    prompt_tokens: np.ndarray  # int64, >= 1
    output_tokens: np.ndarray  # int64, >= 1

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if len(self.prompt_tokens) != n or len(self.output_tokens) != n:
            raise ValueError(f"trace {self.name!r}: arrays differ in length")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0

    def window(self, start_s: float, end_s: float) -> "Trace":
        """The requests arriving in [start_s, end_s), re-based to start at 0."""
        lo, hi = np.searchsorted(self.arrival_s, [start_s, end_s], side="left")
        return Trace(
            name=self.name,
            arrival_s=self.arrival_s[lo:hi] - start_s,
            prompt_tokens=self.prompt_tokens[lo:hi],
            output_tokens=self.output_tokens[lo:hi],
        )


def load_azure_trace(path: str | Path) -> Trace:
    """Read one Azure LLM inference trace CSV (via the load generator's reader) from t=0."""
    path = Path(path)
    requests = read_azure_trace(path)
    if not requests:
        raise ValueError(f"{path}: trace has no requests")
    return _from_requests(path.stem, requests)


def _from_requests(name: str, requests: list[TraceRequest]) -> Trace:
    arrival = np.fromiter((r.arrival_s for r in requests), dtype=np.float64, count=len(requests))
    order = np.argsort(arrival, kind="stable")
    prompts = np.fromiter((r.prompt_tokens for r in requests), dtype=np.int64, count=len(requests))
    outputs = np.fromiter((r.output_tokens for r in requests), dtype=np.int64, count=len(requests))
    # a zero-token row still costs one step: clamp to 1 so the engine accepts it
    return Trace(
        name=name,
        arrival_s=arrival[order] - arrival[order][0],
        prompt_tokens=np.maximum(prompts[order], 1),
        output_tokens=np.maximum(outputs[order], 1),
    )


def _to_requests(trace: Trace) -> list[TraceRequest]:
    return [
        TraceRequest(float(t), int(p), int(o))
        for t, p, o in zip(trace.arrival_s, trace.prompt_tokens, trace.output_tokens)
    ]


def concatenate(traces: list[Trace], gap_s: float = 1.0) -> Trace:
    """Play traces one after another (a real drift when their mixes differ)."""
    if not traces:
        raise ValueError("concatenate needs at least one trace")
    arrivals, offset = [], 0.0
    for trace in traces:
        arrivals.append(trace.arrival_s + offset)
        offset += trace.duration_s + gap_s
    return Trace(
        name="+".join(t.name for t in traces),
        arrival_s=np.concatenate(arrivals),
        prompt_tokens=np.concatenate([t.prompt_tokens for t in traces]),
        output_tokens=np.concatenate([t.output_tokens for t in traces]),
    )


def scale_rate(trace: Trace, factor: float, seed: int) -> Trace:
    """Multiply the arrival rate by `factor`, keeping the trace's bursts and token mix.

    Uses the load generator's `multiply_rate` (seeded): each request gets floor(factor) - 1
    copies plus one more with probability frac(factor), each arriving a uniform random part of
    the gap to the next request later; factor < 1 thins the trace.
    """
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
        raise ValueError(f"rate factor must be a positive number, got {factor!r}")
    if factor == 1:
        return trace
    scaled = multiply_rate(_to_requests(trace), factor, seed=seed)
    if not scaled:
        raise ValueError(f"rate factor {factor} left no requests in trace {trace.name!r}")
    result = _from_requests(f"{trace.name}x{factor:g}", scaled)
    # keep the original time axis: multiply_rate never moves the first request
    return result
