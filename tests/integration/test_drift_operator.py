"""Drift inside the real operator process, on the real control plane, fed by a real Prometheus
scraping a real kiban-sim process.

The set-up follows test_autoscaler_operator.py: `python -m kiban run --standalone -n NS` with a
2 s autoscale interval; the simulator serves the FoundationModel's name and Prometheus (1 s
scrape) labels it with the test's namespace, as a PodMonitor would. The FoundationModel turns
drift on; the operator's overrides make the drift window 30 s with 50 requests at least
(the CRD's minimum window is 60 s), with PSI and JS thresholds raised to match such small
windows, and give the capacity model a 120 s token window, so the re-fit has something to do. The load generator replays Poisson arrivals carrying the token
counts of the real Azure conversation trace, then of the code trace (long prompts, short
outputs). The FoundationModel is created once the conversation load is steady: completions
of a load that has just started are mostly the short requests (long ones have not finished). The operator must set DriftDetected=True naming the signal with its numbers, post an
Event, export kiban_drift_detected=1, and move the token means the capacity model sizes with.
"""

from __future__ import annotations

import os
import random
import re
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from kiban.autoscale.policy import round_tokens_up
from kiban.capacity.batching import Slo, max_arrival_rate
from prompt_mixes import prompt_mix_from_cv  # tests/prompt_mixes.py
from kiban.capacity.profiles import get_profile_by_name
from kiban_dev.devcluster.processes import free_port
from kiban_dev.shared_paths import azure_trace_dir
from kiban_serving.loadgen.trace import TraceRequest, poisson_requests, read_azure_trace
from support import BackgroundReplay, OperatorProcess, healthy_simulators, wait_for

pytestmark = pytest.mark.integration

TRACES = Path(os.environ.get("KIBAN_TRACES") or azure_trace_dir())
GROUP, VERSION, PLURAL = "kiban.dev", "v1alpha1", "foundationmodels"
NAME = "drifty"
PROFILE = "nvidia-l4/8B"
TTFT_P95_MS = 2000
INTERVAL_S = 2
DRIFT_WINDOW_S = 30
MIN_SAMPLES = 50
PSI_THRESHOLD = 1.5  # ~75 requests a window: stationary conversation windows reach PSI ~1 (measured)
JS_THRESHOLD = 0.2
TOKEN_WINDOW_S = 120
RATE_RPS = 2.5
CONV_S, CODE_S = 75.0, 55.0
WARM_S = 35.0  # the load runs this long before the model exists (see the test)
MAX_MODEL_LEN = 8192
TRACE_ROWS = 2000
SPEEDUP = 10  # engine time runs 10x faster: conversation requests finish within the window


@pytest.fixture
def simulator(tmp_path):
    for sims in healthy_simulators(NAME, PROFILE, 1, tmp_path,
                                   ("--speedup", str(SPEEDUP), "--max-model-len", str(MAX_MODEL_LEN))):
        yield sims[0]


@pytest.fixture
def operator(crds: Path, namespace: str, prometheus_factory, simulator, tmp_path):
    prometheus = prometheus_factory(scrape_interval="1s")
    prometheus.set_targets("engines", [f"127.0.0.1:{simulator.port}"], {"namespace": namespace})
    metrics_port = free_port()
    # the datasheet profile, not the online fit: the simulators run 10x faster than real time,
    # which no fit of engine-time latencies against wall-time rates can read, and the capacity
    # expected below is the datasheet's under the re-fitted token means
    env = {"KIBAN_PROMETHEUS_URL": prometheus.url, "KIBAN_AUTOSCALE_INTERVAL_SECONDS": str(INTERVAL_S),
           "KIBAN_DRIFT_WINDOW_SECONDS": str(DRIFT_WINDOW_S), "KIBAN_DRIFT_MIN_SAMPLES": str(MIN_SAMPLES),
           "KIBAN_DRIFT_PSI_THRESHOLD": str(PSI_THRESHOLD),
           "KIBAN_TOKEN_WINDOW_SECONDS": str(TOKEN_WINDOW_S), "KIBAN_ENGINE_FIT": "false"}
    with OperatorProcess(crds, namespace, tmp_path / "operator.log", env=env, metrics_port=metrics_port) as process:
        yield process.proc, f"http://127.0.0.1:{metrics_port}/metrics"


def model_body() -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FoundationModel", "metadata": {"name": NAME},
        "spec": {
            "model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "parameters": "8B"},
            "accelerator": {"profile": "nvidia-l4"},
            "scaling": {"autoscaling": True, "minReplicas": 1, "maxReplicas": 8,
                        "slo": {"ttftP95Ms": TTFT_P95_MS}},
            "drift": {"enabled": True, "windowSeconds": 60, "referenceWindowSeconds": 300,
                      "jsDivergenceThreshold": JS_THRESHOLD},
        },
    }


