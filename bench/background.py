"""CPU that one GPU Pod's background work costs the webhook process, in process, without a cluster.

    python bench/background.py                       # both parts, figures only
    python bench/background.py --part claims --profile --top 25
    python bench/background.py --part lease --leases 3000 --profile

A GPU Pod that dra-bridge converts brings, besides its three admission calls, work that shares the
interpreter (and its GIL) with the event loop answering them:

``claims``: the ResourceClaim the resourceclaim controller makes from dra-bridge's template reaches
the ``resourceclaims`` informer as a watch event. The lines are what the apiserver sends (compact
JSON, ``managedFields``, owner reference, template labels; about 2.5 KB each), cut into 16 KB chunks
and fed through what ``KubeCluster``'s watch runs per event: ``split_lines``, ``parse_watch_line``,
``Informer.apply`` (``slim_claim``, ``ClaimStore.put``, the subscribers). The runtime is
``build_runtime`` over a ``KubeCluster`` that is never started (its transport answers nothing), so
the subscribers are exactly the real ones (the quota usage ledger with Lease observations); the
policy ConfigMap and the DeviceClasses arrive through their informers first. Figures: CPU of this
thread per ADDED (a new claim), MODIFIED (the same claim, status changed) and DELETED event.

``lease``: the claim's validation writes the tenant's quota Lease (one PUT per batch,
``webhook/quota/coordination.py``) through ``KubeCluster.put_lease`` and ``RestTransport``, with a
real ``kubernetes`` ``ApiClient`` (bearer token, TLS verified against the run's CA) against a
local HTTPS stub that answers as the apiserver does (the Lease back with ``managedFields``, a new
resourceVersion). Figures: CPU of the calling thread per PUT (the stub runs on another thread and
is not counted), and of the client's ``param_serialize`` alone.

CPU times come from ``time.thread_time`` (this thread only); cProfile (``--profile``) runs on a
separate pass so it does not distort the figures. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import workload  # noqa: E402
from bench.profiling import print_stats  # noqa: E402

NAMESPACE = "dra-bridge"
TEMPLATE = "dra-bridge-e007a4158b4f"
# What dra-bridge's mutation of bench/workload.py's small GPU Pod puts in the template (one whole
# GPU, nvidia first), as the apiserver stores it (defaults filled in).
TEMPLATE_SPEC: dict[str, Any] = {
    "devices": {
        "requests": [
            {
                "name": "nvidia",
                "firstAvailable": [
                    {
                        "name": "nvidia",
                        "deviceClassName": "whole.nvidia.dra-bridge.io",
                        "allocationMode": "ExactCount",
                        "count": 1,
                    },
                    {
                        "name": "example",
                        "deviceClassName": "whole.example.dra-bridge.io",
                        "allocationMode": "ExactCount",
                        "count": 1,
                    },
                ],
            }
        ]
    }
}
TIMESTAMP = "2026-11-30T08:00:00Z"


def claim_object(index: int, *, tenants: int, version: int, status: bool = False) -> dict[str, Any]:
    """A ResourceClaim made by kube-controller-manager from dra-bridge's template for a Pod."""
    namespace = workload.tenant_name(index % tenants)
    pod = f"inference-{index:06d}-{uuid.UUID(int=index).hex[:5]}"
    claim: dict[str, Any] = {
        "kind": "ResourceClaim",
        "apiVersion": "resource.k8s.io/v1",
        "metadata": {
            "name": f"{pod}-gpu-{uuid.UUID(int=7 * index).hex[-5:]}",
            "generateName": f"{pod}-gpu-",
            "namespace": namespace,
            "uid": str(uuid.UUID(int=10**12 + index)),
            "resourceVersion": str(version),
            "generation": 1,
            "creationTimestamp": TIMESTAMP,
            "labels": {"app.kubernetes.io/managed-by": "dra-bridge", "dra-bridge.io/template": TEMPLATE},
            "annotations": {"resource.kubernetes.io/pod-claim-name": "gpu"},
            "ownerReferences": [workload.pod_owner(pod, index)],
            "finalizers": ["resource.kubernetes.io/delete-protection"],
            "managedFields": [
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "apiVersion": "resource.k8s.io/v1",
                    "time": TIMESTAMP,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:metadata": {
                            "f:annotations": {".": {}, "f:resource.kubernetes.io/pod-claim-name": {}},
                            "f:finalizers": {".": {}, 'v:"resource.kubernetes.io/delete-protection"': {}},
                            "f:generateName": {},
                            "f:labels": {".": {}, "f:app.kubernetes.io/managed-by": {}, "f:dra-bridge.io/template": {}},
                            "f:ownerReferences": {
                                ".": {},
                                f'k:{{"uid":"{uuid.UUID(int=10**9 + index)}"}}': {},
                            },
                        },
                        "f:spec": {"f:devices": {"f:requests": {}}},
                    },
                }
            ],
        },
        "spec": json.loads(json.dumps(TEMPLATE_SPEC)),
        "status": {},
    }
    if status:
        claim["status"] = {"reservedFor": [{"resource": "pods", "name": pod, "uid": str(uuid.UUID(int=10**9 + index))}]}
        claim["metadata"]["managedFields"].append(
            {
                "manager": "kube-scheduler",
                "operation": "Update",
                "apiVersion": "resource.k8s.io/v1",
                "time": TIMESTAMP,
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:status": {"f:reservedFor": {}}},
                "subresource": "status",
            }
        )
    return claim


