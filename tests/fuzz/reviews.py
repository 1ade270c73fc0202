"""A seeded generator of hostile AdmissionReviews: valid reviews of every kind dra-bridge serves, mutated.

Used by ``tests/fuzz`` (a few thousand cases in CI) and ``bench/fuzz.py`` (100,000, printing the
status counts). Each case starts from a valid review the apiserver could send (a Pod with legacy GPU
requests, a KAI-annotated Pod, a ResourceClaim, managed and hand-written ResourceClaimTemplates, policy
and catalogue ConfigMaps, a Namespace; CREATE, UPDATE and DELETE; to /mutate and /validate) and applies
one to three mutations anywhere in the document, most often inside ``request.object``:

- delete a key or a list element; retype a value (a mapping where a string was, a list where a
  mapping was, ...); insert a key or an element; duplicate an element or a key;
- out-of-range numbers (beyond int64, 1e308, NaN, Infinity, -0.0, fractions), and numbers and
  quantities as large as the apiserver accepts (int64, "9223372036854775807Ei") where numbers are;
- odd strings ("1e3", lone surrogates, NUL, 10,000 characters, right-to-left marks, "Infinity");
- deep nesting (50 to 5,000 levels);
- the body as invalid UTF-8 (a lone surrogate encoded raw).

Every case carries a fresh uid as the first key of ``request`` (where the apiserver puts it);
``Case.uid`` is that uid when the mutations left it in place, else None.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_INT64 = 2**63 - 1
ODD_NUMBERS: tuple[Any, ...] = (
    2**63,
    -(2**63) - 1,
    10**30,
    2**64 + 1,
    -1,
    0,
    1.5,
    -0.0,
    1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    MAX_INT64,
)
# in range for the apiserver (int64, quantities), out of range for what is computed from them
LARGE: tuple[Any, ...] = (
    2**31,
    2**40,
    2**53 + 1,
    2**62,
    MAX_INT64,
    "9223372036854775807",
    "8Ei",
    "9223372036854775807Ei",
    "1e18",
)
ODD_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "1e3",
    "1e999",
    "-1",
    "0.5",
    "0x10",
    "NaN",
    "Infinity",
    "9" * 400,
    "1Ki",
    "1e-30",
    "\ud800",
    "a\udfffb",
    "\x00",
    "\u202egpu",
    "x" * 10_000,
    "१२",
    "🙂",
    "nvidia.com/gpu",
    "dra-bridge.io/ignore",
    "true",
    "null",
    "[]",
    "{}",
    "${}",
    "../../etc",
)
LEGACY_NAMES = (
    "nvidia.com/gpu",
    "nvidia.com/gpumem",
    "nvidia.com/gpucores",
    "nvidia.com/mig-1g.5gb",
    "nvidia.com/mig-9g.999gb",
    "volcano.sh/vgpu-number",
    "tencent.com/vcuda-core",
    "aliyun.com/gpu-mem",
    "amd.com/gpu",
    "google.com/tpu",
)


@dataclass(frozen=True)
class Case:
    path: str  # /mutate or /validate
    body: bytes
    uid: str | None  # the uid the server can read back, None when a mutation removed or changed it
    mutations: tuple[str, ...]


def _meta(name: str, namespace: str = "team-a", **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "uid": "0b5e6b1c-obj", "resourceVersion": "12", **extra}


def _container(name: str, limits: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "image": "registry.example/app:1",
        "env": [{"name": "MODE", "value": "train"}],
        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
    }
    if limits is not None:
        out["resources"] = {"limits": dict(limits), "requests": {"cpu": "1", **limits}}
    return out


def _pod(name: str, *containers: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta = _meta(name, labels={"app": name, "team": "ml"})
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "containers": list(containers),
            "initContainers": [_container("init", {"nvidia.com/gpu": "1"})] if name == "with-init" else [],
            "resourceClaims": [{"name": "extra", "resourceClaimTemplateName": "hand-made"}],
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priority": 0,
        },
    }


def _claim_spec(device_class: str = "whole.nvidia.dra-bridge.io", count: int = 1) -> dict[str, Any]:
    return {
        "devices": {
            "requests": [
                {
                    "name": "gpu",
                    "exactly": {"deviceClassName": device_class, "count": count, "allocationMode": "ExactCount"},
                },
                {
                    "name": "any",
                    "firstAvailable": [
                        {
                            "name": "mig",
                            "deviceClassName": "partition.nvidia.dra-bridge.io",
                            "selectors": [
                                {"cel": {"expression": "device.attributes['gpu.nvidia.com'].profile == '1g.5gb'"}}
                            ],
                        },
                        {
                            "name": "share",
                            "deviceClassName": "shared.nvidia.dra-bridge.io",
                            "capacity": {"requests": {"memory": "10Gi"}},
                        },
                    ],
                },
            ]
        }
    }


def _configmap(name: str, label: str, key: str, text: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(name, "dra-bridge", labels={label: "true"}),
        "data": {key: text},
    }


POLICY = """apiVersion: dra-bridge.io/v1alpha1
kind: QuotaPolicy
tenants:
- name: research
  namespaces: [team-a]
  limits: {devices: {"whole.*": 8}, claims: 10, memory: 640Gi}
  rules:
  - name: small
    expression: "claim.charge.totalDevices < 9223372036854775807"
    message: too many
