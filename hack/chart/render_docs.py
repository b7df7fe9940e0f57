#!/usr/bin/env python3
"""Render docs/img/model-dashboard.png: the per-model panels over a few minutes of real data.

What is real and what is scripted: vllm:* series come from kiban-sim (the vLLM simulator)
serving a load that steps up and down from client threads on this machine; kiban_* series are
written by this script through kiban.metrics.OperatorMetrics (the operator's own metrics class)
with values that follow the load the way the autoscaler would report them. A real Prometheus
(`make tools`) scrapes both every second and evaluates the chart's rules.

    .venv/bin/python hack/chart/render_docs.py [--seconds 180] [--out docs/img/model-dashboard.png]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "serving")]

from kiban_dev.devcluster import PrometheusServer  # noqa: E402
from kiban_dev.devcluster.processes import free_port  # noqa: E402
from kiban_dev.devcluster.prometheus import build_config  # noqa: E402
from kiban.metrics import ModelKey, OperatorMetrics  # noqa: E402
from kiban_dev.chartgen.render import render_model_dashboard  # noqa: E402
from kiban_serving.sim.process import SimulatorProcess  # noqa: E402

MODEL = "llama-8b"
KEY = ModelKey("ml", "llama", MODEL)
# (fraction of the run, concurrent clients)
PHASES = ((0.0, 1), (0.2, 4), (0.45, 8), (0.7, 3), (0.85, 1))
CAPACITY_RPS = 0.45  # what the script reports one replica sustains
MAX_REPLICAS = 2


def client(url: str, active: threading.Event, stop: threading.Event) -> None:
    session = requests.Session()
    for _ in range(100_000):
        if stop.is_set():
            return
        if not active.is_set():
            time.sleep(0.2)
            continue
        try:
            session.post(f"{url}/v1/completions", timeout=60, json={
                "model": MODEL, "prompt": "tell me about foundations " * 60, "max_tokens": 48, "ignore_eos": True})
        except requests.RequestException:
            time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "model-dashboard.png")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kiban-render-"))
    metrics = OperatorMetrics()
    port = free_port()
    server, thread = metrics.serve(port, addr="127.0.0.1")
    stop = threading.Event()
    switches = [threading.Event() for _ in range(max(n for _, n in PHASES))]
    with SimulatorProcess(MODEL, "nvidia-l4/8B", ["--startup-seconds", "0", "--max-num-seqs", "4"],
                          log_path=workdir / "sim.log") as sim:
        sim.wait_healthy()
        threads = [threading.Thread(target=client, args=(sim.url, s, stop), daemon=True) for s in switches]
        for t in threads:
            t.start()
        config = build_config([
            {"job_name": "vllm", "static_configs": [{"targets": [f"127.0.0.1:{sim.port}"]}]},
            {"job_name": "kiban-operator", "honor_labels": True, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]},
        ], scrape_interval="1s", rule_files=[ROOT / "charts" / "kiban" / "files" / "rules" / "kiban.rules.yaml"])
        with PrometheusServer(config, workdir=workdir / "prometheus") as prometheus:
            metrics.set_model_gauge("slo_ttft_seconds", KEY, 0.5, percentile="p95")
            metrics.set_model_gauge("gpus_per_replica", KEY, 1)
            metrics.set_model_gauge("metrics_available", KEY, 1)
            metrics.set_model_gauge("capacity_per_replica_rps", KEY, CAPACITY_RPS)
            metrics.set_model_gauge("scaling_limited", KEY, 0, reason="MaxReplicas")
            start = time.monotonic()
            replicas = 1
            while (elapsed := time.monotonic() - start) < args.seconds:
                clients = [n for at, n in PHASES if elapsed >= at * args.seconds][-1]
                for index, switch in enumerate(switches):
                    (switch.set if index < clients else switch.clear)()
                rate = sum(float(s["value"][1]) for s in prometheus.query(
                    f'rate(vllm:request_success_total{{model_name="{MODEL}"}}[15s])')) if elapsed > 5 else 0.0
                wanted = max(1, math.ceil(rate / CAPACITY_RPS - 0.1))
                desired = min(MAX_REPLICAS, wanted)
                if desired != replicas and elapsed % 10 < 1:  # act every ~10 s, like a scale-down window
                    metrics.count_scale_event(KEY, "up" if desired > replicas else "down")
                    replicas = desired
                utilisation = min(rate / (CAPACITY_RPS * replicas), 0.8) if rate else 0.0
                metrics.set_model_gauge("observed_arrival_rate_rps", KEY, rate)
                metrics.set_model_gauge("desired_replicas", KEY, desired)
                metrics.set_model_gauge("current_replicas", KEY, replicas)
                metrics.set_model_gauge("ready_replicas", KEY, replicas)
                metrics.set_model_gauge("scaling_limited", KEY, int(wanted > MAX_REPLICAS), reason="MaxReplicas")
                metrics.set_model_gauge("predicted_ttft_p95_seconds", KEY, 0.15 / (1 - utilisation))
                metrics.set_model_gauge("predicted_itl_p95_seconds", KEY, 0.035 * (1 + utilisation))
                metrics.set_model_gauge("drift_score", KEY, 0.02 + 0.2 * (clients > 6), signal="prompt_tokens", test="psi")
                metrics.set_model_gauge("drift_detected", KEY, int(clients > 6), signal="prompt_tokens")
                metrics.record_reconcile(succeeded=True, seconds=0.01)
                time.sleep(1)
            counts = render_model_dashboard(prometheus.url, MODEL, args.out, range_s=args.seconds, rate_interval="15s")
        stop.set()
        for t in threads:
            t.join(timeout=65)
    server.shutdown()
    thread.join(timeout=5)
    print(f"wrote {args.out}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
