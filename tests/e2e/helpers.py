"""Helpers for the end-to-end tests: kubectl, apply, waiting, the fake GPU inventory and the
dra-bridge server process. Fixtures in conftest.py wire them; quota scenarios reuse them.

Everything binds to 127.0.0.1. There is no kubelet: Pods are scheduled (``spec.nodeName`` set,
claims allocated) but never run, and a deleted Pod is only gone once force-deleted.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.e2e.controlplane import LOOPBACK, ControlPlane, _pdeathsig, free_port, tail
from webhook.certs.files import write_pair
from webhook.certs.issue import create_ca, create_serving_cert
from webhook.translate.quantity import parse_quantity

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
DEVICECLASSES = DEPLOY / "deviceclasses" / "deviceclasses.yaml"
WEBHOOKS = DEPLOY / "base" / "webhooks.yaml"
BRIDGE_NAMESPACE = "dra-bridge"

T = TypeVar("T")


# -- waiting -----------------------------------------------------------------------------------
def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 60.0,
    *,
    interval: float = 0.25,
    what: str | Callable[[], str] = "",
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that; fail after ``timeout``.

    Exceptions count as "not yet" (the last one is reported), so predicates may read objects that
    do not exist yet. ``what`` may be a function, called only on failure (diagnostics).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as err:
            last = f"{type(err).__name__}: {err}"
        if time.monotonic() > deadline:
            detail = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {detail or predicate!r}; last: {last}")
        time.sleep(interval)


# -- kubectl -----------------------------------------------------------------------------------
class Kube:
    """kubectl and a few object helpers against one control plane, as its admin."""

    def __init__(self, control_plane: ControlPlane) -> None:
        self.cp = control_plane
        self.kubeconfig = control_plane.kubeconfig

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return self.cp.kubectl(*args, input=input, check=check, timeout=timeout)

    def json(self, *args: str) -> dict[str, Any]:
        return self.cp.kubectl_json(*args)

    def apply(self, manifest: str | Mapping[str, Any] | Iterable[Mapping[str, Any]], *args: str) -> str:
        """``kubectl apply --server-side`` of YAML text, one object or several."""
        # Objects go as JSON: kubectl reads YAML 1.1, where a label value such as y or on is a bool.
        if isinstance(manifest, str):
            text = manifest
        elif isinstance(manifest, Mapping):
            text = json.dumps(manifest)
        else:
            text = json.dumps({"apiVersion": "v1", "kind": "List", "items": [dict(m) for m in manifest]})
        return self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", *args, input=text).stdout

    def create(self, manifest: Mapping[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
        """``kubectl create -f -`` (as a user would), unchecked: callers look at the outcome."""
        return self.kubectl("create", "-f", "-", "-o", "json", *args, input=json.dumps(manifest), check=False)

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", resource, name, "-o", "json", "--ignore-not-found"]
        if namespace:
            args += ["-n", namespace]
        out = self.kubectl(*args).stdout.strip()
        return json.loads(out) if out else None

    def items(self, resource: str, *args: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.json("get", resource, *args)["items"]
        return items

    def namespace(self, prefix: str, labels: Mapping[str, str] | None = None) -> str:
        """Create a namespace named ``<prefix>-<random>`` (prefix cut to a valid DNS label)."""
        cleaned = re.sub(r"[^a-z0-9-]+", "-", prefix.lower())[:40].strip("-") or "e2e"
        name = f"{cleaned}-{secrets.token_hex(3)}"
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}})
        return name

    def force_delete_pods(self, namespace: str) -> None:
        """No kubelet confirms a graceful deletion here: remove the Pods at once (their claims follow)."""
        self.kubectl("delete", "pods", "--all", "-n", namespace, "--force", "--grace-period=0", "--wait=false")


# -- Pods and claims ---------------------------------------------------------------------------
def pod(
    name: str,
    limits: Mapping[str, str] | None = None,
    *,
    annotations: Mapping[str, str] | None = None,
    generate: bool = False,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "registry.example/app:1"}
    if limits:
        container["resources"] = {"limits": dict(limits)}
    meta: dict[str, Any] = {"generateName": f"{name}-"} if generate else {"name": name}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [container], "terminationGracePeriodSeconds": 0},
    }


def legacy_keys(pod_obj: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    """Legacy names (resources or annotations) still on a stored Pod."""
    wanted = set(names)
    found = set(pod_obj["metadata"].get("annotations") or {}) & wanted
    for c in pod_obj["spec"].get("containers", []) + pod_obj["spec"].get("initContainers", []):
        resources = c.get("resources") or {}
        for section in ("limits", "requests"):
            found |= set(resources.get(section) or {}) & wanted
    return sorted(found)


def claims_of(kube: Kube, pod_obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ResourceClaims kube-controller-manager made for a Pod (from ``status.resourceClaimStatuses``)."""
    namespace = pod_obj["metadata"]["namespace"]
    out = []
    for entry in (pod_obj.get("status") or {}).get("resourceClaimStatuses") or []:
        if entry.get("resourceClaimName"):
            found = kube.get("resourceclaims", entry["resourceClaimName"], namespace)
            if found:
                out.append(found)
    return out


