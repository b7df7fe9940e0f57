"""The gateway's proxy in-process, against real HTTP upstreams on loopback (kiban-sim's own app
and small aiohttp servers that misbehave on purpose). The API server is not involved: the
routing table is fed the bodies a watch would deliver."""

from __future__ import annotations

import asyncio
import base64
import time
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web
from aiohttp.test_utils import unused_port

from fm_bodies import fm_body
from kiban.capacity.profiles import get_profile_by_name
from kiban.gateway.server import Gateway, GatewaySettings, public_app
from kiban_serving.sim.server import SimConfig, create_app


def pod(name: str, model: str, port: int, *, ready: bool = True, args: tuple[str, ...] = ()) -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "labels": {"kiban.dev/model": model}},
            "spec": {"containers": [{"name": "vllm", "args": list(args),
                                     "ports": [{"name": "http", "containerPort": port}]}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


def sim_app(**config) -> web.Application:
    return create_app(SimConfig(served_model_name="m", profile=get_profile_by_name("nvidia-l4/8B"), startup_s=0,
                                speedup=50.0, **config))


class FakeSecrets:
    """Stands in for the API server's Secret reads only (the integration tests use the real one)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.reads = 0

    async def get_secret(self, namespace: str, name: str) -> dict:
        self.reads += 1
        return {"metadata": {"name": name}, "data": {"api-key": base64.b64encode(self.key.encode()).decode()}}


@asynccontextmanager
async def gateway(api=None, **gw):
    g = Gateway(GatewaySettings(eject_s=0.3), api=None)
    g.api = api
    await g.start()
    runner, port = await serve(public_app(g))
    session = aiohttp.ClientSession()
    try:
        yield g, f"http://127.0.0.1:{port}", session
    finally:
        await session.close()
        await g.stop()
        await runner.cleanup()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_a_request_is_held_until_a_pod_is_ready_then_served():
    async def scenario():
        runner, sim_port = await serve(sim_app())
        async with gateway() as (g, url, session):
            g.on_model(("ns", "m"), None, fm_body(gateway={"enabled": True, "maxHoldSeconds": 10}))
            asyncio.get_running_loop().call_later(0.8, g.on_pod, ("ns", "p1"), None, pod("p1", "m", sim_port))
            started = time.monotonic()
            async with session.post(url + "/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 3}) as r:
                body = await r.json()
                waited = time.monotonic() - started
            held = g.metrics.held.labels("ns", "m")._value.get()
        await runner.cleanup()
        return r.status, body, waited, held

    status, body, waited, held = run(scenario())
    assert status == 200 and body["usage"]["completion_tokens"] == 3
    assert waited >= 0.8  # held until the pod appeared
    assert held == 1


def test_holding_is_bounded_by_count_and_time_with_retry_after():
    async def scenario():
        async with gateway() as (g, url, session):
            g.on_model(("ns", "m"), None, fm_body(gateway={"enabled": True, "maxHeldRequests": 2, "maxHoldSeconds": 1}))

            async def call():
                async with session.post(url + "/v1/completions", json={"model": "m", "prompt": "hi"}) as r:
                    return r.status, r.headers.get("Retry-After"), time.monotonic()

            started = time.monotonic()
            results = await asyncio.gather(*(call() for _ in range(3)))
            return started, results

    started, results = run(scenario())
    assert all(status == 503 and retry == "5" for status, retry, _ in results)
    times = sorted(t - started for _, _, t in results)
    assert times[0] < 0.5  # the third request found the queue full: refused at once
    assert times[1] >= 0.95 and times[2] >= 0.95  # the two held ones waited out maxHoldSeconds


def test_only_openai_inference_paths_are_forwarded():
    async def scenario():
        runner, sim_port = await serve(sim_app())
        async with gateway() as (g, url, session):
            g.on_model(("ns", "m"), None, fm_body(gateway={"enabled": True}))
            g.on_pod(("ns", "p1"), None, pod("p1", "m", sim_port))
            statuses = {}
            for path in ("/invocations", "/metrics", "/health", "/v1/load_lora_adapter", "/sleep", "/ping", "/"):
                async with session.post(url + path, json={"model": "m", "prompt": "hi"}) as r:
                    statuses[path] = r.status
            async with session.post(f"http://127.0.0.1:{sim_port}/invocations", json={"model": "m", "prompt": "hi",
                                                                                       "max_tokens": 1}) as r:
                direct = r.status
            async with session.get(f"http://127.0.0.1:{sim_port}/metrics") as r:
                engine = await r.text()
        await runner.cleanup()
        return statuses, direct, engine

    statuses, direct, engine = run(scenario())
    assert set(statuses.values()) == {404}, statuses
    assert direct == 200  # the engine itself would have served /invocations
    # the engine finished exactly the one request sent to it directly
    assert 'vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 1.0' in engine


def test_the_key_is_checked_before_holding_and_read_once_per_ttl():
    async def scenario():
        secrets = FakeSecrets("sk-good")
        async with gateway(api=secrets) as (g, url, session):
            g.on_model(("ns", "m"), None, fm_body(gateway={"enabled": True, "maxHoldSeconds": 1},
                                                 apiKeySecretRef={"name": "keys"}))
            out = {}
            for label, headers in (("none", {}), ("bad", {"Authorization": "Bearer sk-bad"}),
                                   ("good", {"Authorization": "Bearer sk-good"})):
                started = time.monotonic()
                async with session.post(url + "/v1/chat/completions", headers=headers,
                                        json={"model": "m", "messages": [{"role": "user", "content": "x"}]}) as r:
                    out[label] = (r.status, time.monotonic() - started)
            async with session.get(url + "/v1/models", headers={"Authorization": "Bearer sk-bad"}) as r:
                out["models-bad"] = (r.status, 0)
            async with session.get(url + "/v1/models", headers={"Authorization": "Bearer sk-good"}) as r:
                out["models-good"] = (r.status, [c["id"] for c in (await r.json())["data"]])
            return out, secrets.reads, g.metrics.held.labels("ns", "m")._value.get()

    out, reads, held = run(scenario())
    assert out["none"][0] == 401 and out["bad"][0] == 401 and out["none"][1] < 0.5  # refused, never held
    assert out["good"][0] == 503  # the right key gets as far as holding (no pod here)
    assert held == 1  # only the authenticated request was held
    assert out["models-bad"][0] == 401 and out["models-good"] == (200, ["m"])
    assert reads == 1


def test_a_connect_failure_is_tried_once_on_another_pod():
    async def scenario():
        runner, sim_port = await serve(sim_app())
        closed = unused_port()
        async with gateway() as (g, url, session):
            g.on_model(("ns", "m"), None, fm_body(gateway={"enabled": True}))
            g.on_pod(("ns", "a-dead"), None, pod("a-dead", "m", closed))  # sorts first: tried first
            g.on_pod(("ns", "b-live"), None, pod("b-live", "m", sim_port))
            statuses = []
            for _ in range(4):
                async with session.post(url + "/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 1}) as r:
                    statuses.append(r.status)
            connect = g.metrics.upstream_errors.labels("ns", "m", "connect")._value.get()
            retries = g.metrics.decisions.labels("ns", "m", "retry")._value.get()
        await runner.cleanup()
        return statuses, connect, retries

    statuses, connect, retries = run(scenario())
    assert statuses == [200] * 4
    assert connect >= 1 and retries >= 1


def test_adapter_requests_go_only_to_pods_loading_the_adapter():
    async def scenario():
        plain_runner, plain_port = await serve(sim_app())
        lora_runner, lora_port = await serve(sim_app(lora_modules=(("legal", "/adapters/legal"),)))
        async with gateway() as (g, url, session):
            g.on_model(("ns", "m"), None, fm_body(gateway={"enabled": True},
                                                 adapters=[{"name": "legal", "uri": "hf://org/legal"}]))
            g.on_pod(("ns", "a"), None, pod("a", "m", plain_port))
            g.on_pod(("ns", "b"), None, pod("b", "m", lora_port, args=("--lora-modules", "legal=org/legal")))
            statuses = []
            for _ in range(6):
                async with session.post(url + "/v1/completions", json={"model": "legal", "prompt": "hi", "max_tokens": 1}) as r:
                    statuses.append(r.status)
        await plain_runner.cleanup()
        await lora_runner.cleanup()
        return statuses

    assert run(scenario()) == [200] * 6  # the plain pod would answer 404 for "legal"


async def cutting_upstream(chunks_before_cut: int, gap_s: float = 0.0, seen: list | None = None) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for i in range(1000):
                if i == chunks_before_cut:
                    request.transport.abort()  # the engine dies mid-stream
                    return response
                await response.write(f"data: {i}\n\n".encode())
                await asyncio.sleep(gap_s)
        except asyncio.CancelledError:
            if seen is not None:
                seen.append("cancelled")
            raise
        return response

    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    return app


def test_streams_are_relayed_unbuffered_and_a_cut_reaches_the_client_as_an_error():
    async def scenario():
        runner, port = await serve(await cutting_upstream(chunks_before_cut=3, gap_s=0.3))
        async with gateway() as (g, url, session):
            g.on_model(("ns", "m"), None, fm_body(gateway={"enabled": True}))
            g.on_pod(("ns", "p"), None, pod("p", "m", port))
            started = time.monotonic()
            first_at, error = None, None
            try:
                async with session.post(url + "/v1/completions", json={"model": "m", "prompt": "x", "stream": True}) as r:
                    async for _chunk in r.content.iter_any():
                        first_at = first_at or time.monotonic() - started
            except aiohttp.ClientPayloadError as exc:
                error = exc
            stream_errors = g.metrics.upstream_errors.labels("ns", "m", "stream")._value.get()
        await runner.cleanup()
        return first_at, error, stream_errors

    first_at, error, stream_errors = run(scenario())
    assert first_at is not None and first_at < 0.25  # the first event arrived before the next was written
    assert error is not None  # a cut stream is an error for the client, not a clean end
    assert stream_errors == 1


def test_a_client_that_leaves_cancels_the_engine_request():
    async def scenario():
        seen: list = []
        runner, port = await serve(await cutting_upstream(chunks_before_cut=10_000, gap_s=0.05, seen=seen))
        async with gateway() as (g, url, session):
            g.on_model(("ns", "m"), None, fm_body(gateway={"enabled": True}))
            g.on_pod(("ns", "p"), None, pod("p", "m", port))
            async with session.post(url + "/v1/completions", json={"model": "m", "prompt": "x", "stream": True}) as r:
                await r.content.readline()
                r.close()  # the client hangs up mid-stream
            for _ in range(40):
                if seen and not g.load:
                    break
                await asyncio.sleep(0.05)
            load = dict(g.load)
        await runner.cleanup()
        return seen, load

    seen, load = run(scenario())
    assert seen == ["cancelled"]  # the engine's handler saw the disconnect
    assert load == {}  # nothing counted as outstanding any more
