"""The Kiban gateway as a process against the real API server, with kiban-sim engines listening
on their pods' own addresses (the dev cluster hands pods loopback IPs; kwok plays the kubelet).

Routing, keys and paths use engine pods made from the operator's own Deployment template and
a simulator started on each pod's IP:8000 before the FoundationModel appears, so the gateway
sees them Ready and listening (no operator runs there: its ReplicaSet would adopt the pods).
Wake from zero runs the operator and the demo's pod backer (a simulator per Running pod, the
pod's readiness following the simulator's /health): the whole path a request takes on a real
cluster, less kube-proxy, which does not run here (tests call each gateway replica directly).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from kiban_serving.sim.process import SimulatorProcess
from support import GatewayProcess, OperatorProcess, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "kiban.dev", "v1alpha1", "foundationmodels"
API_KEY = f"sk-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def gw_namespace(crds, kubeconfig) -> Iterator[str]:
    """One namespace for the module, with the models' API-key Secret."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(kubeconfig))
    core = client.CoreV1Api(api)
    name = f"t-gateway-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"kiban.dev/test-namespace": "true"}}})
    wait_for(lambda: any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items),
             30, "the default ServiceAccount")
    core.create_namespaced_secret(name, {"metadata": {"name": "model-key"}, "stringData": {"api-key": API_KEY}})
    try:
        yield name
    finally:
        core.delete_namespace(name)
        api.close()


@pytest.fixture(scope="module")
def api(kubeconfig):
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(kubeconfig))
    yield client
    client.close()


@pytest.fixture(scope="module")
def gateways(kubeconfig, gw_namespace, tmp_path_factory) -> Iterator[list[GatewayProcess]]:
    """Two gateway replicas, as the chart runs them."""
    logs = tmp_path_factory.mktemp("gateways")
    replicas = [GatewayProcess(kubeconfig, gw_namespace, logs / f"gw-{i}.log", pod_name=f"gw-{i}") for i in range(2)]
    try:
        for replica in replicas:
            replica.start()
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()
        print("\n".join(r.logs()[-4000:] for r in replicas))


def fm_body(name: str, namespace: str, *, gateway: dict | None = None, **spec) -> dict:
    body = yaml.safe_load((ROOT / "examples" / "model.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": namespace}
    body["spec"]["scaling"] = {"minReplicas": 0, "maxReplicas": 3, "replicas": 0, "autoscaling": False}
    body["spec"]["exposure"] = {"gateway": {"enabled": True, **(gateway or {})}}
    body["spec"].update(spec)
    return body


def create_fm(api, body: dict) -> dict:
    from kubernetes import client

    return client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, body["metadata"]["namespace"], PLURAL, body)


class EnginePods:
    """Engine pods from the operator's Deployment template, each with a simulator on its pod IP:8000."""

    def __init__(self, api, body: dict, log_dir: Path) -> None:
        self.api, self.body, self.log_dir = api, body, log_dir
        self.pods: list[str] = []
        self.sims: dict[str, SimulatorProcess] = {}

    def template(self) -> dict:
        from kiban.api.v1alpha1 import FoundationModel
        from kiban.builders.deployment import build_deployment
        from kiban.config import load_config
        from kiban.sizing.gpu import resolve_sizing

        fm = FoundationModel.from_object(self.body)
        config = load_config({})
        deployment = build_deployment(fm, config, resolve_sizing(fm.spec, config.profile(fm.spec.accelerator.profile)))
        return copy.deepcopy(deployment["spec"]["template"])

    def add(self, name: str, sim_args: tuple[str, ...] = (), *, listen: bool = True) -> str:
        """Create pod `name`, wait for its IP, start its simulator there (unless listen=False)."""
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        namespace = self.body["metadata"]["namespace"]
        template = self.template()
        core.create_namespaced_pod(namespace, {"metadata": {**template["metadata"], "name": name},
                                               "spec": template["spec"]})
        self.pods.append(name)
        pod = wait_for(lambda: (p := core.read_namespaced_pod(name, namespace)).status.pod_ip and p, 30,
                       f"pod {name} to get an IP")
        ip = pod.status.pod_ip
        assert ip.startswith("127."), f"pod IP {ip} is not on loopback"
        if listen:
            served = self.body["spec"]["model"].get("servedModelName") or self.body["metadata"]["name"]
            sim = SimulatorProcess(served, "nvidia-l4/8B", ["--startup-seconds", "0", "--log-level", "WARNING",
                                                            *sim_args], host=ip, port=8000,
                                   log_path=self.log_dir / f"{name}.log")
            self.sims[name] = sim.start()
            sim.wait_healthy()
        return ip

    def successes(self, name: str) -> float:
        """Requests the pod's engine finished, from its own /metrics (the independent count)."""
        with urllib.request.urlopen(self.sims[name].url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("vllm:request_success_total{"))

    def stop(self) -> None:
        from kubernetes import client

        for sim in self.sims.values():
            sim.stop()
        for name in self.pods:
            client.CoreV1Api(self.api).delete_namespaced_pod(name, self.body["metadata"]["namespace"],
                                                             grace_period_seconds=0)


