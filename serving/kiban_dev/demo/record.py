"""What a demo run is asked to do (DemoConfig) and what it produced (Sample, DemoResult), and how
both read on screen. Shared by the runner, which fills them, and the plot, which draws them."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kiban_dev.demo.schedule import Phase, ScaleEvent, scale_events
from kiban_dev.shared_paths import trace_path
from kiban_serving.loadgen.client import RequestResult
from kiban_serving.loadgen.report import Report

REPO = Path(__file__).resolve().parents[3]
DEFAULT_MODEL = REPO / "examples" / "model.yaml"
DEFAULT_TRACE = Path(os.environ.get("KIBAN_DEMO_TRACE") or trace_path("conv.csv"))

# Rises from one replica's worth to about four, then falls back so a scale-down shows too.
# Rates are sized for nvidia-l4/8B on the conversation trace: at the 500 ms TTFT p95 target the
# capacity model (kiban.capacity.batching) gives one replica only ~0.15-0.3 req/s of its prompts.
DEMO_PHASES = (Phase(40, 0.15), Phase(50, 0.35), Phase(50, 0.6), Phase(50, 0.9), Phase(80, 0.1))


@dataclass(frozen=True)
class DemoConfig:
    """Everything a demo run needs; defaults are the `make demo` run."""

    phases: tuple[Phase, ...] = DEMO_PHASES
    trace_path: Path = DEFAULT_TRACE
    time_compression: float = 2.0  # trace seconds per demo second
    trace_rows: int = 20_000
    model_manifest: Path = DEFAULT_MODEL
    namespace: str = "kiban-demo"
    stabilization_window_s: int = 30  # the model's scale-down window, shortened so the demo shows one
    autoscale_interval_s: float = 5.0
    scrape_interval: str = "1s"
    sim_startup_s: float = 15.0  # cold start at demo scale (the L4 profile says ~47 s)
    sample_every_s: float = 5.0
    request_timeout_s: float = 120.0
    max_concurrency: int = 512
    seed: int = 0
    out_dir: Path = Path("demo-out")

    def __post_init__(self) -> None:
        if not self.phases:
            raise ValueError("phases must not be empty")
        for name in ("time_compression", "autoscale_interval_s", "sample_every_s", "request_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.sim_startup_s < 0:
            raise ValueError(f"sim_startup_s must be >= 0, got {self.sim_startup_s!r}")
        if self.stabilization_window_s < 0:
            raise ValueError(f"stabilization_window_s must be >= 0, got {self.stabilization_window_s!r}")

    @property
    def load_seconds(self) -> float:
        return sum(p.duration_s for p in self.phases)


@dataclass(frozen=True)
class Sample:
    """One live observation (seconds since the load started)."""

    time_s: float
    desired_replicas: int | None  # the Deployment's spec.replicas, as the operator set it
    autoscaler_replicas: int | None  # status.scaling.desiredReplicas
    pods_running: int
    sims_ready: int  # backed pods whose simulator answers /health 200 (the readiness probe)
    offered_rps: float  # the replay's own arrivals over the last window
    observed_rps: float | None  # status.scaling.arrivalRateRps, what the autoscaler saw
    prom_ttft_p95_ms: float | None  # histogram_quantile over the engines' TTFT buckets
    reason: str | None


@dataclass
class DemoResult:
    """What one load run produced: the samples, the client's report, the scale events."""

    config: DemoConfig
    model: str
    served_model_name: str
    slo_ttft_ms: float
    samples: list[Sample] = field(default_factory=list)
    results: list[RequestResult] = field(default_factory=list)
    report: Report | None = None
    offered_arrivals_s: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0
    stopped_early: bool = False
    requests_by_backend: dict[str, int] = field(default_factory=dict)  # requests each engine pod finished (Prometheus)

    @property
    def events(self) -> list[ScaleEvent]:
        return scale_events([(s.time_s, s.desired_replicas, s.reason) for s in self.samples])

    def summary(self) -> dict[str, Any]:
        report = self.report
        ups = [e for e in self.events if e.to_replicas > e.from_replicas]
        downs = [e for e in self.events if e.to_replicas < e.from_replicas]
        return {
            "model": self.model,
            "requests": report.requests if report else 0,
            "succeeded": report.succeeded if report else 0,
            "failed": report.failed if report else 0,
            "slo_ttft_p95_ms": self.slo_ttft_ms,
            "slo_attainment": report.slo_attainment if report else None,
            "ttft_p50_ms": report.ttft.p50_ms if report else None,
            "ttft_p95_ms": report.ttft.p95_ms if report else None,
            "max_replicas": max((s.desired_replicas or 0 for s in self.samples), default=0),
            "max_ready_replicas": max((s.sims_ready for s in self.samples), default=0),
            "scale_ups": len(ups),
            "scale_downs": len(downs),
            "scale_events": [asdict(e) for e in self.events],
            "load_seconds": self.config.load_seconds,
            "wall_seconds": round(self.wall_seconds, 1),
        }


def format_sample(sample: Sample, slo_ttft_ms: float) -> str:
    """One live line: replicas, load, TTFT p95 against the SLO, the latest scaling reason."""
    def num(value: float | None, spec: str) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)

    return (f"[{sample.time_s:5.0f}s] replicas {num(sample.desired_replicas, 'd')} desired / "
            f"{sample.sims_ready} ready | load {sample.offered_rps:4.2f} req/s "
            f"(autoscaler saw {num(sample.observed_rps, '.2f')}) | TTFT p95 {num(sample.prom_ttft_p95_ms, '.0f')} ms "
            f"(SLO {slo_ttft_ms:g}) | {sample.reason or 'no scaling decision yet'}")


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.0f}"


def format_summary(summary: dict[str, Any]) -> str:
    attainment = summary["slo_attainment"]
    lines = [
        f"requests {summary['requests']} (ok {summary['succeeded']}, failed {summary['failed']}) over "
        f"{summary['load_seconds']:.0f} s of load, {summary['wall_seconds']:.0f} s wall",
        f"TTFT p50 {_ms(summary['ttft_p50_ms'])} ms, p95 {_ms(summary['ttft_p95_ms'])} ms; "
        f"SLO TTFT <= {summary['slo_ttft_p95_ms']:g} ms met by "
        f"{'-' if attainment is None else f'{attainment * 100:.1f} %'} of requests",
        f"max replicas {summary['max_replicas']} (ready {summary['max_ready_replicas']}); "
        f"{summary['scale_ups']} scale-ups, {summary['scale_downs']} scale-downs",
    ]
    for event in summary["scale_events"]:
        lines.append(f"  t={event['time_s']:.0f}s {event['from_replicas']} -> {event['to_replicas']}: {event['reason']}")
    return "\n".join(lines)


