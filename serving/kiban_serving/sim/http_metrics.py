"""The HTTP metrics vLLM's API server exports, as an aiohttp middleware.

vLLM 0.33.0 instruments its FastAPI app with prometheus-fastapi-instrumentator
(vllm/entrypoints/serve/instrumentator/metrics.py: `Instrumentator(excluded_handlers=[...]).add()`,
i.e. the instrumentator's `default()` metrics, prometheus_fastapi_instrumentator/metrics.py in
8.1.0): five families, statuses grouped as 2xx/4xx/5xx, `handler` the route template or "none"
for a path no route matches, excluded handlers matched with `re.search`, durations covering the
whole (streamed) body, sizes from the Content-Length headers (0 when absent, as for a stream).
"""

from __future__ import annotations

import re
import time

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, Summary

EXCLUDED_HANDLERS = ("/metrics", "/health", "/load", "/ping", "/version", "/server_info")
HIGHR_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 7.5, 10, 30,
                 60, float("inf"))
LOWR_BUCKETS = (0.1, 0.5, 1, float("inf"))


class HttpMetrics:
    """The instrumentator's default metric families on `registry`, and the middleware that feeds them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.total = Counter("http_requests_total", "Total number of requests by method, status and handler.",
                             ("method", "status", "handler"), registry=registry)
        self.in_size = Summary(
            "http_request_size_bytes",
            "Content length of incoming requests by handler. Only value of header is respected. Otherwise "
            "ignored. No percentile calculated. ", ("handler",), registry=registry)
        self.out_size = Summary(
            "http_response_size_bytes",
            "Content length of outgoing responses by handler. Only value of header is respected. Otherwise "
            "ignored. No percentile calculated. ", ("handler",), registry=registry)
        self.highr = Histogram(
            "http_request_duration_highr_seconds",
            "Latency with many buckets but no API specific labels. Made for more accurate percentile "
            "calculations. ", buckets=HIGHR_BUCKETS, registry=registry)
        self.lowr = Histogram(
            "http_request_duration_seconds",
            "Latency with only few buckets by handler. Made to be only used if aggregation by handler is "
            "important. ", ("method", "handler"), buckets=LOWR_BUCKETS, registry=registry)
        self._excluded = [re.compile(path) for path in EXCLUDED_HANDLERS]

    def observe(self, method: str, handler: str, status: int, request_bytes: int, response_bytes: int,
                duration_s: float) -> None:
        if any(pattern.search(handler) for pattern in self._excluded):
            return
        self.total.labels(method, f"{str(status)[0]}xx", handler).inc()
        self.in_size.labels(handler).observe(request_bytes)
        self.out_size.labels(handler).observe(response_bytes)
        self.highr.observe(duration_s)
        self.lowr.labels(method, handler).observe(duration_s)

    def middleware(self):
        @web.middleware
        async def instrument(request: web.Request, handler) -> web.StreamResponse:
            started = time.perf_counter()
            status = 500
            response: web.StreamResponse | None = None
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                info = request.match_info.route.resource
                template = info.canonical if info is not None else "none"
                length = response.headers.get("Content-Length") if response is not None else None
                if response is not None and length is None and isinstance(response, web.Response) \
                        and response.body is not None and not response.chunked:
                    length = str(len(response.body))
                self.observe(request.method, template, status, int(request.headers.get("Content-Length", 0) or 0),
                             int(length or 0), time.perf_counter() - started)

        return instrument