@pytest.fixture
def engine_pods(api, tmp_path) -> Iterator:
    made: list[EnginePods] = []

    def make(body: dict) -> EnginePods:
        pods = EnginePods(api, body, tmp_path)
        made.append(pods)
        return pods

    yield make
    for pods in made:
        pods.stop()


def knows(gateway: GatewayProcess, model: str) -> bool:
    """The gateway lists the model (keyless models are listed to anyone)."""
    with urllib.request.urlopen(gateway.url + "/v1/models", timeout=5) as response:
        return model in {card["id"] for card in json.load(response)["data"]}


def wait_routable(gateway: GatewayProcess, model: str, count: int, namespace: str) -> None:
    wait_for(lambda: gateway.metric("kiban_gateway_ready_endpoints", model_name=model, namespace=namespace) >= count,
             30, f"{gateway.url} to route {model} to {count} pods", interval=0.2)


async def completions(url: str, model: str, count: int, concurrency: int, *, headers: dict | None = None,
                      **body) -> list[int]:
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:
        async def one() -> int:
            async with gate, session.post(url + "/v1/completions", headers=headers,
                                          json={"model": model, "prompt": "hello there", **body}) as r:
                await r.read()
                return r.status

        return await asyncio.gather(*(one() for _ in range(count)))


# ----------------------------------------------------------------------------- routing


def test_a_slow_pod_gets_fewer_requests(api, gw_namespace, gateways, engine_pods):
    body = fm_body("lb", gw_namespace)
    pods = engine_pods(body)
    pods.add("lb-fast", ("--speedup", "40"))
    pods.add("lb-slow", ("--speedup", "4"))
    create_fm(api, body)
    wait_routable(gateways[0], "lb", 2, gw_namespace)
    statuses = asyncio.run(completions(gateways[0].url, "lb", 48, 6, max_tokens=16, ignore_eos=True))
    assert statuses == [200] * 48
    fast, slow = pods.successes("lb-fast"), pods.successes("lb-slow")
    assert fast + slow == 48
    assert fast >= 2 * slow, f"least outstanding sent {fast:.0f} to the fast pod and {slow:.0f} to the slow one"


def test_prefix_affinity_keeps_each_conversation_on_one_pod(api, gw_namespace, gateways, engine_pods):
    body = fm_body("chat", gw_namespace, gateway={"routing": "PrefixAffinity"})
    pods = engine_pods(body)
    names = [f"chat-{i}" for i in range(3)]
    for name in names:
        pods.add(name, ("--speedup", "40"))
    create_fm(api, body)
    wait_routable(gateways[0], "chat", 3, gw_namespace)

    async def conversation(session: aiohttp.ClientSession, topic: str) -> None:
        messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": f"Tell me about {topic}."}]
        for turn in range(4):
            async with session.post(gateways[0].url + "/v1/chat/completions",
                                    json={"model": "chat", "messages": messages, "max_tokens": 4}) as r:
                assert r.status == 200
                reply = (await r.json())["choices"][0]["message"]["content"]
            messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": f"And then? ({turn})"}]

    homes = []
    for topic in (f"topic {i}" for i in range(8)):
        before = {n: pods.successes(n) for n in names}

        async def talk(topic=topic):
            async with aiohttp.ClientSession() as session:
                await conversation(session, topic)

        asyncio.run(talk())
        served = {n: pods.successes(n) - before[n] for n in names}
        assert sorted(served.values()) == [0, 0, 4], f"{topic}: turns spread over pods {served}"
        homes.append(max(served, key=served.get))
    assert len(set(homes)) >= 2, f"eight conversations all hashed to one pod: {homes}"


