"""`kiban gateway`: the OpenAI-compatible reverse proxy in front of every gateway-exposed model.

One aiohttp application on the public port, one on the admin port (/metrics, /healthz,
/readyz), two Reflectors (FoundationModels, engine pods) keeping the routing table current.
Per request:

1. Only the OpenAI inference paths (`PUBLIC_PATHS`, POST) and GET /v1/models are served;
   /invocations, /metrics, /health, vLLM's admin routes (/v1/load_lora_adapter, /sleep, ...)
   and everything else are answered 404 by the gateway itself and never forwarded.
2. The body's `model` picks the FoundationModel (its served name or one of its adapters).
3. With spec.apiKeySecretRef, the Bearer token must match the Secret's value (digest compared
   in constant time; the Secret re-read every KEY_TTL_S), before anything else happens, holding
   and waking included: an unauthenticated request never wakes a model.
4. The routing rule (kiban.gateway.routing) picks a ready pod that serves the name.
   With none, the request is held (bounded by the model's maxHeldRequests and maxHoldSeconds,
   503 with Retry-After past them) and the hold is reported in the model's status for the
   autoscaler (kiban.gateway.wake); a held request goes out as soon as a pod is Ready.
5. The request is forwarded; the response is relayed chunk by chunk as it arrives (SSE
   unbuffered). A connect failure (nothing was sent) is tried once on another pod, the failed
   pod set aside for EJECT_S; a request whose response has started is never retried: if the
   engine cuts it, the client's connection is cut too (an error, not a clean end). A client
   that goes away cancels the handler, which closes the engine connection: vLLM aborts it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kiban.gateway import auth, catalog, routing, wake
from kiban.gateway.catalog import Catalog, ModelEntry, ModelRef
from kiban.gateway.kube import KubeApi, Reflector
from kiban.gateway.metrics import GatewayMetrics

log = logging.getLogger("kiban.gateway")

PUBLIC_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses"})
MODELS_PATH = "/v1/models"
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade", "host", "content-length", "proxy-connection"})
KEY_TTL_S = 30.0
KEY_RETRY_S = 2.0  # a failed read is retried this soon (a Secret created a moment ago, an API blip)
EJECT_S = 2.0
RETRY_AFTER_S = 5
MAX_BODY_BYTES = 32 * 1024 * 1024
CONNECT_TIMEOUT_S = 5.0
MAX_CONNECT_ATTEMPTS = 2  # the first pod and one other
CONNECT_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ServerTimeoutError)


def error_body(status: int, message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, as vLLM writes it."""
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def error_response(status: int, message: str, kind: str, *, retry_after: int | None = None,
                   param: str | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response(error_body(status, message, kind, param), status=status, headers=headers)


@dataclass(eq=False)
class Held:
    """One request waiting for a ready pod."""

    future: asyncio.Future
    since: float


@dataclass
class ModelState:
    """What the gateway knows and holds for one model."""

    entry: ModelEntry
    endpoints: list[routing.Endpoint] = field(default_factory=list)
    ring: routing.HashRing = field(default_factory=lambda: routing.HashRing.of(()))
    held: deque[Held] = field(default_factory=deque)
    ejected: dict[str, float] = field(default_factory=dict)  # endpoint name -> until (monotonic)

    def usable(self, now: float) -> list[routing.Endpoint]:
        if self.ejected:
            for name in [n for n, until in self.ejected.items() if until <= now]:
                del self.ejected[name]
        return [e for e in self.endpoints if e.name not in self.ejected] if self.ejected else self.endpoints

    def release(self) -> None:
        """Wake every held request: each routes itself again (FIFO: the oldest first)."""
        while self.held:
            held = self.held.popleft()
            if not held.future.done():
                held.future.set_result(None)

    def holding(self) -> int:
        return sum(1 for h in self.held if not h.future.done())


@dataclass
class GatewaySettings:
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    pod_name: str = "kiban-gateway"
    key_ttl_s: float = KEY_TTL_S
    eject_s: float = EJECT_S
    heartbeat_s: float = wake.HEARTBEAT_S


class Gateway:
    """The routing table, the held requests and the proxy handlers of one gateway replica."""

    def __init__(self, settings: GatewaySettings, api: KubeApi | None, metrics: GatewayMetrics | None = None) -> None:
        self.settings = settings
        self.api = api
        self.metrics = metrics or GatewayMetrics.create()
        self.entries: dict[ModelRef, ModelEntry] = {}
        self.pods: dict[tuple[str, str], dict[str, dict]] = {}  # (namespace, model label) -> pod name -> pod
        self.states: dict[ModelRef, ModelState] = {}
        self.catalog = Catalog()
        self.load: dict[str, int] = {}  # endpoint name -> requests in flight through this replica
        self.keys: dict[tuple[str, str, str], tuple[float, bytes | None, str | None]] = {}
        self.waker = wake.Waker(api, settings.pod_name, settings.heartbeat_s) if api is not None else None
        self.reflectors: list[Reflector] = []
        self.session: aiohttp.ClientSession | None = None
        self.stopping = False
        self._labels: dict[ModelRef, tuple[str, str]] = {}

    # ------------------------------------------------------------------ the routing table

    def on_model(self, key: tuple[str, str], old: dict | None, new: dict | None) -> None:
        entry = catalog.model_entry(new) if new is not None else None
        if entry is None:
            if self.entries.pop(key, None) is not None:
                state = self.states.pop(key, None)
                if state is not None:
                    for held in state.held:
                        if not held.future.done():
                            held.future.set_exception(LookupError("the model is no longer served by the gateway"))
                namespace, name = self._labels.pop(key, (key[0], ""))
                self.metrics.forget(namespace, name)
                self._rebuild_catalog()
            return
        self.entries[key] = entry
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = ModelState(entry)
        else:
            state.entry = entry
        self._labels[key] = (entry.namespace, entry.served_name)
        self._rebuild_catalog()
        self._refresh_endpoints(key)

    def on_pod(self, key: tuple[str, str], old: dict | None, new: dict | None) -> None:
        pod = new if new is not None else old
        owner = catalog.pod_model(pod or {})
        if owner is None:
            return
        pods = self.pods.setdefault(owner, {})
        if new is None:
            pods.pop(key[1], None)
        else:
            pods[key[1]] = new
        for ref, entry in self.entries.items():
            if (entry.namespace, entry.pod_label) == owner:
                self._refresh_endpoints(ref)

    def _rebuild_catalog(self) -> None:
        before = self.catalog.conflicts
        self.catalog = Catalog.of(self.entries.values())
        if self.catalog.conflicts == before:
            return  # said already
        for name, refs in self.catalog.conflicts.items():
            log.warning("Served name %r is claimed by more than one gateway-exposed model; %s/%s keeps it, not %s",
                        name, *self.catalog.by_name[name].ref, ", ".join(f"{n}/{m}" for n, m in refs))

    def _refresh_endpoints(self, ref: ModelRef) -> None:
        state = self.states[ref]
        pods = self.pods.get((state.entry.namespace, state.entry.pod_label), {})
        endpoints = []
        for pod in pods.values():
            endpoint = catalog.pod_endpoint(pod)
            if endpoint is not None:
                endpoints.append(routing.Endpoint(f"{state.entry.namespace}/{endpoint.name}", endpoint.address,
                                                  endpoint.adapters))
        endpoints.sort(key=lambda e: e.name)
        if [e.name for e in endpoints] != [e.name for e in state.endpoints]:
            state.ring = routing.HashRing.of([e.name for e in endpoints])
        state.endpoints = endpoints
        self.metrics.endpoints.labels(state.entry.namespace, state.entry.served_name).set(len(endpoints))
        if endpoints and state.held:
            state.release()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, keepalive_timeout=30),
            auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        if self.api is None:
            return
        prefixes = [f"/namespaces/{n}" for n in self.settings.namespaces] or [""]
        for prefix in prefixes:
            self.reflectors.append(Reflector(self.api, f"/apis/kiban.dev/v1alpha1{prefix}/foundationmodels",
                                             self.on_model))
            self.reflectors.append(Reflector(self.api, f"/api/v1{prefix}/pods", self.on_pod,
                                             label_selector=catalog.ENGINE_POD_SELECTOR))
        self._tasks = [asyncio.create_task(r.run()) for r in self.reflectors]

    def ready(self) -> bool:
        return not self.stopping and all(r.synced.is_set() for r in self.reflectors)

    def begin_stop(self) -> None:
        """Not ready any more, and held requests go back to their clients (503, Retry-After: 1) to
        retry on another replica; requests in flight keep their engine connections to finish."""
        self.stopping = True
        for state in self.states.values():
            for held in state.held:
                if not held.future.done():
                    held.future.set_exception(ConnectionAbortedError("the gateway replica is stopping"))

    async def stop(self) -> None:
        """After the public server has drained: end the watches, the wake reports, the engine session."""
        self.begin_stop()
        for task in getattr(self, "_tasks", ()):
            task.cancel()
        await asyncio.gather(*getattr(self, "_tasks", ()), return_exceptions=True)
        if self.waker is not None:
            await self.waker.stop()
        if self.session is not None:
            await self.session.close()

    # ------------------------------------------------------------------ keys

    async def key_digest(self, entry: ModelEntry) -> tuple[bytes | None, str | None]:
        """(digest, None) or (None, why the key cannot be checked): cached KEY_TTL_S."""
        assert entry.key_secret is not None
        cache_key = (entry.namespace, *entry.key_secret)
        cached = self.keys.get(cache_key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < (self.settings.key_ttl_s if cached[1] else KEY_RETRY_S):
            return cached[1], cached[2]
        digest, why = None, None
        if self.api is None:
            why = "the gateway has no API access to read the key"
        else:
            try:
                secret = await self.api.get_secret(entry.namespace, entry.key_secret[0])
                if secret is None:
                    why = f"Secret {entry.namespace}/{entry.key_secret[0]} does not exist"
                else:
                    digest = auth.digest_from_secret(secret, entry.key_secret[1])
            except auth.SecretKeyError as exc:
                why = str(exc)
            except Exception as exc:  # noqa: BLE001 - fail closed, say why in the log
                why = f"reading Secret {entry.namespace}/{entry.key_secret[0]} failed: {exc}"
        if why:
            log.warning("Cannot check the API key of %s/%s: %s", entry.namespace, entry.name, why)
        self.keys[cache_key] = (now, digest, why)
        return digest, why

    async def authorized(self, entry: ModelEntry, request: web.Request) -> web.Response | None:
        """None when the request may go on; else the refusal."""
        if entry.key_secret is None:
            return None
        digest, why = await self.key_digest(entry)
        labels = (entry.namespace, entry.served_name)
        if digest is None:
            self.metrics.rejected.labels(*labels, "key_unavailable").inc()
            return error_response(503, "the model's API key cannot be checked now", "ServiceUnavailableError",
                                  retry_after=RETRY_AFTER_S)
        if not auth.key_matches(auth.bearer_token(request.headers), digest):
            self.metrics.rejected.labels(*labels, "unauthorized").inc()
            return error_response(401, "invalid or missing API key", "AuthenticationError")
        return None

    # ------------------------------------------------------------------ handlers

    async def not_served(self, request: web.Request) -> web.Response:
        self.metrics.rejected.labels("", "", "path").inc()
        return error_response(404, f"{request.path} is not served by the Kiban gateway", "NotFoundError")

    async def list_models(self, request: web.Request) -> web.Response:
        """The models (and adapters) this caller's key opens, plus those without a key."""
        token = auth.bearer_token(request.headers)
        cards, locked = [], 0
        for name, entry in sorted(self.catalog.by_name.items()):
            if entry.key_secret is not None:
                digest, _ = await self.key_digest(entry)
                if not auth.key_matches(token, digest):
                    locked += 1
                    continue
            cards.append({"id": name, "object": "model", "owned_by": "kiban", "root": entry.served_name,
                          "parent": None if name == entry.served_name else entry.served_name})
        if not cards and locked:
            self.metrics.rejected.labels("", "", "unauthorized").inc()
            return error_response(401, "invalid or missing API key", "AuthenticationError")
        return web.json_response({"object": "list", "data": cards})

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        if request.method != "POST":
            return error_response(405, f"method {request.method} is not allowed on {request.path}", "MethodNotAllowed")
        body = await request.read()
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            self.metrics.rejected.labels("", "", "bad_request").inc()
            return error_response(400, "request body is not valid JSON", "BadRequestError")
        requested = parsed.get("model") if isinstance(parsed, dict) else None
        if not isinstance(requested, str) or not requested:
            self.metrics.rejected.labels("", "", "bad_request").inc()
            return error_response(400, "field required: model", "BadRequestError", param="model")
        entry = self.catalog.by_name.get(requested)
        if entry is None:
            self.metrics.rejected.labels("", "", "unknown_model").inc()
            return error_response(404, f"The model `{requested}` does not exist.", "NotFoundError", param="model")
        refusal = await self.authorized(entry, request)
        if refusal is not None:
            return refusal
        labels = (entry.namespace, entry.served_name)
        response = await self._route_and_forward(request, entry, requested, parsed, body, arrived, labels)
        self.metrics.child(self.metrics.requests, *labels, str(response.status)).inc()
        self.metrics.child(self.metrics.duration, *labels).observe(time.monotonic() - arrived)
        return response

    async def _route_and_forward(self, request: web.Request, entry: ModelEntry, requested: str, parsed: dict,
                                 body: bytes, arrived: float, labels: tuple[str, str]) -> web.StreamResponse:
        state = self.states[entry.ref]
        deadline = arrived + entry.max_hold_s
        tried: set[str] = set()
        failures = 0
        held_once = False
        while True:
            now = time.monotonic()
            usable = routing.serving_endpoints(state.usable(now), requested, entry.adapters)
            candidates = [e for e in usable if e.name not in tried] or usable
            if not candidates:
                refusal = await self._hold(state, entry, deadline, labels, counted=held_once, arrived=arrived)
                held_once = True
                if refusal is not None:
                    return refusal
                continue
            endpoint, decision = routing.choose(candidates, self.load, parsed, entry.policy,
                                                state.ring if len(candidates) == len(state.endpoints) else None)
            assert endpoint is not None
            self.metrics.child(self.metrics.decisions, *labels, "retry" if tried else decision).inc()
            if held_once:
                self.metrics.wait.labels(*labels).observe(time.monotonic() - arrived)
            result = await self._forward(request, endpoint, body, arrived, labels)
            if result is not None:
                return result
            # a connect failure: nothing was sent; set the pod aside and try another once (with none
            # left, hold: a pod the API calls Ready that refuses connections is not ready yet)
            tried.add(endpoint.name)
            failures += 1
            state.ejected[endpoint.name] = time.monotonic() + self.settings.eject_s
            asyncio.get_running_loop().call_later(self.settings.eject_s + 0.01, state.release)
            if failures >= MAX_CONNECT_ATTEMPTS:
                return error_response(502, "no engine pod accepted the connection", "BadGatewayError")

    async def _hold(self, state: ModelState, entry: ModelEntry, deadline: float, labels: tuple[str, str], *,
                    counted: bool, arrived: float) -> web.Response | None:
        """Wait for a ready pod; None when one may be there, else the 503 to answer."""
        remaining = deadline - time.monotonic()
        if self.stopping:
            return error_response(503, "the gateway replica is stopping", "ServiceUnavailableError", retry_after=1)
        if state.holding() >= entry.max_held or remaining <= 0:
            reason = "queue_full" if remaining > 0 else "hold_timeout"
            self.metrics.rejected.labels(*labels, reason).inc()
            self.metrics.wait.labels(*labels).observe(time.monotonic() - arrived)
            return error_response(503, f"no replica of {entry.served_name} is ready "
                                       f"({'too many requests are held' if remaining > 0 else 'waited too long'})",
                                  "ServiceUnavailableError", retry_after=RETRY_AFTER_S)
        if not counted and not state.endpoints:
            self.metrics.held.labels(*labels).inc()
        held = Held(asyncio.get_running_loop().create_future(), time.monotonic())
        state.held.append(held)
        queued = self.metrics.queued.labels(*labels)
        queued.inc()
        if self.waker is not None:
            self.waker.update(entry.ref, state)
        try:
            await asyncio.wait_for(held.future, timeout=remaining)
            return None
        except asyncio.TimeoutError:
            self.metrics.rejected.labels(*labels, "hold_timeout").inc()
            self.metrics.wait.labels(*labels).observe(time.monotonic() - arrived)
            return error_response(503, f"no replica of {entry.served_name} became ready within "
                                       f"{entry.max_hold_s:.0f} s", "ServiceUnavailableError",
                                  retry_after=RETRY_AFTER_S)
        except (LookupError, ConnectionAbortedError) as exc:
            return error_response(503, str(exc), "ServiceUnavailableError", retry_after=1)
        finally:
            queued.dec()
            if not held.future.done():
                held.future.cancel()  # the client went away (handler cancelled): drop out of the queue
            if self.waker is not None:
                self.waker.update(entry.ref, state)

    async def _forward(self, request: web.Request, endpoint: routing.Endpoint, body: bytes, arrived: float,
                       labels: tuple[str, str]) -> web.StreamResponse | None:
        """Relay one exchange; None on a connect failure (nothing was sent)."""
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        name = endpoint.name
        self.load[name] = self.load.get(name, 0) + 1
        in_flight = self.metrics.child(self.metrics.in_flight, *labels)
        in_flight.inc()
        response: web.StreamResponse | None = None
        try:
            upstream_cm = self.session.request(request.method, endpoint.url + request.path_qs, data=body,
                                               headers=headers)
            try:
                upstream = await upstream_cm.__aenter__()
            except CONNECT_ERRORS as exc:
                self.metrics.upstream_errors.labels(*labels, "connect").inc()
                log.info("Connect failed endpoint=%s error=%s", name, exc)
                return None
            except aiohttp.ClientError as exc:  # sent, perhaps: never retried
                self.metrics.upstream_errors.labels(*labels, "response").inc()
                log.info("Engine failed before answering endpoint=%s error=%r", name, exc)
                return error_response(502, "the engine failed the request", "BadGatewayError")
            try:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers={
                    k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP})
                await response.prepare(request)
                first = True
                async for chunk in upstream.content.iter_any():
                    if first:
                        self.metrics.child(self.metrics.first_byte, *labels).observe(time.monotonic() - arrived)
                        first = False
                    await response.write(chunk)
                await response.write_eof()
                return response
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionResetError) as exc:
                if request.transport is None or request.transport.is_closing():
                    raise asyncio.CancelledError() from exc  # the client went away: its cancellation, not an error
                # the engine cut the response: never retried (it started); cut the client's too
                self.metrics.upstream_errors.labels(*labels, "stream").inc()
                log.info("Engine cut a response endpoint=%s error=%r", name, exc)
                if request.transport is not None:
                    request.transport.abort()
                return response or error_response(502, "the engine failed the request", "BadGatewayError")
            finally:
                await upstream_cm.__aexit__(None, None, None)
        finally:
            in_flight.dec()
            self.load[name] -= 1
            if self.load[name] <= 0:
                del self.load[name]


