"""`kiban run`: start the operator (kopf) against the current kubeconfig or in-cluster account.

Peering: with several operator replicas, pass `--peering NAME` (the kopf.dev peering CRDs from
crds/kopf-peering.yaml must be installed; the operator creates its peering object). kopf pauses
every replica but the one with the highest `--priority`; the default priority is random per
process so replicas differ (equal priorities would only warn). `--standalone` skips peering
(one replica, tests, a developer's laptop). Without either, kopf peers when the CRDs exist.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
from typing import Any

import kopf

from kiban.config import ConfigError, load_config
from kiban.metrics import OperatorMetrics

log = logging.getLogger("kiban.operator")
DEFAULT_METRICS_PORT = 8080
DEFAULT_RESYNC_SECONDS = 300.0  # the chart's operator.resyncSeconds default too (a test keeps them equal)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run the Kiban operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[],
        help="watch this namespace (repeatable; glob patterns allowed); default KIBAN_WATCH_NAMESPACE or all",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument("--standalone", action="store_true", help="no peering: act alone")
    parser.add_argument("--peering", metavar="NAME", help="kopf peering object to coordinate replicas through")
    parser.add_argument("--priority", type=int, default=None, help="peering priority (default: random)")
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT, help="0 disables /metrics")
    parser.add_argument("--liveness", metavar="URL", help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz")
    parser.add_argument("--resync-seconds", type=float, default=DEFAULT_RESYNC_SECONDS,
                        help="period of the level-based resync (every watch is re-listed this often)")
    parser.add_argument("--workers", type=int, default=10_000, help="most reconcile passes in flight at once")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(func=run)


def _namespaces(args: argparse.Namespace, watch_namespace: str | None) -> list[str]:
    if args.all_namespaces:
        return []
    if args.namespace:
        return list(args.namespace)
    return [watch_namespace] if watch_namespace else []


def scans_the_cluster(namespaces: list[str]) -> bool:
    """Whether kopf must list CRDs and namespaces: cluster-wide, or a namespace glob to resolve.

    With exact namespace names only, kopf's cluster scanning is off: the operator then needs no
    cluster-wide read at all (the chart's namespace-scoped install has no ClusterRole); kopf
    treats the names as existing namespaces and the resources as discovered once at start.
    """
    return not namespaces or any(ch in ns for ns in namespaces for ch in "*?[!")


def operator_settings(resync_seconds: float = DEFAULT_RESYNC_SECONDS, *,
                      scan_cluster: bool = True) -> kopf.OperatorSettings:
    """kopf settings for many models: no per-handler success Events, short batching, and
    watches that end every `resync_seconds`, because kopf re-lists a resource each time it
    reopens its watch: that re-list is the operator's level-based resync (kiban.handlers).

    The progress and diff-base storage are only used by the autoscale timer's bookkeeping
    (no create/update handlers are registered); they stay in kiban.dev annotations.
    The default resync is 300 s (the watch timeout this operator always had): a re-list of
    every resource costs a pass per model and re-indexes every child, and one that lands in
    the middle of a 1,000-model burst was seen to slow the intake of new models to a trickle.
    Child and pod events already catch edits; the resync is the safety net.
    """
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kiban.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kiban.dev", key="last-handled-configuration"
    )
    settings.persistence.finalizer = "kiban.dev/finalizer"
    settings.posting.level = logging.WARNING  # our own Events say what happened
    settings.watching.server_timeout = max(1, round(resync_seconds))
    settings.batching.batch_window = 0.02  # per-object debounce before a handler sees an event
    settings.scanning.disabled = not scan_cluster
    return settings


def build_context(config: Any, metrics: OperatorMetrics):
    """The per-operator context: one ApiClient (bigger pool), the writer, discovery, metrics,
    and the autoscaler."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    from kiban.autoscale.model_pass import Autoscaler, AutoscaleSettings
    from kiban.reconcile.apply import Writer
    from kiban.reconcile.observe import ApiDiscovery
    from kiban.reconcile.run import IO_THREADS, OperatorContext

    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = IO_THREADS + 8  # every I/O thread keeps its connection
    api = k8s.ApiClient(configuration)
    return OperatorContext(
        config=config,
        writer=Writer(api, field_manager=config.field_manager),
        discovery=ApiDiscovery(api),
        metrics=metrics,
        autoscaler=Autoscaler.from_settings(AutoscaleSettings.from_config(config)),
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(os.environ)
    except ConfigError as exc:
        print(f"kiban run: {exc}")
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else getattr(logging, config.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if not args.verbose:  # kopf logs every handler success at INFO: one line per watch event
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    from kiban import handlers

    metrics = OperatorMetrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port)
        log.info(f'"Started metrics server" port={args.metrics_port}')
    context = build_context(config, metrics)
    registry = handlers.register(
        kopf.OperatorRegistry(),
        autoscale_interval_seconds=config.autoscale_interval_seconds,
        workers=args.workers,
    )
    namespaces = _namespaces(args, config.watch_namespace)
    peering_name = None if args.standalone else args.peering
    if peering_name:
        context.writer.ensure_peering(peering_name, namespaces)
    priority = args.priority if args.priority is not None else random.randint(1, 1_000_000)
    try:
        kopf.run(
            registry=registry,
            settings=operator_settings(args.resync_seconds, scan_cluster=scans_the_cluster(namespaces)),
            memo=kopf.Memo(context=context),
            standalone=args.standalone or None,
            peering_name=peering_name,
            priority=priority if peering_name else None,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=args.liveness,
        )
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    finally:
        context.shutdown()
    return 0