def test_a_connect_failure_is_retried_on_the_other_pod(api, gw_namespace, gateways, engine_pods):
    body = fm_body("retry", gw_namespace)
    pods = engine_pods(body)
    pods.add("retry-a-silent", listen=False)  # Ready for the API, nothing listening: refused
    pods.add("retry-b", ("--speedup", "40"))
    create_fm(api, body)
    wait_routable(gateways[1], "retry", 2, gw_namespace)
    statuses = asyncio.run(completions(gateways[1].url, "retry", 8, 1, max_tokens=2))
    assert statuses == [200] * 8
    assert pods.successes("retry-b") == 8
    assert gateways[1].metric("kiban_gateway_upstream_errors_total", model_name="retry", kind="connect") >= 1


# ----------------------------------------------------------------------------- keys and paths


def test_a_bad_or_missing_key_is_refused_on_every_path(api, gw_namespace, gateways, engine_pods):
    body = fm_body("locked", gw_namespace, apiKeySecretRef={"name": "model-key"})
    pods = engine_pods(body)
    pods.add("locked-0", ("--speedup", "40"))
    create_fm(api, body)
    wait_routable(gateways[0], "locked", 1, gw_namespace)
    paths = ["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/models",
             "/invocations", "/metrics", "/health", "/v1/load_lora_adapter", "/ping", "/tokenize", "/"]
    payload = {"model": "locked", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}

    async def probe() -> dict:
        out = {}
        async with aiohttp.ClientSession() as session:
            for path in paths:
                for label, headers in (("missing", {}), ("bad", {"Authorization": "Bearer sk-wrong"}),
                                       ("not-bearer", {"Authorization": API_KEY})):
                    if path == "/v1/models":  # keyless models are listed to anyone, this one never
                        async with session.get(gateways[0].url + path, headers=headers) as r:
                            listed = {c["id"] for c in (await r.json())["data"]} if r.status == 200 else set()
                            out[(path, label)] = 401 if "locked" not in listed else 200
                        continue
                    async with session.post(gateways[0].url + path, headers=headers, json=payload) as r:
                        out[(path, label)] = r.status
            async with session.post(gateways[0].url + "/v1/completions", json=payload,
                                    headers={"Authorization": f"Bearer {API_KEY}"}) as r:
                out["good"] = r.status
        return out

    out = asyncio.run(probe())
    good = out.pop("good")
    assert good == 200
    assert all(status in (401, 404) for status in out.values()), {k: v for k, v in out.items() if v not in (401, 404)}
    assert all(out[(p, label)] == 401 for p in ("/v1/completions", "/v1/chat/completions", "/v1/models")
               for label in ("missing", "bad", "not-bearer")), out
    assert pods.successes("locked-0") == 1  # only the request with the key reached the engine


def test_invocations_and_metrics_are_unreachable_through_the_gateway(api, gw_namespace, gateways, engine_pods):
    body = fm_body("open", gw_namespace, apiKeySecretRef={"name": "model-key"})
    pods = engine_pods(body)
    ip = pods.add("open-0", ("--speedup", "40"))
    create_fm(api, body)
    wait_routable(gateways[1], "open", 1, gw_namespace)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    request = {"model": "open", "prompt": "hi", "max_tokens": 1}

    async def probe() -> tuple[int, int, int, int]:
        async with aiohttp.ClientSession() as session:
            async with session.post(gateways[1].url + "/invocations", json=request, headers=auth) as r:
                through_invocations = r.status
            async with session.get(gateways[1].url + "/metrics", headers=auth) as r:
                through_metrics = r.status
            # the engine itself serves both without any key (vLLM 0.33's gap the gateway closes)
            async with session.post(f"http://{ip}:8000/invocations", json=request) as r:
                direct_invocations = r.status
            async with session.get(f"http://{ip}:8000/metrics") as r:
                direct_metrics = r.status
        return through_invocations, through_metrics, direct_invocations, direct_metrics

    assert asyncio.run(probe()) == (404, 404, 200, 200)
    assert pods.successes("open-0") == 1  # the direct /invocations only


