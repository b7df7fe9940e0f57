"""Request streams: the Azure LLM inference trace format, slicing, Poisson arrivals, rate scaling.

Azure trace CSV (Azure/AzurePublicDataset, AzureLLMInferenceTrace 2023): a header
`TIMESTAMP,ContextTokens,GeneratedTokens`, then one row per request, e.g.
`2023-11-16 18:15:46.6805900,374,44` (7 fractional digits, which datetime cannot parse alone).
Arrival times are returned in seconds relative to the first row of the file.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


class TraceFormatError(ValueError):
    """A trace row that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class TraceRequest:
    """One request to replay: when it arrives and how many tokens it carries."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int


def parse_timestamp(text: str) -> float:
    """Seconds since the epoch (naive, treated as UTC) of 'YYYY-MM-DD HH:MM:SS[.fffffff]'."""
    base, _, fraction = text.strip().partition(".")
    whole = datetime.fromisoformat(base).timestamp() if "+" in base else datetime.fromisoformat(base + "+00:00").timestamp()
    if fraction:
        if not fraction.isdigit():
            raise ValueError(f"bad fractional seconds {fraction!r}")
        return whole + int(fraction) / 10 ** len(fraction)
    return whole


def read_azure_trace(
    path: str | Path,
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    first_row: int = 0,
    max_rows: int | None = None,
) -> list[TraceRequest]:
    """Read an Azure-format trace, keeping rows in [start_s, start_s + duration_s) of the trace.

    first_row/max_rows slice by data row (0-based, header excluded) before the time window.
    Arrivals are re-based so the first kept request arrives at 0. Rows with zero tokens are
    kept as read (prompt/output counts are clamped to >= 1 by the caller if it needs to).
    """
    path = Path(path)
    requests: list[TraceRequest] = []
    t0: float | None = None
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != AZURE_COLUMNS:
            raise TraceFormatError(f"{path}:1: expected header {','.join(AZURE_COLUMNS)}, got {header!r}")
        for row_index, row in enumerate(reader):
            line = row_index + 2
            if row_index < first_row:
                continue
            if max_rows is not None and row_index >= first_row + max_rows:
                break
            request = _parse_row(path, line, row)
            if t0 is None:
                t0 = request.arrival_s
            rel = request.arrival_s - t0
            if rel < start_s:
                continue
            if duration_s is not None and rel >= start_s + duration_s:
                break
            requests.append(replace(request, arrival_s=rel))
    if requests:
        base = requests[0].arrival_s
        requests = [replace(r, arrival_s=r.arrival_s - base) for r in requests]
    return requests


def _parse_row(path: Path, line: int, row: list[str]) -> TraceRequest:
    if len(row) != 3:
        raise TraceFormatError(f"{path}:{line}: expected 3 columns {AZURE_COLUMNS}, got {len(row)}: {row!r}")
    try:
        arrival = parse_timestamp(row[0])
    except ValueError as exc:
        raise TraceFormatError(f"{path}:{line}: bad TIMESTAMP {row[0]!r}: {exc}") from None
    counts = []
    for name, value in zip(AZURE_COLUMNS[1:], row[1:]):
        try:
            count = int(value)
        except ValueError:
            raise TraceFormatError(f"{path}:{line}: {name} must be an integer, got {value!r}") from None
        if count < 0:
            raise TraceFormatError(f"{path}:{line}: {name} must be >= 0, got {count}")
        counts.append(count)
    return TraceRequest(arrival, counts[0], counts[1])


def poisson_requests(
    rate_rps: float,
    duration_s: float,
    prompt_tokens: int,
    output_tokens: int,
    seed: int = 0,
) -> list[TraceRequest]:
    """Poisson arrivals at rate_rps for duration_s, every request with the given token counts."""
    if rate_rps <= 0 or not math.isfinite(rate_rps):
        raise ValueError(f"rate_rps must be a positive number, got {rate_rps}")
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    rng = random.Random(seed)
    requests, t = [], rng.expovariate(rate_rps)
    while t < duration_s:
        requests.append(TraceRequest(t, prompt_tokens, output_tokens))
        t += rng.expovariate(rate_rps)
    return requests


def compress_time(requests: list[TraceRequest], time_scale: float) -> list[TraceRequest]:
    """Replay time_scale times faster: every arrival time divided by time_scale."""
    if time_scale <= 0:
        raise ValueError(f"time_scale must be positive, got {time_scale}")
    return [replace(r, arrival_s=r.arrival_s / time_scale) for r in requests]


def multiply_rate(requests: list[TraceRequest], multiplier: float, seed: int = 0) -> list[TraceRequest]:
    """Scale the arrival rate while keeping the time axis and the token mix.

    multiplier < 1 keeps each request with that probability (thinning). multiplier > 1 adds,
    for each request, floor(m) - 1 copies plus one more with probability frac(m); each copy
    arrives a uniform random fraction of the gap to the next request later, so bursts keep
    their shape without stacking copies on the same instant.
    """
    if multiplier <= 0 or not math.isfinite(multiplier):
        raise ValueError(f"rate multiplier must be a positive number, got {multiplier}")
    rng = random.Random(seed)
    if multiplier <= 1:
        return [r for r in requests if rng.random() < multiplier] if multiplier < 1 else list(requests)
    out: list[TraceRequest] = []
    for i, request in enumerate(requests):
        gap = (requests[i + 1].arrival_s - request.arrival_s) if i + 1 < len(requests) else 0.0
        copies = int(multiplier) + (1 if rng.random() < multiplier - int(multiplier) else 0)
        out.append(request)
        for _ in range(copies - 1):
            out.append(replace(request, arrival_s=request.arrival_s + rng.random() * gap))
    out.sort(key=lambda r: r.arrival_s)
    return out