def trace_mix(name: str, start_s: float, duration_s: float, seed: int) -> list[TraceRequest]:
    """Poisson arrivals at RATE_RPS carrying token counts drawn (seeded) from the trace's first
    TRACE_ROWS rows: the trace's own mix wanders minute to minute (its first 80 requests have a
    mean output of ~150 tokens, the next ones ~290), which the detector would rightly flag."""
    arrivals = poisson_requests(RATE_RPS, duration_s, 1, 1, seed=seed)
    rows = random.Random(seed).sample(read_azure_trace(TRACES / f"{name}.csv", max_rows=TRACE_ROWS), len(arrivals))
    out = []
    for arrival, row in zip(arrivals, rows):
        prompt = max(1, min(row.prompt_tokens, MAX_MODEL_LEN - 256))
        output = max(1, min(row.output_tokens, MAX_MODEL_LEN - prompt - 1))
        out.append(replace(row, arrival_s=start_s + arrival.arrival_s, prompt_tokens=prompt, output_tokens=output))
    return out


def metric_value(url: str, name: str, **labels: str) -> float | None:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


REFIT = re.compile(r"prompt (\d+) → (\d+) tokens, output (\d+) → (\d+) tokens")


def test_conv_to_code_switch_declares_workload_drift_and_refits_the_capacity_model(
        kube_api, namespace, operator, simulator):
    from kubernetes import client

    process, metrics_url = operator
    custom, core = client.CustomObjectsApi(kube_api), client.CoreV1Api(kube_api)

    def get() -> dict:
        assert process.poll() is None, f"the operator exited with {process.returncode}"
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)

    def condition(fm: dict, type_: str) -> dict | None:
        return next((c for c in (fm.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)

    def events(reason: str) -> list[str]:
        return [e.message for e in core.list_namespaced_event(namespace).items if e.reason == reason]

    conv = trace_mix("conv", 0.0, CONV_S, seed=1)
    code = trace_mix("code", CONV_S, CODE_S, seed=2)
    load = BackgroundReplay([simulator.url], NAME, conv + code).start()
    try:
        time.sleep(WARM_S)  # the first drift window then holds a steady conversation mix
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, model_body())
        # the conversation mix: windows are compared and stable
        def stable():
            fm = get()
            cond = condition(fm, "DriftDetected")
            scaling = (fm.get("status") or {}).get("scaling") or {}
            return fm if cond and cond["status"] == "False" and scaling.get("capacityPerReplicaRps") else None

        conv_fm = wait_for(stable, CONV_S, "DriftDetected=False on the conversation mix")
        assert conv_fm["status"]["drift"]["detected"] is False
        conv_capacity = conv_fm["status"]["scaling"]["capacityPerReplicaRps"]

        # the code mix: workload drift, named with its numbers, and the re-fit
        def drifted():
            fm = get()
            cond = condition(fm, "DriftDetected")
            return fm if cond and cond["status"] == "True" else None

        fm = wait_for(drifted, CODE_S + 30, "DriftDetected=True after the switch to the code mix")
    finally:
        load.stop()

    cond = condition(fm, "DriftDetected")
    assert cond["reason"] == "WorkloadDrift", cond
    assert re.search(r"(prompt|generation)_tokens drifted: (PSI \d+\.\d+ > 1.5|JS \d\.\d+ > 0.2)", cond["message"])
    assert "tokens)" in cond["message"] and "→" in cond["message"]  # the means, e.g. (mean 257 → 24 tokens)
    status = fm["status"]["drift"]
    assert status["detected"] is True and status["jsDivergence"] > JS_THRESHOLD and status["lastEvaluationTime"]

    # the capacity model now sizes with the code window's token means
    prompt_before, prompt_after, output_before, output_after = map(int, REFIT.search(status["message"]).groups())
    # the declaring window still holds the conversation's last completions: the means have moved
    # towards the code mix (~2100 prompt, ~25 output tokens), not all the way
    assert prompt_after > prompt_before and output_after < 0.7 * output_before, status["message"]
    capacity = fm["status"]["scaling"]["capacityPerReplicaRps"]
    # The operator also passes the window's prompt-length mix (from the prompt-token histogram),
    # which only lengthens the TTFT tail: capacity lies between the means-only value (a point mix)
    # and the value under a gamma mix as wide as the code trace's own prompts (CV ~1).
    profile, slo = get_profile_by_name(PROFILE), Slo(ttft_ms=TTFT_P95_MS)
    prompt, output = round_tokens_up(prompt_after), max(1.0, round_tokens_up(output_after))
    means_only = max_arrival_rate(profile, prompt, output, slo, 0.75)
    wide_mix = max_arrival_rate(profile, prompt, output, slo, 0.75, prompt_mix=prompt_mix_from_cv(1.0))
    assert wide_mix * 0.95 <= capacity <= means_only * 1.05, (capacity, wide_mix, means_only)
    assert capacity != pytest.approx(conv_capacity, rel=0.05)

    drift_events = wait_for(lambda: events("WorkloadDrift"), 15, "a WorkloadDrift Event")
    assert "drifted" in drift_events[0] and "tokens" in drift_events[0]
    refit_events = wait_for(lambda: events("CapacityModelRefitted"), 15, "a CapacityModelRefitted Event")
    assert refit_events[0].startswith("Re-fitted the capacity model")

    detected = {s: metric_value(metrics_url, "kiban_drift_detected", namespace=namespace, signal=s)
                for s in ("prompt_tokens", "generation_tokens")}
    assert 1.0 in detected.values(), detected
    assert metric_value(metrics_url, "kiban_drift_score", namespace=namespace, signal="generation_tokens",
                        test="psi") > 0