# ----------------------------------------------------------------------------- gateway replicas


def test_a_gateway_replica_killed_mid_stream_errors_its_client_and_the_other_serves(
        api, kubeconfig, gw_namespace, gateways, engine_pods, tmp_path):
    body = fm_body("stream", gw_namespace)
    pods = engine_pods(body)
    pods.add("stream-0", ("--speedup", "2"))  # slow enough that the stream is still going when we kill
    create_fm(api, body)
    doomed = GatewayProcess(kubeconfig, gw_namespace, tmp_path / "doomed.log", pod_name="gw-doomed").start()
    try:
        wait_routable(doomed, "stream", 1, gw_namespace)
        wait_routable(gateways[0], "stream", 1, gw_namespace)

        async def stream_then_kill() -> tuple[int, str, float]:
            chunks, killed = 0, time.monotonic()
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                try:
                    async with session.post(doomed.url + "/v1/completions", json={
                            "model": "stream", "prompt": "tell a long story", "max_tokens": 400, "ignore_eos": True,
                            "stream": True}) as r:
                        async for _line in r.content:
                            chunks += 1
                            if chunks == 3:
                                await asyncio.get_running_loop().run_in_executor(None, doomed.kill)
                                killed = time.monotonic()
                except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                        aiohttp.ClientConnectionError) as exc:
                    return chunks, type(exc).__name__, time.monotonic() - killed
            return chunks, "clean end", 0.0

        chunks, outcome, after_kill_s = asyncio.run(stream_then_kill())
    finally:
        doomed.stop()
    assert outcome != "clean end", f"the client saw a clean end after {chunks} chunks"
    assert after_kill_s < 5, f"the client waited {after_kill_s:.1f}s after the kill"
    assert chunks < 400
    assert asyncio.run(completions(gateways[0].url, "stream", 2, 2, max_tokens=2)) == [200, 200]


# ----------------------------------------------------------------------------- NetworkPolicy


def peer_admits(peer: dict, source_ns_labels: dict, source_pod_labels: dict, policy_ns: str, source_ns: str) -> bool:
    """One NetworkPolicyPeer's semantics (Kubernetes API reference): namespaceSelector and
    podSelector together must both match; a podSelector alone means the policy's namespace;
    an empty selector matches everything. (No ipBlock or matchExpressions in our policies.)"""
    def matches(selector: dict, labels: dict) -> bool:
        assert set(selector) <= {"matchLabels"}, selector
        return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())

    if "namespaceSelector" in peer:
        if not matches(peer["namespaceSelector"], source_ns_labels):
            return False
    elif source_ns != policy_ns:
        return False
    return matches(peer.get("podSelector") or {}, source_pod_labels)


def admits(policy: dict, target_labels: dict, port: int, source_ns: str, source_pod_labels: dict) -> bool:
    """Whether `policy` lets a pod in source_ns with source_pod_labels reach a target pod on port."""
    spec = policy["spec"]
    if not all(target_labels.get(k) == v for k, v in spec["podSelector"]["matchLabels"].items()):
        return True  # the policy does not select the target
    ns_labels = {"kubernetes.io/metadata.name": source_ns}
    for rule in spec.get("ingress") or ():
        if not any(p.get("port") == port for p in rule.get("ports") or [{"port": port}]):
            continue
        peers = rule.get("from")
        if peers is None or any(peer_admits(p, ns_labels, source_pod_labels, policy["metadata"]["namespace"], source_ns)
                                for p in peers):
            return True
    return False


