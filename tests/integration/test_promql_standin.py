"""The benchmark's Prometheus is Prometheus: what its fleet answers to the collector's queries is
what a real Prometheus (the pinned 2.42 binary) answers from kiban-sim under the same load.

Two tests, one per half of the claim:

1. The exporter and the scrape (test_the_fleets_answers_are_prometheus_answers_from_kiban_sim):
   one kiban-sim serves a fixed load of mixed prompt and output lengths while Prometheus scrapes
   it every 15 s (the chart's PodMonitor interval); the benchmark's fleet replays the very same
   requests (their send times as the load generator recorded them) on one replica of the same
   engine profile, scraped at the times Prometheus scraped, and the stand-in answers every query
   the operator's collector asks in a pass with the operator's default windows (60 s rates,
   300 s token means, TTFT p99; drift windows are off by default) at instants across the run. The only honest difference is alignment: a
   scrape's timestamp is when Prometheus began it, while kiban-sim's numbers are read a moment
   later, and a request reaches kiban-sim's engine a moment after it was sent; and kiban-sim
   (as vLLM) publishes a step's counters when the step ends, while the fleet's scrape counts the
   step under way as done. So the fleet is replayed with its scrapes read from one longest step
   earlier to 0.1 s later (SCRAPE_LAG_S) and its arrivals 0 to 100 ms later (ARRIVAL_LAG_S), and
   Prometheus's answer must lie within what those replays answer (plus 1e-6 relative for float
   sums). A replay half a scrape interval off (7.5 s) must fall outside that band for
   most answers: the comparison can fail.
2. The evaluator (test_standin_answers_every_collector_query_as_prometheus_does): two kiban-sim
   processes (one a perturbed true engine), Prometheus scraping every second, one target removed
   half-way (staleness); every raw sample Prometheus stored is read back into the stand-in's
   SampleStore and every collector query (the drift histograms too) is evaluated by both at
   several times. Both evaluate the same samples: the only tolerance is floating point (relative
   1e-9, Prometheus sums in another order). The instants between the removed target's last
   sample and the staleness markers Prometheus writes for it (within the 1 s file_sd refresh) are
   skipped, since the stand-in cannot know that moment from the samples alone.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import urllib.parse
import urllib.request
from collections import defaultdict

import pytest

import numpy as np

from kiban.autoscale.collector import PrometheusHttp, Target, batch_drift_queries, batch_queries
from kiban.autoscale.model_pass import collector_for
from kiban.capacity.profiles import get_profile_by_name
from kiban_dev.benchmark.fleet import Fleet, FleetConfig
from kiban_dev.benchmark.operator_policy import operator_settings
from kiban_dev.benchmark.promql import PromQLStandIn, SampleStore
from kiban_dev.benchmark.traces import Trace
from kiban_dev.benchmark.vllm_series import max_model_len
from kiban_serving.sim.engine import Engine
from kiban_serving.loadgen.client import replay
from kiban_serving.loadgen.trace import TraceRequest
from support import healthy_simulators, wait_for

pytestmark = pytest.mark.integration

MODEL = "standin-sim"
NAMESPACE = "team-b"
PROFILE = "nvidia-l4/8B"
WINDOW_S = 8.0
LOAD_S = 24.0
PROMPTS = (40, 300, 1200, 3000, 90)
OUTPUTS = (3, 24, 60, 8)


def mixed_requests(rate_rps: float, duration_s: float, offset: int) -> list[TraceRequest]:
    """Evenly spaced requests cycling through prompt and output lengths (a fixed, known load)."""
    return [TraceRequest(i / rate_rps, PROMPTS[(i + offset) % len(PROMPTS)], OUTPUTS[(i + offset) % len(OUTPUTS)])
            for i in range(int(duration_s * rate_rps))]


@pytest.fixture
def simulators(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    sims = healthy_simulators(MODEL, PROFILE, 1, tmp_path / "a")
    perturbed = healthy_simulators(MODEL, PROFILE, 1, tmp_path / "b", ("--true-engine-seed", "7"))
    first, second = next(sims), next(perturbed)
    try:
        yield first + second
    finally:
        for gen in (sims, perturbed):
            gen.close()


def raw_samples(url: str, at_s: float) -> list[dict]:
    """Every stored vllm:* sample up to at_s: a range-vector query returns the raw samples."""
    query = urllib.parse.urlencode({"query": '{__name__=~"vllm:.+"}[10m]', "time": f"{at_s:.3f}"})
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=30) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


def load_store(series: list[dict]) -> tuple[SampleStore, dict[str, float]]:
    """The raw samples as scrapes (per target and timestamp, in time order); each target's last scrape time."""
    scrapes: dict[tuple[float, str], list[tuple[dict, float]]] = defaultdict(list)
    for item in series:
        labels = item["metric"]
        for t, value in item["values"]:
            scrapes[(float(t), labels["instance"])].append((labels, float(value)))
    store = SampleStore(keep_s=3600.0)
    last: dict[str, float] = {}
    for (t, instance), samples in sorted(scrapes.items()):
        store.scrape_series(instance, t, samples)
        last[instance] = t
    return store, last


