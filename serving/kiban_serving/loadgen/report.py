"""Latency percentiles and SLO attainment from a replay's results, as a table or JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from kiban_serving.loadgen.client import RequestResult

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class LatencyStats:
    """p50/p95/p99 and mean of one latency, in milliseconds."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    count: int


@dataclass(frozen=True)
class Report:
    requests: int
    succeeded: int
    failed: int
    duration_s: float
    request_rate_rps: float
    output_tokens_per_s: float
    ttft: LatencyStats
    itl: LatencyStats
    e2e: LatencyStats
    slo_ttft_ms: float | None
    slo_itl_ms: float | None
    slo_attainment: float | None  # fraction of ALL requests that succeeded and met every SLO
    latency_scale: float

    def to_dict(self) -> dict:
        return asdict(self)

    def to_table(self) -> str:
        """A fixed-width text table for terminals and logs."""
        lines = [
            f"requests {self.requests}  ok {self.succeeded}  failed {self.failed}  "
            f"duration {self.duration_s:.1f}s  rate {self.request_rate_rps:.2f} req/s  "
            f"output {self.output_tokens_per_s:.1f} tok/s",
            f"{'metric':<8}{'p50 ms':>12}{'p95 ms':>12}{'p99 ms':>12}{'mean ms':>12}{'n':>9}",
        ]
        for name, stats in (("TTFT", self.ttft), ("ITL", self.itl), ("E2E", self.e2e)):
            lines.append(
                f"{name:<8}{stats.p50_ms:>12.1f}{stats.p95_ms:>12.1f}{stats.p99_ms:>12.1f}"
                f"{stats.mean_ms:>12.1f}{stats.count:>9}"
            )
        if self.slo_attainment is not None:
            targets = ", ".join(
                f"{name} <= {value:g} ms"
                for name, value in (("TTFT", self.slo_ttft_ms), ("ITL p95/request", self.slo_itl_ms))
                if value is not None
            )
            lines.append(f"SLO ({targets}): {self.slo_attainment * 100:.1f} % of requests met it")
        if self.latency_scale != 1.0:
            lines.append(f"latencies multiplied by {self.latency_scale:g} (engine time of a sped-up simulator)")
        return "\n".join(lines)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency_stats(values_s: list[float], scale: float = 1.0) -> LatencyStats:
    ms = [v * scale * 1e3 for v in values_s]
    mean = sum(ms) / len(ms) if ms else math.nan
    return LatencyStats(*(percentile(ms, q) for q in PERCENTILES), mean_ms=mean, count=len(ms))


def summarize(
    results: list[RequestResult],
    slo_ttft_ms: float | None = None,
    slo_itl_ms: float | None = None,
    latency_scale: float = 1.0,
) -> Report:
    """Summarise a replay. latency_scale multiplies every latency (use the simulator's speedup
    to read results in engine time); SLOs are compared after scaling. A request meets the ITL
    SLO when its own p95 inter-token latency is within it."""
    ok = [r for r in results if r.ok]
    if results:
        span = max((r.sent_s + (r.e2e_s or 0.0)) for r in results) - min(r.sent_s for r in results)
    else:
        span = 0.0
    itls = [itl for r in ok for itl in r.itls_s]
    attainment = None
    if slo_ttft_ms is not None or slo_itl_ms is not None:
        met = sum(1 for r in ok if _meets(r, slo_ttft_ms, slo_itl_ms, latency_scale))
        attainment = met / len(results) if results else math.nan
    tokens = sum(r.output_tokens for r in ok)
    return Report(
        requests=len(results),
        succeeded=len(ok),
        failed=len(results) - len(ok),
        duration_s=span,
        request_rate_rps=len(results) / span if span > 0 else 0.0,
        output_tokens_per_s=tokens / span if span > 0 else 0.0,
        ttft=latency_stats([r.ttft_s for r in ok if r.ttft_s is not None], latency_scale),
        itl=latency_stats(itls, latency_scale),
        e2e=latency_stats([r.e2e_s for r in ok if r.e2e_s is not None], latency_scale),
        slo_ttft_ms=slo_ttft_ms,
        slo_itl_ms=slo_itl_ms,
        slo_attainment=attainment,
        latency_scale=latency_scale,
    )


def _meets(result: RequestResult, slo_ttft_ms: float | None, slo_itl_ms: float | None, scale: float) -> bool:
    if slo_ttft_ms is not None and (result.ttft_s is None or result.ttft_s * scale * 1e3 > slo_ttft_ms):
        return False
    if slo_itl_ms is not None and result.itls_s:
        if percentile(result.itls_s, 95) * scale * 1e3 > slo_itl_ms:
            return False
    return True
