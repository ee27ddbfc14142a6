"""`fedtask operator`: run the FederatedTask operator (kopf) against the cluster of the current kubeconfig.

Every flag has an environment variable (what a Helm chart sets); the flag wins over the environment.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random
import socket
import sys

from fedtask_operator.core.confinement import DEFAULT_HOST_PATH_PREFIXES, Confinement, ConfinementSettingError
from fedtask_operator.core.pods import DEFAULT_WORKER_IMAGE
from fedtask_operator.core.scheduling.collection import DEFAULT_COLLECTION_WINDOW_SECONDS, SchedulingConfig
from fedtask_operator.core.scheduling.objective import DEFAULT_FAIRNESS_WEIGHT

DEFAULT_IMAGE = DEFAULT_WORKER_IMAGE  # the chart's default too (operator.workerImage empty)
PROGRESS_PREFIX = "fedtask.io"
FINALIZER = "fedtask.io/cleanup-store"


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: every namespace (cluster-wide)
    metrics_port: int = 8080  # 0: no metrics endpoint
    liveness: str = "http://0.0.0.0:8081/healthz"  # "": no liveness endpoint
    peering: str = "fedtask"  # "": standalone (no peering; only ever run one replica)
    priority: int = 0  # peering priority; replicas need distinct ones (equal priorities freeze each other)
    peering_lifetime: int = 60  # seconds a silent peer is considered alive (failover time)
    # The leader lease (kube/lease.py): only its holder acts; with it, kopf runs without peering (every replica
    # watches, a warm standby) and `peering` is not used.
    leader_election: bool = False
    lease_name: str = "fedtask-operator"
    lease_namespace: str = "default"
    lease_duration: float = 15.0
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    store_endpoint: str = ""  # host:port of the S3 store
    store_bucket: str = "fedtask"
    store_prefix: str = ""
    store_secure: bool = True
    store_region: str = "us-east-1"
    store_secret: str = ""  # Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, mounted into pods
    cleanup_store: bool = False  # delete a task's objects when the task is deleted (adds a finalizer)
    namespace_credentials: bool = False  # issue per-namespace MinIO keys (kube/credentials.py) instead of store_secret
    presigned_urls: bool = False  # per-pod presigned URLs, no store keys in pods (kube/presign.py)
    store_uri_allow: tuple[str, ...] = ()  # s3:// prefixes any task's initialUri/shared.uri may name besides its own
    clean_pod_policy: str = "All"  # All | None: delete finished pods once their result is in the status
    resync_seconds: float = 10.0  # the timer that enforces deadlines even when nothing happens
    collection_window: float = DEFAULT_COLLECTION_WINDOW_SECONDS  # a learning period waits this long for more tasks
    fairness_weight: float = DEFAULT_FAIRNESS_WEIGHT  # time-fair's weight for tasks that set none
    request_timeout: float = 30.0
    watch_server_timeout: int = 300
    verbose: bool = False
    # what tasks may ask of nodes: host path prefixes, tolerations, priority classes, service accounts (issue 12)
    confinement: Confinement = dataclasses.field(default_factory=Confinement)

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def scheduling(self) -> SchedulingConfig:
        return SchedulingConfig(collection_window=self.collection_window, fairness_weight=self.fairness_weight)


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


PRESIGNED_BY_DEFAULT = True  # --presigned-urls when neither it nor --no-presigned-urls is given (and keys are set)


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"fedtask operator: {name}={value!r} must be true or false")


def build_parser() -> argparse.ArgumentParser:
    env_namespaces = [ns for ns in _env("FEDTASK_NAMESPACES", "").replace(",", " ").split() if ns]
    parser = argparse.ArgumentParser(
        prog="fedtask operator",
        description="Run the FederatedTask operator against the cluster of the current kubeconfig "
                    "(or the in-cluster service account).")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", dest="namespaces", default=None, metavar="NS",
                       help="watch FederatedTasks in this namespace (repeatable; env FEDTASK_NAMESPACES, "
                            "comma-separated)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch every namespace (the default when no namespace is given)")
    parser.add_argument("--metrics-port", type=int, default=int(_env("FEDTASK_METRICS_PORT", "8080")),
                        help="serve Prometheus /metrics on this port, 0 disables (env FEDTASK_METRICS_PORT)")
    parser.add_argument("--liveness", default=_env("FEDTASK_LIVENESS", "http://0.0.0.0:8081/healthz"),
                        help="kopf liveness endpoint URL, '' disables (env FEDTASK_LIVENESS)")
    parser.add_argument("--peering", default=_env("FEDTASK_PEERING", "fedtask"),
                        help="kopf peering name shared by replicas (env FEDTASK_PEERING)")
    parser.add_argument("--standalone", action="store_true", default=_env_bool("FEDTASK_STANDALONE", False),
                        help="no peering: only ever run one replica (env FEDTASK_STANDALONE)")
    parser.add_argument("--priority", type=int, default=int(_env("FEDTASK_PRIORITY", "-1")),
                        help="peering priority; the highest active replica works, the others stand by. "
                             "Default: random, so replicas of one Deployment differ (env FEDTASK_PRIORITY)")
    parser.add_argument("--peering-lifetime", type=int, default=int(_env("FEDTASK_PEERING_LIFETIME", "60")),
                        help="seconds before a silent replica is presumed dead (env FEDTASK_PEERING_LIFETIME)")
    parser.add_argument("--leader-election", default=_env_bool("FEDTASK_LEADER_ELECTION", False),
                        action=argparse.BooleanOptionalAction,
                        help="only the holder of a coordination.k8s.io Lease acts; replaces kopf peering "
                             "(env FEDTASK_LEADER_ELECTION)")
    parser.add_argument("--lease-name", default=_env("FEDTASK_LEASE_NAME", "fedtask-operator"),
                        help="the leader Lease's name (env FEDTASK_LEASE_NAME)")
    parser.add_argument("--lease-namespace",
                        default=_env("FEDTASK_LEASE_NAMESPACE", os.environ.get("POD_NAMESPACE") or "default"),
                        help="the leader Lease's namespace (env FEDTASK_LEASE_NAMESPACE, else POD_NAMESPACE)")
    parser.add_argument("--lease-duration", type=float, metavar="SECONDS",
                        default=float(_env("FEDTASK_LEASE_DURATION_SECONDS", "15")),
                        help="seconds a silent leader keeps the Lease; it stops acting after 2/3 of it "
                             "(env FEDTASK_LEASE_DURATION_SECONDS)")
    parser.add_argument("--image", default=_env("FEDTASK_DEFAULT_IMAGE", DEFAULT_IMAGE),
                        help="default worker image for pods (env FEDTASK_DEFAULT_IMAGE)")
    parser.add_argument("--image-pull-policy", default=_env("FEDTASK_IMAGE_PULL_POLICY", "IfNotPresent"),
                        choices=["Always", "IfNotPresent", "Never"], help="(env FEDTASK_IMAGE_PULL_POLICY)")
    parser.add_argument("--store-endpoint", default=_env("FEDTASK_S3_ENDPOINT", ""),
                        help="S3 endpoint host:port (env FEDTASK_S3_ENDPOINT)")
    parser.add_argument("--store-bucket", default=_env("FEDTASK_S3_BUCKET", "fedtask"),
                        help="bucket for models and updates (env FEDTASK_S3_BUCKET)")
    parser.add_argument("--store-prefix", default=_env("FEDTASK_S3_PREFIX", ""),
                        help="key prefix inside the bucket (env FEDTASK_S3_PREFIX)")
    parser.add_argument("--store-secure", default=_env_bool("FEDTASK_S3_SECURE", True),
                        action=argparse.BooleanOptionalAction, help="use TLS for the store (env FEDTASK_S3_SECURE)")
    parser.add_argument("--store-region", default=_env("FEDTASK_S3_REGION", "us-east-1"),
                        help="(env FEDTASK_S3_REGION)")
    parser.add_argument("--store-secret", default=_env("FEDTASK_S3_SECRET", ""),
                        help="Secret (in the task's namespace) with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for "
                             "pods; the operator never reads it (env FEDTASK_S3_SECRET)")
    parser.add_argument("--namespace-credentials", default=_env_bool("FEDTASK_S3_NAMESPACE_CREDENTIALS", False),
                        action=argparse.BooleanOptionalAction,
                        help="give each task namespace its own MinIO user, limited to <bucket>/<prefix>/<namespace>/, "
                             "in the operator-owned Secret fedtask-store-credentials; needs the store's root "
                             "credentials in the operator's environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) "
                             "and replaces --store-secret (env FEDTASK_S3_NAMESPACE_CREDENTIALS)")
    parser.add_argument("--presigned-urls", default=_env_optional_bool("FEDTASK_S3_PRESIGNED_URLS"),
                        action=argparse.BooleanOptionalAction,
                        help="give each pod presigned URLs for exactly the objects its stage reads and writes, and no "
                             "store keys; works with any S3-compatible store; needs the store's credentials in the "
                             "operator's environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY). Default: on when "
                             "those are set and neither --store-secret nor --namespace-credentials is given "
                             "(env FEDTASK_S3_PRESIGNED_URLS)")
    parser.add_argument("--store-uri-allow", action="append", metavar="S3_PREFIX",
                        default=[p for p in _env("FEDTASK_S3_URI_ALLOW", "").split(",") if p.strip()],
                        help="an s3:// prefix every task's initialUri/shared.uri may name besides its own "
                             "namespace's (repeat; env FEDTASK_S3_URI_ALLOW, comma-separated)")
    parser.add_argument("--cleanup-store", default=_env_bool("FEDTASK_CLEANUP_STORE", False),
                        action=argparse.BooleanOptionalAction,
                        help="delete a task's store objects when it is deleted (env FEDTASK_CLEANUP_STORE)")
    parser.add_argument("--clean-pod-policy", default=_env("FEDTASK_CLEAN_POD_POLICY", "All"),
                        choices=["All", "None"],
                        help="All: delete finished pods once their result is in the status; None: keep them "
                             "until the task is deleted (env FEDTASK_CLEAN_POD_POLICY)")
    parser.add_argument("--resync-seconds", type=float, default=float(_env("FEDTASK_RESYNC_SECONDS", "10")),
                        help="timer interval that enforces deadlines (env FEDTASK_RESYNC_SECONDS)")
    parser.add_argument("--collection-window", type=float, metavar="SECONDS",
                        default=float(_env("FEDTASK_COLLECTION_WINDOW_SECONDS",
                                           str(DEFAULT_COLLECTION_WINDOW_SECONDS))),
                        help="seconds a learning period waits for more tasks to need devices before it assigns them "
                             "jointly (env FEDTASK_COLLECTION_WINDOW_SECONDS)")
    parser.add_argument("--fairness-weight", type=float, metavar="W",
                        default=float(_env("FEDTASK_FAIRNESS_WEIGHT", str(DEFAULT_FAIRNESS_WEIGHT))),
                        help="time-fair's weight of unfairness against round time for tasks without "
                             "spec.scheduling.fairnessWeight; 0: the fastest devices (env FEDTASK_FAIRNESS_WEIGHT)")
    parser.add_argument("--request-timeout", type=float, default=float(_env("FEDTASK_REQUEST_TIMEOUT", "30")),
                        help="seconds for one API request (env FEDTASK_REQUEST_TIMEOUT)")
    parser.add_argument("--watch-timeout", type=int, default=int(_env("FEDTASK_WATCH_TIMEOUT", "300")),
                        help="server-side watch timeout; the client gives up 60 s later and reconnects "
                             "(env FEDTASK_WATCH_TIMEOUT)")
    confinement = parser.add_argument_group("confinement: what tasks may ask of the nodes their pods run on")
    confinement.add_argument("--allowed-host-path-prefix", action="append", dest="host_path_prefixes",
                             metavar="PATH", default=None,
                             help="a directory under which spec.data.hostPath and spec.publish.hostPath must lie "
                                  "(repeat; default /var/lib/fedtask; env FEDTASK_ALLOWED_HOST_PATH_PREFIXES, "
                                  "comma-separated; 'none' disables hostPath); pods mount only "
                                  "<hostPath>/<namespace>/<task>")
    confinement.add_argument("--allowed-toleration-key", action="append", dest="toleration_keys", metavar="KEY",
                             default=None,
                             help="a taint key tasks may tolerate (repeat; env FEDTASK_ALLOWED_TOLERATION_KEYS); "
                                  "'*' allows every toleration, the key-less `operator: Exists` that tolerates "
                                  "every taint too; unset: every key but the control-plane ones, no key-less one")
    confinement.add_argument("--allowed-priority-class", action="append", dest="priority_classes",
                             metavar="NAME", default=None,
                             help="a priorityClassName tasks may use (repeat; env FEDTASK_ALLOWED_PRIORITY_CLASSES); "
                                  "unset: none")
    confinement.add_argument("--allowed-service-account", action="append", dest="service_accounts",
                             metavar="NAME", default=None,
                             help="a serviceAccountName tasks may use in their namespace (repeat; env "
                                  "FEDTASK_ALLOWED_SERVICE_ACCOUNTS); unset: none")
    confinement.add_argument("--allowed-runtime-class", action="append", dest="runtime_classes",
                             metavar="NAME", default=None,
                             help="a spec.podTemplate.runtimeClassName tasks may use (repeat; env "
                                  "FEDTASK_ALLOWED_RUNTIME_CLASSES); unset: none (the node's default runtime)")
    confinement.add_argument("--allowed-scheduler-name", action="append", dest="scheduler_names",
                             metavar="NAME", default=None,
                             help="a spec.podTemplate.schedulerName tasks may use (repeat; env "
                                  "FEDTASK_ALLOWED_SCHEDULER_NAMES); default-scheduler is always allowed")
    parser.add_argument("-v", "--verbose", action="store_true", default=_env_bool("FEDTASK_VERBOSE", False))
    parser.set_defaults(env_namespaces=env_namespaces)
    return parser


def parse_config(argv: list[str]) -> OperatorConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    namespaces = () if args.all_namespaces else tuple(args.namespaces or args.env_namespaces)
    for name, value in (("--metrics-port", args.metrics_port),):
        if not 0 <= value <= 65535:
            parser.error(f"{name} must be between 0 and 65535, not {value}")
    if args.resync_seconds <= 0:
        parser.error(f"--resync-seconds must be positive, not {args.resync_seconds}")
    if args.peering_lifetime <= 0:
        parser.error(f"--peering-lifetime must be positive, not {args.peering_lifetime}")
    if not 3 <= args.lease_duration <= 3600:
        parser.error(f"--lease-duration must be between 3 and 3600 seconds, not {args.lease_duration}")
    try:
        SchedulingConfig(collection_window=args.collection_window, fairness_weight=args.fairness_weight)
    except ValueError as error:
        parser.error(f"--collection-window/--fairness-weight: {error}")
    uri_allow = tuple(prefix.strip() for prefix in args.store_uri_allow)
    for prefix in uri_allow:
        if not prefix.startswith("s3://") or len(prefix.rstrip("/")) <= len("s3://") or ".." in prefix:
            parser.error(f"--store-uri-allow {prefix!r}: an s3://bucket[/prefix] without '..'")
    if args.namespace_credentials and args.store_secret:
        parser.error("--namespace-credentials issues the pods' store keys itself: leave out --store-secret")
    presigned_urls = _presigned_urls(parser, args)
    try:
        confinement = _confinement(args)
    except ConfinementSettingError as error:
        parser.error(str(error))
    priority = args.priority if args.priority >= 0 else random.SystemRandom().randrange(1, 2**31)
    return OperatorConfig(
        namespaces=namespaces, metrics_port=args.metrics_port, liveness=args.liveness,
        peering="" if args.standalone or args.leader_election else args.peering, priority=priority,
        leader_election=args.leader_election, lease_name=args.lease_name, lease_namespace=args.lease_namespace,
        lease_duration=args.lease_duration,
        peering_lifetime=args.peering_lifetime, image=args.image, image_pull_policy=args.image_pull_policy,
        store_endpoint=args.store_endpoint, store_bucket=args.store_bucket, store_prefix=args.store_prefix,
        store_secure=args.store_secure, store_region=args.store_region, store_secret=args.store_secret,
        cleanup_store=args.cleanup_store, clean_pod_policy=args.clean_pod_policy,
        namespace_credentials=args.namespace_credentials and not presigned_urls, presigned_urls=presigned_urls,
        store_uri_allow=uri_allow,
        resync_seconds=args.resync_seconds, collection_window=args.collection_window,
        fairness_weight=args.fairness_weight, request_timeout=args.request_timeout,
        watch_server_timeout=args.watch_timeout, verbose=args.verbose, confinement=confinement)


def _env_optional_bool(name: str) -> bool | None:
    return _env_bool(name, False) if os.environ.get(name) else None


def _store_keys() -> bool:
    return bool(os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"))


def _presigned_urls(parser: argparse.ArgumentParser, args: argparse.Namespace) -> bool:
    """--presigned-urls as given, else on when the operator holds the store's keys and no other way is chosen."""
    if args.presigned_urls is None:
        return PRESIGNED_BY_DEFAULT and _store_keys() and bool(args.store_endpoint) and not args.store_secret \
            and not args.namespace_credentials
    if args.presigned_urls:
        if args.store_secret:
            parser.error("--presigned-urls gives pods no store keys: leave out --store-secret")
        if not _store_keys():
            parser.error("--presigned-urls needs the store's credentials in the operator's environment "
                         "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
        if not args.store_endpoint:
            parser.error("--presigned-urls needs --store-endpoint (the store the pods reach)")
    return bool(args.presigned_urls)


def _listed(flag: list[str] | None, env: str) -> list[str] | None:
    """A repeated flag's values, else the comma-separated environment variable's; None when neither is set."""
    if flag is not None:
        return [value.strip() for value in flag if value.strip()]
    value = os.environ.get(env)
    return None if value is None else [item.strip() for item in value.split(",") if item.strip()]


def _confinement(args: argparse.Namespace) -> Confinement:
    prefixes = _listed(args.host_path_prefixes, "FEDTASK_ALLOWED_HOST_PATH_PREFIXES")
    if prefixes is not None and prefixes == ["none"]:
        prefixes = []
    tolerations = _listed(args.toleration_keys, "FEDTASK_ALLOWED_TOLERATION_KEYS")
    return Confinement(
        allowed_host_path_prefixes=tuple(prefixes) if prefixes is not None else DEFAULT_HOST_PATH_PREFIXES,
        allowed_toleration_keys=tuple(tolerations) if tolerations else None,
        allowed_priority_classes=tuple(_listed(args.priority_classes, "FEDTASK_ALLOWED_PRIORITY_CLASSES") or ()),
        allowed_service_accounts=tuple(_listed(args.service_accounts, "FEDTASK_ALLOWED_SERVICE_ACCOUNTS") or ()),
        allowed_runtime_classes=tuple(_listed(args.runtime_classes, "FEDTASK_ALLOWED_RUNTIME_CLASSES") or ()),
        allowed_scheduler_names=tuple(_listed(args.scheduler_names, "FEDTASK_ALLOWED_SCHEDULER_NAMES") or ()))


def build_settings(config: OperatorConfig):
    """kopf settings: timeouts that detect stalled watches, fedtask.io annotations, events, peering."""
    import kopf

    settings = kopf.OperatorSettings()
    # Silent stalled watches are kopf's most reported problem: the server ends each watch, the client gives up
    # shortly after, and a stream with no event (not even a bookmark) for a while is reconnected.
    settings.watching.server_timeout = config.watch_server_timeout
    settings.watching.client_timeout = config.watch_server_timeout + 60
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = config.request_timeout
    settings.networking.connect_timeout = 10
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PROGRESS_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PROGRESS_PREFIX, key="last-handled-configuration")
    settings.persistence.finalizer = FINALIZER
    settings.posting.enabled = True
    settings.posting.level = logging.WARNING  # kopf's own log lines are not Events; ours are posted explicitly
    settings.posting.reporting_component = "fedtask-operator"
    settings.posting.reporting_instance = socket.gethostname()
    settings.posting.event_name_prefix = "fedtask-"
    settings.peering.name = config.peering or "fedtask"
    settings.peering.standalone = not config.peering
    settings.peering.priority = config.priority
    settings.peering.lifetime = config.peering_lifetime
    settings.peering.clusterwide = config.clusterwide
    settings.execution.max_workers = 8
    return settings


def main(argv: list[str]) -> int:
    config = parse_config(argv)
    import kopf

    from fedtask_operator.kube import handlers, metrics

    kopf.configure(verbose=config.verbose)
    if config.metrics_port:
        try:
            metrics.serve(config.metrics_port)
        except OSError as error:
            print(f"fedtask operator: --metrics-port {config.metrics_port}: {error}", file=sys.stderr)
            return 2
    handlers.register(config)
    kopf.run(
        settings=build_settings(config),
        clusterwide=config.clusterwide,
        namespaces=config.namespaces,
        standalone=not config.peering,
        peering_name=config.peering or None,
        priority=config.priority,
        liveness_endpoint=config.liveness or None,
        memo=kopf.Memo(config=config),
    )
    return 0
