"""What the benchmark sends and what the benchmark server is seeded with: plain data, no I/O.

Bodies look like what a 1.34 apiserver sends (``requestKind``, ``userInfo``, ``options``, a Pod with
the service-account volume and the scheduler's defaults filled in), so the envelope and the object
cost what they cost in a cluster. Tenants are ``t-0000``..; each owns the namespace of its name.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

API = "admission.k8s.io/v1"
WHOLE_CLASS = "whole.nvidia.dra-bridge.io"
LARGE_POD_BYTES = 76 * 1024  # the issue's "large Pod": many containers with env vars
BIG = 10**6  # limits no benchmark run gets near: reservations must never deny

# CEL rules that evaluate to true for every benchmark request; a rule set of n takes the first n.
TRUE_RULES: tuple[str, ...] = (
    "claim.charge.totalDevices <= 8",
    "claim.charge.memory >= 0",
    "request.operation == 'CREATE' || request.operation == 'UPDATE'",
    "tenant.usage.claims >= 0",
    "pod == null || has(pod.metadata)",
    "size(claim.name) > 0",
    "claim.charge.compute <= 80000",
    "!('forbidden' in claim.labels)",
    "tenant.limits.claims == null || tenant.usage.claims < tenant.limits.claims",
    "request.namespace.startsWith('t-')",
    "size(claim.charge.profiles) >= 0",
    "request.kind in ['ResourceClaim', 'ResourceClaimTemplate', 'Pod']",
    "!request.user.startsWith('system:anonymous')",
    "tenant.name.startsWith('t-')",
    "claim.charge.totalDevices >= 0",
    "size(claim.spec.devices.requests) <= 32",
    "claim.spec.devices.requests.all(r, size(r.name) > 0)",
    "tenant.usage.memory >= 0",
    "!('system:masters' in request.groups)",
    "claim.charge.memory <= 8 * 80 * 1024 * 1024 * 1024",
)


def tenant_name(index: int) -> str:
    return f"t-{index:04d}"


# -- the seeded cluster -----------------------------------------------------------------------------


def quota_policy(*, tenants: int, rules: int, rule_tenants: int) -> dict[str, Any]:
    """One QuotaPolicy ConfigMap: ``tenants`` tenants, each with its namespace listed explicitly and
    limits far above anything the run asks for; the first ``rule_tenants`` carry ``rules`` CEL rules."""
    if rules > len(TRUE_RULES):
        raise ValueError(f"at most {len(TRUE_RULES)} rules, got {rules}")
    specs = []
    for i in range(tenants):
        spec: dict[str, Any] = {
            "name": tenant_name(i),
            "namespaces": [tenant_name(i)],
            "limits": {
                "devices": {"*": BIG},
                "memory": f"{BIG}Ti",
                "compute": BIG * 100,
                "claims": BIG,
                "perClaim": {"devices": 8},
            },
        }
        if i < rule_tenants and rules:
            spec["rules"] = [
                {"name": f"rule-{n:02d}", "expression": TRUE_RULES[n], "message": f"benchmark rule {n} is false"}
                for n in range(rules)
            ]
        specs.append(spec)
    document = {
        "apiVersion": "dra-bridge.io/v1alpha1",
        "kind": "QuotaPolicy",
        "classes": {WHOLE_CLASS: {"memory": "80Gi"}},
        "tenants": specs,
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "bench-quota", "namespace": "dra-bridge", "labels": {"dra-bridge.io/policy": "true"}},
        "data": {"policy.yaml": json.dumps(document)},  # JSON is YAML: admins' files parse the same way
    }


def claim_spec(count: int = 1) -> dict[str, Any]:
    return {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": WHOLE_CLASS, "count": count}}]}}


def pod_owner(pod: str, index: int) -> dict[str, Any]:
    """The owner reference kube-controller-manager puts on the claim it makes for Pod ``pod``."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": pod,
        "uid": str(uuid.UUID(int=10**9 + index)),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def stored_claim(index: int, *, tenants: int) -> dict[str, Any]:
    """A ResourceClaim as the watch delivers it: made from a template for a Pod, allocated."""
    namespace = tenant_name(index % tenants)
    pod = f"job-{index:06d}"
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {
            "name": f"{pod}-gpu-main-{index:06x}",
            "namespace": namespace,
            "uid": str(uuid.UUID(int=index)),
            "resourceVersion": str(1000 + index),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {"resource.kubernetes.io/pod-claim-name": "gpu-main"},
            "ownerReferences": [pod_owner(pod, index)],
        },
        "spec": claim_spec(),
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": "gpu", "driver": "gpu.nvidia.com", "pool": f"node-{index % 64}", "device": "gpu-0"}
                    ]
                }
            },
            "reservedFor": [{"resource": "pods", "name": pod, "uid": str(uuid.UUID(int=10**9 + index))}],
        },
    }