def public_app(gateway: Gateway) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    for path in sorted(PUBLIC_PATHS):
        app.router.add_route("*", path, gateway.proxy)
    app.router.add_get(MODELS_PATH, gateway.list_models)
    app.router.add_route("*", "/{tail:.*}", gateway.not_served)
    return app


def admin_app(gateway: Gateway) -> web.Application:
    """Probes and metrics, on their own port (never the public one)."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(gateway.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_request: web.Request) -> web.Response:
        return web.Response(text="ok") if gateway.ready() else web.Response(status=503, text="not synced")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(gateway: Gateway, host: str, port: int, admin_host: str, admin_port: int,
                stop: asyncio.Event, shutdown_timeout_s: float = 30.0, on_listening: Any = None) -> None:
    """Run both servers until `stop` is set; then stop taking work and drain."""
    await gateway.start()
    public = web.AppRunner(public_app(gateway), access_log=None, handler_cancellation=True,
                           shutdown_timeout=shutdown_timeout_s)
    admin = web.AppRunner(admin_app(gateway), access_log=None)
    await public.setup()
    await admin.setup()
    sites = [web.TCPSite(public, host, port, backlog=4096, reuse_address=True),
             web.TCPSite(admin, admin_host, admin_port, reuse_address=True)]
    for site in sites:
        await site.start()
    if on_listening is not None:
        on_listening(_bound_ports(sites))
    log.info("Gateway listening public=%s:%s admin=%s:%s", host, port, admin_host, admin_port)
    try:
        await stop.wait()
    finally:
        gateway.begin_stop()
        await public.cleanup()  # stops accepting, lets in-flight requests finish (shutdown_timeout_s)
        await gateway.stop()
        await admin.cleanup()


def _bound_ports(sites: Iterable[web.TCPSite]) -> list[int]:
    return [site._server.sockets[0].getsockname()[1] for site in sites]  # type: ignore[union-attr]