"""
CATALOGUE = """apiVersion: dra-bridge.io/v1alpha1
kind: TranslationCatalogue
sources:
- name: extra
  target: nvidia
  resources:
  - {name: example.com/gpu, meaning: devices}
"""

_GVK = {
    "Pod": ("", "v1", "pods"),
    "ResourceClaim": ("resource.k8s.io", "v1", "resourceclaims"),
    "ResourceClaimTemplate": ("resource.k8s.io", "v1", "resourceclaimtemplates"),
    "ConfigMap": ("", "v1", "configmaps"),
    "Namespace": ("", "v1", "namespaces"),
}


def _review(
    path: str, obj: dict[str, Any], operation: str = "CREATE", old: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    kind = obj["kind"]
    group, version, resource = _GVK[kind]
    namespace = "" if kind == "Namespace" else obj["metadata"].get("namespace", "")
    request: dict[str, Any] = {
        "uid": "placeholder",
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "requestKind": {"group": group, "version": version, "kind": kind},
        "name": obj["metadata"]["name"],
        "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": "alice", "uid": "u-1", "groups": ["team-a", "system:authenticated"]},
        "object": None if operation == "DELETE" else obj,
        "oldObject": old if old is not None else (obj if operation in ("UPDATE", "DELETE") else None),
        "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": f"{operation.title()}Options"},
    }
    return path, {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def seeds() -> list[tuple[str, dict[str, Any]]]:
    """Valid reviews, one per kind and path dra-bridge serves (and a few it lets through)."""
    gpu_pod = _pod("trainer", _container("main", {"nvidia.com/gpu": "2"}), _container("side", {"cpu": "1"}))
    mig_pod = _pod("mig", _container("main", {"nvidia.com/mig-1g.5gb": "1", "nvidia.com/gpumem": "1024"}))
    kai_pod = _pod(
        "kai",
        _container("main"),
        _container("helper"),
        annotations={"gpu-fraction": "0.5", "gpu-fraction-container-name": "main"},
    )
    init_pod = _pod("with-init", _container("main", {"volcano.sh/vgpu-number": "1", "volcano.sh/vgpu-memory": "2048"}))
    plain_pod = _pod("web", _container("web", {"cpu": "500m", "memory": "1Gi"}))
    claim = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": _meta("c1"),
        "spec": _claim_spec(count=2),
    }
    template = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": _meta(
            "dra-bridge-93ce8af22336",
            labels={"app.kubernetes.io/managed-by": "dra-bridge", "dra-bridge.io/spec-hash": "93ce8af22336"},
        ),
        "spec": {"metadata": {"labels": {"a": "b"}}, "spec": _claim_spec()},
    }
    own_template = {**template, "metadata": _meta("hand-made")}
    policy = _configmap("gpu-quota", "dra-bridge.io/policy", "policy.yaml", POLICY)
    catalogue = _configmap("extra-catalogue", "dra-bridge.io/catalogue", "catalogue.yaml", CATALOGUE)
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "team-a", "labels": {"dra-bridge.io/tenant": "research"}},
    }
    out = []
    for pod in (gpu_pod, mig_pod, kai_pod, init_pod, plain_pod):
        out += [_review("/mutate", pod), _review("/validate", pod)]
    out += [
        _review("/validate", claim),
        _review("/validate", template),
        _review("/validate", own_template, "UPDATE"),
        _review("/validate", policy),
        _review("/validate", policy, "UPDATE"),
        _review("/validate", catalogue),
        _review("/validate", namespace, "UPDATE"),
        _review("/validate", claim, "DELETE"),
        _review("/mutate", gpu_pod, "UPDATE"),
    ]
    return out


class Fuzzer:
    """``Fuzzer(seed).cases(n)``: the same ``n`` cases for the same seed."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.random = random.Random(seed)
        self._seeds = seeds()
        self._deep: dict[str, str] = {}

    def cases(self, count: int) -> Iterator[Case]:
        for number in range(count):
            yield self.case(number)

    def case(self, number: int) -> Case:
        rnd = self.random
        path, review = self._seeds[rnd.randrange(len(self._seeds))]
        review = copy.deepcopy(review)
        uid = f"fuzz-{self.seed}-{number}"
        review["request"]["uid"] = uid
        self._deep = {}
        names = []
        for _ in range(rnd.choice((1, 1, 1, 2, 3))):
            names.append(self._mutate(review))
        request = review.get("request")
        readable = isinstance(request, dict) and request.get("uid") == uid and next(iter(request), None) == "uid"
        body = self._encode(review)
        if rnd.random() < 0.02:  # a duplicate key, in the text (the last one wins in most parsers)
            body = body.replace(b'"containers":', b'"containers":{"x":1},"containers":', 1)
            names.append("duplicate-key")
        return Case(path=path, body=body, uid=uid if readable else None, mutations=tuple(names))

    # -- mutations ---------------------------------------------------------------------------
    def _mutate(self, review: dict[str, Any]) -> str:
        rnd = self.random
        spots = list(_spots(review, ()))
        inside = [s for s in spots if s[0][:2] == ("request", "object")]
        pool = inside if inside and rnd.random() < 0.8 else spots
        where, parent, key = pool[rnd.randrange(len(pool))]
        kind = rnd.choice(
            ("delete", "retype", "retype", "insert", "duplicate", "number", "string", "string", "deep", "large")
        )
        if kind == "large":  # a number or quantity the apiserver accepts, made as large as it allows
            numeric = [s for s in inside or spots if _numeric(s[1][s[2]])]
            if numeric:
                where, parent, key = numeric[rnd.randrange(len(numeric))]
        value = parent[key]
        if kind == "delete":
            del parent[key]
        elif kind == "retype":
            parent[key] = self._other_type(value)
        elif kind == "insert":
            if isinstance(value, dict):
                value[rnd.choice((*LEGACY_NAMES, "name", "x", "\ud800", "count"))] = self._anything()
            elif isinstance(value, list):
                value.insert(rnd.randrange(len(value) + 1), self._anything())
            else:
                parent[key] = [value, self._anything()]
        elif kind == "duplicate":
            if isinstance(value, list) and value:
                value.append(copy.deepcopy(value[rnd.randrange(len(value))]))
            elif isinstance(parent, list):
                parent.append(copy.deepcopy(value))
            else:
                parent[key] = [value, value]
        elif kind == "number":
            parent[key] = rnd.choice(ODD_NUMBERS)
        elif kind == "large":
            parent[key] = rnd.choice(LARGE)
        elif kind == "string":
            parent[key] = rnd.choice(ODD_STRINGS)
        else:
            parent[key] = self._nest(rnd.choice((50, 200, 900, 1200, 5000)))
        return f"{kind} {'.'.join(map(str, where))}"

    def _other_type(self, value: Any) -> Any:
        choices: list[Any] = [{"a": "b"}, ["x"], "text", 7, 1.5, True, None, {}, []]
        rnd = self.random
        options = [c for c in choices if type(c) is not type(value)]
        return copy.deepcopy(options[rnd.randrange(len(options))])

    def _anything(self) -> Any:
        rnd = self.random
        return rnd.choice(
            (
                rnd.choice(ODD_STRINGS),
                rnd.choice(ODD_NUMBERS),
                {
                    "name": rnd.choice(ODD_STRINGS),
                    "resources": {"limits": {rnd.choice(LEGACY_NAMES): rnd.choice(ODD_STRINGS)}},
                },
                [rnd.choice(ODD_STRINGS)],
                None,
                True,
            )
        )

    def _nest(self, depth: int) -> str:
        marker = f"@@deep{len(self._deep)}@@"
        opener, closer = self.random.choice((("[", "]"), ('{"a":', "}")))
        self._deep[marker] = opener * depth + "1" + closer * depth
        return marker

    def _encode(self, review: dict[str, Any]) -> bytes:
        rnd = self.random
        ascii_only = rnd.random() < 0.7
        text = json.dumps(review, allow_nan=True, ensure_ascii=ascii_only, separators=(",", ":"))
        for marker, nested in self._deep.items():
            text = text.replace(json.dumps(marker), nested)
        # a lone surrogate written raw is not UTF-8: the body is then invalid UTF-8
        return text.encode("utf-8", "surrogatepass")


def _numeric(value: Any) -> bool:
    """An integer, or a string that reads as a quantity ("2", "40Gi", "500m")."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and value[:1].isdigit() and len(value) < 16)


def _spots(node: Any, where: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], Any, Any]]:
    """Every (path, parent, key) below ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*where, key), node, key
            yield from _spots(value, (*where, key))
    elif isinstance(node, list):
        for position, value in enumerate(node):
            yield (*where, position), node, position
            yield from _spots(value, (*where, position))
