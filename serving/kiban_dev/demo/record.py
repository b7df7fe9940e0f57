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
DEFAULT_CODE_TRACE = Path(os.environ.get("KIBAN_DEMO_CODE_TRACE") or trace_path("code.csv"))

# The story: the model is applied at zero replicas and the first requests wake it through the
# gateway (held there until a replica is ready), then a ramp, a burst, a plateau, a fall, and a
# switch from the conversation mix to the code mix (long prompts, short outputs). Rates are sized
# for nvidia-l4/8B at the example's TTFT p95 <= 3 s: one replica fills its KV cache (~42k
# tokens) at about 1 req/s of the conversation mix (measured in the demo, docs/demo.md), so the
# ramp asks for a second replica before the burst and the fall lets one go. The warm-up is long
# (90 s) because the token means the capacity model reads come from finished requests: right
# after a start they hold only the short ones and read too low (docs/demo.md measures it). The code trace arrives in bursts minutes apart, so its phase keeps the code
# mix's token counts, in order, on Poisson arrivals.
DEMO_PHASES = (Phase(90, 0.35), Phase(30, 0.6), Phase(30, 0.8), Phase(20, 1.2), Phase(40, 0.8), Phase(50, 0.1),
               Phase(60, 0.5, "code", poisson=True))
PHASE_NAMES = ("wake + warm-up", "ramp", "ramp", "burst", "plateau", "fall", "mix switch (code)")


@dataclass(frozen=True)
class DemoConfig:
    """Everything a demo run needs; defaults are the `make demo` run."""

    phases: tuple[Phase, ...] = DEMO_PHASES
    trace_path: Path = DEFAULT_TRACE
    code_trace_path: Path = DEFAULT_CODE_TRACE
    time_compression: float = 2.0  # trace seconds per demo second
    trace_rows: int = 20_000
    model_manifest: Path = DEFAULT_MODEL
    namespace: str = "kiban-demo"
    stabilization_window_s: int = 30  # the model's scale-down window, shortened so the demo shows one
    # minReplicas on the applied copy: 0 applies the model at zero replicas, so the load's first
    # requests are held at the gateway while they wake it (None keeps the example's own)
    min_replicas: int | None = 0
    autoscale_interval_s: float = 5.0
    scrape_interval: str = "1s"
    sim_startup_s: float = 10.0  # cold start at demo scale (the L4 profile says ~47 s)
    sample_every_s: float = 5.0
    request_timeout_s: float = 120.0
    max_concurrency: int = 512
    seed: int = 0
    out_dir: Path = Path("demo-out")
    # Drift at demo scale: 30 s windows (the CRD's minimum), a 60 s rolling reference, and windows
    # of 15 requests compared (the operator's override; sparser ones merge into the next). The
    # thresholds are the product's: the detector's noise floor covers windows this small.
    drift_window_s: int = 30
    drift_reference_s: int = 60
    drift_min_samples: int = 15
    token_window_s: float = 60.0  # the capacity model's token means: steadier than the 20 s rate window

    @property
    def traces(self) -> dict[str, Path]:
        return {"conv": self.trace_path, "code": self.code_trace_path}

    def __post_init__(self) -> None:
        if not self.phases:
            raise ValueError("phases must not be empty")
        for name in ("time_compression", "autoscale_interval_s", "sample_every_s", "request_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.sim_startup_s < 0:
            raise ValueError(f"sim_startup_s must be >= 0, got {self.sim_startup_s!r}")
        if self.min_replicas is not None and self.min_replicas < 0:
            raise ValueError(f"min_replicas must be >= 0, got {self.min_replicas!r}")
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
    predicted_ttft_p95_ms: float | None = None  # status.scaling: the capacity model at desiredReplicas
    drift_detected: bool | None = None  # status.drift.detected
    drift_message: str | None = None
    mix: str | None = None  # the phase's request mix at this time


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
    gpus_per_replica: int = 1
    kubectl_get: str = ""  # `kubectl get fm,deploy,pods` at the end of the load
    ready_condition: str = ""  # the model's Ready condition at the end of the load
    no_ready_windows: list[tuple[float, float]] = field(default_factory=list)  # no replica ready (the wake)
    held_report: Report | None = None  # the requests sent in those windows: held at the gateway
    api_scale_events: list[ScaleEvent] | None = None  # from the operator's Scaled Events, when read

    @property
    def held_results(self) -> list[RequestResult]:
        from kiban_dev.demo.schedule import sent_in

        return sent_in(self.results, self.no_ready_windows)

    @property
    def events(self) -> list[ScaleEvent]:
        """The operator's Scaled Events where they were read, else the samples' changes."""
        if self.api_scale_events:
            return self.api_scale_events
        return scale_events([(s.time_s, s.desired_replicas, s.reason) for s in self.samples])

    def drift_events(self) -> list[dict[str, Any]]:
        """Each new drift finding (DriftDetected turning true, or its message changing while true),
        with the scaling reason one sample later: the capacity model after the re-fit."""
        out, before = [], None
        for index, sample in enumerate(self.samples):
            message = sample.drift_message if sample.drift_detected else None
            if message and message != before:
                after = next((s.reason for s in self.samples[index + 1:] if s.reason), sample.reason)
                out.append({"time_s": sample.time_s, "mix": sample.mix, "message": message, "reason_after": after})
            before = message
        return out

    def gpu_hours(self) -> tuple[float, float]:
        """(GPU-hours the fleet held over the load, a static fleet sized for its peak) from the samples."""
        from kiban_dev.demo.schedule import gpu_hours

        steps = [(s.time_s, s.desired_replicas or 0) for s in self.samples]
        if not steps:
            return 0.0, 0.0
        end = max(self.config.load_seconds, steps[-1][0])
        peak = max(r for _, r in steps)
        return gpu_hours(steps, end, self.gpus_per_replica), peak * self.gpus_per_replica * end / 3600.0

    def summary(self) -> dict[str, Any]:
        report = self.report
        ups = [e for e in self.events if e.to_replicas > e.from_replicas]
        downs = [e for e in self.events if e.to_replicas < e.from_replicas]
        used, static = self.gpu_hours()
        held = self.held_report
        return {
            "model": self.model,
            "requests": len(self.results),
            "succeeded": sum(1 for r in self.results if r.ok),
            "failed": sum(1 for r in self.results if not r.ok),
            "errors": sorted({(r.error or f"status {r.status}")[:120] for r in self.results if not r.ok}),
            "slo_ttft_p95_ms": self.slo_ttft_ms,
            "slo_requests": report.requests if report else 0,  # the requests the attainment counts
            "slo_attainment": report.slo_attainment if report else None,
            "held_requests": held.requests if held else 0,
            "held_succeeded": held.succeeded if held else 0,
            "held_ttft_p50_ms": held.ttft.p50_ms if held else None,
            "held_ttft_max_ms": max((r.ttft_s * 1e3 for r in self.held_results if r.ttft_s is not None),
                                    default=None),
            "no_ready_windows": [(round(a, 1), round(b, 1)) for a, b in self.no_ready_windows],
            "ttft_p50_ms": report.ttft.p50_ms if report else None,
            "ttft_p95_ms": report.ttft.p95_ms if report else None,
            "max_replicas": max((s.desired_replicas or 0 for s in self.samples), default=0),
            "max_ready_replicas": max((s.sims_ready for s in self.samples), default=0),
            "scale_ups": len(ups),
            "scale_downs": len(downs),
            "scale_events": [asdict(e) for e in self.events],
            "drift_events": self.drift_events(),
            "gpu_hours": round(used, 4),
            "static_peak_gpu_hours": round(static, 4),
            "load_seconds": self.config.load_seconds,
            "wall_seconds": round(self.wall_seconds, 1),
            "ready_condition": self.ready_condition,
            "kubectl_get": self.kubectl_get,
        }


def format_sample(sample: Sample, slo_ttft_ms: float) -> str:
    """One live line: replicas, load, TTFT p95 against the SLO, the latest scaling reason."""
    def num(value: float | None, spec: str) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)

    drift = " | DriftDetected" if sample.drift_detected else ""
    return (f"[{sample.time_s:5.0f}s {sample.mix or '':>4}] replicas {num(sample.desired_replicas, 'd')} desired / "
            f"{sample.sims_ready} ready | load {sample.offered_rps:4.2f} req/s "
            f"(autoscaler saw {num(sample.observed_rps, '.2f')}) | TTFT p95 {num(sample.prom_ttft_p95_ms, '.0f')} ms "
            f"(SLO {slo_ttft_ms:g}, predicted {num(sample.predicted_ttft_p95_ms, '.0f')}){drift} | "
            f"{sample.reason or 'no scaling decision yet'}")


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.0f}"


