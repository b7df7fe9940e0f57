"""The online engine fit inside the real operator process: a kiban-sim serving a perturbed true
engine it is not told about (`--true-engine-seed 1`: alpha, delta and beta of the L4/8B
datasheet times seeded factors), scraped every second by a real Prometheus, the operator's
autoscaler reading it through its collector every 2 s (rate window 8 s).

After a fixed load (Poisson arrivals with the Azure conversation trace's prompt and output
lengths), status.scaling.engine must show the prior, the fitted value and an sd per parameter,
and for the parameters such a load exercises (the decode step's level alpha and the prefill
cost per token delta) the fitted value must be closer to the true engine's than the datasheet
prior was, with an sd narrower than the prior's (25 % of the datasheet value). The true values come from the simulator's
own seeded draw (kiban_serving.sim.true_engine), never from the fit.
"""

from __future__ import annotations

import numpy as np
import pytest

from kiban.capacity.profiles import get_profile_by_name
from kiban_dev.benchmark.engine_fit import trace_pairs
from kiban_serving.loadgen.trace import TraceRequest
from kiban_serving.sim.true_engine import perturbed_profile
from support import BackgroundReplay, OperatorProcess, healthy_simulators, wait_for

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "kiban.dev", "v1alpha1", "foundationmodels"
NAME = "fitted"
PROFILE = "nvidia-l4/8B"
TRUE_SEED = 1  # alpha and delta of the true engine are 0.71 and 0.75 x the datasheet's
INTERVAL_S = 2
LOAD_S = 150.0
RATE_RPS = 0.45  # about two thirds of the true engine's capacity at TTFT p99 <= 2 s for this mix


@pytest.fixture
def simulator(tmp_path):
    yield from healthy_simulators(NAME, PROFILE, 1, tmp_path, ("--true-engine-seed", str(TRUE_SEED)))


@pytest.fixture
def operator(crds, namespace, prometheus_factory, simulator, tmp_path):
    prometheus = prometheus_factory(scrape_interval="1s")
    prometheus.set_targets("engines", [f"127.0.0.1:{sim.port}" for sim in simulator], {"namespace": namespace})
    env = {"KIBAN_PROMETHEUS_URL": prometheus.url, "KIBAN_AUTOSCALE_INTERVAL_SECONDS": str(INTERVAL_S)}
    with OperatorProcess(crds, namespace, tmp_path / "operator.log", env=env) as process:
        yield process


def conversation_load(seed: int = 5) -> list[TraceRequest]:
    rng = np.random.default_rng(seed)
    pairs = [(p, o) for p, o in trace_pairs("conv", 1) if p <= 4096 and o <= 400]
    requests, t = [], 0.0
    while True:
        t += float(rng.exponential(1.0 / RATE_RPS))
        if t >= LOAD_S:
            return requests
        prompt, output = pairs[int(rng.integers(len(pairs)))]
        requests.append(TraceRequest(t, prompt, output))


def test_status_shows_the_fit_closer_to_the_true_engine_than_the_prior(kube_api, namespace, operator, simulator):
    from kubernetes import client

    custom = client.CustomObjectsApi(kube_api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FoundationModel", "metadata": {"name": NAME},
        "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "parameters": "8B"},
                 "accelerator": {"profile": "nvidia-l4"},
                 "scaling": {"autoscaling": True, "minReplicas": 1, "maxReplicas": 3,
                             "slo": {"ttftP99Ms": 2000}}},
    })

    def status() -> dict:
        assert operator.proc.poll() is None, f"the operator exited:\n{operator.logs()[-3000:]}"
        fm = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)
        return ((fm.get("status") or {}).get("scaling") or {})

    wait_for(lambda: status().get("engine"), 90, "status.scaling.engine while idle")
    load = BackgroundReplay([sim.url for sim in simulator], NAME, conversation_load()).start()
    try:
        wait_for(lambda: not load.thread.is_alive(), LOAD_S + 120, "the load to finish", interval=2.0)
    finally:
        load.stop()
    engine = status()["engine"]

    prior, true = get_profile_by_name(PROFILE), perturbed_profile(get_profile_by_name(PROFILE), TRUE_SEED)
    for name in ("alphaMs", "betaMs", "gammaMs", "deltaMs"):
        assert set(engine[name]) == {"prior", "fitted", "sd"}, engine
        assert engine[name]["prior"] == pytest.approx(getattr(prior, name[:-2] + "_ms"))
    for name in ("alpha_ms", "delta_ms"):
        key = name.replace("_ms", "Ms")
        fitted, sd = engine[key]["fitted"], engine[key]["sd"]
        truth = getattr(true, name)
        assert abs(fitted - truth) < abs(getattr(prior, name) - truth), (name, fitted, truth, engine)
        assert sd < 0.25 * getattr(prior, name), (name, engine)  # narrower than the prior's sd
    assert engine["observations"] > 100
    assert engine["coldStart"]["priorSeconds"] == prior.startup_s
