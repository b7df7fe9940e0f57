"""`kiban run`: start the operator (kopf) against the current kubeconfig or in-cluster account.

Leader election is always on, whatever the flags: every `kiban run` is a candidate for one
coordination.k8s.io/v1 Lease (`--lease-namespace`/`--lease-name`; default the operator's own
namespace, KIBAN_OPERATOR_NAMESPACE, else the one watched namespace, else `default`), and only
the holder reconciles, autoscales, resyncs and posts Events (kiban.reconcile.leader,
kiban.tasks). The others keep their caches warm and take over within about 12 s of the
leader's death (lease 10 s, retry 2 s). kopf itself always runs standalone: its peering is not
used (`--standalone`, `--peering`, `--priority` are accepted for old manifests and change
nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

import kopf

from kiban.config import ConfigError, load_config
from kiban.metrics import OperatorMetrics
from kiban.reconcile.leader import DEFAULT_LEASE_NAME, LeaseSettings, default_identity

log = logging.getLogger("kiban.operator")
DEFAULT_METRICS_PORT = 8080
DEFAULT_RESYNC_SECONDS = 300.0  # the chart's operator.resyncSeconds default too (a test keeps them equal)
WATCH_TIMEOUT_S = 60  # kopf re-opens each watch this often (from its resourceVersion: no re-list)
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run the Kiban operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[],
        help="watch this namespace (repeatable; glob patterns allowed); default KIBAN_WATCH_NAMESPACE or all",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument("--standalone", action="store_true",
                        help="accepted for old manifests; leader election decides who acts")
    parser.add_argument("--peering", metavar="NAME", help="ignored (kopf peering is replaced by the leader Lease)")
    parser.add_argument("--priority", type=int, default=None, help="ignored (see --peering)")
    parser.add_argument("--lease-namespace", metavar="NS",
                        help="namespace of the leader Lease (default: KIBAN_OPERATOR_NAMESPACE, the in-cluster "
                             "namespace, else the one watched namespace, else default)")
    parser.add_argument("--lease-name", default=DEFAULT_LEASE_NAME, help="name of the leader Lease")
    parser.add_argument("--lease-duration", type=float, default=10.0,
                        help="seconds a standby waits on an unrenewed Lease before taking over")
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT, help="0 disables /metrics")
    parser.add_argument("--liveness", metavar="URL", help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz")
    parser.add_argument("--resync-seconds", type=float, default=DEFAULT_RESYNC_SECONDS,
                        help="period of the level-based resync: every model, child and pod is re-listed "
                             "from the API and every model reconciled this often (leader only)")
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


def operator_settings(*, scan_cluster: bool = True) -> kopf.OperatorSettings:
    """kopf settings for many models: no per-handler success Events, short batching, watches
    that are re-opened every WATCH_TIMEOUT_S (and given up client-side 30 s later, so a frozen
    API server is noticed).

    kopf lists each resource once and then only watches; the level-based resync is the
    operator's own (kiban.reconcile.resync, every --resync-seconds, default 300 s). No
    create/update handlers or timers are registered, so kopf writes no progress or diff-base
    annotation and no finalizer; the names stay those it used before, so a kopf that meets its
    old finalizer on a model being deleted lets it go too (kiban.reconcile.resync removes it).
    """
    from kiban.reconcile.apply import LEGACY_FINALIZER

    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kiban.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kiban.dev", key="last-handled-configuration"
    )
    settings.persistence.finalizer = LEGACY_FINALIZER
    settings.posting.level = logging.WARNING  # our own Events say what happened
    settings.watching.server_timeout = WATCH_TIMEOUT_S
    settings.watching.client_timeout = WATCH_TIMEOUT_S + 30
    settings.batching.batch_window = 0.02  # per-object debounce before a handler sees an event
    # never give up on the API server: kopf's default backoffs end after ~90 s of errors, and an
    # outage longer than that would end its watches (retry every 10 s for about a day instead)
    settings.networking.error_backoffs = [1, 1, 2, 3, 5, 8] + [10] * 8640
    settings.scanning.disabled = not scan_cluster
    return settings


def lease_namespace(args: argparse.Namespace, namespaces: list[str], environ: Any = os.environ) -> str:
    """Where the leader Lease lives: the flag, the operator's own namespace (the chart sets
    KIBAN_OPERATOR_NAMESPACE; in a pod the ServiceAccount's), the one watched namespace, else default."""
    if args.lease_namespace:
        return args.lease_namespace
    if environ.get("KIBAN_OPERATOR_NAMESPACE"):
        return environ["KIBAN_OPERATOR_NAMESPACE"]
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as handle:
            return handle.read().strip() or "default"
    except OSError:
        pass
    exact = [ns for ns in namespaces if not any(ch in ns for ch in "*?[")]
    return exact[0] if len(namespaces) == 1 and exact else "default"


