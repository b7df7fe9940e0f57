"""`kiban dev-cluster`: the local control plane with simulated GPU nodes and the LeaderWorkerSet
controller, in the foreground."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from kiban_dev.devcluster.cluster import ControlPlane, ControlPlaneError
from kiban_dev.devcluster.nodes import DEFAULT_POOL
from kiban_dev.devcluster.tools import ToolsMissingError

log = logging.getLogger(__name__)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"node count must be >= 0, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dev-cluster",
        help="run a local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok GPU nodes)",
        description=__doc__,
    )
    for kind, count in DEFAULT_POOL.items():
        parser.add_argument(f"--{kind}", type=_count, default=count, dest=f"nodes_{kind.replace('-', '_')}",
                            metavar="N", help=f"number of simulated {kind} nodes (default {count})")
    parser.add_argument("--no-leaderworkerset", dest="leaderworkerset", action="store_false",
                        help="do not run the LeaderWorkerSet controller (multi-node models then cannot be served)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep certificates, logs and the kubeconfig here (default: a temporary directory)")
    parser.set_defaults(func=run)


def pool_from_args(args: argparse.Namespace) -> dict[str, int]:
    return {kind: getattr(args, f"nodes_{kind.replace('-', '_')}") for kind in DEFAULT_POOL}


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("Received signal, stopping", extra={"signal": signal.Signals(signum).name})
        stop_requested.set()

    try:
        cluster = ControlPlane(node_pool=pool_from_args(args), workdir=args.workdir,
                               leaderworkerset=args.leaderworkerset)
    except ValueError as exc:
        print(f"kiban dev-cluster: {exc}", file=sys.stderr)
        return 2
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            cluster.start()
        except (ControlPlaneError, ToolsMissingError) as exc:
            print(f"kiban dev-cluster: {exc}", file=sys.stderr)
            return 1
        print(f"KUBECONFIG={cluster.kubeconfig}", flush=True)
        lws = ", LeaderWorkerSet controller" if args.leaderworkerset else ""
        print(f"# API server {cluster.api_server_url}, {len(cluster.node_names)} nodes{lws}, "
              f"started in {cluster.start_seconds:.1f}s, logs in {cluster.workdir / 'logs'}; Ctrl-C stops",
              flush=True)
        while not stop_requested.wait(timeout=1.0):
            dead = [c for c in cluster.components if not c.running()]
            if dead:
                print(f"kiban dev-cluster: {dead[0].failure('exited unexpectedly')}", file=sys.stderr)
                return 1
        return 0
    finally:
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
