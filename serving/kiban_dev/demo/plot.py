"""The demo's picture (matplotlib, no display): load with its phases, replicas desired and ready,
TTFT against the SLO, and the capacity model's predicted TTFT p95 against the observed one."""

from __future__ import annotations

import math
from pathlib import Path

from kiban_dev.demo.record import PHASE_NAMES, DemoResult


def plot_demo(result: DemoResult, path: Path, window_s: float = 10.0) -> Path:
    """Four panels sharing the time axis; written as PNG to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kiban_dev.demo.schedule import ttft_p95_by_window, windowed_rate

    samples = result.samples
    end = max([s.time_s for s in samples] + [result.config.load_seconds])
    grid = [window_s * i for i in range(1, int(end // window_s) + 2)]
    fig, (load_ax, replica_ax, ttft_ax, model_ax) = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    fig.suptitle(f"Kiban demo: {result.model} on simulated NVIDIA L4, Azure conversation then code trace", fontsize=12)

    start = 0.0
    names = PHASE_NAMES if len(PHASE_NAMES) == len(result.config.phases) else [None] * len(result.config.phases)
    for index, (phase, label) in enumerate(zip(result.config.phases, names)):
        for ax in (load_ax, replica_ax, ttft_ax, model_ax):
            if index % 2:
                ax.axvspan(start, start + phase.duration_s, color="0.93", lw=0)
        load_ax.text(start + phase.duration_s / 2, 1.0, label or phase.mix, transform=load_ax.get_xaxis_transform(),
                     ha="center", va="bottom", fontsize=7)
        start += phase.duration_s

    load_ax.plot(grid, [windowed_rate(result.offered_arrivals_s, t, window_s) for t in grid],
                 drawstyle="steps-post", color="tab:blue", label=f"offered load ({window_s:g} s windows)")
    seen = [(s.time_s, s.observed_rps) for s in samples if s.observed_rps is not None]
    if seen:
        load_ax.plot(*zip(*seen), "o-", ms=3, color="tab:orange", label="arrival rate the autoscaler saw")
    load_ax.set_ylabel("requests / s")
    load_ax.legend(loc="upper right", fontsize=8)
    load_ax.grid(alpha=0.3)

    times = [s.time_s for s in samples]
    replica_ax.plot(times, [s.desired_replicas or 0 for s in samples], drawstyle="steps-post", lw=2,
                    color="tab:purple", label="desired (Deployment replicas the operator set)")
    replica_ax.plot(times, [s.sims_ready for s in samples], drawstyle="steps-post", color="tab:green",
                    label="ready (simulator /health 200)")
    replica_ax.set_ylabel("replicas")
    replica_ax.yaxis.get_major_locator().set_params(integer=True)
    replica_ax.legend(loc="upper right", fontsize=8)
    replica_ax.grid(alpha=0.3)

    client = ttft_p95_by_window(result.results, window_s)
    if client:
        ttft_ax.plot([c[0] for c in client], [c[1] for c in client], drawstyle="steps-pre", color="tab:red",
                     label=f"TTFT p95, client ({window_s:g} s windows)")
    prom = [(s.time_s, s.prom_ttft_p95_ms) for s in samples if s.prom_ttft_p95_ms is not None]
    if prom:
        ttft_ax.plot(*zip(*prom), ".", color="tab:gray", label="TTFT p95, Prometheus (engines, 30 s rate)")
    if not math.isnan(result.slo_ttft_ms):
        for ax in (ttft_ax, model_ax):
            ax.axhline(result.slo_ttft_ms, color="black", ls="--", lw=1, label=f"SLO {result.slo_ttft_ms:g} ms")
    ttft_ax.set_ylabel("TTFT p95 (ms)")
    ttft_ax.set_yscale("log")
    ttft_ax.legend(loc="upper right", fontsize=8)
    ttft_ax.grid(alpha=0.3, which="both")

    predicted = [(s.time_s, s.predicted_ttft_p95_ms) for s in samples
                 if s.predicted_ttft_p95_ms is not None and math.isfinite(s.predicted_ttft_p95_ms)]
    if predicted:
        model_ax.plot(*zip(*predicted), drawstyle="steps-post", color="tab:cyan",
                      label="capacity model: predicted TTFT p95 at the desired replicas")
    if prom:
        model_ax.plot(*zip(*prom), ".", color="tab:gray", label="observed TTFT p95 (Prometheus)")
    # the prediction is for the desired replicas; while some are still starting, what Prometheus
    # observes comes from fewer: shade those stretches so the two are not read as one comparison
    labelled = False
    for before, after in zip(samples, samples[1:]):
        if (before.desired_replicas or 0) > before.sims_ready:
            model_ax.axvspan(before.time_s, after.time_s, color="tab:orange", alpha=0.15, lw=0,
                             label=None if labelled else "desired > ready: prediction is for replicas still starting")
            labelled = True
    for event in result.drift_events():
        for ax in (load_ax, model_ax):
            ax.axvline(event["time_s"], color="tab:brown", lw=1.5)
        load_ax.text(event["time_s"], 0.04, "DriftDetected: re-fit ", transform=load_ax.get_xaxis_transform(),
                     color="tab:brown", fontsize=8, va="bottom", ha="right")
    model_ax.set_ylabel("TTFT p95 (ms)")
    model_ax.set_yscale("log")
    model_ax.set_xlabel("seconds since the load started")
    model_ax.legend(loc="upper right", fontsize=8)
    model_ax.grid(alpha=0.3, which="both")

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