def scheduled(kube: Kube, namespace: str, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The Pod and its claims once it is bound to a node and every claim is allocated, else None."""
    found = kube.get("pod", name, namespace)
    if not found or not found["spec"].get("nodeName"):
        return None
    wanted = len(found["spec"].get("resourceClaims") or [])
    claims = claims_of(kube, found)
    if len(claims) != wanted or not all((c.get("status") or {}).get("allocation") for c in claims):
        return None
    return found, claims


def allocated_devices(claims: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [r for c in claims for r in c["status"]["allocation"]["devices"]["results"]]


def why_pending(kube: Kube, namespace: str, name: str) -> str:
    """Scheduler events and conditions of a Pod, for failure messages."""
    found = kube.get("pod", name, namespace) or {}
    events = kube.kubectl(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}", check=False
    ).stdout
    return json.dumps((found.get("status") or {}).get("conditions")) + "\n" + events


# -- the fake GPU inventory --------------------------------------------------------------------
NODES = {"nvidia": "gpu-nvidia-0", "hami": "gpu-hami-0", "example": "gpu-example-0"}
MIG_PARENT_UUID = "GPU-2f7e0d6c-0000-4000-8000-000000000002"
MIG_MEMORY = {"1g.5gb": "4864Mi", "3g.20gb": "19968Mi"}  # what an A100 40GB reports for its slices


def _str(value: str) -> dict[str, str]:
    return {"string": value}


def _slice(node: str, driver: str, devices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-{driver}"},
        "spec": {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": devices,
        },
    }


def nvidia_slice() -> dict[str, Any]:
    """Two whole A100 80GB GPUs, and a third GPU in MIG mode: one 3g.20gb and four 1g.5gb slices.

    As the NVIDIA DRA driver publishes them: attribute ``type`` (gpu/mig), ``uuid``, ``productName``;
    MIG devices add ``profile`` and ``parentUUID``; capacity ``memory`` (and ``multiprocessors``)."""
    devices: list[dict[str, Any]] = [
        {
            "name": f"gpu-{i}",
            "attributes": {
                "type": _str("gpu"),
                "uuid": _str(f"GPU-2f7e0d6c-0000-4000-8000-00000000000{i}"),
                "productName": _str("NVIDIA A100-SXM4-80GB"),
                "architecture": _str("Ampere"),
            },
            "capacity": {"memory": {"value": "80Gi"}, "multiprocessors": {"value": "108"}},
        }
        for i in range(2)
    ]
    slices = [("3g.20gb", 0, 42)] + [("1g.5gb", i, 14) for i in range(4)]
    for profile, index, sms in slices:
        devices.append(
            {
                "name": f"gpu-2-mig-{profile.replace('.', '-')}-{index}",
                "attributes": {
                    "type": _str("mig"),
                    "profile": _str(profile),
                    "parentUUID": _str(MIG_PARENT_UUID),
                    "uuid": _str(f"MIG-{profile}-{index}-0000-4000-8000-000000000002"),
                    "productName": _str("NVIDIA A100-SXM4-40GB"),
                },
                "capacity": {"memory": {"value": MIG_MEMORY[profile]}, "multiprocessors": {"value": str(sms)}},
            }
        )
    return _slice(NODES["nvidia"], "gpu.nvidia.com", devices)


def _consumable(value: str, *, minimum: str, step: str) -> dict[str, Any]:
    """A consumable capacity. The apiserver requires a ``default`` with ``validRange``; like the HAMi
    driver, a claim that names no amount gets the whole device's value."""
    return {
        "value": value,
        "requestPolicy": {"default": value, "validRange": {"min": minimum, "max": value, "step": step}},
    }


def hami_slice() -> dict[str, Any]:
    """Two HAMi-core vGPU-capable GPUs, shared by many claims: memory (1Mi steps) and cores (1-100),
    as Project-HAMi/k8s-dra-driver publishes them (``hami-gpu-<minor>``, defaults = the whole GPU)."""
    return _slice(
        NODES["hami"],
        "hami-core-gpu.project-hami.io",
        [
            {
                "name": f"hami-gpu-{i}",
                "allowMultipleAllocations": True,
                "attributes": {
                    "type": _str("hami-gpu"),
                    "uuid": _str(f"GPU-hami-0000-4000-8000-00000000000{i}"),
                    "productName": _str("NVIDIA A100-SXM4-80GB"),
                    "architecture": _str("Ampere"),
                },
                "capacity": {
                    "memory": _consumable("80Gi", minimum="1Mi", step="1Mi"),
                    "cores": _consumable("100", minimum="1", step="1"),
                },
            }
            for i in range(2)
        ],
    )


def example_slice(count: int = 4) -> dict[str, Any]:
    """Mock GPUs of the Kubernetes example driver, in its consumable mode (memory step 1Gi)."""
    return _slice(
        NODES["example"],
        "gpu.example.com",
        [
            {
                "name": f"gpu-{i}",
                "allowMultipleAllocations": True,
                "attributes": {
                    "index": {"int": i},
                    "uuid": _str(f"gpu-18db0e85-99e9-c746-8531-ffeb86328b3{i}"),
                    "model": _str("LATEST-GPU-MODEL"),
                    "driverVersion": {"version": "1.0.0"},
                },
                "capacity": {
                    "memory": _consumable("80Gi", minimum="1Gi", step="1Gi"),
                    "compute": _consumable("100", minimum="1", step="1"),
                },
            }
            for i in range(count)
        ],
    )


def one_device_per_slice(published: dict[str, Any]) -> list[dict[str, Any]]:
    """The same pool published as one ResourceSlice per device (``resourceSliceCount`` = devices), as
    a driver may split its pool. Then a slice's first device is the only one."""
    devices = published["spec"]["devices"]
    out = []
    for i, device in enumerate(devices):
        part = json.loads(json.dumps(published))
        part["metadata"]["name"] = f"{published['metadata']['name']}-{i}"
        part["spec"]["pool"]["resourceSliceCount"] = len(devices)
        part["spec"]["devices"] = [device]
        out.append(part)
    return out


def gpu_inventory(*, split_shared: bool = False) -> list[dict[str, Any]]:
    """The three GPU nodes' slices. ``split_shared``: the drivers whose devices are shared (HAMi-core,
    example) publish one slice per device, for kube-scheduler 1.34.x, which checks a share against the
    first device of its slice (tests/e2e/releases.py, SHARES_CHECKED_PER_DEVICE)."""
    if split_shared:
        return [nvidia_slice(), *one_device_per_slice(hami_slice()), *one_device_per_slice(example_slice())]
    return [nvidia_slice(), hami_slice(), example_slice()]


# -- webhook configurations --------------------------------------------------------------------
def webhook_configurations(*, port: int, ca_pem: bytes) -> list[dict[str, Any]]:
    """The shipped Mutating/ValidatingWebhookConfiguration (deploy/base/webhooks.yaml), with only
    ``clientConfig`` changed to reach the server on 127.0.0.1."""
    bundle = base64.b64encode(ca_pem).decode()
    configs = [d for d in yaml.safe_load_all(WEBHOOKS.read_text()) if d]
    for config in configs:
        for hook in config["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://{LOOPBACK}:{port}{path}", "caBundle": bundle}
    return configs


# -- the dra-bridge server -----------------------------------------------------------------------
class BridgeServer:
    """``python -m webhook serve`` as a subprocess, against the test cluster's kubeconfig."""

    def __init__(
        self,
        *,
        work_dir: Path,
        kubeconfig: Path,
        namespace: str = BRIDGE_NAMESPACE,
        env: Mapping[str, str] | None = None,
        tls_from: BridgeServer | None = None,
    ) -> None:
        """``env``: extra ``DRA_BRIDGE_*`` settings; ``tls_from``: serve that server's certificate (replicas
        behind one address share one)."""
        self.work_dir = work_dir
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.env = dict(env or {})
        self.port = free_port()
        self.log = work_dir / "dra-bridge.log"
        self.audit_log = work_dir / "audit.log"  # never the deployed default under /var/log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        if tls_from is not None:
            self.cert_dir, self.ca_pem = tls_from.cert_dir, tls_from.ca_pem
            return
        self.cert_dir = work_dir / "tls"
        ca = create_ca(common_name="dra-bridge-e2e-ca")
        serving = create_serving_cert(ca=ca, dns_names=["localhost"], ip_addresses=[LOOPBACK])
        write_pair(self.cert_dir, ca=ca, serving=serving)
        self.ca_pem = ca.cert_pem

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "DRA_BRIDGE_NAMESPACE": self.namespace,
            "DRA_BRIDGE_AUDIT_FILE": str(self.audit_log),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        args = [sys.executable, "-m", "webhook", "serve", "--host", LOOPBACK, "--port", str(self.port)]
        args += ["--cert-dir", str(self.cert_dir)]
        with open(self.log, "ab") as log:
            log.write(f"# {' '.join(args)}\n".encode())
            self.proc = subprocess.Popen(
                args,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_pdeathsig if sys.platform.startswith("linux") else None,  # dies with the tests
            )
        self.starts += 1
        wait_for(self.ready, timeout, what=lambda: f"dra-bridge /readyz on {self.url}; {self.log}:\n{tail(self.log)}")

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"dra-bridge exited ({self.proc and self.proc.returncode}):\n{tail(self.log)}")
        status, _ = self.get("/readyz")
        return status == 200

    def get(self, path: str) -> tuple[int, str]:
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        try:
            with urllib.request.urlopen(f"{self.url}{path}", context=context, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM (graceful drain), SIGKILL after ``timeout``; returns how long it took."""
        started = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL: no drain, connections reset, requests in flight lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")
        return ""


def device_index(slices: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], tuple[str, dict[str, Any]]]:
    """(driver, pool, device) -> (node, published device), to check what an allocation landed on."""
    return {
        (s["spec"]["driver"], s["spec"]["pool"]["name"], d["name"]): (s["spec"]["nodeName"], d)
        for s in slices
        for d in s["spec"]["devices"]
    }


def attribute(device: Mapping[str, Any], name: str) -> Any:
    value = (device.get("attributes") or {}).get(name) or {}
    return next(iter(value.values()), None)


# -- what the scheduler actually handed out -----------------------------------------------------
def claim_pod(
    name: str, *, claims: Mapping[str, str] | None = None, templates: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A Pod using ResourceClaims by name (``claims``: pod claim name -> ResourceClaim) and through
    templates (``templates``: pod claim name -> ResourceClaimTemplate), as a DRA user writes it."""
    refs = [{"name": k, "resourceClaimName": v} for k, v in (claims or {}).items()]
    refs += [{"name": k, "resourceClaimTemplateName": v} for k, v in (templates or {}).items()]
    manifest = pod(name)
    manifest["spec"]["resourceClaims"] = refs
    manifest["spec"]["containers"][0]["resources"] = {"claims": [{"name": r["name"]} for r in refs]}
    return manifest


def _amount(value: Any) -> Fraction:
    return parse_quantity(value) if value is not None else Fraction(0)


@dataclass
class Allocated:
    """Devices handed out to a set of claims, read from ``status.allocation`` and the ResourceSlices
    (never from the claims' requests): what a tenant really holds."""

    devices: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # whole / partition / shared
    memory: Fraction = Fraction(0)  # bytes
    compute: Fraction = Fraction(0)  # percent of one GPU
    profiles: dict[str, int] = field(default_factory=dict)
    results: list[str] = field(default_factory=list)

    def describe(self) -> str:
        gib = float(self.memory / 2**30)
        return (
            f"{self.devices} devices {self.kinds}, memory {gib:.2f}Gi, compute {float(self.compute):.1f} %, "
            f"profiles {self.profiles}: {'; '.join(self.results)}"
        )


def allocated_to(claims: Iterable[Mapping[str, Any]], slices: Iterable[Mapping[str, Any]]) -> Allocated:
    """Sum what the allocator gave ``claims``, device by device:

    - a device that cannot be shared is held whole: its ``memory`` capacity; 100 % compute for a
      GPU, and for a partition (``type: mig``) its share of a whole GPU's multiprocessors;
    - a shared device (``allowMultipleAllocations``) holds what the result's ``consumedCapacity``
      reports (memory; ``cores``/``compute`` out of the device's value as percent), or the whole
      capacity where a capacity is not reported.
    """
    index = device_index(slices)
    whole_sms: dict[str, Fraction] = {}
    for (driver, _, _), (_, device) in index.items():
        sms = ((device.get("capacity") or {}).get("multiprocessors") or {}).get("value")
        if sms is not None and attribute(device, "type") != "mig":
            whole_sms[driver] = max(whole_sms.get(driver, Fraction(0)), _amount(sms))
    out = Allocated()
    for claim in claims:
        allocation = (claim.get("status") or {}).get("allocation")
        if not allocation:
            continue
        for result in allocation["devices"]["results"]:
            _, device = index[(result["driver"], result["pool"], result["device"])]
            capacity = device.get("capacity") or {}
            value = {name: _amount(c.get("value")) for name, c in capacity.items()}
            if device.get("allowMultipleAllocations"):
                kind = "shared"
                consumed = {name: _amount(v) for name, v in (result.get("consumedCapacity") or {}).items()}
                memory = consumed.get("memory", value.get("memory", Fraction(0)))
                compute = Fraction(100)
                for name in ("cores", "compute"):
                    if value.get(name):
                        compute = consumed.get(name, value[name]) * 100 / value[name]
            elif attribute(device, "type") == "mig" or device.get("consumesCounters"):
                kind = "partition"
                memory = value.get("memory", Fraction(0))
                sms, whole = value.get("multiprocessors"), whole_sms.get(result["driver"])
                compute = sms * 100 / whole if sms is not None and whole else Fraction(100)
                profile = str(attribute(device, "profile"))
                out.profiles[profile] = out.profiles.get(profile, 0) + 1
            else:
                kind, memory, compute = "whole", value.get("memory", Fraction(0)), Fraction(100)
            out.devices += 1
            out.kinds[kind] = out.kinds.get(kind, 0) + 1
            out.memory += memory
            out.compute += compute
            name = claim["metadata"]["name"]
            out.results.append(f"{name}: {result['device']} ({kind}, {result.get('consumedCapacity') or '-'})")
    return out