def test_engine_pods_admit_only_the_charts_gateway_pods_and_monitoring(api, gw_namespace, kubeconfig):
    """The policy the operator builds from the chart's own settings, applied to the real API
    server (which validates it), then its meaning checked: no CNI here enforces policy, so what
    is checked is the rendered policy's semantics, by the rules of the Kubernetes API reference."""
    from kubernetes import client

    from kiban.api.v1alpha1 import FoundationModel
    from kiban.builders.labels import common_labels
    from kiban.builders.networkpolicy import build_network_policy
    from kiban.config import load_config
    from test_chart_install import component, template

    objects = template(namespace="kiban-system", release="kiban")
    operator = component([o for o in objects if o["kind"] == "Deployment"], "operator")
    env = {e["name"]: e["value"] for e in operator["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    env.pop("KIBAN_ACCELERATOR_PROFILES")  # a file in the pod; the gateway settings are what matter here
    config = load_config(env)
    gateway = component([o for o in objects if o["kind"] == "Deployment"], "gateway")
    gateway_labels = gateway["spec"]["template"]["metadata"]["labels"]
    fm = FoundationModel.from_object({**fm_body("np", gw_namespace), "metadata": {"name": "np", "namespace": gw_namespace}})
    assert fm.spec.exposure.through_gateway(config.gateway_default)
    policy = build_network_policy(fm, config)
    stored = client.NetworkingV1Api(api).create_namespaced_network_policy(gw_namespace, policy)
    assert stored.metadata.name == "np"
    target = common_labels(fm)
    monitoring = config.monitoring_namespace
    cases = {
        "the chart's gateway pods": ("kiban-system", gateway_labels, True),
        "Prometheus in the monitoring namespace": (monitoring, {"app": "prometheus"}, True),
        "a pod in the model's own namespace": (gw_namespace, {"app": "client"}, False),
        "an engine pod of another model beside it": (gw_namespace, {**target, "kiban.dev/model": "other"}, False),
        "another pod in the gateway's namespace": ("kiban-system", {"app": "debug"}, False),
        "a pod wearing the gateway's labels elsewhere": ("evil", gateway_labels, False),
    }
    for what, (namespace, labels, allowed) in cases.items():
        assert admits(policy, target, 8000, namespace, labels) is allowed, what


# ----------------------------------------------------------------------------- wake from zero


@pytest.fixture(scope="module")
def waking(api, kubeconfig, gw_namespace, gateways, tmp_path_factory):
    """The operator (autoscaling, its timer slower than any wake here) and the pod backer."""
    from kiban_dev.demo.backer import PodBacker

    work = tmp_path_factory.mktemp("waking")
    backer = PodBacker(api, work / "file_sd", work / "sims", namespace=gw_namespace, startup_seconds=3.0).start()
    with OperatorProcess(kubeconfig, gw_namespace, work / "operator.log", env={
        "KIBAN_PROMETHEUS_URL": "http://127.0.0.1:9",  # nothing scraped at zero; the wake needs no metrics
        "KIBAN_AUTOSCALE_INTERVAL_SECONDS": "120",
        "KIBAN_GATEWAY_DEFAULT": "true",
    }) as operator:
        yield operator
    backer.stop()


def zero_model(name: str, namespace: str) -> dict:
    body = fm_body(name, namespace, gateway={"maxHoldSeconds": 90})
    body["spec"]["scaling"] = {"minReplicas": 0, "maxReplicas": 2, "replicas": 0, "slo": {"ttftP95Ms": 500},
                               "scaleToZeroIdleSeconds": 600}
    return body


async def stream_ttft(url: str, model: str, session: aiohttp.ClientSession) -> tuple[int, float, bool]:
    """(status, seconds to the first token chunk, ended with [DONE])."""
    started = time.monotonic()
    first, done = None, False
    async with session.post(url + "/v1/completions", json={"model": model, "prompt": "wake up", "max_tokens": 4,
                                                           "stream": True, "ignore_eos": True}) as r:
        async for line in r.content:
            if line.startswith(b"data: {") and first is None:
                first = time.monotonic() - started
            done = done or line.strip() == b"data: [DONE]"
        return r.status, first if first is not None else float("nan"), done


def test_a_model_at_zero_wakes_on_the_first_request_which_succeeds(api, gw_namespace, gateways, waking):
    from kubernetes import client

    create_fm(api, zero_model("sleepy", gw_namespace))
    wait_for(lambda: knows(gateways[0], "sleepy") and
             client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, gw_namespace, PLURAL, "sleepy")
             .get("status", {}).get("resolved"), 30, "the operator to resolve sleepy")

    async def first_request():
        async with aiohttp.ClientSession() as session:
            return await stream_ttft(gateways[0].url, "sleepy", session)

    status, ttft, done = asyncio.run(first_request())
    body = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, gw_namespace, PLURAL, "sleepy")
    print(f"wake from zero: first token after {ttft:.2f} s end to end")
    assert status == 200 and done
    assert ttft >= 3.0, "the first token came before the simulated 3 s cold start could have passed"
    assert body["spec"]["scaling"]["replicas"] == 1
    # the scale's own Event says why (status.scaling.reason moves on at the next full pass)
    core = client.CoreV1Api(api)
    scaled = wait_for(lambda: [e.message for e in core.list_namespaced_event(
        gw_namespace, field_selector="involvedObject.name=sleepy,reason=Scaled").items
        if e.message.startswith("Scaled from 0 to 1")], 15, "the Scaled Event of the wake")
    assert "wake from zero" in scaled[0], scaled
    assert waking.proc.poll() is None


