"""Azure-format LLM traces (TIMESTAMP, ContextTokens, GeneratedTokens): load, join, scale up.

A trace is three parallel numpy arrays sorted by arrival time, with time in seconds from the
trace's first request. Scaling up replicates each request with seeded jitter, so the shape of
the real trace (its bursts and its drift) survives while the rate grows.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

REQUIRED_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


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


def _parse_timestamp(text: str, path: Path, line: int) -> float:
    """Azure timestamps carry 7 fractional digits; datetime takes 6, so split them off."""
    head, _, frac = text.strip().partition(".")
    try:
        base = datetime.fromisoformat(head).timestamp()
        return base + (float("0." + frac) if frac else 0.0)
    except ValueError as exc:
        raise ValueError(f"{path}:{line}: TIMESTAMP {text!r} is not 'YYYY-MM-DD HH:MM:SS[.f]'") from exc


def _parse_count(text: str, field: str, path: Path, line: int) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise ValueError(f"{path}:{line}: {field} {text!r} is not an integer") from exc
    if value < 0:
        raise ValueError(f"{path}:{line}: {field} must be >= 0, got {value}")
    return max(value, 1)  # a zero-token request still costs one step


def load_azure_trace(path: str | Path) -> Trace:
    """Read one Azure LLM inference trace CSV into a Trace starting at t=0."""
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; need {REQUIRED_COLUMNS}")
        times, prompts, outputs = [], [], []
        for line, row in enumerate(reader, start=2):
            times.append(_parse_timestamp(row["TIMESTAMP"], path, line))
            prompts.append(_parse_count(row["ContextTokens"], "ContextTokens", path, line))
            outputs.append(_parse_count(row["GeneratedTokens"], "GeneratedTokens", path, line))
    if not times:
        raise ValueError(f"{path}: trace has no requests")
    arrival = np.asarray(times, dtype=np.float64)
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order] - arrival[order][0]
    return Trace(
        name=path.stem,
        arrival_s=arrival,
        prompt_tokens=np.asarray(prompts, dtype=np.int64)[order],
        output_tokens=np.asarray(outputs, dtype=np.int64)[order],
    )


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


def scale_rate(trace: Trace, factor: float, seed: int, jitter_s: float = 2.0) -> Trace:
    """Multiply the arrival rate by `factor` by replicating requests with seeded jitter.

    Each request is kept once and copied floor(factor) - 1 more times, plus once more with
    probability frac(factor); a copy arrives uniformly within `jitter_s` after its original
    and keeps the original's token counts, so bursts and token mixes are preserved.
    """
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor!r}")
    if jitter_s < 0:
        raise ValueError(f"jitter_s must be >= 0, got {jitter_s!r}")
    rng = np.random.default_rng(seed)
    n = len(trace)
    whole, frac = int(np.floor(factor)), factor - np.floor(factor)
    copies = np.full(n, whole, dtype=np.int64) + (rng.random(n) < frac)
    index = np.repeat(np.arange(n), copies)
    first_copy = np.concatenate(([True], index[1:] != index[:-1])) if len(index) else index.astype(bool)
    shift = np.where(first_copy, 0.0, rng.random(len(index)) * jitter_s)
    arrival = trace.arrival_s[index] + shift
    order = np.argsort(arrival, kind="stable")
    return Trace(
        name=trace.name if factor == 1 else f"{trace.name}x{factor:g}",
        arrival_s=arrival[order],
        prompt_tokens=trace.prompt_tokens[index][order],
        output_tokens=trace.output_tokens[index][order],
    )
