"""The ServiceRouter over real kiban-sim applications (in-process aiohttp servers)."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from kiban.capacity.profiles import get_profile_by_name
from kiban_dev.demo.router import ServiceRouter, pick_backend
from kiban_serving.loadgen.client import replay
from kiban_serving.loadgen.trace import TraceRequest
from kiban_serving.sim.server import SimConfig, create_app


def test_pick_backend_prefers_fewest_outstanding_then_list_order():
    assert pick_backend([], {}) is None
    assert pick_backend(["a", "b"], {}) == "a"
    assert pick_backend(["a", "b"], {"a": 2, "b": 1}) == "b"
    assert pick_backend(["a", "b", "c"], {"a": 1, "b": 0, "c": 0}) == "b"


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


def test_router_spreads_streams_over_ready_backends_and_answers_503_without_any():
    async def scenario():
        # engine time = wall time: each 30-token stream lasts ~0.3 s, so the 12 streams sent at
        # once all overlap whatever the machine's load, and least-outstanding must spread them
        config = SimConfig(served_model_name="m", profile=get_profile_by_name("nvidia-l4/1B"), startup_s=0, speedup=1)
        sims = [await _serve(create_app(config)) for _ in range(2)]
        backends: list[str] = []
        router = await ServiceRouter(lambda: list(backends)).start()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.post(router.url + "/v1/completions", json={"model": "m", "prompt": "a"}) as r:
                    assert r.status == 503
                    assert "no ready endpoints" in (await r.json())["error"]["message"]
            backends.extend(url for _, url in sims)
            requests = [TraceRequest(0.0, 20, 30) for _ in range(12)]
            results = await replay(router.url, "m", requests)
        finally:
            await router.stop()
            for runner, _ in sims:
                await runner.cleanup()
        return router, results, [url for _, url in sims]

    router, results, urls = asyncio.run(scenario())
    assert all(r.ok and r.output_tokens == 30 for r in results)
    assert router.stats.rejected_no_backend == 1
    assert set(router.stats.by_backend) == set(urls)
    assert min(router.stats.by_backend.values()) >= 3  # both took a share of 12 overlapping streams
    assert all(count == 0 for count in router.outstanding.values())