def format_summary(summary: dict[str, Any]) -> str:
    attainment = summary["slo_attainment"]
    lines = [
        f"requests {summary['requests']} (ok {summary['succeeded']}, failed {summary['failed']}) over "
        f"{summary['load_seconds']:.0f} s of load, {summary['wall_seconds']:.0f} s wall",
    ]
    lines += [f"  failed: {error}" for error in summary.get("errors", [])]
    windows = summary.get("no_ready_windows") or []
    if summary.get("held_requests") or windows:
        spans = ", ".join(f"t={a:.0f}-{b:.0f}s" for a, b in windows) or "none"
        lines.append(
            f"held at the gateway while no replica was ready (wake from zero, {spans}): "
            f"{summary['held_requests']} requests (ok {summary['held_succeeded']}), TTFT p50 "
            f"{_ms(summary['held_ttft_p50_ms'])} ms, max {_ms(summary['held_ttft_max_ms'])} ms; "
            "left out of the attainment")
    lines += [
        f"TTFT p50 {_ms(summary['ttft_p50_ms'])} ms, p95 {_ms(summary['ttft_p95_ms'])} ms; "
        f"SLO TTFT <= {summary['slo_ttft_p95_ms']:g} ms met by "
        f"{'-' if attainment is None else f'{attainment * 100:.1f} %'} of the {summary.get('slo_requests', 0)} "
        "requests sent while a replica was ready",
        f"GPU-hours {summary['gpu_hours']:.3f} against {summary['static_peak_gpu_hours']:.3f} for a static fleet "
        f"sized for the peak ({summary['max_replicas']} replicas the whole run)",
        f"max replicas {summary['max_replicas']} (ready {summary['max_ready_replicas']}); "
        f"{summary['scale_ups']} scale-ups, {summary['scale_downs']} scale-downs",
    ]
    for event in summary["scale_events"]:
        lines.append(f"  t={event['time_s']:.0f}s {event['from_replicas']} -> {event['to_replicas']}: {event['reason']}")
    for event in summary.get("drift_events", []):
        lines.append(f"DriftDetected at t={event['time_s']:.0f}s ({event['mix']} mix): {event['message']}")
        lines.append(f"  re-fit: {event['reason_after']}")
    if summary.get("ready_condition"):
        lines.append(f"FoundationModel {summary['model']} at the end: {summary['ready_condition']}")
    if summary.get("kubectl_get"):
        lines.append("$ kubectl get fm,deploy,pods")
        lines.append(summary["kubectl_get"].rstrip())
    return "\n".join(lines)


