"""End to end: Pod creation latency through a real kube-apiserver, side by side with the ways of
getting the same Pods onto DRA, in one run on one control plane.

    .venv/bin/python bench/e2e.py [--pods 300] [--rate 40] [--reps 2] [--interleaved 3] [--arms none,bare,bridge,map,native]

Starts the control plane of the end-to-end tests (tests/e2e/controlplane.py: etcd, kube-apiserver,
kube-controller-manager with the resourceclaim controller, kube-scheduler; no nodes, so Pods are
stored and never run) and applies the project's DeviceClasses. Then, ``--reps`` times, each arm in
turn, forward in odd repetitions and backward in even ones, with a ``none`` run before, between and
after them (``sequence``): every arm is read against the baseline runs right before and after it, so
that a drift of the machine or of the control plane over the run favours no arm. After each run its
namespaces are deleted and the harness waits until they are gone, so every run starts from the same
cluster. The arms:

- ``none``: no admission step of our own: no webhook configuration, no policy (the baseline);
- ``bare``: the bare webhook, the protocol's own cost: bench/ceiling.py (read the body, allow with
  the uid echoed, count the call) served by bench/server.py on dra-bridge's own stack (uvicorn,
  httptools, uvloop where installed, TLS from ``webhook.certs``), registered through the shipped
  deploy/base/webhooks.yaml exactly as dra-bridge (same rules, matchConditions, timeouts and
  failure policies), with only ``clientConfig`` changed. It never patches, so its GPU Pods are
  stored unconverted and no claim is made;
- ``bare-patch`` (on request: ``--arms``): the same bare webhook answering every mutating call with
  the fixed JSON Patch the policy below makes of the benchmark's GPU Pod (``BARE_PATCH``), so its
  Pods are converted to the pre-created templates and their claims made and validated: the bare
  cost of a webhook that rewrites, with the same three calls per GPU Pod as dra-bridge;
- ``bridge``: ``dra-bridge serve`` started as the e2e tests start it (real TLS) and registered the
  same way; a dry-run probe Pod must come back converted before anything is measured;
- ``map``: a MutatingAdmissionPolicy (``admissionregistration.k8s.io``, v1 from 1.36, v1beta1
  behind the ``MutatingAdmissionPolicy`` gate and runtime-config on 1.34; the served version is read
  from discovery) and its binding that rewrite whole-GPU Pods inside the apiserver to templates
  pre-created in every namespace (``map_manifests``): no webhook, no quota;
- ``native``: KEP-5004, a DeviceClass with ``extendedResourceName: nvidia.com/gpu``; Pods keep the
  extended resource and kube-scheduler makes their claims when it places them (never here: no
  nodes), so Pod creation has no admission step. By default only where ``DRAExtendedResource`` is
  GA (1.37 on); ``--arms`` asks for it on a release where the gate is on but not GA.

Each arm creates Pods with httpx straight against the apiserver REST API (the admin client
certificate), each workload in a fresh namespace: ``gpu`` (``nvidia.com/gpu: 1``, requests =
limits) at a fixed rate (open model: every POST is sent on its schedule, however long earlier ones
take), ``gpu-seq`` (the same Pod, one request at a time), ``no-gpu`` (a Pod without GPU requests at
the same rate: the webhooks' matchConditions skip it). Latency is measured from each request's
scheduled send time to the end of the response. Every response is checked: in ``bridge`` and
``map`` a GPU Pod must come back with ``spec.resourceClaims`` and no ``nvidia.com/gpu`` left; in
the other arms it must come back untouched.

Between workloads the harness waits for the background work a workload leaves behind (the
resourceclaim controller creating every claim, each one admitted by the validating webhook in
``bridge``) and for the components to go idle, and accounts the CPU time of each process over the
workload, background work included. The apiserver's own metrics give the time it spent in each
webhook and policy and how often it called each; the bare webhook counts its calls per path, and
dra-bridge's ``dra_bridge_admission_duration_seconds`` counts its decisions per webhook.

Then ``--interleaved`` rounds measure the webhook arms in the same seconds: ``none``, ``bare``,
``bare-patch`` (when asked for) and ``bridge`` on at once, each arm's webhook configurations confined
to namespaces labelled with it (``confined``: the shipped configurations with one more
namespaceSelector expression and names of their own), one namespace per arm, and ``--pods`` GPU Pods
per arm sent at ``--rate`` in all to the arms in turn, one by one (the order rotated each round).
Each arm's added p50 is read against none's in the same round, so the machine's drift between runs
(the bare webhook's added p50 moved between +0.2 and +3.7 ms from one run of the arms to the next)
cancels; what it leaves out is the load each arm puts on the machine for the others, which the arms
run one at a time still show.

Prints a table (per arm and workload: p50/p90/p99/max in ms, failures, CPU per Pod), the
milliseconds each arm adds to ``none`` at p50 and p99 with the webhook calls per GPU Pod, the
interleaved rounds, and the target (dra-bridge adds at most 1.5 times what the bare webhook adds at
p50): judged on the median of the interleaved rounds' ratios (a round where the bare webhook adds
nothing counts as +inf), or, without them, on the arms run one at a time; both shown. Writes JSON
(default bench/results/e2e.json). Exit code 1 when any Pod failed its check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import functools
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.run import cpu_model, loadavg  # noqa: E402
from bench.vegeta import percentile  # noqa: E402
from tests.e2e.controlplane import (  # noqa: E402
    DEFAULT_RUNTIME_CONFIG,
    DRA_FEATURE_GATES,
    LOOPBACK,
    ControlPlane,
    _pdeathsig,
    build_control_plane,
    free_port,
    tail,
)
from tests.e2e.helpers import (  # noqa: E402
    BRIDGE_NAMESPACE,
    DEVICECLASSES,
    BridgeServer,
    Kube,
    legacy_keys,
    pod,
    webhook_configurations,
)

GPU = "nvidia.com/gpu"
# The arms, in the order of odd repetitions. none is the baseline every other arm is read against.
ARMS = ("none", "bare", "bare-patch", "bridge", "map", "native")
DEFAULT_ARMS = ("none", "bare", "bridge", "map", "native")  # bare-patch on request (--arms)
CONVERTING = ("bare-patch", "bridge", "map")  # arms whose GPU Pods must come back with claims
WEBHOOK_ARMS = ("bare", "bare-patch", "bridge")  # arms registered through deploy/base/webhooks.yaml
TEMPLATE_ARMS = ("bare-patch", "map")  # arms that point Pods at the pre-created templates
TARGET_BRIDGE_VS_BARE_P50 = 1.5  # dra-bridge adds at most this many times what the bare webhook adds
CLK_TCK = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
WEBHOOK_CONFIGS = (("mutatingwebhookconfiguration", "dra-bridge"), ("validatingwebhookconfiguration", "dra-bridge"))
# Interleaved rounds: the arms that take part (of those asked for), and the namespace label that
# confines each arm's webhook configurations to its own namespaces.
INTERLEAVED = ("none", "bare", "bare-patch", "bridge")
ARM_LABEL = "bench.dra-bridge.io/arm"
# The policy needs its gate where it is not GA (1.34: beta, off by default); filter_feature_gates
# drops it where it is GA and locked.
BENCH_FEATURE_GATES = {**DRA_FEATURE_GATES, "MutatingAdmissionPolicy": True}


# -- configuration ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    gpu: bool
    pods: int
    rate: float  # 0: sequential (one request in flight)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pods", type=int, default=200, help="GPU Pods per arm at --rate (default 200)")
    p.add_argument("--rate", type=float, default=40.0, help="Pods per second, open model (default 40)")
    p.add_argument(
        "--reps", type=int, default=2, help="runs of every arm, alternating order, none between them (default 2)"
    )
    p.add_argument(
        "--arms",
        default=None,
        help=f"comma-separated, of {','.join(ARMS)} (default: {','.join(DEFAULT_ARMS)}; native only where "
        "DRAExtendedResource is GA)",
    )
    p.add_argument(
        "--interleaved",
        type=int,
        default=3,
        help="rounds with the webhook arms on at once, each in namespaces of its own, GPU Pods sent to the\n"
        "arms in turn, one by one: the target's judgement (default 3; 0: skip; see INTERLEAVED)",
    )
    p.add_argument("--sequential", type=int, default=40, help="GPU Pods one at a time per arm (default 40; 0: skip)")
    p.add_argument(
        "--plain", type=int, default=None, help="Pods without GPUs per arm at --rate (default --pods / 2; 0: skip)"
    )
    p.add_argument("--warmup", type=int, default=20, help="unrecorded Pods at the start of each arm (default 20)")
    p.add_argument("--connections", type=int, default=8, help="client connection pool (default 8)")
    p.add_argument("--timeout", type=float, default=30.0, help="per request, seconds (default 30)")
    p.add_argument("--settle-timeout", type=float, default=180.0, help="wait for claims after a workload (default 180)")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each workload, wait up to this long for other processes to go idle (default 30)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "e2e.json")
    p.add_argument("--work-dir", type=Path, help="keep the control plane's and the webhooks' files and logs here")
    args = p.parse_args(argv)
    if args.plain is None:
        args.plain = args.pods // 2
    if args.pods < 1 or args.rate <= 0 or args.reps < 0 or args.interleaved < 0:
        p.error("--pods must be >= 1, --reps and --interleaved >= 0 and --rate > 0")
    if args.reps == 0 and args.interleaved == 0:
        p.error("nothing to run: --reps 0 and --interleaved 0")
    if args.arms is not None:
        args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        unknown = sorted(set(args.arms) - set(ARMS))
        if unknown or "none" not in args.arms:
            p.error(f"--arms: unknown {unknown}" if unknown else "--arms must include none (the baseline)")
        args.arms = [a for a in ARMS if a in args.arms]
    return args


def workloads(args: argparse.Namespace) -> list[Workload]:
    out = [Workload("gpu", True, args.pods, args.rate)]
    if args.sequential:
        out.append(Workload("gpu-seq", True, args.sequential, 0.0))
    if args.plain:
        out.append(Workload("no-gpu", False, args.plain, args.rate))
    return out


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- Pods --------------------------------------------------------------------------------------------


def pod_body(name: str, gpu: bool) -> bytes:
    obj = pod(name)
    if gpu:
        obj["spec"]["containers"][0]["resources"] = {"limits": {GPU: "1"}, "requests": {GPU: "1"}}
    return json.dumps(obj, separators=(",", ":")).encode()


def check(arm: str, gpu: bool, status: int, body: bytes) -> str | None:
    """Why a response is not what the arm promises, or None."""
    if status != 201:
        with contextlib.suppress(ValueError):
            return f"HTTP {status}: {json.loads(body).get('message', '')[:300]}"
        return f"HTTP {status}: {body[:300]!r}"
    created = json.loads(body)
    claims = created["spec"].get("resourceClaims") or []
    left = legacy_keys(created, [GPU])
    if arm in CONVERTING and gpu:
        if not claims or not all(c.get("resourceClaimTemplateName") for c in claims):
            return f"not converted: resourceClaims={claims}"
        if left:
            return f"legacy request left: {left}"
        used = {c["name"] for c in created["spec"]["containers"][0].get("resources", {}).get("claims") or []}
        if used != {c["name"] for c in claims}:
            return f"container claims {sorted(used)} do not match the Pod's {claims}"
    elif claims or (gpu and not left):
        return f"changed without a conversion: resourceClaims={claims}, legacy={left}"
    return None


# -- the alternatives: a MutatingAdmissionPolicy, the scheduler's native mapping ---------------------

MAP_NAME = "whole-gpu-to-dra"
MAP_TEMPLATE_PREFIX = "whole-gpu-"  # whole-gpu-<N>: N whole GPUs, pre-created in every namespace
MAP_MAX_GPUS = 8  # templates whole-gpu-1 .. whole-gpu-8
MAP_MAX_CONTAINERS = 16  # containers the policy looks at (CEL has no index range; a literal list)
NATIVE_CLASS = "native.nvidia.dra-bridge.io"
# Where dra-bridge and the policy apply: every namespace but the system ones and dra-bridge's own.
SKIPPED_NAMESPACES = ["kube-system", "kube-node-lease", "kube-public", BRIDGE_NAMESPACE]


def map_templates(namespace: str) -> list[dict[str, Any]]:
    """The ResourceClaimTemplates the policy points at: ``whole-gpu-<N>``, N whole NVIDIA GPUs of the
    project's DeviceClass (what dra-bridge makes for ``nvidia.com/gpu: N``). A namespaced object: an
    admin pre-creates them in every namespace that may run GPU Pods."""
    return [
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaimTemplate",
            "metadata": {"name": f"{MAP_TEMPLATE_PREFIX}{n}", "namespace": namespace},
            "spec": {
                "spec": {
                    "devices": {
                        "requests": [
                            {"name": "gpu", "exactly": {"deviceClassName": "whole.nvidia.dra-bridge.io", "count": n}}
                        ]
                    }
                }
            },
        }
        for n in range(1, MAP_MAX_GPUS + 1)
    ]


def map_manifests(version: str) -> list[dict[str, Any]]:
    """A MutatingAdmissionPolicy and its binding (``admissionregistration.k8s.io/<version>``) that
    rewrite whole-GPU Pods inside the apiserver, with no webhook: for every container with
    ``nvidia.com/gpu: N`` in its limits, the extended resource leaves limits and requests, a Pod claim
    ``gpu-<index>`` from the template ``whole-gpu-<N>`` is added to ``spec.resourceClaims`` and to the
    container's ``resources.claims``. The same CREATE-only rule and namespaces as dra-bridge's
    mutating webhook; no quota, no other vendor, no fractions: a fixed rewrite to pre-created
    templates."""
    gpu = "'nvidia.com/gpu'"
    container = "object.spec.containers[i]"
    indices = ", ".join(str(i) for i in range(MAP_MAX_CONTAINERS))
    path = "'/spec/containers/' + string(i) + '/resources"
    key = "jsonpatch.escapeKey('nvidia.com/gpu')"
    patch = f"""\
