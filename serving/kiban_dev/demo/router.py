"""ServiceRouter: the demo's stand-in for the FoundationModel's Service.

On the local dev cluster there is no kube-proxy and no pod network: a Service's ClusterIP leads
nowhere. This small HTTP proxy takes its place for the demo: it forwards each request to one of
the *ready* backed pods (a simulator whose /health answers 200, which is what the pod's
readiness probe checks) and picks the one with the fewest requests outstanding (least
outstanding requests, as Envoy/Gateway API inference extensions do; kube-proxy would pick at
random). Responses, including server-sent event streams, are relayed as they arrive.

It is a simulator-side convenience, not part of the operator: in a real cluster the Service
(and whatever gateway fronts it) does this job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

log = logging.getLogger("kiban_dev.demo.router")

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host",
              "proxy-connection", "te", "trailer", "upgrade"}


def pick_backend(backends: list[str], outstanding: Mapping[str, int]) -> str | None:
    """The backend with the fewest outstanding requests; ties go to the first listed (pure)."""
    if not backends:
        return None
    return min(backends, key=lambda url: (outstanding.get(url, 0), backends.index(url)))


@dataclass
class RouterStats:
    """Counters the demo prints and tests read."""

    forwarded: int = 0
    rejected_no_backend: int = 0
    upstream_errors: int = 0
    by_backend: dict[str, int] = field(default_factory=dict)


class ServiceRouter:
    """Least-outstanding-requests HTTP proxy over `backends()` (called per request)."""

    def __init__(self, backends: Callable[[], list[str]], host: str = "127.0.0.1", port: int = 0) -> None:
        self.backends = backends
        self.host = host
        self.port = port
        self.outstanding: dict[str, int] = {}
        self.stats = RouterStats()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        return app

    async def start(self) -> ServiceRouter:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
        )
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the port the OS gave for port 0
        log.info("Started service router url=%s", self.url)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        log.info("Stopped service router url=%s", self.url)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        backend = pick_backend(self.backends(), self.outstanding)
        if backend is None:
            self.stats.rejected_no_backend += 1
            return web.json_response(
                {"error": {"message": "no ready endpoints for this service", "type": "ServiceUnavailableError",
                           "param": None, "code": 503}}, status=503)
        self.outstanding[backend] = self.outstanding.get(backend, 0) + 1
        self.stats.forwarded += 1
        self.stats.by_backend[backend] = self.stats.by_backend.get(backend, 0) + 1
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        response: web.StreamResponse | None = None
        try:
            assert self._session is not None
            async with self._session.request(request.method, backend + request.rel_url.path_qs,
                                             data=body, headers=headers) as upstream:
                response = web.StreamResponse(status=upstream.status, headers={
                    k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP})
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionResetError) as exc:
            self.stats.upstream_errors += 1
            if response is not None and response.prepared:
                # the stream had begun: either side hung up (a client timeout, a stopped pod); the
                # client sees a cut stream, as it would through a Service
                log.debug("Cut a stream backend=%s error=%r", backend, exc)
                return response
            return web.json_response(
                {"error": {"message": f"upstream {backend} failed: {type(exc).__name__}", "type": "BadGatewayError",
                           "param": None, "code": 502}}, status=502)
        finally:
            self.outstanding[backend] -= 1
