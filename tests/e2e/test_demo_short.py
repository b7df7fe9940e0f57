"""The demo, short: under load the operator scales the model up, from Prometheus, end to end.

Real kube-apiserver/etcd/scheduler/controller-manager with kwok GPU nodes (session fixture),
the operator as a process, a real Prometheus scraping one kiban-sim per Running pod through
file_sd, and the Kiban gateway process in front. The model is applied at zero replicas (as the
demo does): the first requests are held at the gateway and wake it. The load then rises to about
three replicas' worth of the Azure conversation trace; the test stops it once the scale-up is
served.
"""

from __future__ import annotations

import time

import pytest

from kiban_dev.demo.record import DemoConfig
from kiban_dev.demo.schedule import Phase

pytestmark = pytest.mark.e2e

SHORT = DemoConfig(
    phases=(Phase(20, 0.6), Phase(120, 1.5)),
    time_compression=2.0,
    sim_startup_s=10.0,
    autoscale_interval_s=5.0,
    sample_every_s=3.0,
    request_timeout_s=600.0,  # the client never gives up first: a failed request is the server's doing
)
GIVE_UP_AFTER_S = 120.0


def scaled_and_served(samples) -> bool:
    """More than one replica wanted by the operator and more than one simulator ready."""
    return any((s.desired_replicas or 0) > 1 and s.sims_ready > 1 for s in samples)


@pytest.mark.timeout(420)
def test_load_scales_the_model_up_with_prometheus_series_per_pod(demo_stack_factory):
    stack = demo_stack_factory(SHORT)
    stored = stack.apply_model()
    name = stored["metadata"]["name"]
    served = stored["spec"]["model"].get("servedModelName") or name
    assert stored["spec"]["scaling"]["minReplicas"] == 0
    assert not stack.backer.ready_urls(served), "a replica was ready before any request: not applied at zero"

    result = stack.run_load(
        stored, on_sample=print,
        stop_when=lambda samples: scaled_and_served(samples) or samples[-1].time_s > GIVE_UP_AFTER_S)

    # the operator scaled the Deployment up, and says why in terms of the arrival rate
    deployment = stack.read_deployment(name)
    model = stack.read_model(name)
    scaling = (model.get("status") or {}).get("scaling") or {}
    history = "\n".join(f"{s.time_s}s desired={s.desired_replicas} ready={s.sims_ready} {s.reason}"
                        for s in result.samples)
    assert scaled_and_served(result.samples), f"no scale-up was served within {GIVE_UP_AFTER_S:.0f} s:\n{history}"
    assert deployment["spec"]["replicas"] > 1, history
    assert scaling.get("arrivalRateRps", 0) > 0.3, scaling
    assert "req/s" in (scaling.get("reason") or ""), scaling
    assert any("req/s" in (s.reason or "") and (s.desired_replicas or 0) > 1 for s in result.samples), history

    # Prometheus holds the vLLM series of every backed pod, labelled with the pod's identity
    backed = {b.backing.pod for b in stack.backer.backed()}
    assert len(backed) > 1
    selector = f'model_name="{served}",namespace="{stack.config.namespace}",foundationmodel="{name}"'
    labelled: set[str] = set()
    deadline = time.monotonic() + 15  # a pod backed a moment ago waits for file_sd refresh + one scrape
    while not backed <= labelled and time.monotonic() < deadline:
        labelled = {s["metric"]["pod"] for s in stack.prometheus.query(f"vllm:num_requests_running{{{selector}}}")}
        time.sleep(0.5)
    assert backed <= labelled, f"backed pods {sorted(backed)}, pods with series {sorted(labelled)}"
    served_pods = stack.prometheus.query(
        f'sum by (pod) (vllm:request_success_total{{model_name="{served}",foundationmodel="{name}"}}) > 0')
    assert served_pods, "no backed pod completed a request"
    assert len(result.requests_by_backend) >= 1
    # every request went through the gateway process (its own counter, scraped by Prometheus)
    through = stack.prometheus.query(f'sum(kiban_gateway_requests_total{{model_name="{served}",code="200"}})')
    assert through and float(through[0]["value"][1]) >= sum(result.requests_by_backend.values()) * 0.9, through

    # the wake from zero: the first requests found no ready replica, were held, and were served
    assert result.no_ready_windows and result.no_ready_windows[0][0] == 0.0, result.no_ready_windows
    held = result.held_results
    assert held, f"no finished request was sent while no replica was ready: {result.no_ready_windows}"
    assert all(r.ok for r in held), [r.error for r in held if not r.ok]
    # no request the run saw finish was cut or refused
    assert all(r.ok for r in result.results), sorted({r.error for r in result.results if not r.ok})
    summary = result.summary()
    assert summary["held_requests"] == len(held) and summary["slo_requests"] == len(result.results) - len(held)

    # what the summary prints and the plot draws come out of the short run too
    assert "foundationmodel.kiban.dev/llama-8b" in result.kubectl_get and "deployment.apps/llama-8b" in result.kubectl_get
    from kiban_dev.demo.record import format_summary
    from kiban_dev.demo.runner import write_outputs

    paths = write_outputs(result, stack.config.out_dir)
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    text = format_summary(result.summary())
    assert "GPU-hours" in text and "static fleet sized for the peak" in text and "kubectl get fm,deploy,pods" in text
    assert "held at the gateway while no replica was ready" in text and "left out of the attainment" in text
    assert any(s.predicted_ttft_p95_ms for s in result.samples), "no predicted TTFT in status.scaling"

    stack.delete_model(name)
    stack.stop()
    assert stack.live_pids() == [], "processes left behind after the demo stack stopped"
    assert len(stack.sim_pids) >= 2
