"""`kiban gateway`: run the Kiban gateway (kiban.gateway.server) until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

DEFAULT_PORT = 8080
DEFAULT_ADMIN_PORT = 8081


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gateway", help="run the Kiban gateway (OpenAI-compatible proxy: routing, keys, wake from zero)",
        description=__doc__)
    parser.add_argument("--host", default="0.0.0.0", help="public address (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"public port (default {DEFAULT_PORT})")
    parser.add_argument("--admin-host", default="0.0.0.0", help="address of /metrics, /healthz, /readyz")
    parser.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT,
                        help=f"port of /metrics, /healthz, /readyz (default {DEFAULT_ADMIN_PORT})")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], help="namespace to serve (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="serve every namespace (the default)")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig (default: in-cluster, else $KUBECONFIG)")
    parser.add_argument("--pod-name", default=os.environ.get("POD_NAME") or socket.gethostname(),
                        help="this replica's name in status.gateway.held (default $POD_NAME, else the hostname)")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0,
                        help="seconds in-flight requests may take to finish after SIGTERM")
    parser.add_argument("--log-level", default=os.environ.get("KIBAN_LOG_LEVEL", "INFO"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kiban.gateway.kube import KubeApi
    from kiban.gateway.server import Gateway, GatewaySettings, serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        api = KubeApi.from_environment(args.kubeconfig)
    except Exception as exc:  # noqa: BLE001 - a clear line, not a traceback
        print(f"kiban gateway: cannot load Kubernetes credentials: {exc}", file=sys.stderr)
        return 2
    settings = GatewaySettings(namespaces=tuple(args.namespace), pod_name=args.pod_name)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with api:
            await serve(Gateway(settings, api), args.host, args.port, args.admin_host, args.admin_port, stop,
                        shutdown_timeout_s=args.shutdown_timeout)

    run_loop(main())
    return 0


def run_loop(coroutine, choice: str = "asyncio") -> None:
    """asyncio.run: the event loop the gateway runs on. (uvloop measured ~14 % less gateway CPU per
    request in one run of bench-gateway, within this machine's noise; not a dependency.)"""
    if choice != "asyncio":
        raise ValueError(f"unknown event loop {choice!r}")
    asyncio.run(coroutine)