def as_map(samples) -> dict[frozenset, float]:
    out = {}
    for sample in samples:
        key = frozenset(sample.labels.items())
        assert key not in out, f"duplicate series {dict(sample.labels)}"
        out[key] = sample.value
    return out


def same(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def test_standin_answers_every_collector_query_as_prometheus_does(prometheus_factory, simulators):
    prometheus = prometheus_factory(scrape_interval="1s")
    targets = [f"127.0.0.1:{sim.port}" for sim in simulators]
    prometheus.set_targets("sims", targets, {"namespace": NAMESPACE})
    real = PrometheusHttp(prometheus.url)
    wait_for(lambda: len(real.query("count(vllm:num_requests_running)", time.time())) == 1
             and real.query("count(vllm:num_requests_running)", time.time())[0].value == 2, 30, "both scraped")

    threads = [threading.Thread(target=lambda url=sim.url, k=k: asyncio.run(replay(url, MODEL, mixed_requests(
        3.0, LOAD_S, k)))) for k, sim in enumerate(simulators)]
    started = time.time()
    for thread in threads:
        thread.start()
    time.sleep(LOAD_S / 2)
    removed_at = time.time()
    prometheus.set_targets("sims", targets[:1], {"namespace": NAMESPACE})  # the second goes away
    for thread in threads:
        thread.join()
    time.sleep(3.0)
    end = time.time()

    store, last = load_store(raw_samples(prometheus.url, end))
    gone = targets[1]
    assert gone in last and last[gone] < end - 2.0, "the removed target must stop being scraped"
    store.drop(gone, last[gone] + 0.5)
    standin = PromQLStandIn(store)
    queries = {**batch_queries(WINDOW_S, None, (99,)), **batch_drift_queries(WINDOW_S)}
    instants = [round(started + 4.0 + 2.0 * k, 3) for k in range(int((end - started - 4.0) / 2.0))]
    instants = [t for t in instants if not last[gone] - 0.05 <= t <= max(last[gone], removed_at) + 3.0]
    assert len(instants) >= 8

    compared = nonempty = 0
    for t in instants:
        for key, promql in queries.items():
            theirs = as_map(real.query(promql, t))
            ours = as_map(standin.query(promql, t))
            assert ours.keys() == theirs.keys(), (key, t, promql)
            for labels, value in theirs.items():
                assert same(ours[labels], value), (key, t, dict(labels), ours[labels], value)
            compared += 1
            nonempty += bool(theirs)
    assert compared == len(instants) * len(queries)
    assert nonempty > 0.8 * compared  # the load makes nearly every answer non-empty
    # the staleness path was exercised: after the removal, the gauges come from one engine only
    after = [t for t in instants if t > last[gone] + 3.0]
    assert after and real.query("count(vllm:num_requests_running)", after[-1])[0].value == 1


# -- 1. the fleet's exporter and scrape against kiban-sim scraped by Prometheus ----------------------

SCRAPE_S = 15.0
FLEET_LOAD_S = 105.0
FLEET_RATE_RPS = 0.6
# kiban-sim's numbers are read up to 0.1 s after the scrape's timestamp; its counters move at a
# step's end while the fleet's scrape counts the step under way as done, so they may also be up
# to one step behind the fleet's (the longest step this load can make: 32 decodes + a full
# 2048-token prefill chunk, 0.68 s on L4/8B)
LONGEST_STEP_S = Engine(get_profile_by_name(PROFILE)).step_time_s(32, 2048)
SCRAPE_LAG_S = tuple(np.linspace(-LONGEST_STEP_S, 0.1, 12).round(4).tolist())
ARRIVAL_LAG_S = (0.0, 0.01, 0.03, 0.06, 0.1)  # a request reaches kiban-sim's engine this long after it is sent
SCRAPE_LABELS = ("instance", "pod", "job")  # the scrape's own target labels differ (a pod IP vs 127.0.0.1)


def raw_scrape_times(url: str, at_s: float, instance: str) -> list[float]:
    """When Prometheus scraped `instance`: the timestamps of its `up` samples."""
    query = urllib.parse.urlencode({"query": f'up{{instance="{instance}"}}[10m]', "time": f"{at_s:.3f}"})
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=30) as response:
        body = json.load(response)
    (series,) = body["data"]["result"]
    return [float(t) for t, _ in series["values"]]


def comparable(samples) -> dict[frozenset, float]:
    """An answer keyed by its labels without the scrape's target labels."""
    out = {}
    for sample in samples:
        key = frozenset((k, v) for k, v in sample.labels.items() if k not in SCRAPE_LABELS)
        assert key not in out, f"duplicate series {dict(sample.labels)}"
        out[key] = sample.value
    return out