(has(object.spec.resourceClaims) ? [] : [JSONPatch{{op: 'add', path: '/spec/resourceClaims', value: []}}])
+ variables.gpu.map(i, JSONPatch{{op: 'add', path: '/spec/resourceClaims/-',
    value: Object.spec.resourceClaims{{name: 'gpu-' + string(i),
      resourceClaimTemplateName: '{MAP_TEMPLATE_PREFIX}' + string({container}.resources.limits[{gpu}])}}}})
+ variables.gpu.map(i, JSONPatch{{op: 'remove', path: {path}/limits/' + {key}}})
+ variables.gpu.filter(i, has({container}.resources.requests) && {gpu} in {container}.resources.requests)
    .map(i, JSONPatch{{op: 'remove', path: {path}/requests/' + {key}}})
+ variables.gpu.filter(i, !has({container}.resources.claims))
    .map(i, JSONPatch{{op: 'add', path: {path}/claims', value: []}})
+ variables.gpu.map(i, JSONPatch{{op: 'add', path: {path}/claims/-',
    value: Object.spec.containers.resources.claims{{name: 'gpu-' + string(i)}}}})"""
    api = f"admissionregistration.k8s.io/{version}"
    return [
        {
            "apiVersion": api,
            "kind": "MutatingAdmissionPolicy",
            "metadata": {"name": MAP_NAME},
            "spec": {
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
                "matchConstraints": {
                    "resourceRules": [
                        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}
                    ]
                },
                "matchConditions": [
                    {
                        "name": "whole-gpu",
                        "expression": "object.spec.containers.exists(c, has(c.resources) && "
                        f"has(c.resources.limits) && {gpu} in c.resources.limits)",
                    }
                ],
                "variables": [
                    {
                        "name": "gpu",
                        "expression": f"[{indices}].filter(i, i < size(object.spec.containers) && "
                        f"has({container}.resources) && has({container}.resources.limits) && "
                        f"{gpu} in {container}.resources.limits)",
                    }
                ],
                "mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression": patch}}],
            },
        },
        {
            "apiVersion": api,
            "kind": "MutatingAdmissionPolicyBinding",
            "metadata": {"name": MAP_NAME},
            "spec": {
                "policyName": MAP_NAME,
                "matchResources": {
                    "namespaceSelector": {
                        "matchExpressions": [
                            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": SKIPPED_NAMESPACES}
                        ]
                    }
                },
            },
        },
    ]


# What the policy makes of the benchmark's GPU Pod (one container, nvidia.com/gpu: 1 in limits and
# requests), as a fixed JSON Patch: the bare-patch arm's answer to every mutating call.
BARE_PATCH: list[dict[str, Any]] = [
    {
        "op": "add",
        "path": "/spec/resourceClaims",
        "value": [{"name": "gpu-0", "resourceClaimTemplateName": "whole-gpu-1"}],
    },
    {"op": "remove", "path": "/spec/containers/0/resources/limits/nvidia.com~1gpu"},
    {"op": "remove", "path": "/spec/containers/0/resources/requests/nvidia.com~1gpu"},
    {"op": "add", "path": "/spec/containers/0/resources/claims", "value": [{"name": "gpu-0"}]},
]


def native_class() -> dict[str, Any]:
    """KEP-5004: a DeviceClass that serves ``nvidia.com/gpu`` natively. Pods keep the extended
    resource; kube-scheduler makes the claim when it places the Pod. No admission step at all."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": NATIVE_CLASS},
        "spec": {
            "selectors": [
                {
                    "cel": {
                        "expression": "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'"
                    }
                }
            ],
            "extendedResourceName": GPU,
        },
    }


# -- the apiserver client ----------------------------------------------------------------------------


def tls_context(cp: ControlPlane) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cp.ca_file))
    ctx.load_cert_chain(str(cp.admin_cert), str(cp.admin_key))
    return ctx


@dataclass
class Sample:
    latency: float  # seconds, scheduled send -> response read
    service: float  # seconds, actual send -> response read
    lag: float  # seconds, scheduled -> actual send
    status: int
    body: bytes


async def _drive(
    cp: ControlPlane, posts: list[tuple[str, bytes]], rate: float, connections: int, timeout: float
) -> list[Sample]:
    """POST each (namespace, Pod) in order, at ``rate`` (open model) or one at a time (0)."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    samples: list[Sample | None] = [None] * len(posts)
    async with httpx.AsyncClient(base_url=cp.server, verify=tls_context(cp), limits=limits, timeout=timeout) as client:
        # Open a few keep-alive connections first, so that no measured request pays a handshake.
        await asyncio.gather(*(client.get("/version") for _ in range(min(connections, 4))))

        async def one(i: int, scheduled: float) -> None:
            started = time.perf_counter()
            try:
                namespace, body = posts[i]
                response = await client.post(f"/api/v1/namespaces/{namespace}/pods", content=body, headers=JSON_HEADERS)
                status, body = response.status_code, response.content
            except httpx.HTTPError as err:
                status, body = 0, f"{type(err).__name__}: {err}".encode()
            done = time.perf_counter()
            samples[i] = Sample(done - scheduled, done - started, started - scheduled, status, body)

        if rate <= 0:
            for i in range(len(posts)):
                await one(i, time.perf_counter())
        else:
            start = time.perf_counter() + 0.05
            tasks = []
            for i in range(len(posts)):
                scheduled = start + i / rate
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i, scheduled)))
            await asyncio.gather(*tasks)
    assert all(s is not None for s in samples)
    return [s for s in samples if s is not None]


def create_pods(
    cp: ControlPlane, namespace: str, bodies: list[bytes], rate: float, connections: int, timeout: float
) -> list[Sample]:
    return asyncio.run(_drive(cp, [(namespace, b) for b in bodies], rate, connections, timeout))


def confined(configs: list[dict[str, Any]], arm: str) -> list[dict[str, Any]]:
    """An arm's copy of the webhook configurations for interleaved rounds: applying only to namespaces
    labelled with the arm (``ARM_LABEL``), under names of its own (``dra-bridge-<arm>``, webhooks
    ``<arm>.<name>``: the apiserver's metrics tell the arms apart by webhook name)."""
    out = copy.deepcopy(configs)
    for config in out:
        config["metadata"]["name"] = f"{config['metadata']['name']}-{arm}"
        for hook in config["webhooks"]:
            hook["name"] = f"{arm}.{hook['name']}"
            selector = hook.setdefault("namespaceSelector", {})
            selector.setdefault("matchExpressions", []).append({"key": ARM_LABEL, "operator": "In", "values": [arm]})
    return out


def interleave(arms: list[str], count: int, first: int) -> list[str]:
    """Which arm each of ``count`` Pods goes to: the arms in turn, starting at ``arms[first]``."""
    order = arms[first % len(arms) :] + arms[: first % len(arms)]
    return [order[i % len(order)] for i in range(count)]


class Api:
    """Synchronous calls for the harness itself (probes, counts, metrics), as the admin."""

    def __init__(self, cp: ControlPlane) -> None:
        self.client = httpx.Client(base_url=cp.server, verify=tls_context(cp), timeout=30)

    def close(self) -> None:
        self.client.close()

    def get(self, path: str) -> httpx.Response:
        return self.client.get(path)

    def probe_converted(self, namespace: str) -> bool:
        """A server-side dry-run of a legacy GPU Pod: does it come back with claims?"""
        body = pod_body(f"probe-{int(time.monotonic() * 1000)}", gpu=True)
        r = self.client.post(f"/api/v1/namespaces/{namespace}/pods?dryRun=All", content=body, headers=JSON_HEADERS)
        if r.status_code != 201:
            raise RuntimeError(f"probe Pod: HTTP {r.status_code}: {r.text[:300]}")
        return bool(r.json()["spec"].get("resourceClaims"))

    def has_default_service_account(self, namespace: str) -> bool:
        return self.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/default").status_code == 200

    def claim_count(self, namespace: str) -> int:
        r = self.get(f"/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaims")
        r.raise_for_status()
        return len(r.json()["items"])

    def version(self) -> str:
        return str(self.get("/version").json().get("gitVersion", ""))

    def served_version(self, group: str, resource: str) -> str | None:
        """The version of ``group`` that serves ``resource``, the apiserver's preferred first (discovery)."""
        r = self.get(f"/apis/{group}")
        if r.status_code != 200:
            return None
        versions = [v["version"] for v in r.json().get("versions", [])]
        for version in versions:
            found = self.get(f"/apis/{group}/{version}")
            if found.status_code == 200 and any(x["name"] == resource for x in found.json().get("resources", [])):
                return str(version)
        return None

    def round_trips(self, obj: dict[str, Any], path: str, field_name: str) -> bool:
        """Does a server-side dry-run create of ``obj`` keep ``spec.<field_name>``? (A field behind a
        feature gate that is off is dropped silently.)"""
        r = self.client.post(f"{path}?dryRun=All", content=json.dumps(obj), headers=JSON_HEADERS)
        return r.status_code == 201 and field_name in r.json().get("spec", {})

    def metrics(self) -> dict[str, float]:
        r = self.get("/metrics")
        r.raise_for_status()
        return parse_metrics(r.text)


class BareWebhook:
    """The bare webhook: bench/ceiling.py (allow, echo the uid, count the call per path) served by
    bench/server.py on dra-bridge's stack and TLS, as its own process, with dra-bridge's certificate."""

    def __init__(
        self, *, work_dir: Path, cert_dir: Path, ca_pem: bytes, patch: list[dict[str, Any]] | None = None
    ) -> None:
        self.work_dir = work_dir
        self.cert_dir = cert_dir
        self.ca_pem = ca_pem
        self.port = free_port()
        self.log = work_dir / ("bare-webhook-patch.log" if patch else "bare-webhook.log")
        self.patch_file = work_dir / "bare-patch.json" if patch else None
        if self.patch_file is not None:
            self.patch_file.write_text(json.dumps(patch))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        args = [sys.executable, str(ROOT / "bench" / "server.py"), "--app", "ceiling"]
        args += ["--host", LOOPBACK, "--port", str(self.port), "--cert-dir", str(self.cert_dir)]
        if self.patch_file is not None:
            args += ["--patch", str(self.patch_file)]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                args,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_pdeathsig if sys.platform.startswith("linux") else None,
            )

        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"the bare webhook exited:\n{tail(self.log)}")
            return self.get("/readyz")[0] == 200

        wait(ready, timeout, f"the bare webhook on port {self.port}")

    def get(self, path: str) -> tuple[int, str]:
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        try:
            with urllib.request.urlopen(f"https://{LOOPBACK}:{self.port}{path}", context=context, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def counts(self) -> dict[str, int]:
        status, text = self.get("/counts")
        if status != 200:
            raise RuntimeError(f"bare webhook /counts: HTTP {status}")
        return {str(k): int(v) for k, v in json.loads(text).items()}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


_BRIDGE_DECISIONS = re.compile(r'^dra_bridge_admission_duration_seconds_(count|sum)\{webhook="([^"]*)"\} (\S+)$', re.M)


def bridge_decisions(bridge: BridgeServer) -> dict[str, float]:
    """dra-bridge's own count of decisions per webhook and the seconds they took, from its /metrics
    (``<webhook>`` and ``<webhook> seconds``)."""
    status, text = bridge.get("/metrics")
    if status != 200:
        raise RuntimeError(f"dra-bridge /metrics: HTTP {status}")
    return {
        (name if kind == "count" else f"{name} seconds"): float(value)
        for kind, name, value in _BRIDGE_DECISIONS.findall(text)
    }


def wait(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> float:
    """Poll until ``predicate`` is true; the seconds it took. Raises on timeout."""
    started = time.monotonic()
    last = ""
    while True:
        try:
            if predicate():
                return time.monotonic() - started
        except Exception as err:  # a "not yet", reported on timeout
            last = f"{type(err).__name__}: {err}"
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{'; last: ' + last if last else ''}")
        time.sleep(interval)


# -- apiserver metrics -------------------------------------------------------------------------------

METRIC_FAMILIES = (
    "apiserver_admission_webhook_admission_duration_seconds",
    "apiserver_mutating_admission_policy_check_duration_seconds",
    "apiserver_request_duration_seconds",
    "apiserver_request_sli_duration_seconds",
)
_SAMPLE = re.compile(r"^(\w+)\{(.*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, float]:
    """The _sum and _count series of METRIC_FAMILIES, keyed 'name{labels}'."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(METRIC_FAMILIES):
            continue
        m = _SAMPLE.match(line)
        if m and m.group(1).endswith(("_sum", "_count")):
            out[f"{m.group(1)}{{{m.group(2)}}}"] = float(m.group(3))
    return out


def _split(key: str) -> tuple[str, dict[str, str]]:
    name, _, labels = key.partition("{")
    return name, dict(_LABEL.findall(labels))


def admission_view(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What the apiserver measured between two scrapes: per webhook and per mutating policy (calls and
    mean time), and Pod POSTs with and without the webhooks."""
    groups: dict[tuple[str, str], dict[str, float]] = {}

    def add(group: str, label: str, kind: str, value: float) -> None:
        entry = groups.setdefault((group, label), {"sum": 0.0, "count": 0.0})
        entry[kind] += value

    for key, value in after.items():
        delta = value - before.get(key, 0.0)
        if delta <= 0:
            continue
        name, labels = _split(key)
        family, _, kind = name.rpartition("_")
        if family == "apiserver_admission_webhook_admission_duration_seconds":
            add("webhooks", f"{labels.get('name')} {labels.get('type')} {labels.get('operation')}", kind, delta)
        elif family == "apiserver_mutating_admission_policy_check_duration_seconds":
            add("policies", f"{labels.get('policy')} {labels.get('error_type')}", kind, delta)
        elif family in ("apiserver_request_duration_seconds", "apiserver_request_sli_duration_seconds"):
            post = (
                labels.get("resource"),
                labels.get("verb"),
                labels.get("subresource", ""),
                labels.get("dry_run", ""),
            )
            if post == ("pods", "POST", "", ""):
                label = "total" if family == "apiserver_request_duration_seconds" else "sli (without webhooks)"
                add("pod_post", label, kind, delta)
    view: dict[str, Any] = {}
    for (group, label), entry in sorted(groups.items()):
        count = int(entry["count"])
        view.setdefault(group, {})[label] = {
            "count": count,
            "mean_ms": round(entry["sum"] / count * 1000, 3) if count else None,
        }
    return view


# -- CPU accounting ---------------------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a live process; 0 when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    """CPU seconds all CPUs spent not idle since boot."""
    # user nice system idle iowait irq softirq [steal ...]: steal is not time this machine used.
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


class CpuMeter:
    def __init__(self, pids: Callable[[], dict[str, int]]) -> None:
        self._pids = pids

    def snapshot(self) -> dict[str, float]:
        snap = {name: process_cpu(pid) for name, pid in self._pids().items()}
        snap["_machine"] = machine_busy()
        return snap

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        out = {name: after[name] - before.get(name, after[name]) for name in after if name != "_machine"}
        machine = after["_machine"] - before["_machine"]
        out["other"] = max(0.0, machine - sum(out.values()))
        return out

    def wait_idle(self, *, quiet_wait: float, cores: float = 0.2, window: float = 1.0, timeout: float = 30.0) -> float:
        """Wait until the measured processes use under ``cores`` for a whole ``window`` (up to ``timeout``),
        and other processes too (up to ``quiet_wait``: a shared machine may never be quiet)."""
        started = time.monotonic()
        while True:
            before = self.snapshot()
            time.sleep(window)
            delta = self.delta(before, self.snapshot())
            other = delta.pop("other")
            elapsed = time.monotonic() - started
            ours_idle = sum(delta.values()) < cores * window or elapsed > timeout
            if ours_idle and (other < cores * window or elapsed > quiet_wait):
                return elapsed


# -- figures ----------------------------------------------------------------------------------------


def stats(values_s: list[float]) -> dict[str, float | None]:
    ordered = sorted(v * 1000 for v in values_s)

    def q(x: float) -> float | None:
        value = percentile(ordered, x)
        return None if value is None else round(value, 2)

    return {
        "p50": q(0.50),
        "p90": q(0.90),
        "p99": q(0.99),
        "max": round(ordered[-1], 2) if ordered else None,
        "mean": round(sum(ordered) / len(ordered), 2) if ordered else None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


@dataclass
class Row:
    arm: str
    workload: str
    rep: int
    namespace: str
    pods: int
    rate: float
    gpu: bool = True
    position: int = 0  # the arm run's place in the sequence: a none run next to it is its baseline
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    wall: float = 0.0  # creating, then settling: what the CPU figures cover
    settle_seconds: float = 0.0
    settle_error: str | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    apiserver: dict[str, Any] = field(default_factory=dict)
    self_counted: dict[str, int] = field(default_factory=dict)  # calls the webhook process counted itself
    self_seconds: dict[str, float] = field(default_factory=dict)  # the time it measured deciding them (dra-bridge)

    def calls(self) -> dict[str, int]:
        """Calls the apiserver made per webhook and mutating policy over the workload (its metrics)."""
        out = {label: int(e["count"]) for label, e in self.apiserver.get("webhooks", {}).items()}
        out.update({f"policy {label}": int(e["count"]) for label, e in self.apiserver.get("policies", {}).items()})
        return out

    def to_json(self) -> dict[str, Any]:
        per_pod = {k: round(v / max(1, self.pods) * 1000, 3) for k, v in sorted(self.cpu.items())}
        return {
            "arm": self.arm,
            "workload": self.workload,
            "rep": self.rep,
            "position": self.position,
            "namespace": self.namespace,
            "pods": self.pods,
            "rate": self.rate or "sequential",
            "created": sum(1 for s in self.samples if s.status == 201),
            "failures": len(self.failures),
            "failure_samples": self.failures[:5],
            "seconds": round(self.seconds, 2),
            "achieved_rate": round(len(self.samples) / self.seconds, 1) if self.seconds else None,
            "latency_ms": stats([s.latency for s in self.samples]),
            "service_ms": stats([s.service for s in self.samples]),
            "dispatch_lag_ms_max": round(max((s.lag for s in self.samples), default=0) * 1000, 2),
            "settle_seconds": round(self.settle_seconds, 2),
            "settle_error": self.settle_error,
            "cpu_ms_per_pod": per_pod,
            "other_share": round(self.cpu.get("other", 0.0) / (self.wall * CPUS), 3) if self.wall else None,
            "apiserver": self.apiserver,
            "calls": self.calls(),
            "self_counted_calls": self.self_counted,
            "self_decision_ms_mean": {
                k: round(v / self.self_counted[k] * 1000, 3)
                for k, v in self.self_seconds.items()
                if self.self_counted.get(k)
            },
        }


def added(arm: dict[str, float | None], base: dict[str, float | None], key: str) -> float | None:
    a, b = arm.get(key), base.get(key)
    return round(a - b, 2) if a is not None and b is not None else None


def neighbours(rows: list[Row], of: list[Row]) -> list[Row]:
    """The ``none`` runs of the same workload right before and after each of ``of``: their baseline."""
    wanted = {(r.workload, r.position + d) for r in of for d in (-1, 1)}
    return [r for r in rows if r.arm == "none" and (r.workload, r.position) in wanted]


def summarize(rows: list[Row], names: list[str], arms: list[str]) -> dict[str, Any]:
    """Per workload and arm: latency over every repetition, what it adds to ``none`` (p50, p99, ms and
    ratio) and calls per Pod. An arm is read against the none runs right before and after it (pooled),
    so that a drift of the machine or the control plane over the run cancels out; per repetition,
    against that repetition's neighbours."""
    summary: dict[str, Any] = {}
    reps = sorted({r.rep for r in rows})
    for name in names:
        entry: dict[str, Any] = {}
        for arm in arms:
            mine = [r for r in rows if r.workload == name and r.arm == arm]
            if not mine:
                continue
            base_rows = mine if arm == "none" else neighbours(rows, mine)
            base = stats([s.latency for r in base_rows for s in r.samples])
            lat = stats([s.latency for r in mine for s in r.samples])
            pods = sum(r.pods for r in mine)
            calls: dict[str, int] = {}
            own: dict[str, int] = {}
            for r in mine:
                for label, count in r.calls().items():
                    calls[label] = calls.get(label, 0) + count
                for label, count in r.self_counted.items():
                    own[label] = own.get(label, 0) + count
            per_rep = []
            for rep in reps if arm != "none" else []:
                a = [r for r in mine if r.rep == rep]
                b = neighbours(rows, a)
                if a and b:
                    la = stats([s.latency for r in a for s in r.samples])
                    lb = stats([s.latency for r in b for s in r.samples])
                    per_rep.append(
                        {"rep": rep, "added_ms_p50": added(la, lb, "p50"), "added_ms_p99": added(la, lb, "p99")}
                    )
            entry[arm] = {
                "pods": pods,
                "failures": sum(len(r.failures) for r in mine),
                "latency_ms": lat,
                "baseline_ms": base,
                "baseline_runs": sorted({(r.rep, r.position) for r in base_rows}),
                "added_ms_p50": added(lat, base, "p50"),
                "added_ms_p99": added(lat, base, "p99"),
                "ratio_p50": ratio(lat["p50"], base["p50"]),
                "ratio_p99": ratio(lat["p99"], base["p99"]),
                "per_rep": per_rep,
                "calls_per_pod": {label: round(count / pods, 3) for label, count in sorted(calls.items())},
                "webhook_calls_per_pod": round(
                    sum(c for label, c in calls.items() if not label.startswith("policy ")) / pods, 3
                ),
                "self_counted_calls_per_pod": {label: round(c / pods, 3) for label, c in sorted(own.items())},
                "self_decision_ms_mean": {
                    label: round(sum(r.self_seconds.get(label, 0.0) for r in mine) / c * 1000, 3)
                    for label, c in sorted(own.items())
                    if c and any(label in r.self_seconds for r in mine)
                },
                "apiserver_post_mean_ms": mean_of(mine, "pod_post", "total"),
                "apiserver_post_mean_ms_without_webhooks": mean_of(mine, "pod_post", "sli (without webhooks)"),
                "cpu_ms_per_pod": {
                    k: round(sum(r.cpu.get(k, 0.0) for r in mine) / max(1, pods) * 1000, 3)
                    for k in sorted({k for r in mine for k in r.cpu})
                },
            }
        summary[name] = entry
    return summary


def summarize_interleaved(rows: list[Row], arms: list[str]) -> dict[str, Any]:
    """Interleaved rounds: per round, each arm's latency and what it adds to none's in the same round
    (the same seconds of the same machine, so a drift between rounds cancels), and the ratio of what
    dra-bridge adds to what the bare webhook (and the bare webhook that patches) adds; over the
    rounds, each arm's latency pooled and the median of the per-round ratios. A round where the
    bare webhook adds nothing at p50 has no ratio (``None``, marked unbounded) and counts as +inf in
    the median: against dra-bridge. A median that is +inf is written as ``None``."""
    rounds: list[dict[str, Any]] = []
    for n in sorted({r.rep for r in rows}):
        mine = {r.arm: r for r in rows if r.rep == n}
        if "none" not in mine:
            continue
        none = stats([s.latency for s in mine["none"].samples])
        entry: dict[str, Any] = {"round": n, "arms": {}}
        for arm in arms:
            row = mine.get(arm)
            if row is None:
                continue
            lat = stats([s.latency for s in row.samples])
            entry["arms"][arm] = {
                "pods": row.pods,
                "failures": len(row.failures),
                "latency_ms": lat,
                "added_ms_p50": added(lat, none, "p50") if arm != "none" else None,
                "added_ms_p99": added(lat, none, "p99") if arm != "none" else None,
                "calls_per_pod": {label: round(c / max(1, row.pods), 3) for label, c in sorted(row.calls().items())},
                "apiserver_mean_ms": {
                    label: e["mean_ms"] for label, e in sorted(row.apiserver.get("webhooks", {}).items())
                },
                "self_decision_ms_mean": {
                    k: round(v / row.self_counted[k] * 1000, 3)
                    for k, v in row.self_seconds.items()
                    if row.self_counted.get(k)
                },
            }
        for key, bare_arm in (("ratio", "bare"), ("ratio_vs_bare_patch", "bare-patch")):
            if "bridge" in entry["arms"] and bare_arm in entry["arms"]:
                bridge, bare = entry["arms"]["bridge"]["added_ms_p50"], entry["arms"][bare_arm]["added_ms_p50"]
                if bridge is not None and bare is not None:
                    entry[key] = round(bridge / bare, 2) if bare > 0 else None
                    if bare <= 0:
                        entry[f"{key}_unbounded"] = True
        rounds.append(entry)
    pooled: dict[str, Any] = {}
    base = stats([s.latency for r in rows if r.arm == "none" for s in r.samples])
    for arm in arms:
        lat = stats([s.latency for r in rows if r.arm == arm for s in r.samples])
        if lat["p50"] is None:
            continue
        pooled[arm] = {
            "pods": sum(r.pods for r in rows if r.arm == arm),
            "latency_ms": lat,
            "added_ms_p50": added(lat, base, "p50") if arm != "none" else None,
            "added_ms_p99": added(lat, base, "p99") if arm != "none" else None,
        }
    out: dict[str, Any] = {"rounds": rounds, "arms": pooled}
    for key in ("ratio", "ratio_vs_bare_patch"):
        values = [math.inf if r[key] is None else r[key] for r in rounds if key in r]
        if values:
            middle = statistics.median(values)
            out[f"median_{key}"] = None if math.isinf(middle) else round(middle, 2)
    return out


def target(summary: dict[str, Any], interleaved: dict[str, Any] | None = None) -> dict[str, Any]:
    """dra-bridge adds at most TARGET_BRIDGE_VS_BARE_P50 times what the bare webhook adds at p50, on
    GPU Pods at the fixed rate. Judged on the interleaved rounds where there are any (the median of
    the per-round ratios: both arms measured in the same seconds), else on the arms run one at a time
    (shown either way, with the back-to-back Pods)."""
    out: dict[str, Any] = {"limit": TARGET_BRIDGE_VS_BARE_P50}
    for name in ("gpu", "gpu-seq"):
        arms = summary.get(name, {})
        for bare_arm, key in (("bare", name), ("bare-patch", f"{name} vs bare-patch")):
            if "bridge" not in arms or bare_arm not in arms:
                continue
            bridge, bare = arms["bridge"]["added_ms_p50"], arms[bare_arm]["added_ms_p50"]
            value = round(bridge / bare, 2) if bridge is not None and bare and bare > 0 else None
            out[key] = {"bridge_added_ms_p50": bridge, "bare_added_ms_p50": bare, "ratio": value}
    if "gpu" in out:
        value = out["gpu"]["ratio"]
        out["sequential_pass"] = value is not None and value <= TARGET_BRIDGE_VS_BARE_P50
        out["pass"] = out["sequential_pass"]
        out["judged_on"] = "sequential"
    if interleaved and "median_ratio" in interleaved:
        median = interleaved["median_ratio"]
        out["interleaved"] = {
            "rounds": [r.get("ratio") for r in interleaved["rounds"]],
            "median_ratio": median,
            "rounds_vs_bare_patch": [r.get("ratio_vs_bare_patch") for r in interleaved["rounds"]],
            "median_ratio_vs_bare_patch": interleaved.get("median_ratio_vs_bare_patch"),
        }
        out["pass"] = median is not None and median <= TARGET_BRIDGE_VS_BARE_P50
        out["judged_on"] = "interleaved"
    return out


def mean_of(rows: list[Row], group: str, label: str) -> float | None:
    """The count-weighted mean of one apiserver series over several rows."""
    entries = [r.apiserver.get(group, {}).get(label) for r in rows]
    pairs = [(e["count"], e["mean_ms"]) for e in entries if e and e["count"] and e["mean_ms"] is not None]
    total = sum(c for c, _ in pairs)
    return round(sum(c * m for c, m in pairs) / total, 2) if total else None


def other_share(rows: list[Row]) -> float | None:
    """Share of the machine's CPU that processes outside the benchmark used during the workloads."""
    wall = sum(r.wall for r in rows)
    return round(sum(r.cpu.get("other", 0.0) for r in rows) / (wall * CPUS), 3) if wall else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def signed(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def table(result: dict[str, Any]) -> str:
    cpu_cols = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "webhook", "client")
    short = {
        "kube-apiserver": "apisrv",
        "kube-controller-manager": "kcm",
        "kube-scheduler": "sched",
        "webhook": "hook",
    }
    cp = result["control_plane"]
    lines = [
        f"control plane {cp['version']} (MutatingAdmissionPolicy {cp['mutating_admission_policy'] or 'not served'}, "
        f"native mapping: {cp['native_mapping']}), {result['machine']['nproc']} CPUs "
        f"({result['machine']['cpu_model']}), Python {result['machine']['python']}, load average "
        f"{result['machine']['loadavg_start']} -> {result['machine']['loadavg_end']}",
        "latency: scheduled send -> response read, ms; gpu-seq: one request at a time, back to back; "
        "cpu: ms per Pod over the workload and the work it left behind (claims); hook: the webhook "
        "process (bare or dra-bridge); other: share of the machine's CPU used by other processes meanwhile",
        "",
        f"{'arm':10} {'workload':8} {'rep':>3} {'pods':>5} {'fail':>4} {'rate/s':>6} "
        f"{'p50':>7} {'p90':>7} {'p99':>7} {'max':>8}  "
        + " ".join(f"{short.get(c, c):>6}" for c in cpu_cols)
        + f" {'other':>6} {'settle s':>8}",
    ]
    for row in result["rows"]:
        lat, cpu = row["latency_ms"], row["cpu_ms_per_pod"]
        cpu = {**cpu, "webhook": cpu.get("dra-bridge", cpu.get("bare-webhook"))}
        rate = "seq" if row["rate"] == "sequential" else fmt(row["achieved_rate"])
        lines.append(
            f"{row['arm']:10} {row['workload']:8} {row['rep']:>3} {row['pods']:>5} {row['failures']:>4} {rate:>6} "
            f"{fmt(lat['p50'], 2):>7} {fmt(lat['p90'], 2):>7} {fmt(lat['p99'], 2):>7} {fmt(lat['max'], 2):>8}  "
            + " ".join(f"{fmt(cpu.get(c), 2):>6}" for c in cpu_cols)
            + f" {fmt((row['other_share'] or 0) * 100, 0) + '%':>6} {fmt(row['settle_seconds']):>8}"
        )
    lines += [
        "",
        "added to none (the arm's runs pooled against the none runs right before and after them; per "
        "repetition the same), and the apiserver's calls per Pod",
        f"{'workload':8} {'arm':10} {'p50':>7} {'p99':>7} {'+ms p50':>8} {'+ms p99':>8} {'x p50':>6} {'x p99':>6} "
        f"{'calls':>5}  {'per rep +p50/+p99':22} apiserver mean per Pod POST (outside webhooks)",
    ]
    for name, arms in result["summary"].items():
        for arm, s in arms.items():
            lat = s["latency_ms"]
            reps = ", ".join(f"{signed(r['added_ms_p50'], 1)}/{signed(r['added_ms_p99'], 1)}" for r in s["per_rep"])
            calls = s["webhook_calls_per_pod"] + sum(
                v for k, v in s["calls_per_pod"].items() if k.startswith("policy ")
            )
            lines.append(
                f"{name:8} {arm:10} {fmt(lat['p50'], 2):>7} {fmt(lat['p99'], 2):>7} "
                f"{signed(s['added_ms_p50']) if arm != 'none' else '':>8} "
                f"{signed(s['added_ms_p99']) if arm != 'none' else '':>8} "
                f"{fmt(s['ratio_p50'], 2) if arm != 'none' else '':>6} {fmt(s['ratio_p99'], 2) if arm != 'none' else '':>6} "
                f"{fmt(calls, 2):>5}  {reps if arm != 'none' else '':22} "
                f"{fmt(s['apiserver_post_mean_ms'], 2)} ({fmt(s['apiserver_post_mean_ms_without_webhooks'], 2)})"
            )
    lines += ["", "calls per GPU Pod by path (gpu and gpu-seq pooled): the apiserver's count | the server's own"]
    for arm in result["arms"]:
        merged: dict[str, float] = {}
        own: dict[str, float] = {}
        pods = 0
        for name in ("gpu", "gpu-seq"):
            s = result["summary"].get(name, {}).get(arm)
            if not s:
                continue
            pods += s["pods"]
            for label, v in s["calls_per_pod"].items():
                merged[label] = merged.get(label, 0.0) + v * s["pods"]
            for label, v in s["self_counted_calls_per_pod"].items():
                own[label] = own.get(label, 0.0) + v * s["pods"]
        if not pods:
            continue
        hooks = ", ".join(f"{label} {v / pods:.2f}" for label, v in sorted(merged.items())) or "no calls"
        mine = ", ".join(f"{label} {v / pods:.2f}" for label, v in sorted(own.items()))
        lines.append(f"  {arm:10} {hooks}{' | ' + mine if mine else ''}")
    goal = result["target"]
    if "gpu" in goal:
        g = goal["gpu"]
        verdict = "PASS" if goal.get("sequential_pass") else "MISS"
        seq = goal.get("gpu-seq")
        lines += [
            "",
            f"one arm at a time: dra-bridge adds at most {goal['limit']}x what the bare webhook adds at p50 (gpu at "
            f"the rate): {signed(g['bridge_added_ms_p50'])} vs {signed(g['bare_added_ms_p50'])} ms = "
            f"{fmt(g['ratio'], 2)}x {verdict}"
            + (
                f"; back to back {signed(seq['bridge_added_ms_p50'])} vs {signed(seq['bare_added_ms_p50'])} ms = "
                f"{fmt(seq['ratio'], 2)}x"
                if seq
                else ""
            ),
        ]
        for name in ("gpu", "gpu-seq"):
            patched = goal.get(f"{name} vs bare-patch")
            if patched:
                lines.append(
                    f"  against bare-patch ({name}): {signed(patched['bridge_added_ms_p50'])} vs "
                    f"{signed(patched['bare_added_ms_p50'])} ms = {fmt(patched['ratio'], 2)}x"
                )
    lines += interleaved_table(result.get("interleaved"), goal)
    noise = result["noise"]["other_share_mean"]
    if noise is not None and noise > 0.05:
        lines += ["", f"NOISY: other processes used {noise:.0%} of the machine's CPU during the workloads"]
    for arm, hooks in result["apiserver_webhooks"].items():
        if hooks:
            lines += ["", f"the apiserver's view, arm '{arm}' (mean ms per call, calls):"]
            for label, entry in hooks.items():
                lines.append(f"  {label:60} {fmt(entry['mean_ms'], 2):>7} ms  {entry['count']:>6}")
            decided = result["summary"].get("gpu", {}).get(arm, {}).get("self_decision_ms_mean")
            if decided:
                lines.append(
                    "  of which deciding, as the server measured it (gpu): "
                    + ", ".join(f"{k} {v:.2f} ms" for k, v in decided.items())
                )
    return "\n".join(lines)


def interleaved_table(interleaved: dict[str, Any] | None, goal: dict[str, Any]) -> list[str]:
    if not interleaved:
        return []
    lines = [
        "",
        "interleaved rounds: the arms on at once, each in namespaces of its own, GPU Pods sent to them in turn; "
        "added: to none's in the same round; apiserver: mean ms per call of each webhook",
        f"{'round':>5} {'arm':10} {'pods':>5} {'fail':>4} {'p50':>7} {'p99':>7} {'+ms p50':>8} {'+ms p99':>8}  apiserver",
    ]
    for entry in interleaved["rounds"]:
        for arm, a in entry["arms"].items():
            lat = a["latency_ms"]
            hooks = ", ".join(
                f"{'.'.join(label.split('.')[:2])} {fmt(ms, 2)}" for label, ms in a["apiserver_mean_ms"].items()
            )
            lines.append(
                f"{entry['round']:>5} {arm:10} {a['pods']:>5} {a['failures']:>4} {fmt(lat['p50'], 2):>7} "
                f"{fmt(lat['p99'], 2):>7} {signed(a['added_ms_p50']) if arm != 'none' else '':>8} "
                f"{signed(a['added_ms_p99']) if arm != 'none' else '':>8}  {hooks}"
            )
    for arm, a in interleaved["arms"].items():
        if arm != "none":
            lines.append(
                f"{'all':>5} {arm:10} {a['pods']:>5} {'':>4} {fmt(a['latency_ms']['p50'], 2):>7} "
                f"{fmt(a['latency_ms']['p99'], 2):>7} {signed(a['added_ms_p50']):>8} {signed(a['added_ms_p99']):>8}"
            )
    judged = goal.get("interleaved")
    if judged:
        rounds = ", ".join(fmt(r, 2) for r in judged["rounds"])
        verdict = "PASS" if goal.get("pass") else "MISS"
        lines.append(
            f"target: dra-bridge adds at most {goal['limit']}x what the bare webhook adds at p50, the median of the "
            f"interleaved rounds: {rounds} -> {fmt(judged['median_ratio'], 2)}x {verdict}"
        )
        if judged.get("median_ratio_vs_bare_patch") is not None:
            patched = ", ".join(fmt(r, 2) for r in judged["rounds_vs_bare_patch"])
            lines.append(f"  against bare-patch: {patched} -> {fmt(judged['median_ratio_vs_bare_patch'], 2)}x")
    return lines


# -- the run ----------------------------------------------------------------------------------------


def minor_of(version: str) -> int:
    match = re.match(r"v1\.(\d+)\.", version)
    return int(match.group(1)) if match else 0


def sequence(arms: list[str], reps: int) -> list[tuple[str, int]]:
    """(arm, repetition) in the order they run: none before, between and after the other arms, so
    that each is read against the baseline right before and after it; the other arms forward in odd
    repetitions and backward in even ones; one none where two repetitions meet."""
    others = [a for a in arms if a != "none"]
    out: list[tuple[str, int]] = []
    for rep in range(1, reps + 1):
        order = others if rep % 2 else list(reversed(others))
        if not out:
            out.append(("none", rep))
        for arm in order:
            out += [(arm, rep), ("none", rep)]
    return out


class Bench:
    def __init__(self, args: argparse.Namespace, work_dir: Path) -> None:
        self.args = args
        self.work_dir = work_dir
        self.cp: ControlPlane | None = None
        self.bridge: BridgeServer | None = None
        self.bare: BareWebhook | None = None
        self.bare_patch: BareWebhook | None = None
        self.api: Api | None = None
        self.kube: Kube | None = None
        self.rows: list[Row] = []
        self.arm_log: list[dict[str, Any]] = []
        self.arms: list[str] = []
        self.skipped: dict[str, str] = {}
        self.map_version: str | None = None
        self.native: str = "not checked"
        self.active: str | None = None
        self.deleting: list[str] = []  # namespaces of the previous run, being deleted
        self.interleaved_rows: list[Row] = []
        self.interleaved_log: list[dict[str, Any]] = []

    # setup / teardown

    def start(self) -> None:
        started = time.monotonic()
        bin_dir = build_control_plane()
        log(f"control plane binaries: {bin_dir}")
        version = subprocess.run(
            [str(bin_dir / "kube-apiserver"), "--version"], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
        runtime_config = DEFAULT_RUNTIME_CONFIG
        if minor_of(version) < 36:  # MutatingAdmissionPolicy is v1beta1 there, and off unless asked for
            runtime_config += ",admissionregistration.k8s.io/v1beta1=true"
        self.cp = ControlPlane(
            bin_dir, self.work_dir / "control-plane", BENCH_FEATURE_GATES, runtime_config=runtime_config
        )
        self.cp.start()
        self.kube = Kube(self.cp)
        self.api = Api(self.cp)
        self.kube.kubectl("apply", "--server-side", "-f", str(DEVICECLASSES))
        self.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": BRIDGE_NAMESPACE}})
        (self.work_dir / "dra-bridge").mkdir(parents=True, exist_ok=True)
        self.bridge = BridgeServer(work_dir=self.work_dir / "dra-bridge", kubeconfig=self.cp.kubeconfig)
        self.bare = BareWebhook(
            work_dir=self.work_dir / "dra-bridge", cert_dir=self.bridge.cert_dir, ca_pem=self.bridge.ca_pem
        )
        self.bare_patch = BareWebhook(
            work_dir=self.work_dir / "dra-bridge",
            cert_dir=self.bridge.cert_dir,
            ca_pem=self.bridge.ca_pem,
            patch=BARE_PATCH,
        )
        self.probe_namespace = self.namespace("bench-probe", templates=True)
        self.meter = CpuMeter(self.pids)
        self.choose_arms()
        log(f"control plane {version} up at {self.cp.server} in {time.monotonic() - started:.1f}s; arms {self.arms}")

    def choose_arms(self) -> None:
        """The arms this release can run: the policy where its API is served, the native mapping where
        a DeviceClass keeps extendedResourceName (by default only where the gate is GA)."""
        assert self.api is not None and self.cp is not None
        wanted = self.args.arms or list(DEFAULT_ARMS)
        self.map_version = self.api.served_version("admissionregistration.k8s.io", "mutatingadmissionpolicies")
        if self.map_version is None:
            self.skipped["map"] = "the apiserver serves no mutatingadmissionpolicies"
        kept = self.api.round_trips(native_class(), "/apis/resource.k8s.io/v1/deviceclasses", "extendedResourceName")
        gate = self.cp.effective_feature_gates.get("kube-apiserver", {}).get("DRAExtendedResource")
        dropped = self.cp.dropped_feature_gates.get("kube-apiserver", {}).get("DRAExtendedResource", "")
        ga = "GA" in dropped
        self.native = "GA" if ga and kept else ("gate on, not GA" if kept and gate else "not available")
        if not kept:
            self.skipped["native"] = "DeviceClass.spec.extendedResourceName is dropped (DRAExtendedResource off)"
        elif not ga and self.args.arms is None:
            self.skipped["native"] = "DRAExtendedResource is not GA on this release (ask with --arms)"
        self.arms = [a for a in ARMS if a in wanted and a not in self.skipped]
        for arm, why in self.skipped.items():
            if arm in wanted:
                log(f"arm {arm} left out: {why}")

    def stop(self) -> None:
        for server in (self.bridge, self.bare, self.bare_patch):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        if self.api is not None:
            with contextlib.suppress(Exception):
                self.api.close()
        if self.cp is not None:
            self.cp.stop()

    def pids(self) -> dict[str, int]:
        assert self.cp is not None
        out = self.cp.pids()
        if self.bridge is not None and self.bridge.proc is not None and self.bridge.proc.poll() is None:
            out["dra-bridge"] = self.bridge.proc.pid
        for bare in (self.bare, self.bare_patch):
            if bare is not None and bare.proc is not None and bare.proc.poll() is None:
                # One bare webhook at a time, but for the interleaved rounds: then both, each its own
                out["bare-patch-webhook" if bare is self.bare_patch and "bare-webhook" in out else "bare-webhook"] = (
                    bare.proc.pid
                )
        out["client"] = os.getpid()
        return out

    def namespace(self, prefix: str, *, templates: bool = False, labels: dict[str, str] | None = None) -> str:
        """A fresh namespace with its default ServiceAccount; ``templates``: with the policy's templates."""
        assert self.kube is not None and self.api is not None
        name = self.kube.namespace(prefix, labels)
        if templates:
            self.kube.apply(map_templates(name))
        api = self.api
        wait(lambda: api.has_default_service_account(name), 60, f"the default ServiceAccount in {name}")
        return name

    # arms: switch on, check it is in effect; switch off, check it is gone

    def server(self, arm: str) -> BridgeServer | BareWebhook:
        server = {"bare": self.bare, "bare-patch": self.bare_patch, "bridge": self.bridge}[arm]
        assert server is not None
        return server

    def self_counts(self) -> dict[str, float]:
        """What the active arm's webhook server counted itself (nothing for the arms without one)."""
        return self.counts_of(self.active) if self.active in WEBHOOK_ARMS else {}

    def enter(self, arm: str) -> float:
        assert self.bridge is not None and self.bare is not None and self.kube is not None and self.api is not None
        started = time.monotonic()
        api, ns = self.api, self.probe_namespace
        if arm in WEBHOOK_ARMS:
            server = self.server(arm)
            server.start()
            self.kube.apply(webhook_configurations(port=server.port, ca_pem=server.ca_pem))
        self.active = arm
        if arm in ("bridge", "bare-patch"):
            wait(lambda: api.probe_converted(ns), 60, f"the apiserver to call the {arm} webhook")
        elif arm == "bare":
            wait(functools.partial(self.reaches_bare, ns), 60, "the apiserver to call the bare webhook")
        elif arm == "map":
            assert self.map_version is not None
            self.kube.apply(map_manifests(self.map_version))
            wait(lambda: api.probe_converted(ns), 60, "the apiserver to apply the MutatingAdmissionPolicy")
        elif arm == "native":
            self.kube.apply(native_class())
            wait(lambda: not api.probe_converted(ns), 60, "a GPU Pod stored as it is")
        else:
            wait(lambda: not api.probe_converted(ns), 60, "a GPU Pod stored as it is")
        return time.monotonic() - started

    def leave(self, arm: str) -> float:
        assert self.bridge is not None and self.bare is not None and self.kube is not None and self.api is not None
        started = time.monotonic()
        api, ns = self.api, self.probe_namespace
        if arm in WEBHOOK_ARMS:
            for kind, name in WEBHOOK_CONFIGS:
                self.kube.kubectl("delete", kind, name, "--ignore-not-found")
            if arm in ("bridge", "bare-patch"):
                wait(lambda: not api.probe_converted(ns), 60, f"the apiserver to stop calling the {arm} webhook")
            else:
                bare = self.bare

                def not_called() -> bool:
                    before = bare.counts()
                    api.probe_converted(ns)
                    return bare.counts() == before

                wait(not_called, 60, "the apiserver to stop calling the bare webhook")
            time.sleep(1.0)  # the validating configuration goes away through the same informer; be generous
            self.server(arm).stop()
        elif arm == "map":
            self.kube.kubectl("delete", "mutatingadmissionpolicybinding", MAP_NAME, "--ignore-not-found")
            self.kube.kubectl("delete", "mutatingadmissionpolicy", MAP_NAME, "--ignore-not-found")
            wait(lambda: not api.probe_converted(ns), 60, "the apiserver to stop applying the policy")
        elif arm == "native":
            self.kube.kubectl("delete", "deviceclass", NATIVE_CLASS, "--ignore-not-found")
        self.active = None
        return time.monotonic() - started

    def run_arm(self, arm: str, rep: int, position: int) -> None:
        assert self.api is not None
        args = self.args
        log(f"rep {rep} arm {arm}: preparing")
        switch_on = self.enter(arm)
        templates = arm in TEMPLATE_ARMS
        plan = [(w, self.namespace(f"{arm}-{w.name}-r{rep}", templates=templates)) for w in workloads(args)]
        if args.warmup:
            warm_ns = self.namespace(f"{arm}-warmup-r{rep}", templates=templates)
            bodies = [pod_body(f"warm-{i:05d}", True) for i in range(args.warmup)]
            warm = create_pods(self.cp_(), warm_ns, bodies, args.rate, args.connections, args.timeout)
            bad = [s for s in warm if check(arm, True, s.status, s.body)]
            if bad:
                log(
                    f"warm-up: {len(bad)} of {len(warm)} Pods not as expected, e.g. {check(arm, True, bad[0].status, bad[0].body)}"
                )
            self.settle(warm_ns, expected=len(warm) - len(bad) if arm in CONVERTING else 0)
        cleanup = self.wait_gone()
        idle = self.meter.wait_idle(quiet_wait=args.quiet_wait)
        for workload, namespace in plan:
            self.run_workload(arm, rep, workload, namespace, position)
        switch_off = self.leave(arm)
        # Every arm starts from the same cluster: its Pods (never scheduled: no nodes) and claims go.
        # Left in place, thousands of pending Pods are retried by kube-scheduler on every cluster
        # event, more in the arms that make claims, and the later arms pay for the earlier ones.
        # The namespace controller takes a few seconds to finish; the next run waits for it before it
        # measures anything (wait_gone), while it sets itself up.
        assert self.kube is not None
        self.deleting = [ns for _, ns in plan] + ([warm_ns] if args.warmup else [])
        self.kube.kubectl("delete", "namespace", *self.deleting, "--wait=false")
        self.arm_log.append(
            {
                "arm": arm,
                "rep": rep,
                "switch_on_seconds": round(switch_on, 2),
                "switch_off_seconds": round(switch_off, 2),
                "wait_for_previous_cleanup_seconds": round(cleanup, 2),
                "position": position,
                "idle_wait": round(idle, 2),
            }
        )

    def cp_(self) -> ControlPlane:
        assert self.cp is not None
        return self.cp

    def wait_gone(self) -> float:
        """Wait until the namespaces of the previous run are deleted, with their Pods and claims."""
        assert self.api is not None
        started = time.monotonic()
        names, self.deleting = self.deleting, []
        if not names:
            return 0.0
        api = self.api
        wait(
            lambda: all(api.get(f"/api/v1/namespaces/{n}").status_code == 404 for n in names),
            self.args.settle_timeout,
            f"namespaces {names} to be deleted",
            interval=0.5,
        )
        return time.monotonic() - started

    def run_workload(self, arm: str, rep: int, workload: Workload, namespace: str, position: int) -> None:
        assert self.api is not None
        args = self.args
        row = Row(arm, workload.name, rep, namespace, workload.pods, workload.rate, workload.gpu, position)
        bodies = [pod_body(f"p-{i:05d}", workload.gpu) for i in range(workload.pods)]
        metrics_before = self.api.metrics()
        own_before = self.self_counts()
        cpu_before = self.meter.snapshot()
        started = time.monotonic()
        row.samples = create_pods(self.cp_(), namespace, bodies, workload.rate, args.connections, args.timeout)
        row.seconds = time.monotonic() - started
        for s in row.samples:
            why = check(arm, workload.gpu, s.status, s.body)
            if why:
                row.failures.append(why)
            s.body = b""  # the checked bodies are not kept
        converted = len(row.samples) - len(row.failures) if arm in CONVERTING and workload.gpu else 0
        try:
            row.settle_seconds = self.settle(namespace, expected=converted)
        except TimeoutError as err:
            row.settle_error = str(err)
            log(f"  {err}")
        row.cpu = CpuMeter.delta(cpu_before, self.meter.snapshot())
        row.wall = time.monotonic() - started
        row.apiserver = admission_view(metrics_before, self.api.metrics())
        own = {k: v - own_before.get(k, 0.0) for k, v in self.self_counts().items()}
        row.self_counted = {k: int(v) for k, v in own.items() if v and not k.endswith(" seconds")}
        row.self_seconds = {k.removesuffix(" seconds"): v for k, v in own.items() if v and k.endswith(" seconds")}
        self.rows.append(row)
        lat = row.to_json()["latency_ms"]
        log(
            f"  {arm:7} {workload.name:8} rep {rep}: {len(row.samples)} Pods, {len(row.failures)} failures, "
            f"p50 {fmt(lat['p50'], 2)} p99 {fmt(lat['p99'], 2)} max {fmt(lat['max'], 2)} ms, "
            f"settled in {row.settle_seconds:.1f}s"
        )
        self.meter.wait_idle(quiet_wait=args.quiet_wait)

    # interleaved rounds: every arm on at once, each in its own namespaces, the Pods sent to them in turn

    def run_interleaved(self, arms: list[str], round_: int) -> None:
        """One round: the webhook arms' servers started and their configurations applied at once,
        each confined to namespaces labelled with its arm (``confined``); one namespace per arm; the
        warm-up and then ``--pods`` GPU Pods per arm sent at ``--rate`` in all, to the arms in turn
        (the order rotated each round), so that every arm is measured in the same seconds. Then the
        claims are awaited, the configurations removed and the servers stopped."""
        assert self.api is not None and self.kube is not None
        args, api, kube = self.args, self.api, self.kube
        log(f"interleaved round {round_}: arms {arms}")
        self.wait_gone()
        hooks = [a for a in arms if a in WEBHOOK_ARMS]
        for arm in hooks:
            server = self.server(arm)
            server.start()
            kube.apply(confined(webhook_configurations(port=server.port, ca_pem=server.ca_pem), arm))
        spaces = {
            arm: self.namespace(f"il-{arm}-r{round_}", templates=arm in TEMPLATE_ARMS, labels={ARM_LABEL: arm})
            for arm in arms
        }
        self.active = "interleaved"
        for arm in arms:  # each arm in effect in its namespaces, and only there
            if arm in CONVERTING:
                wait(functools.partial(api.probe_converted, spaces[arm]), 60, f"the {arm} webhook in its namespace")
            elif arm == "bare":
                wait(lambda: self.reaches_bare(spaces["bare"]), 60, "the bare webhook in its namespace")
        if "none" in spaces and (
            api.probe_converted(spaces["none"]) or ("bare" in arms and self.reaches_bare(spaces["none"]))
        ):
            raise RuntimeError(f"a webhook of another arm applies in the none arm's namespace {spaces['none']}")
        first = round_ - 1
        warm = interleave(arms, args.warmup * len(arms), first)
        posts = [(spaces[arm], pod_body(f"warm-{i:05d}", True)) for i, arm in enumerate(warm)]
        warm_samples = asyncio.run(_drive(self.cp_(), posts, args.rate, args.connections, args.timeout))
        warm_converted = {a: 0 for a in arms}
        for arm, sample in zip(warm, warm_samples, strict=True):
            if arm in CONVERTING and not check(arm, True, sample.status, sample.body):
                warm_converted[arm] += 1
        for arm in arms:
            if arm in CONVERTING:
                self.settle(spaces[arm], expected=warm_converted[arm])
        self.meter.wait_idle(quiet_wait=args.quiet_wait)
        order = interleave(arms, args.pods * len(arms), first)
        posts = [(spaces[arm], pod_body(f"p-{i:05d}", True)) for i, arm in enumerate(order)]
        metrics_before = api.metrics()
        own_before = {arm: self.counts_of(arm) for arm in hooks}
        cpu_before = self.meter.snapshot()
        started = time.monotonic()
        samples = asyncio.run(_drive(self.cp_(), posts, args.rate, args.connections, args.timeout))
        seconds = time.monotonic() - started
        rows = {arm: Row(arm, "interleaved", round_, spaces[arm], args.pods, args.rate / len(arms)) for arm in arms}
        for arm, sample in zip(order, samples, strict=True):
            row = rows[arm]
            row.samples.append(sample)
            why = check(arm, True, sample.status, sample.body)
            if why:
                row.failures.append(why)
            sample.body = b""
        for arm, row in rows.items():
            row.seconds = seconds
            if arm in CONVERTING:
                try:
                    row.settle_seconds = self.settle(
                        spaces[arm], expected=warm_converted[arm] + len(row.samples) - len(row.failures)
                    )
                except TimeoutError as err:
                    row.settle_error = str(err)
                    log(f"  {err}")
        cpu = CpuMeter.delta(cpu_before, self.meter.snapshot())
        wall = time.monotonic() - started
        view = admission_view(metrics_before, api.metrics())
        for arm, row in rows.items():
            prefix = f"{arm}."
            row.apiserver = {
                "webhooks": {
                    label.removeprefix(prefix): entry
                    for label, entry in view.get("webhooks", {}).items()
                    if label.startswith(prefix)
                }
            }
            if arm in hooks:
                own = {k: v - own_before[arm].get(k, 0.0) for k, v in self.counts_of(arm).items()}
                row.self_counted = {k: int(v) for k, v in own.items() if v and not k.endswith(" seconds")}
                row.self_seconds = {
                    k.removesuffix(" seconds"): v for k, v in own.items() if v and k.endswith(" seconds")
                }
            self.interleaved_rows.append(row)
            lat = row.to_json()["latency_ms"]
            log(
                f"  {arm:10} interleaved round {round_}: {len(row.samples)} Pods, {len(row.failures)} failures, "
                f"p50 {fmt(lat['p50'], 2)} p99 {fmt(lat['p99'], 2)} ms"
            )
        for kind, name in WEBHOOK_CONFIGS:
            for arm in hooks:
                kube.kubectl("delete", kind, f"{name}-{arm}", "--ignore-not-found")
        for arm in hooks:
            if arm in CONVERTING:
                wait(
                    functools.partial(self.stopped_converting, spaces[arm]), 60, f"the apiserver to stop calling {arm}"
                )
        if "bare" in hooks:
            wait(lambda: not self.reaches_bare(spaces["bare"]), 60, "the apiserver to stop calling the bare webhook")
        time.sleep(1.0)
        for arm in hooks:
            self.server(arm).stop()
        self.active = None
        self.deleting = list(spaces.values())
        kube.kubectl("delete", "namespace", *self.deleting, "--wait=false")
        self.interleaved_log.append(
            {
                "round": round_,
                "order": order[: len(arms)],
                "seconds": round(seconds, 2),
                "wall": round(wall, 2),
                "cpu_ms_per_pod": {k: round(v / len(order) * 1000, 3) for k, v in sorted(cpu.items())},
                "other_share": round(cpu.get("other", 0.0) / (wall * CPUS), 3) if wall else None,
            }
        )
        self.meter.wait_idle(quiet_wait=args.quiet_wait)

    def stopped_converting(self, namespace: str) -> bool:
        assert self.api is not None
        return not self.api.probe_converted(namespace)

    def reaches_bare(self, namespace: str) -> bool:
        """Does a dry-run GPU Pod in ``namespace`` reach the bare webhook?"""
        assert self.bare is not None and self.api is not None
        before = self.bare.counts().get("/mutate", 0)
        self.api.probe_converted(namespace)
        return self.bare.counts().get("/mutate", 0) > before

    def counts_of(self, arm: str) -> dict[str, float]:
        """The calls a webhook arm's server counted itself (and, dra-bridge, the seconds deciding them)."""
        server = self.server(arm)
        if isinstance(server, BridgeServer):
            return bridge_decisions(server)
        return {k: float(v) for k, v in server.counts().items()}

    def settle(self, namespace: str, *, expected: int) -> float:
        """Wait until the resourceclaim controller has made a claim for every converted Pod."""
        assert self.api is not None
        if not expected:
            return 0.0
        api = self.api
        return wait(
            lambda: api.claim_count(namespace) >= expected,
            self.args.settle_timeout,
            f"{expected} ResourceClaims in {namespace}",
            interval=0.5,
        )

    def run(self) -> dict[str, Any]:
        assert self.api is not None and self.cp is not None
        machine = {
            "nproc": os.cpu_count(),
            "cpu_model": cpu_model(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "loadavg_start": loadavg(),
        }
        for position, (arm, rep) in enumerate(sequence(self.arms, self.args.reps)):
            self.run_arm(arm, rep, position)
        together = [a for a in self.arms if a in INTERLEAVED]
        if self.args.interleaved and len(together) > 1:
            for n in range(1, self.args.interleaved + 1):
                self.run_interleaved(together, n)
        machine["loadavg_end"] = loadavg()
        names = [w.name for w in workloads(self.args)]
        webhooks: dict[str, dict[str, dict[str, float]]] = {}
        for row in self.rows:
            for group in ("webhooks", "policies"):
                for label, entry in row.apiserver.get(group, {}).items():
                    key = label if group == "webhooks" else f"policy {label}"
                    acc = webhooks.setdefault(row.arm, {}).setdefault(key, {"count": 0, "sum": 0.0})
                    acc["count"] += entry["count"]
                    acc["sum"] += (entry["mean_ms"] or 0) * entry["count"]
        summary = summarize(self.rows, names, self.arms)
        interleaved = summarize_interleaved(self.interleaved_rows, together) if self.interleaved_rows else None
        if interleaved is not None:
            interleaved["log"] = self.interleaved_log
            interleaved["rows"] = [r.to_json() for r in self.interleaved_rows]
        return {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": shlex.join([sys.executable, *sys.argv]),
            "machine": machine,
            "control_plane": {
                "version": self.api.version(),
                "feature_gates": self.cp.effective_feature_gates.get("kube-apiserver", {}),
                "runtime_config": self.cp.runtime_config,
                "mutating_admission_policy": self.map_version and f"admissionregistration.k8s.io/{self.map_version}",
                "native_mapping": self.native,
            },
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()},
            "arms": self.arms,
            "skipped_arms": self.skipped,
            "workloads": [w.__dict__ for w in workloads(self.args)],
            "arm_log": self.arm_log,
            "rows": [r.to_json() for r in self.rows],
            "summary": summary,
            "interleaved": interleaved,
            "target": target(summary, interleaved),
            "apiserver_webhooks": {
                arm: {
                    label: {
                        "count": int(e["count"]),
                        "mean_ms": round(e["sum"] / e["count"], 3) if e["count"] else None,
                    }
                    for label, e in sorted(hooks.items())
                }
                for arm, hooks in webhooks.items()
            },
            "failures": sum(len(r.failures) for r in (*self.rows, *self.interleaved_rows)),
            "noise": {"other_share_mean": other_share(self.rows + self.interleaved_rows)},
        }

    def diagnostics(self) -> str:
        parts = []
        if self.bridge is not None:
            parts.append(f"--- {self.bridge.log}:\n{tail(self.bridge.log)}")
        if self.bare is not None:
            parts.append(f"--- {self.bare.log}:\n{tail(self.bare.log)}")
        if self.cp is not None:
            parts.append(f"--- kube-apiserver:\n{tail(self.cp.log_path('kube-apiserver'))}")
        return "\n".join(parts)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep = args.work_dir is not None
    work_dir = args.work_dir.resolve() if keep else Path(tempfile.mkdtemp(prefix="dra-bridge-bench-e2e-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, work_dir)
    try:
        with sigterm_as_interrupt():
            bench.start()
            result = bench.run()
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    except Exception:
        log(f"failed; diagnostics:\n{bench.diagnostics()}")
        raise
    finally:
        bench.stop()
        if not keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nwrote {args.out}")
    if result["failures"]:
        log(f"{result['failures']} Pods failed their check")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
