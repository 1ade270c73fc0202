"""The benchmark's server process: dra-bridge as users run it, or the ceiling, over TLS.

    python bench/server.py --port 9443 --cert-dir DIR --spec '{"app": "dra-bridge", "claims": 100000}'
    python bench/server.py --port 9444 --cert-dir DIR --app ceiling

dra-bridge: an ``InMemoryCluster`` gets the tenants' namespaces (``t-0000``..) and one QuotaPolicy
ConfigMap through its public seeding methods; ``webhook.serving.server.build_runtime`` wires the real
engine, metrics, audit log and app to it (its watches replay the policy); then every claim goes in
through ``InMemoryCluster.add_claim``, the path a watch event takes to the usage ledger. Only then
does the server listen, so ``/readyz`` answering 200 means "seeded and serving". It runs under
``webhook.serving.server.uvicorn_server`` (the production settings) with the TLS context and certificate
reloader of ``serve``, in one process.

The ceiling (``bench/ceiling.py``) is served by the same function over the same kind of context.

Progress goes to stdout as JSON lines (``{"event": ..., "t": seconds since this script started}``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

STARTED = time.monotonic()
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_SPEC: dict[str, Any] = {
    "app": "dra-bridge",
    "claims": 0,  # ResourceClaims in the cluster, spread round-robin over the tenants' namespaces
    "tenants": 1000,  # tenants t-0000.., each owning its namespace
    "rules": 0,  # CEL rules (that evaluate true) per rule-carrying tenant
    "rule_tenants": None,  # how many tenants (the first ones) carry the rules; None: all
    "reservation_ttl": None,  # seconds; None: the production default of Settings
    "audit_file": None,  # where the decision log goes; None: <cert-dir>/../audit.log
    "devices": 0,  # published GPUs (ResourceSlices, eight per node) and the project's DeviceClasses; 0: none
    "device_shapes": 100,  # distinct device shapes among them (product, driver version, whole or MIG)
}


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": round(time.monotonic() - STARTED, 4), **fields}), flush=True)


def parse_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec = dict(DEFAULT_SPEC)
    if args.spec:
        given = json.loads(Path(args.spec[1:]).read_text() if args.spec.startswith("@") else args.spec)
        unknown = sorted(set(given) - set(DEFAULT_SPEC))
        if unknown:
            raise SystemExit(f"unknown spec keys {unknown}; known: {sorted(DEFAULT_SPEC)}")
        spec.update(given)
    for key in ("app", "claims", "tenants", "rules", "rule_tenants", "reservation_ttl", "audit_file", "devices"):
        value = getattr(args, key)
        if value is not None:
            spec[key] = value
    if spec["rule_tenants"] is None:
        spec["rule_tenants"] = spec["tenants"]
    if spec["app"] not in ("dra-bridge", "ceiling"):
        raise SystemExit(f"app must be dra-bridge or ceiling, got {spec['app']!r}")
    return spec


def seeded_cluster(spec: dict[str, Any]) -> Any:
    from bench import workload
    from webhook.cluster.memory import InMemoryCluster

    cluster = InMemoryCluster()
    for i in range(spec["tenants"]):
        name = workload.tenant_name(i)
        cluster.add_namespace(name, {"kubernetes.io/metadata.name": name})
    cluster.put_configmap(
        workload.quota_policy(tenants=spec["tenants"], rules=spec["rules"], rule_tenants=spec["rule_tenants"])
    )
    if spec.get("devices"):
        from webhook.serving.server import catalogue_files
        from webhook.translate.catalogue import load_catalogue
        from webhook.translate.deviceclasses import render_device_classes

        for device_class in render_device_classes(load_catalogue(catalogue_files(ROOT / "policies"))):
            cluster.add_device_class(device_class)
    return cluster


def seed_devices(cluster: Any, spec: dict[str, Any]) -> None:
    """The GPU nodes' ResourceSlices, one by one through ``put_resource_slice`` (the path a watch
    event takes to the quota's device inventory), as an informer's initial list delivers them."""
    from bench import workload

    slices = workload.resource_slices(spec["devices"], spec["device_shapes"])
    step = max(1, len(slices) // 10)
    for i, resource_slice in enumerate(slices):
        cluster.put_resource_slice(resource_slice)
        if (i + 1) % step == 0:
            emit("seeding-devices", slices=i + 1, of=len(slices))


def seed_claims(cluster: Any, spec: dict[str, Any]) -> None:
    from bench import workload

    total, tenants = spec["claims"], spec["tenants"]
    step = max(1, min(10_000, total // 10))
    for i in range(total):
        cluster.add_claim(workload.stored_claim(i, tenants=tenants))
        if (i + 1) % step == 0:
            emit("seeding", claims=i + 1, of=total)


def settings_for(spec: dict[str, Any], args: argparse.Namespace) -> Any:
    from webhook.serving.settings import Settings

    fields: dict[str, Any] = {
        "dev": True,  # in-memory cluster, one replica: quota coordination is local
        "host": args.host,
        "port": args.port,
        "cert_dir": args.cert_dir,
        "policies_dir": ROOT / "policies",
        "log_level": "warning",
    }
    if spec["reservation_ttl"] is not None:
        fields["quota_reservation_ttl_seconds"] = float(spec["reservation_ttl"])
    if "audit_file" in Settings.model_fields:  # the decision log, written on the request path
        fields["audit_file"] = spec["audit_file"] or str(Path(args.cert_dir).resolve().parent / "audit.log")
    return Settings(**fields)


class ThreadProfiles:
    """cProfile in every thread, timed by each thread's own CPU clock (``time.thread_time``), so
    the event loop's decisions and HTTP work and any thread's land in one profile without waits
    counting. Merged and written to ``path`` when the server stops (``pstats`` format)."""

    def __init__(self, path: Path) -> None:
        import threading

        self.path = path
        self._profiles: list[Any] = []
        self._lock = threading.Lock()
        threading.setprofile(self._first_event)  # threads started from now on profile themselves
        # uvicorn restores these handlers after its graceful shutdown and raises the signal again.
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._written = False
        self._start()

    def _start(self) -> None:
        import cProfile

        profile = cProfile.Profile(time.thread_time)
        with self._lock:
            self._profiles.append(profile)
        profile.enable()  # replaces this thread's profile function (the hook below) with cProfile's

    def _first_event(self, _frame: Any, _event: str, _arg: Any) -> None:
        self._start()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.write()
        raise SystemExit(128 + signum)

    def write(self) -> None:
        import pstats
        import threading

        if self._written:
            return
        self._written = True
        threading.setprofile(None)  # type: ignore[arg-type]
        with self._lock:
            profiles = list(self._profiles)
        # Snapshot without disabling: disabling another thread's profiler from here would close its
        # pending call (a worker waiting for work) with this thread's clock, a bogus figure.
        snapshots = []
        for profile in profiles:
            profile.snapshot_stats()
            snapshots.append(_Snapshot(profile.stats))
        stats = pstats.Stats(snapshots[0])
        for snapshot in snapshots[1:]:
            stats.add(snapshot)
        stats.dump_stats(str(self.path))
        emit("profile-written", path=str(self.path), threads=len(profiles))


class _Snapshot:
    """What ``pstats.Stats`` reads from a profiler: its ``stats``, already taken."""

    def __init__(self, stats: dict[Any, Any]) -> None:
        self.stats = stats

    def create_stats(self) -> None:
        return None


def run_dra_bridge(spec: dict[str, Any], args: argparse.Namespace) -> None:
    from webhook.serving import server as webhook_server

    emit("imported")
    settings = settings_for(spec, args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cluster = seeded_cluster(spec)
    emit(
        "namespaces-and-policy-seeded", tenants=spec["tenants"], rules=spec["rules"], rule_tenants=spec["rule_tenants"]
    )
    runtime = webhook_server.build_runtime(settings, cluster=cluster)
    emit("runtime-built", policy=runtime.quota.policies.current.version, errors=runtime.quota.policies.errors)
    if spec["devices"]:
        seed_devices(cluster, spec)
        inventory = runtime.quota.inventory
        emit("devices-seeded", shapes=len(inventory.snapshot().published), errors=inventory.errors)
    seed_claims(cluster, spec)
    emit("claims-seeded", claims=runtime.quota.ledger.claim_count)
    context, reloader = webhook_server.serving_tls(settings)  # as `dra-bridge serve` builds them
    server = webhook_server.uvicorn_server(
        runtime.app, context, host=settings.host, port=settings.port, log_level=settings.log_level
    )
    emit("serving", port=settings.port)
    profiles = ThreadProfiles(args.cprofile) if args.cprofile else None
    # What `serve` runs after building the server: its event loop (uvloop where `serve` installs
    # it), the cert reloader and template GC beside uvicorn.
    use_loop = getattr(webhook_server, "_use_uvloop", None)
    if use_loop is not None:
        use_loop()
    webhook_server.switch_interval(settings)  # and the interpreter's switch interval it sets
    asyncio.run(webhook_server._serve(server, runtime, reloader))
    if profiles is not None:
        profiles.write()


def run_ceiling(args: argparse.Namespace) -> None:
    from bench.ceiling import create_ceiling_app
    from webhook.serving import server as webhook_server
    from webhook.serving.tls import server_ssl_context

    emit("imported")
    context = server_ssl_context(cert_file=args.cert_dir / "tls.crt", key_file=args.cert_dir / "tls.key")
    patch = json.loads(args.patch.read_text()) if args.patch else None
    server = webhook_server.uvicorn_server(
        create_ceiling_app(patch), context, host=args.host, port=args.port, log_level="warning"
    )
    emit("serving", port=args.port)
    profiles = ThreadProfiles(args.cprofile) if args.cprofile else None
    # The same event loop as dra-bridge: `serve` installs uvloop where it is (and so does
    # uvicorn's own run() with loop="auto"); without it both run asyncio's.
    use_loop = getattr(webhook_server, "_use_uvloop", None)
    if use_loop is not None:
        use_loop()
    asyncio.run(server.serve())
    if profiles is not None:
        profiles.write()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert-dir", type=Path, required=True, help="holds tls.crt and tls.key (webhook.certs.files)")
    parser.add_argument("--spec", help="JSON object (or @file) with keys: " + ", ".join(DEFAULT_SPEC))
    parser.add_argument("--app", choices=("dra-bridge", "ceiling"))
    parser.add_argument("--claims", type=int)
    parser.add_argument("--tenants", type=int)
    parser.add_argument("--rules", type=int)
    parser.add_argument("--rule-tenants", dest="rule_tenants", type=int)
    parser.add_argument("--reservation-ttl", dest="reservation_ttl", type=float)
    parser.add_argument("--audit-file", dest="audit_file")
    parser.add_argument("--devices", type=int, help="published GPUs (and the project's DeviceClasses)")
    parser.add_argument("--patch", type=Path, help="the ceiling: a JSON Patch file /mutate answers with")
    parser.add_argument("--cprofile", type=Path, help="profile every thread (CPU time) and write pstats here on exit")
    args = parser.parse_args(argv)
    spec = parse_spec(args)
    emit("spec", spec=spec)
    if spec["app"] == "ceiling":
        run_ceiling(args)
    else:
        run_dra_bridge(spec, args)


if __name__ == "__main__":
    main()