# -- the device inventory ----------------------------------------------------------------------------

DRIVER = "gpu.nvidia.com"
DEVICES_PER_NODE = 8
# (productName, memory, multiprocessors) of the whole GPUs; MIG shapes take a seventh of each.
PRODUCTS: tuple[tuple[str, str, int], ...] = (
    ("NVIDIA A100-SXM4-40GB", "40Gi", 108),
    ("NVIDIA A100-SXM4-80GB", "80Gi", 108),
    ("NVIDIA H100 80GB HBM3", "80Gi", 132),
    ("NVIDIA H200", "141Gi", 132),
    ("NVIDIA L40S", "48Gi", 142),
)


def device(shape: int, index: int) -> dict[str, Any]:
    """Device ``index`` of a node, of shape ``shape``: shapes differ by product, driver version and
    kind (every tenth shape from the seventh on is a MIG device), as the NVIDIA driver publishes them."""
    product, memory, sms = PRODUCTS[shape % len(PRODUCTS)]
    mig = shape % 10 >= 7
    attributes: dict[str, Any] = {
        "type": {"string": "mig" if mig else "gpu"},
        "productName": {"string": product},
        "driverVersion": {"version": f"1.{shape}.0"},
        "uuid": {"string": f"GPU-{shape:04d}-{index:08d}"},
    }
    capacity: dict[str, Any] = {"memory": {"value": memory}, "multiprocessors": {"value": str(sms)}}
    if mig:
        attributes["profile"] = {"string": "1g." + memory.removesuffix("Gi") + "gb"}
        capacity = {
            "memory": {"value": f"{int(memory.removesuffix('Gi')) * 1024 // 8}Mi"},
            "multiprocessors": {"value": str(sms // 7)},
        }
    return {"name": f"gpu-{index}", "attributes": attributes, "capacity": capacity}


def resource_slices(devices: int, shapes: int) -> list[dict[str, Any]]:
    """``devices`` GPUs in ``shapes`` shapes (device ``i`` has shape ``i % shapes``), eight per node,
    one ResourceSlice per node as the driver publishes them."""
    out = []
    for node, first in enumerate(range(0, devices, DEVICES_PER_NODE)):
        name = f"gpu-node-{node:05d}"
        out.append(
            {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceSlice",
                "metadata": {"name": f"{name}-{DRIVER}"},
                "spec": {
                    "driver": DRIVER,
                    "nodeName": name,
                    "pool": {"name": name, "generation": 1, "resourceSliceCount": 1},
                    "devices": [
                        device(i % shapes, i - first) for i in range(first, min(devices, first + DEVICES_PER_NODE))
                    ],
                },
            }
        )
    return out


# -- admission reviews ----------------------------------------------------------------------------


def review(
    *,
    uid: str,
    kind: dict[str, str],
    resource: dict[str, str],
    namespace: str,
    user: dict[str, Any],
    obj: dict[str, Any],
) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": kind,
            "resource": resource,
            "requestKind": kind,
            "requestResource": resource,
            "name": obj["metadata"].get("name", ""),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": user,
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


POD_KIND = {"group": "", "version": "v1", "kind": "Pod"}
POD_RESOURCE = {"group": "", "version": "v1", "resource": "pods"}
CLAIM_KIND = {"group": "resource.k8s.io", "version": "v1", "kind": "ResourceClaim"}
CLAIM_RESOURCE = {"group": "resource.k8s.io", "version": "v1", "resource": "resourceclaims"}
REPLICASET_CONTROLLER = {
    "username": "system:serviceaccount:kube-system:replicaset-controller",
    "uid": "2b0e5f0c-6f4e-4b8e-9d55-0c1f1e0a6b7d",
    "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
}
CLAIM_CONTROLLER = {
    "username": "system:serviceaccount:kube-system:resource-claim-controller",
    "uid": "7c9d1e4a-3b2f-4c6d-8e1f-2a3b4c5d6e7f",
    "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
}


def container(name: str, *, limits: dict[str, str], env: int = 2) -> dict[str, Any]:
    return {
        "name": name,
        "image": f"registry.example/ml/{name}:2026.01.1",
        "command": ["python", "-m", "train"],
        "args": ["--config", "/etc/train/config.yaml"],
        "env": [
            {"name": f"{name.upper().replace('-', '_')}_SETTING_{i:03d}", "value": f"value-{i:03d}-" + "x" * 40}
            for i in range(env)
        ],
        "resources": {"limits": limits, "requests": dict(limits)},
        "volumeMounts": [
            {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True}
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }


def pod(name: str, containers: list[dict[str, Any]], *, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{name}-7d9f8c6b5-",
            "namespace": namespace,
            "labels": {"app": name, "pod-template-hash": "7d9f8c6b5"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{name}-7d9f8c6b5",
                    "uid": "5f1c2d3e-4a5b-6c7d-8e9f-0a1b2c3d4e5f",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "containers": containers,
            "volumes": [
                {
                    "name": "kube-api-access",
                    "projected": {
                        "defaultMode": 420,
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                            {
                                "downwardAPI": {
                                    "items": [
                                        {
                                            "path": "namespace",
                                            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                        }
                                    ]
                                }
                            },
                        ],
                    },
                }
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
            ],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
    }


def pod_review(obj: dict[str, Any], *, uid: str = "00000000-0000-0000-0000-000000000001") -> dict[str, Any]:
    return review(
        uid=uid,
        kind=POD_KIND,
        resource=POD_RESOURCE,
        namespace=obj["metadata"]["namespace"],
        user=REPLICASET_CONTROLLER,
        obj=obj,
    )


def small_gpu_pod(namespace: str = "t-0000") -> dict[str, Any]:
    return pod(
        "inference",
        [container("server", limits={"nvidia.com/gpu": "1", "cpu": "4", "memory": "16Gi"})],
        namespace=namespace,
    )


def no_gpu_pod(namespace: str = "t-0000") -> dict[str, Any]:
    return pod("web", [container("server", limits={"cpu": "4", "memory": "16Gi"})], namespace=namespace)


# Legacy GPU requests of the large Pod's first containers; the rest ask for CPU and memory only.
LARGE_POD_GPUS: tuple[dict[str, str], ...] = (
    {"nvidia.com/gpu": "1"},
    {"nvidia.com/gpu": "2"},
    {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "8192", "nvidia.com/gpucores": "30"},
    {"nvidia.com/mig-1g.5gb": "1"},
)


def large_pod(namespace: str = "t-0000", *, target_bytes: int = LARGE_POD_BYTES) -> dict[str, Any]:
    """A Pod of 24 containers whose env vars bring the review to about ``target_bytes``."""
    containers_count = 24

    def build(env: int) -> dict[str, Any]:
        containers = []
        for i in range(containers_count):
            limits = {"cpu": "2", "memory": "8Gi"}
            if i < len(LARGE_POD_GPUS):
                limits.update(LARGE_POD_GPUS[i])
            containers.append(container(f"worker-{i:02d}", limits=limits, env=env))
        return pod("pipeline", containers, namespace=namespace)

    env = 1
    while len(encode(pod_review(build(env + 1)))) <= target_bytes:
        env += 1
    return build(env)


def claim_review(index: int, *, tenants: int, run: str) -> dict[str, Any]:
    """A new ResourceClaim (the claim controller making one from a template): a name and uid of
    its own per ``(run, index)``, in tenant ``index % tenants``."""
    namespace = tenant_name(index % tenants)
    name = f"bench-{run}-{index:07d}-gpu-main"
    obj = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {"resource.kubernetes.io/pod-claim-name": "gpu-main"},
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": f"bench-{run}-{index:07d}",
                    "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"pod/{run}/{index}")),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": claim_spec(),
    }
    uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"review/{run}/{index}"))
    return review(
        uid=uid, kind=CLAIM_KIND, resource=CLAIM_RESOURCE, namespace=namespace, user=CLAIM_CONTROLLER, obj=obj
    )


def encode(document: dict[str, Any]) -> bytes:
    """Compact JSON, as the apiserver sends it."""
    return json.dumps(document, separators=(",", ":")).encode()


def vegeta_target(url: str, body: bytes) -> str:
    """One line of vegeta's JSON target format."""
    return json.dumps(
        {
            "method": "POST",
            "url": url,
            "body": base64.b64encode(body).decode("ascii"),
            "header": {"Content-Type": ["application/json"]},
        },
        separators=(",", ":"),
    )
