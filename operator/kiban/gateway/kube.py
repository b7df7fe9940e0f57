"""The gateway's Kubernetes API calls, on aiohttp: the only module of the gateway that talks to the API.

Credentials come from the kubernetes client's own loaders (in-cluster ServiceAccount, with its
rotating token re-read by the client's refresh hook, else KUBECONFIG), so the gateway
authenticates exactly as the operator does; the HTTP is aiohttp's, on the gateway's event loop.

- `Reflector`: list, then watch from the list's resourceVersion, and on any end of the watch
  (timeout, a dropped connection, 410 Gone) list again: a reconnect is a full resync, so an event
  lost while disconnected cannot leave the gateway routing to a pod that is gone.
- `KubeApi.get_secret`, `KubeApi.patch_status`: the API-key Secret, and the wake-from-zero
  signal (a JSON merge patch of status.gateway.held.<this pod> only).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

log = logging.getLogger("kiban.gateway.kube")

WATCH_TIMEOUT_S = 290  # the API server ends a watch after this; we list again then
RETRY_S = 1.0
MAX_RETRY_S = 30.0


class ApiError(Exception):
    """A non-2xx answer; `status` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass
class KubeApi:
    """A base URL, TLS and an Authorization header source; requests on one aiohttp session."""

    host: str
    ssl_context: ssl.SSLContext | bool
    authorization: Callable[[], str | None] = lambda: None
    session: aiohttp.ClientSession | None = None

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> KubeApi:
        """In-cluster when KUBERNETES_SERVICE_HOST is set and no kubeconfig is given, else kubeconfig."""
        from kubernetes import client, config

        configuration = client.Configuration()
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        return cls.from_configuration(configuration)

    @classmethod
    def from_configuration(cls, configuration: Any) -> KubeApi:
        context: ssl.SSLContext | bool
        if configuration.verify_ssl:
            context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
            if configuration.cert_file:
                context.load_cert_chain(configuration.cert_file, configuration.key_file)
        else:
            context = False

        def authorization() -> str | None:
            return (configuration.auth_settings().get("BearerToken") or {}).get("value")

        return cls(configuration.host.rstrip("/"), context, authorization)

    async def __aenter__(self) -> KubeApi:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.authorization()
        if token:
            headers["Authorization"] = token
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                      body: Any = None, content_type: str | None = None, timeout_s: float = 30.0) -> Any:
        assert self.session is not None, "use `async with KubeApi(...)`"
        data = json.dumps(body) if body is not None else None
        async with self.session.request(method, self.host + path, params=params, data=data, ssl=self.ssl_context,
                                        headers=self._headers(content_type),
                                        timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            text = await response.text()
            if response.status >= 300:
                raise ApiError(response.status, _message(text))
            return json.loads(text) if text else None

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret, or None when it does not exist."""
        try:
            return await self.request("GET", f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(name)}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        path = f"/apis/kiban.dev/v1alpha1/namespaces/{quote(namespace)}/foundationmodels/{quote(name)}/status"
        await self.request("PATCH", path, body=patch, content_type="application/merge-patch+json")

    async def watch_lines(self, path: str, params: Mapping[str, str]) -> Any:
        """An async iterator of watch events (dicts) until the server ends the watch."""
        assert self.session is not None
        async with self.session.get(self.host + path, params={**params, "watch": "1"}, ssl=self.ssl_context,
                                    headers=self._headers(),
                                    timeout=aiohttp.ClientTimeout(total=None, sock_read=WATCH_TIMEOUT_S + 30)) as response:
            if response.status >= 300:
                raise ApiError(response.status, _message(await response.text()))
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)


def _message(text: str) -> str:
    try:
        return str(json.loads(text).get("message") or text[:200])
    except (ValueError, AttributeError):
        return text[:200]


Key = tuple[str, str]
OnChange = Callable[[str, dict[str, Any] | None, dict[str, Any] | None], Awaitable[None] | None]


def object_key(obj: Mapping[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return (metadata.get("namespace") or "", metadata.get("name") or "")


def diff_listing(before: Mapping[Key, dict], after: Mapping[Key, dict]) -> list[tuple[Key, dict | None, dict | None]]:
    """(key, old, new) for every object a re-list added, changed or removed (pure)."""
    changes = []
    for key in before.keys() | after.keys():
        old, new = before.get(key), after.get(key)
        if old is None or new is None or (old.get("metadata") or {}).get("resourceVersion") != (
                new.get("metadata") or {}).get("resourceVersion"):
            changes.append((key, old, new))
    return sorted(changes, key=lambda c: c[0])


@dataclass
class Reflector:
    """One resource's objects kept current by list + watch; on_change(key, old, new) after each change."""

    api: KubeApi
    path: str  # e.g. /api/v1/pods or /api/v1/namespaces/ns/pods
    on_change: Callable[[Key, dict | None, dict | None], None]
    label_selector: str | None = None
    store: dict[Key, dict] = field(default_factory=dict)
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    lists: int = 0  # how many times it (re)listed: tests and logs

    def _params(self) -> dict[str, str]:
        return {"labelSelector": self.label_selector} if self.label_selector else {}

    async def run(self) -> None:
        delay = RETRY_S
        while True:
            try:
                listing = await self.api.request("GET", self.path, params=self._params(), timeout_s=60)
                items = {object_key(o): o for o in listing.get("items") or ()}
                for key, old, new in diff_listing(self.store, items):
                    self._apply(key, old, new)
                self.lists += 1
                self.synced.set()
                delay = RETRY_S
                version = (listing.get("metadata") or {}).get("resourceVersion", "")
                params = {**self._params(), "resourceVersion": version, "allowWatchBookmarks": "true",
                          "timeoutSeconds": str(WATCH_TIMEOUT_S)}
                async for event in self.api.watch_lines(self.path, params):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        break  # 410 Gone and friends: list again
                    if kind == "BOOKMARK":
                        continue
                    key = object_key(obj)
                    old = self.store.get(key)
                    self._apply(key, old, None if kind == "DELETED" else obj)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the watch must outlive any failure: list again
                log.warning("Watch failed path=%s error=%r; listing again in %.0fs", self.path, exc, delay)
                await asyncio.sleep(delay)
                delay = min(MAX_RETRY_S, delay * 2)

    def _apply(self, key: Key, old: dict | None, new: dict | None) -> None:
        if new is None:
            self.store.pop(key, None)
        else:
            self.store[key] = new
        try:
            self.on_change(key, old, new)
        except Exception:  # noqa: BLE001 - one bad object must not stop the watch
            log.exception("Failed to apply a change key=%s/%s", *key)