def watch_line(event_type: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n"


def chunks(lines: list[bytes], size: int = 16384) -> Iterator[bytes]:
    """The stream as urllib3 hands it over: fixed-size reads that cut lines anywhere."""
    data = b"".join(lines)
    for i in range(0, len(data), size):
        yield data[i : i + size]


class _Silent:
    """A transport for an adapter that is never started: every call is a bug of the benchmark."""

    def request(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        raise AssertionError(f"unexpected {method} {path}")

    def watch(self, path: str, **_: Any) -> Any:
        raise AssertionError(f"unexpected watch {path}")


def claims_runtime(tmp: Path, *, tenants: int) -> Any:
    from webhook.cluster.kube import KubeCluster
    from webhook.serving.server import build_runtime, catalogue_files
    from webhook.serving.settings import Settings
    from webhook.translate.catalogue import load_catalogue
    from webhook.translate.deviceclasses import render_device_classes

    cluster = KubeCluster(_Silent(), namespace=NAMESPACE)
    settings = Settings(
        policies_dir=ROOT / "policies",
        log_level="warning",
        audit_file=str(tmp / "audit.log"),
        namespace=NAMESPACE,
        replica="bench-a",
    )
    runtime = build_runtime(settings, cluster=cluster)
    policy = workload.quota_policy(tenants=tenants, rules=0, rule_tenants=0)
    policy["metadata"]["namespace"] = NAMESPACE
    cluster.policy_configmaps.apply({"type": "ADDED", "object": policy})
    for device_class in render_device_classes(load_catalogue(catalogue_files(ROOT / "policies"))):
        cluster.deviceclasses.apply({"type": "ADDED", "object": device_class})
    return runtime


def feed(cluster: Any, lines: list[bytes]) -> float:
    """CPU seconds of this thread to take ``lines`` the way a watch does."""
    from webhook.cluster.informer import parse_watch_line, split_lines

    informer = cluster.claims
    started = time.thread_time()
    for line in split_lines(chunks(lines)):
        event = parse_watch_line(line)
        if event is not None:
            informer.apply(event)
    return time.thread_time() - started


def part_claims(args: argparse.Namespace) -> None:
    n, tenants = args.claims, args.tenants
    with tempfile.TemporaryDirectory() as tmp:
        runtime = claims_runtime(Path(tmp), tenants=tenants)
        cluster, ledger = runtime.cluster, runtime.quota.ledger
        base = 10_000
        warm = [
            watch_line("ADDED", claim_object(i, tenants=tenants, version=base + i)) for i in range(10**6, 10**6 + 500)
        ]
        added = [watch_line("ADDED", claim_object(i, tenants=tenants, version=base + i)) for i in range(n)]
        modified = [
            watch_line("MODIFIED", claim_object(i, tenants=tenants, version=base + n + i, status=True))
            for i in range(n)
        ]
        deleted = [
            watch_line("DELETED", claim_object(i, tenants=tenants, version=base + 2 * n + i, status=True))
            for i in range(n)
        ]
        size = sum(len(line) for line in added) / n
        feed(cluster, warm)
        cpu = {"ADDED": feed(cluster, added), "MODIFIED": feed(cluster, modified)}
        assert ledger.claim_count == n + len(warm), ledger.claim_count
        cpu["DELETED"] = feed(cluster, deleted)
        assert ledger.claim_count == len(warm), ledger.claim_count
        print(
            f"claims informer ({n:,} claims of {size:,.0f} B over {tenants} namespaces, subscribers: "
            f"{len(cluster.claims._handlers)}, observations on: {ledger.track_observations})"
        )
        for kind, seconds in cpu.items():
            print(f"  {kind:<8} {1e6 * seconds / n:7.1f} us CPU per event")
        if args.profile:
            again = [watch_line("ADDED", claim_object(i, tenants=tenants, version=base + 3 * n + i)) for i in range(n)]
            profiler = cProfile.Profile(time.thread_time)
            profiler.enable()
            feed(cluster, again)
            profiler.disable()
            print_stats(profiler, args.top)


# -- the Lease write ------------------------------------------------------------------------------


class _LeaseStub(BaseHTTPRequestHandler):
    """Answers Lease PUT/POST as the apiserver does (its headers, the Lease back with a new
    resourceVersion and ``managedFields``), keeping one Lease per name."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the apiserver
    leases: ClassVar[dict[str, dict[str, Any]]] = {}
    version: ClassVar[list[int]] = [1000]
    lock: ClassVar[threading.Lock] = threading.Lock()

    def log_message(self, *_: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Kubernetes-Pf-Flowschema-Uid", str(uuid.UUID(int=1)))
        self.send_header("X-Kubernetes-Pf-Prioritylevel-Uid", str(uuid.UUID(int=2)))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _write(self) -> None:
        if self.headers.get("Authorization") != "Bearer bench-token":
            self._answer(401, {"kind": "Status", "reason": "Unauthorized", "message": "no token"})
            return
        lease = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        with self.lock:
            self.version[0] += 1
            lease["metadata"]["resourceVersion"] = str(self.version[0])
        lease["metadata"].setdefault("uid", str(uuid.UUID(int=self.version[0])))
        lease["metadata"].setdefault("creationTimestamp", TIMESTAMP)
        lease["metadata"]["managedFields"] = [
            {
                "manager": "dra-bridge",
                "operation": "Update",
                "apiVersion": "coordination.k8s.io/v1",
                "time": TIMESTAMP,
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {
                        "f:annotations": {".": {}, "f:dra-bridge.io/inflight": {}, "f:dra-bridge.io/tenant": {}},
                        "f:labels": {".": {}, "f:app.kubernetes.io/managed-by": {}},
                    },
                    "f:spec": {"f:holderIdentity": {}, "f:leaseDurationSeconds": {}},
                },
            }
        ]
        self.leases[lease["metadata"]["name"]] = lease
        self._answer(200 if self.command == "PUT" else 201, lease)

    do_PUT = _write
    do_POST = _write


def serve_stub(certs: Path) -> None:
    """The Lease stub on its own: HTTPS on a free port of 127.0.0.1, printed on the first line."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "tls.crt", certs / "tls.key")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LeaseStub)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def lease_body(tenant: str, groups: int) -> dict[str, Any]:
    """A tenant's quota Lease as ``LeaseCoordinator`` writes it, with ``groups`` in-flight groups."""
    from fractions import Fraction

    from webhook.quota.charge import Charge
    from webhook.quota.coordination import Group, LeaseCoordinator

    now = time.time()
    charge = Charge(
        devices={"whole.nvidia.dra-bridge.io": 1},
        memory=Fraction(85899345920),
        compute=Fraction(100),
        claims=1,
        matched={"whole.*": 1},
        total_devices=1,
    )
    mine = [
        Group(workload.tenant_name(i), charge, 1 + i % 3, now, now + 30, (f"inference-{i:06d}-gpu-x7k2p",))
        for i in range(groups)
    ]
    coordinator = LeaseCoordinator(None, None, namespace=NAMESPACE, replica="bench-a")  # type: ignore[arg-type]
    return coordinator._lease(tenant, None, {"bench-a": mine})


def part_lease(args: argparse.Namespace) -> None:
    from kubernetes import client as k8s_client

    from webhook.certs.files import ensure_dev_certs
    from webhook.cluster.kube import KubeCluster, RestTransport

    n = args.leases
    with tempfile.TemporaryDirectory() as tmp:
        certs = ensure_dev_certs(Path(tmp) / "certs")
        # The stub is another process: its CPU and its threads stay out of this one's figures.
        stub = subprocess.Popen(
            [sys.executable, __file__, "--stub", str(certs)], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        assert stub.stdout is not None
        port = int(stub.stdout.readline())
        try:
            configuration = k8s_client.Configuration()
            configuration.host = f"https://127.0.0.1:{port}"
            configuration.ssl_ca_cert = str(certs / "ca.crt")
            configuration.api_key = {"authorization": "Bearer bench-token"}
            api_client = k8s_client.ApiClient(configuration)
            cluster = KubeCluster(RestTransport(api_client), namespace=NAMESPACE)
            lease = cluster.put_lease(lease_body("tenant-0000", args.groups))  # POST: created
            body = lease_body("tenant-0000", args.groups)
            size = len(json.dumps(body, separators=(",", ":")))

            def put(count: int) -> float:
                nonlocal lease
                started = time.thread_time()
                for _ in range(count):
                    body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
                    lease = cluster.put_lease(body)
                return time.thread_time() - started

            put(200)
            cpu = put(n)
            path = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/x"

            def serialize_only() -> None:
                api_client.param_serialize(
                    method="PUT",
                    resource_path=path,
                    query_params=[],
                    header_params={"Accept": "application/json", "Content-Type": "application/json"},
                    body=body,
                    auth_settings=["BearerToken"],
                )

            serialized = per_call(serialize_only, n)
            sanitized = per_call(lambda: api_client.sanitize_for_serialization(body), n)  # type: ignore[no-untyped-call]
            print(f"Lease PUT through RestTransport ({args.groups} in-flight groups, body {size:,} B, TLS, keep-alive)")
            print(f"  put_lease        {1e6 * cpu / n:7.1f} us CPU per write (calling thread)")
            print(
                f"  param_serialize  {1e6 * serialized:7.1f} us CPU per call (of which body sanitize {1e6 * sanitized:.1f})"
            )
            if args.profile:
                profiler = cProfile.Profile(time.thread_time)
                profiler.enable()
                put(n)
                profiler.disable()
                print_stats(profiler, args.top)
        finally:
            stub.terminate()
            stub.wait()


def per_call(fn: Callable[[], Any], n: int) -> float:
    started = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - started) / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("claims", "lease", "all"), default="all")
    parser.add_argument("--claims", type=int, default=5000, help="claims per event kind")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--leases", type=int, default=2000, help="Lease writes")
    parser.add_argument("--groups", type=int, default=4, help="in-flight groups in the Lease")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of one more pass")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--stub", type=Path, help=argparse.SUPPRESS)  # the Lease stub's process
    args = parser.parse_args(argv)
    if args.stub is not None:
        serve_stub(args.stub)
        return
    if args.part in ("claims", "all"):
        part_claims(args)
    if args.part in ("lease", "all"):
        part_lease(args)


if __name__ == "__main__":
    main()