def fleet_store(requests: list[tuple[float, int, int]], base_s: float, scrapes: list[float], scrape_lag_s: float,
                arrival_lag_s: float) -> PromQLStandIn:
    """The benchmark fleet's answer: one replica of PROFILE serving `requests` (wall send time,
    prompt, output) from base_s on, its vLLM series read scrape_lag_s after each scrape."""
    trace = Trace("fixed", np.array([t - base_s + arrival_lag_s for t, _, _ in requests]),
                  np.array([p for _, p, _ in requests]), np.array([o for _, _, o in requests]))
    config = FleetConfig(profile=get_profile_by_name(PROFILE), initial_replicas=1, min_replicas=1, max_replicas=1,
                         model_name=MODEL, namespace=NAMESPACE)
    fleet = Fleet(trace, config, None, scrape_at=[t - base_s + scrape_lag_s for t in scrapes])
    fleet.run()
    return PromQLStandIn(fleet.store)


def within(value: float, answers: list[float], rel: float = 1e-6) -> bool:
    if math.isnan(value):
        return any(math.isnan(a) for a in answers)
    finite = [a for a in answers if not math.isnan(a)]
    if not finite:
        return False
    low, high = min(finite), max(finite)
    slack = rel * max(abs(low), abs(high)) + 1e-9
    return low - slack <= value <= high + slack


def test_the_fleets_answers_are_prometheus_answers_from_kiban_sim(prometheus_factory, tmp_path):
    settings = operator_settings()
    assert (settings.window_s, settings.tokens_window_s) == (60.0, 300.0)  # the operator's defaults
    prometheus = prometheus_factory(scrape_interval=f"{SCRAPE_S:.0f}s")
    # the fleet's replicas run with vLLM's default max_model_len (the model's context, or what the
    # KV cache holds), which sets the token histograms' buckets: kiban-sim is started the same way
    context = max_model_len(get_profile_by_name(PROFILE).kv_cache_tokens)
    sims = healthy_simulators(MODEL, PROFILE, 1, tmp_path, ("--max-model-len", str(context)))
    (sim,) = next(sims)
    try:
        instance = f"127.0.0.1:{sim.port}"
        prometheus.set_targets("sims", [instance], {"namespace": NAMESPACE})
        real = PrometheusHttp(prometheus.url)
        wait_for(lambda: len(real.query("vllm:num_requests_running", time.time())) == 1, 60, "kiban-sim scraped")
        load = mixed_requests(FLEET_RATE_RPS, FLEET_LOAD_S, 0)
        wall0 = time.time()
        results = asyncio.run(replay(sim.url, MODEL, load))
        assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
        time.sleep(SCRAPE_S + 2.0)
        end = time.time()
        scrapes = raw_scrape_times(prometheus.url, end, instance)
    finally:
        sims.close()

    sent = sorted((wall0 + r.sent_s, r.prompt_tokens, r.requested_output_tokens) for r in results)
    base = scrapes[0] - 1.0
    assert sent[0][0] > base, "the first scrape must see the idle engine before the load"
    standins = [fleet_store(sent, base, scrapes, lag, arrival) for lag in SCRAPE_LAG_S for arrival in ARRIVAL_LAG_S]
    off = fleet_store(sent, base, scrapes, SCRAPE_S / 2, 0.0)

    target = Target(NAMESPACE, MODEL, 1, 1, (99,))
    # a pass's queries as the operator asks them by default (drift is off unless spec.drift asks,
    # and the fleet exports no per-token ITL buckets, which only the drift windows read)
    queries = collector_for(standins[0], settings).queries([target])
    instants = [t for t in np.arange(sent[0][0] + 20.0, end, 5.0).round(3).tolist()]
    assert len(instants) >= 20
    compared = inside = misaligned_outside = nonzero = 0
    worst: list[tuple] = []
    for t in instants:
        for key, promql in queries.items():
            theirs = comparable(real.query(promql, t))
            ours = [comparable(s.query(promql, t - base)) for s in standins]
            assert all(o.keys() == theirs.keys() for o in ours), (key, t, promql, theirs.keys(), ours[0].keys())
            shifted = comparable(off.query(promql, t - base))
            for labels, value in theirs.items():
                compared += 1
                answers = [o[labels] for o in ours]
                ok = within(value, answers)
                inside += ok
                if not ok:
                    finite = [a for a in answers if not math.isnan(a)] or [math.nan]
                    beyond = max(min(finite) - value, value - max(finite)) / max(abs(value), 1e-12)
                    worst.append((key, round(t - sent[0][0], 1), value, min(finite), max(finite), round(beyond, 4)))
                if value and math.isfinite(value):
                    nonzero += 1
                    if labels in shifted and not within(shifted[labels], answers):
                        misaligned_outside += 1
    print(f"\n{compared} answers compared over {len(instants)} instants, {len(queries)} queries: "
          f"{inside} within the alignment band; misaligned by {SCRAPE_S / 2:.1f} s: {misaligned_outside} of "
          f"{nonzero} non-zero answers outside it")
    by_key: dict[str, list[float]] = defaultdict(list)
    for row in worst:
        by_key[row[0]].append(row[-1])
    summary = {k: (len(v), max(v)) for k, v in by_key.items()}  # answers outside, worst relative miss
    print("outside the band (count, worst relative distance):", summary)
    assert nonzero > 0.5 * compared  # the load makes most answers non-trivial
    assert inside == compared, (f"{compared - inside} of {compared} outside", summary, worst[:5])
    assert misaligned_outside > 0.3 * nonzero  # the band is narrow enough to catch a wrong scrape time