def build_context(config: Any, metrics: OperatorMetrics, *, identity: str | None = None,
                  namespaces: list[str] | None = None):
    """The per-operator context: one ApiClient (bigger pool), the writer (Events name this
    replica, writes are counted per field manager), the resync's lister, discovery, metrics,
    and the autoscaler (its queries narrowed to the one watched namespace, if one)."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    from kiban.autoscale.model_pass import Autoscaler, AutoscaleSettings
    from kiban.reconcile.apply import Writer
    from kiban.reconcile.observe import ApiDiscovery, Lister
    from kiban.reconcile.run import IO_THREADS, OperatorContext

    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = IO_THREADS + 8  # every I/O thread keeps its connection
    api = k8s.ApiClient(configuration)
    exact = [ns for ns in namespaces or () if not any(ch in ns for ch in "*?[")]
    only = exact[0] if namespaces and len(namespaces) == 1 and exact else None
    autoscaler = Autoscaler.from_settings(AutoscaleSettings.from_config(config, namespace=only))
    autoscaler.metrics = metrics
    return OperatorContext(
        config=config,
        writer=Writer(api, field_manager=config.field_manager, instance=identity or default_identity(),
                      on_write=lambda manager: metrics.api_writes_total.labels(field_manager=manager).inc()),
        discovery=ApiDiscovery(api),
        metrics=metrics,
        autoscaler=autoscaler,
        lister=Lister(api),
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
    from kiban.tasks import OperatorTasks

    if args.peering or args.priority is not None:
        log.warning('"Ignored --peering/--priority: the leader Lease decides which replica acts"')
    metrics = OperatorMetrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port)
        log.info(f'"Started metrics server" port={args.metrics_port}')
    namespaces = _namespaces(args, config.watch_namespace)
    identity = default_identity()
    context = build_context(config, metrics, identity=identity, namespaces=namespaces)
    lease = LeaseSettings(namespace=lease_namespace(args, namespaces), name=args.lease_name,
                          duration_s=args.lease_duration, renew_deadline_s=args.lease_duration * 0.7,
                          retry_s=min(2.0, args.lease_duration / 5))
    tasks = OperatorTasks(context, namespaces=namespaces, lease=lease, resync_seconds=args.resync_seconds,
                          autoscale_interval_s=config.autoscale_interval_seconds, identity=identity)
    log.info(f'"Starting" identity={identity} lease={lease.namespace}/{lease.name}')
    registry = handlers.register(kopf.OperatorRegistry(), workers=args.workers,
                                 on_startup=tasks.start, on_cleanup=tasks.stop)
    try:
        kopf.run(
            registry=registry,
            settings=operator_settings(scan_cluster=scans_the_cluster(namespaces)),
            memo=kopf.Memo(context=context),
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=args.liveness,
        )
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    finally:
        context.shutdown()
        if context.autoscaler is not None:
            context.autoscaler.shutdown()
    return 0
