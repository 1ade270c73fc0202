"""Wiring: settings -> catalogue, cluster port, engine, HTTP app, TLS server with reload.

``build_runtime`` assembles the parts (tests use it without a socket); ``serve`` runs uvicorn with
the production settings: TLS 1.2+, certificate reload without restart, graceful drain on SIGTERM,
template garbage collection in the background. With a peer address (and the Lease coordination),
a replica keeps its membership Lease and hands the reviews of tenants another replica owns to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
import yaml

from webhook.admission.engine import Admission, AdmissionSettings
from webhook.admission.nodes import NodePools
from webhook.audit.log import AuditLog, open_audit_log
from webhook.certs.files import ensure_dev_certs
from webhook.cluster import ClusterPort
from webhook.cluster.memory import InMemoryCluster
from webhook.quota.enforcement import QuotaEnforcer
from webhook.quota.replicas import Replicas
from webhook.serving.collector import settle
from webhook.serving.guard import Limits, Stage, guarded_protocol
from webhook.serving.http import create_app
from webhook.serving.metrics import Metrics, collect_certificate, collect_quota
from webhook.serving.peers import Forwarder, peer_context
from webhook.serving.settings import Settings
from webhook.serving.tls import CertificateReloader, server_ssl_context
from webhook.translate.catalogue import load_catalogue
from webhook.translate.catalogue_store import CatalogueStore
from webhook.translate.deviceclasses import render_device_classes

if TYPE_CHECKING:  # only webhook.serving.http imports FastAPI at run time
    from fastapi import FastAPI

log = logging.getLogger("dra_bridge.server")
DEV_CERT_DIR = Path("certs/dev")


def catalogue_files(policies_dir: Path) -> list[Path]:
    """The shipped default first, then every other ``catalogue*.yaml`` in name order."""
    files = sorted(policies_dir.glob("catalogue*.yaml"))
    default = policies_dir / "catalogue.yaml"
    if default not in files:
        raise FileNotFoundError(f"{default}: the default translation catalogue is missing")
    return [default, *(f for f in files if f != default)]


@dataclass
class Runtime:
    settings: Settings
    cluster: ClusterPort
    admission: Admission
    metrics: Metrics
    app: FastAPI
    catalogue: CatalogueStore
    quota: QuotaEnforcer
    audit: AuditLog
    replicas: Replicas | None = None  # set where tenants are shared out among replicas
    forwarder: Forwarder | None = None  # and how reviews reach the replica that owns their tenant


def policy_files(policies_dir: Path) -> list[Path]:
    """Quota policy ConfigMaps shipped as files (``quota*.yaml``), loaded by the embedded default."""
    return sorted(policies_dir.glob("quota*.yaml"))


DEV_AUDIT_FILE = ".dra-bridge/audit.log"


def build_runtime(settings: Settings, *, cluster: ClusterPort | None = None, audit: AuditLog | None = None) -> Runtime:
    catalogue = CatalogueStore(catalogue_files(settings.policies_dir))
    if cluster is None:
        if not settings.dev:
            from webhook.cluster.kube import KubeCluster  # the only place the real client is loaded

            cluster = KubeCluster.from_environment(namespace=settings.namespace)
        else:
            cluster = dev_cluster(settings.policies_dir, settings.inventory_dir)
    metrics = Metrics()
    replicas, forwarder = _sharing(settings, cluster)
    quota = QuotaEnforcer(
        cluster=cluster,
        catalogue=lambda: catalogue.index.catalogue,
        reservation_ttl=settings.quota_reservation_ttl_seconds,
        coordination_wait=settings.quota_coordination_wait_seconds,
        # One replica in dev: its own reservations are exact. Two or more: the tenant's Lease.
        coordination="local" if settings.dev else settings.quota_coordination,
        namespace=settings.namespace,
        replica=settings.replica,
        replicas=replicas,
    )
    quota.attach()
    catalogue.subscribe(quota.catalogue_changed)
    nodes = NodePools()
    cluster.watch("nodes", nodes.on_node)
    cluster.watch("resourceslices", nodes.on_slice)
    cluster.watch("catalogue-configmaps", catalogue.on_configmap)
    admission = Admission(
        cluster=cluster,
        catalogue=lambda: catalogue.index,
        settings=AdmissionSettings(
            leave_native=settings.leave_native_extended_resources,
            require_conversion=settings.require_conversion,
            tenant_admin_groups=frozenset(settings.tenant_admin_groups),
            max_containers=settings.max_pod_containers,
        ),
        quota=quota,
        catalogue_documents=catalogue.documents,
        nodes=nodes,
    )

    def readiness() -> tuple[bool, dict[str, Any]]:
        ready, detail = quota.ready()
        if catalogue.errors:
            detail["catalogueErrors"] = catalogue.errors
        return ready, detail

    def collect() -> None:
        ready, detail = readiness()
        metrics.ready.set(value=1.0 if ready else 0.0)
        metrics.policy_errors.set(value=float(len(detail.get("policyErrors", {})) + len(catalogue.errors)))
        metrics.policy_reloads.set("ok", value=float(quota.policies.reloads_ok))
        metrics.policy_reloads.set("failed", value=float(quota.policies.reloads_failed))
        metrics.claims_cached.set(value=float(quota.ledger.claim_count))
        if replicas is not None:
            metrics.replicas.set(value=float(len({m.replica for m in replicas.members()} | {replicas.replica})))
        if quota.coordinator is not None:
            for operation in ("batches", "reads", "writes", "conflicts"):
                metrics.quota_lease.set(operation, value=float(getattr(quota.coordinator, operation)))

    metrics.collectors.append(collect)
    metrics.collectors.append(collect_quota(metrics, quota))

    if audit is None:
        target = settings.audit_file
        if settings.dev and "audit_file" not in settings.model_fields_set:
            target = DEV_AUDIT_FILE  # the embedded default keeps its log beside the checkout
        audit = open_audit_log(
            target,
            max_bytes=settings.audit_max_bytes,
            max_files=settings.audit_max_files,
            fsync=settings.audit_fsync,
            replica=settings.replica,
        )
    app = create_app(
        mutate=audit.audited("mutate", admission.mutate),
        validate=audit.audited("validate", admission.validate),
        metrics=metrics,
        readiness=readiness,
        max_body_bytes=settings.max_body_bytes,
        threads=settings.workers_threads,
        shed_after=settings.shed_after_seconds or None,
        audit=audit,
        inline_max_bytes=settings.inline_max_bytes,
        forwarder=forwarder,
    )
    return Runtime(
        settings=settings,
        cluster=cluster,
        admission=admission,
        metrics=metrics,
        app=app,
        catalogue=catalogue,
        quota=quota,
        audit=audit,
        replicas=replicas,
        forwarder=forwarder,
    )


def _sharing(settings: Settings, cluster: ClusterPort) -> tuple[Replicas | None, Forwarder | None]:
    """Membership and forwarding, where each tenant is to be decided by one replica: the Lease
    coordination, a peer address, and (when clients must present certificates) one to present."""
    if settings.dev or settings.quota_coordination != "lease" or not settings.peer_address:
        return None, None
    if settings.client_ca_file is not None and settings.peer_client_cert_file is None:
        log.warning(
            "DRA_BRIDGE_PEER_ADDRESS is set but DRA_BRIDGE_CLIENT_CA_FILE requires client certificates and "
            "DRA_BRIDGE_PEER_CLIENT_CERT_FILE is not set: every replica decides what reaches it"
        )
        return None, None
    replicas = Replicas(
        cluster, replica=settings.replica, address=settings.peer_address, duration=settings.replica_lease_seconds
    )
    context, server_name = _peer_trust(settings)
    forwarder = Forwarder(
        replica=settings.replica,
        context=context,
        server_name=server_name,
        unreachable=replicas.unreachable,
        timeout=settings.peer_timeout_seconds,
    )
    return replicas, forwarder


def _peer_trust(settings: Settings) -> tuple[ssl.SSLContext, str]:
    """How peers are verified, from the certificate folder as it is now (and what this replica presents)."""
    return peer_context(
        settings.cert_dir, client_cert=settings.peer_client_cert_file, client_key=settings.peer_client_key_file
    )


def dev_cluster(policies_dir: Path, inventory_dir: Path | None = None) -> InMemoryCluster:
    """The embedded default's cluster: in memory, seeded with the example policy ConfigMaps and the
    unified DeviceClasses; its device inventory is the catalogue's known models, plus the
    ResourceSlices and DeviceClasses of ``inventory_dir`` (to try quota against a cluster's devices)."""
    cluster = InMemoryCluster()
    for device_class in render_device_classes(load_catalogue(catalogue_files(policies_dir))):
        cluster.add_device_class(device_class)
    for path in sorted(inventory_dir.glob("*.yaml")) if inventory_dir is not None else ():
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        for listing in [d for d in documents if isinstance(d, dict) and d.get("kind") == "List"]:
            documents.remove(listing)
            documents.extend(listing.get("items") or [])  # what `kubectl get -o yaml` writes
        for n, document in enumerate(documents):
            kind = document.get("kind") if isinstance(document, dict) else None
            if kind == "ResourceSlice":
                cluster.put_resource_slice(document)
            elif kind == "DeviceClass":
                cluster.add_device_class(document)
            elif document is not None:
                raise ValueError(f"{path}: document {n}: kind {kind!r} is neither a ResourceSlice nor a DeviceClass")
    for path in policy_files(policies_dir):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(document, dict) and document.get("kind") == "ConfigMap":
                cluster.put_configmap(document)
    return cluster


def serve(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if settings.dev:
        ensure_dev_certs(DEV_CERT_DIR)
        settings = settings.model_copy(update={"cert_dir": DEV_CERT_DIR})
    runtime = build_runtime(settings)
    context, reloader = serving_tls(settings)
    runtime.metrics.collectors.append(collect_certificate(runtime.metrics, lambda: reloader.not_after))

    server = uvicorn_server(
        runtime.app,
        context,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        max_concurrency=settings.max_concurrency,
        limits=limits_of(settings),
        on_timeout=lambda stage: runtime.metrics.slow_connections_closed.inc(stage),
    )
    log.info(
        "dra-bridge serving on https://%s:%d (%s cluster, catalogue from %s)",
        settings.host,
        settings.port,
        "in-memory" if settings.dev else "live",
        settings.policies_dir,
    )
    _use_uvloop()
    switch_interval(settings)
    asyncio.run(_serve(server, runtime, reloader))


def switch_interval(settings: Settings) -> float:
    """Let a waiting thread in after ``gil_switch_interval_seconds`` (0: the interpreter's own);
    the interval in force."""
    if settings.gil_switch_interval_seconds > 0:
        sys.setswitchinterval(settings.gil_switch_interval_seconds)
    return sys.getswitchinterval()


def _use_uvloop() -> None:
    """uvloop where it is installed (Linux, macOS): the event loop of the production server."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def limits_of(settings: Settings) -> Limits:
    return Limits(
        handshake_timeout=settings.tls_handshake_timeout_seconds,
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        max_header_bytes=settings.max_header_bytes,
    )


def serving_tls(settings: Settings) -> tuple[ssl.SSLContext, CertificateReloader]:
    """The server's TLS context from ``cert_dir`` and the reloader that keeps it current."""
    cert_file, key_file = settings.cert_dir / "tls.crt", settings.cert_dir / "tls.key"
    context = server_ssl_context(cert_file=cert_file, key_file=key_file, client_ca_file=settings.client_ca_file)
    reloader = CertificateReloader(
        context,
        cert_file=cert_file,
        key_file=key_file,
        client_ca_file=settings.client_ca_file,
        interval=settings.cert_reload_interval_seconds,
    )
    return context, reloader


def uvicorn_server(
    app: FastAPI,
    context: ssl.SSLContext,
    *,
    host: str,
    port: int,
    log_level: str = "info",
    max_concurrency: int | None = Settings.model_fields["max_concurrency"].default,
    limits: Limits | None = None,
    on_timeout: Callable[[Stage], None] | None = None,
) -> uvicorn.Server:
    """The production server settings, shared by ``serve``, the HTTP tests and the benchmark.

    TLS and the time limits on slow clients are the protocol's (``webhook.serving.guard``): it serves
    ``context`` itself, this very object, so the reloader's updates reach new handshakes.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        # uvicorn's httptools protocol (the C parser; h11, pure Python, costs a large share of a small
        # request), guarded, behind TLS with a handshake limit
        http=guarded_protocol(context, limits=limits or Limits(), on_timeout=on_timeout),  # type: ignore[arg-type]
        access_log=False,
        timeout_keep_alive=5,  # keep-alive connections stay pinned to a terminating Pod: keep them short
        timeout_graceful_shutdown=20,  # SIGTERM: stop accepting, finish in-flight reviews, then exit
        server_header=False,
        limit_concurrency=max_concurrency,  # an overload is shed with 503 rather than queued without bound
    )
    return uvicorn.Server(config)


async def _serve(server: uvicorn.Server, runtime: Runtime, reloader: CertificateReloader) -> None:
    stop = asyncio.Event()
    runtime.cluster.start()  # caches sync in the background; /readyz stays false until they have
    tasks = [
        asyncio.create_task(_reload_certs(reloader, runtime, stop)),
        asyncio.create_task(_collect_templates(runtime, stop)),
    ]
    if runtime.settings.gc_settle_interval_seconds > 0:
        tasks.append(asyncio.create_task(_settle_collector(runtime, stop)))
    if runtime.replicas is not None:
        tasks.append(asyncio.create_task(_keep_membership(runtime.replicas, stop)))
    try:
        await server.serve()
    finally:
        stop.set()
        if runtime.replicas is not None:
            with contextlib.suppress(Exception):  # its Lease then expires on its own
                await asyncio.to_thread(runtime.replicas.leave)
        runtime.cluster.stop()
        runtime.audit.close()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set, whichever comes first; True when stopped."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()


async def _reload_certs(reloader: CertificateReloader, runtime: Runtime, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await _stopped_within(stop, reloader.interval)
        if reloader.check():
            runtime.metrics.cert_reloads.inc()
            log.info("serving certificate reloaded; valid until %s", reloader.not_after)
            if runtime.forwarder is not None:  # the peers serve the new pair: trust what signed it
                try:
                    context, name = _peer_trust(runtime.settings)
                except (OSError, ValueError, ssl.SSLError) as err:
                    log.warning("peer trust not reloaded (%s); the previous one stays", err)
                else:
                    await runtime.forwarder.trust(context, name)


async def _settle_collector(runtime: Runtime, stop: asyncio.Event, poll: float = 0.5) -> None:
    """Once the caches have synced, collect and freeze what is alive; again every interval."""
    while not runtime.cluster.ready()[0]:
        if await _stopped_within(stop, poll):
            return
    while not stop.is_set():
        paused, frozen = settle()
        runtime.metrics.gc_settle_seconds.set(value=paused)
        runtime.metrics.gc_frozen.set(value=float(frozen))
        log.info("garbage collector: collected and froze %d long-lived objects in %.1f ms", frozen, paused * 1000)
        await _stopped_within(stop, runtime.settings.gc_settle_interval_seconds)


async def _keep_membership(replicas: Replicas, stop: asyncio.Event) -> None:
    """Renew this replica's membership Lease and read the others', every third of its duration."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(replicas.renew)
        except Exception as err:  # the others drop this replica when its Lease runs out: tenants move
            log.warning("replica membership not renewed (%s); retrying in %.0fs", err, replicas.interval)
        await _stopped_within(stop, replicas.interval)


async def _collect_templates(runtime: Runtime, stop: asyncio.Event) -> None:
    settings = runtime.settings
    while not stop.is_set():
        if await _stopped_within(stop, settings.template_gc_interval_seconds):
            return
        try:
            deleted = await asyncio.to_thread(
                runtime.admission.templates.collect_garbage, grace_seconds=settings.template_gc_grace_seconds
            )
        except Exception:
            log.exception("template garbage collection failed; retrying next interval")
            continue
        if deleted:
            runtime.metrics.templates_collected.inc(amount=len(deleted))
            log.info("deleted %d unreferenced ResourceClaimTemplates: %s", len(deleted), deleted)