def test_fifty_concurrent_held_requests_are_all_served(api, gw_namespace, gateways, waking):
    create_fm(api, zero_model("crowd", gw_namespace))
    wait_for(lambda: knows(gateways[1], "crowd"), 30, "the gateway to know crowd", interval=0.2)

    async def crowd():
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(stream_ttft(gateways[1].url, "crowd", session) for _ in range(50)))

    results = asyncio.run(crowd())
    assert [status for status, _, _ in results] == [200] * 50
    assert all(done for _, _, done in results)
    assert gateways[1].metric("kiban_gateway_held_at_zero_requests_total", model_name="crowd") == 50
    assert gateways[1].metric("kiban_gateway_queued_requests", model_name="crowd") == 0


# ----------------------------------------------------------------------------- the API server refuses


REFUSED_EXPOSURES = [
    ({"apiKeySecretRef": {"name": "model-key"}, "exposure": {"serviceType": "LoadBalancer"}},
     "spec.exposure.serviceType", "Kiban gateway"),
    ({"apiKeySecretRef": {"name": "model-key"}, "exposure": {"serviceType": "NodePort",
                                                            "gateway": {"enabled": False}}},
     "spec.exposure.serviceType", "/invocations"),
    ({"exposure": {"serviceType": "NodePort", "gateway": {"enabled": True}}}, "spec.exposure.serviceType", "ClusterIP"),
    ({"exposure": {"route": True, "gateway": {"enabled": True}}}, "spec.exposure.route", "gateway"),
    ({"exposure": {"allowedNamespaceLabels": {"team": "a"}, "gateway": {"enabled": True}}},
     "spec.exposure.allowedNamespaceLabels", "past the gateway"),
]


@pytest.mark.parametrize(("spec", "field", "words"), REFUSED_EXPOSURES, ids=[f"{f}-{i}" for i, (_, f, _) in
                                                                           enumerate(REFUSED_EXPOSURES)])
def test_the_api_server_refuses_exposures_that_bypass_the_key_naming_the_field(api, gw_namespace, spec, field, words):
    from kubernetes.client.exceptions import ApiException

    body = yaml.safe_load((ROOT / "examples" / "model.yaml").read_text())
    body["metadata"] = {"name": "refused", "namespace": gw_namespace}
    body["spec"].update(copy.deepcopy(spec))
    with pytest.raises(ApiException) as info:
        create_fm(api, body)
    assert info.value.status == 422
    assert field in info.value.body and words in info.value.body, info.value.body
