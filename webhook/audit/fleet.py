"""The fleet: what a platform team asks before adopting DRA, per node pool.

Pure: Nodes, ResourceSlices, ResourceClaims and Pods (plain dicts, as the API returns them) in, a
``Fleet`` out. For every node pool (a node label, see ``POOL_LABELS``):

- the GPU SKUs: the product attribute of the devices its drivers publish (the catalogue's
  ``attributes.product`` per driver), and GPU Feature Discovery's ``nvidia.com/gpu.product`` node
  label for nodes a device plugin serves;
- which device plugins serve it (legacy names in ``status.allocatable``) and which DRA drivers
  (ResourceSlices with ``nodeName`` on its nodes; the newest generation of each driver pool);
- allocated against allocatable per SKU: for a device plugin, the node's allocatable against the
  legacy requests of the running Pods bound there; for DRA, the devices published against the
  devices ResourceClaims have been allocated (``status.allocation.devices.results``);
- the tenants using it (Pods' and claims' namespaces), and what switching it to DRA would change:
  the workloads whose Pods hold its device-plugin GPUs would be converted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from webhook.translate.catalogue import CatalogueIndex
from webhook.translate.quantity import QuantityError, parse_quantity

# Where the pool is found when no --pool-label is given: the managed clouds' node-pool labels, then
# the instance type; a node with none of them is in pool "-".
POOL_LABELS = (
    "cloud.google.com/gke-nodepool",
    "eks.amazonaws.com/nodegroup",
    "kubernetes.azure.com/agentpool",
    "node.kubernetes.io/instance-type",
)
PRODUCT_LABELS = ("nvidia.com/gpu.product",)  # GPU Feature Discovery, on device-plugin nodes
NO_POOL = "-"
UNKNOWN_SKU = "-"
DEVICE_PLUGIN = "device-plugin"
DRA = "dra"
FINISHED_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Capacity:
    """One SKU of one pool, served one way: allocated against allocatable."""

    pool: str
    sku: str
    kind: str  # device-plugin or dra
    via: str  # the legacy name (device plugin) or the DRA driver
    nodes: int
    allocatable: int
    allocated: int


@dataclass(frozen=True)
class Pool:
    name: str
    nodes: int
    device_plugins: tuple[str, ...]  # legacy names in the nodes' allocatable
    drivers: tuple[str, ...]  # DRA drivers publishing devices on the nodes
    skus: tuple[str, ...]
    tenants: tuple[str, ...]  # with running Pods holding legacy GPUs, or allocated claims, here
    workloads: tuple[str, ...]  # Kind/namespace/name of those Pods' top-level workloads
    legacy_gpus: int  # whole devices those Pods hold through device plugins
    claims: int  # allocated ResourceClaims with devices here
    switch: str  # what moving the pool to DRA would change

    @property
    def mode(self) -> str:
        if self.device_plugins and self.drivers:
            return "mixed"
        return DEVICE_PLUGIN if self.device_plugins else DRA if self.drivers else "none"


@dataclass(frozen=True)
class TenantUse:
    tenant: str
    legacy_workloads: int  # workloads with legacy GPU requests (the report's rows)
    legacy_gpus: int  # GPUs they would be charged
    claims: int  # allocated ResourceClaims
    dra_devices: int  # devices allocated to them


@dataclass(frozen=True)
class Fleet:
    pool_label: str | None  # --pool-label, or None: the first of POOL_LABELS a node has
    pools: tuple[Pool, ...]
    capacity: tuple[Capacity, ...]
    tenants: tuple[TenantUse, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "poolLabels": [self.pool_label] if self.pool_label else list(POOL_LABELS),
            "pools": [{**_camel(asdict(p)), "mode": p.mode} for p in self.pools],
            "capacity": [_camel(asdict(c)) for c in self.capacity],
            "tenants": [_camel(asdict(t)) for t in self.tenants],
        }


def _camel(values: Mapping[str, Any]) -> dict[str, Any]:
    def camel(name: str) -> str:
        head, *rest = name.split("_")
        return head + "".join(part.title() for part in rest)

    return {camel(k): v for k, v in values.items()}


def pool_of(node: Mapping[str, Any], pool_label: str | None = None) -> str:
    labels = (node.get("metadata") or {}).get("labels") or {}
    for label in (pool_label,) if pool_label else POOL_LABELS:
        if labels.get(label):
            return str(labels[label])
    return NO_POOL


@dataclass(frozen=True)
class WorkloadUse:
    """A report row, as the fleet needs it: tenant and GPUs."""

    tenant: str
    gpus: int


def build_fleet(
    *,
    nodes: Iterable[Mapping[str, Any]],
    slices: Iterable[Mapping[str, Any]],
    claims: Iterable[Mapping[str, Any]],
    workloads: Sequence[Mapping[str, Any]],
    index: CatalogueIndex,
    tenant_of: Callable[[str], str],
    legacy_rows: Iterable[WorkloadUse] = (),
    pool_label: str | None = None,
) -> Fleet:
    """``workloads``: every workload object listed (Pods included, and the ReplicaSets and Jobs
    between a Pod and its top-level owner); ``legacy_rows``: the report's rows."""
    node_pool: dict[str, str] = {}
    node_sku: dict[str, str] = {}
    pool_nodes: dict[str, set[str]] = {}
    plugin_allocatable: dict[tuple[str, str, str], list[Any]] = {}  # (pool, sku, name) -> [nodes, amount]
    for node in nodes:
        name = str((node.get("metadata") or {}).get("name") or "")
        pool = pool_of(node, pool_label)
        labels = (node.get("metadata") or {}).get("labels") or {}
        sku = next((str(labels[k]) for k in PRODUCT_LABELS if labels.get(k)), UNKNOWN_SKU)
        node_pool[name], node_sku[name] = pool, sku
        pool_nodes.setdefault(pool, set()).add(name)
        for key, value in ((node.get("status") or {}).get("allocatable") or {}).items():
            amount = _count(value)
            if index.resource(str(key)) is None or not amount:
                continue
            entry = plugin_allocatable.setdefault((pool, sku, str(key)), [0, 0])
            entry[0] += 1
            entry[1] += amount

    # Device plugins: running Pods bound to the nodes, their legacy requests.
    by_key = {_key(o): o for o in workloads}
    plugin_allocated: dict[tuple[str, str, str], int] = {}
    pool_workloads: dict[str, set[str]] = {}
    pool_tenants: dict[str, set[str]] = {}
    pool_legacy_gpus: dict[str, int] = {}
    for obj in workloads:
        if obj.get("kind") != "Pod":
            continue
        spec = obj.get("spec") or {}
        node_name = str(spec.get("nodeName") or "")
        if node_name not in node_pool or (obj.get("status") or {}).get("phase") in FINISHED_PHASES:
            continue
        pool, sku = node_pool[node_name], node_sku[node_name]
        requests = {k: v for k, v in pod_legacy_requests(spec, index).items() if (pool, sku, k) in plugin_allocatable}
        if not requests:
            continue
        for key, amount in requests.items():
            plugin_allocated[(pool, sku, key)] = plugin_allocated.get((pool, sku, key), 0) + amount
            match = index.resource(key)
            if match is not None and match.entry.meaning == "devices":
                pool_legacy_gpus[pool] = pool_legacy_gpus.get(pool, 0) + amount
        kind, namespace, name = top_level(obj, by_key)
        pool_workloads.setdefault(pool, set()).add(f"{kind}/{namespace}/{name}")
        pool_tenants.setdefault(pool, set()).add(tenant_of(namespace))

    # DRA: devices in node-local slices (the newest generation of each driver pool), and claims.
    products = {d.driver: d.attributes.get("product") for d in index.catalogue.drivers}
    devices: dict[tuple[str, str, str], tuple[str, str]] = {}  # (driver, pool, device) -> (node, sku)
    for item in newest_generation(slices):
        spec = item.get("spec") or {}
        driver, node_name = str(spec.get("driver") or ""), str(spec.get("nodeName") or "")
        if driver not in products or node_name not in node_pool:
            continue
        slice_pool = str((spec.get("pool") or {}).get("name") or "")
        for device in spec.get("devices") or []:
            sku = _attribute(device, driver, products[driver]) or UNKNOWN_SKU
            devices[(driver, slice_pool, str(device.get("name") or ""))] = (node_name, sku)
    allocated: set[tuple[str, str, str]] = set()
    tenant_claims: dict[str, int] = {}
    tenant_devices: dict[str, set[tuple[str, str, str]]] = {}
    pool_claims: dict[str, int] = {}
    for claim in claims:
        results = (((claim.get("status") or {}).get("allocation") or {}).get("devices") or {}).get("results") or []
        namespace = str((claim.get("metadata") or {}).get("namespace") or "")
        held = {
            (str(r.get("driver") or ""), str(r.get("pool") or ""), str(r.get("device") or ""))
            for r in results
            if isinstance(r, Mapping)
        } & devices.keys()
        if not held:
            continue
        tenant = tenant_of(namespace)
        allocated |= held
        tenant_claims[tenant] = tenant_claims.get(tenant, 0) + 1
        tenant_devices.setdefault(tenant, set()).update(held)
        for pool in {node_pool[devices[d][0]] for d in held}:
            pool_claims[pool] = pool_claims.get(pool, 0) + 1
            pool_tenants.setdefault(pool, set()).add(tenant)
    dra: dict[tuple[str, str, str], list[Any]] = {}  # (pool, sku, driver) -> [nodes, published, allocated]
    for device_key, (node_name, sku) in devices.items():
        entry = dra.setdefault((node_pool[node_name], sku, device_key[0]), [set(), 0, 0])
        entry[0].add(node_name)
        entry[1] += 1
        entry[2] += device_key in allocated

    capacity = [
        Capacity(pool, sku, DEVICE_PLUGIN, key, n, amount, plugin_allocated.get((pool, sku, key), 0))
        for (pool, sku, key), (n, amount) in plugin_allocatable.items()
    ]
    capacity += [
        Capacity(pool, sku, DRA, driver, len(names), published, used)
        for (pool, sku, driver), (names, published, used) in dra.items()
    ]
    capacity.sort(key=lambda c: (c.pool, c.sku, c.kind, c.via))
    pools = []
    for pool in sorted(pool_nodes):
        lines = [c for c in capacity if c.pool == pool]
        plugins = tuple(sorted({c.via for c in lines if c.kind == DEVICE_PLUGIN}))
        drivers = tuple(sorted({c.via for c in lines if c.kind == DRA}))
        gpus, moved = pool_legacy_gpus.get(pool, 0), tuple(sorted(pool_workloads.get(pool, ())))
        pools.append(
            Pool(
                name=pool,
                nodes=len(pool_nodes[pool]),
                device_plugins=plugins,
                drivers=drivers,
                skus=tuple(sorted({c.sku for c in lines})),
                tenants=tuple(sorted(pool_tenants.get(pool, ()))),
                workloads=moved,
                legacy_gpus=gpus,
                claims=pool_claims.get(pool, 0),
                switch=_switch(plugins, drivers, moved, gpus),
            )
        )
    tenants: dict[str, list[int]] = {}
    for row in legacy_rows:
        total = tenants.setdefault(row.tenant, [0, 0, 0, 0])
        total[0] += 1
        total[1] += row.gpus
    for tenant, count in tenant_claims.items():
        total = tenants.setdefault(tenant, [0, 0, 0, 0])
        total[2], total[3] = count, len(tenant_devices[tenant])
    return Fleet(
        pool_label=pool_label,
        pools=tuple(pools),
        capacity=tuple(capacity),
        tenants=tuple(TenantUse(t, *v) for t, v in sorted(tenants.items())),
    )


def _switch(plugins: Sequence[str], drivers: Sequence[str], workloads: Sequence[str], gpus: int) -> str:
    if not plugins:
        return "on DRA already" if drivers else "no GPUs"
    moved = (
        f"{len(workloads)} workload(s) holding {gpus} GPU(s) here would be converted when their Pods are recreated"
        if workloads
        else "no running workload holds its device-plugin GPUs"
    )
    if drivers:
        return f"mixed (device plugin and DRA on the same pool): {moved}"
    return f"device plugin ({', '.join(plugins)}) to DRA: {moved}"


def newest_generation(slices: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The slices of each (driver, pool) at that pool's highest generation (older ones are stale)."""

    def pool_key(item: Mapping[str, Any]) -> tuple[str, str, int]:
        spec = item.get("spec") or {}
        pool = spec.get("pool") or {}
        return str(spec.get("driver") or ""), str(pool.get("name") or ""), int(pool.get("generation") or 0)

    items = list(slices)
    newest: dict[tuple[str, str], int] = {}
    for item in items:
        driver, pool, generation = pool_key(item)
        newest[(driver, pool)] = max(newest.get((driver, pool), generation), generation)
    return [item for item in items if pool_key(item)[2] == newest[pool_key(item)[:2]]]


def pod_legacy_requests(spec: Mapping[str, Any], index: CatalogueIndex) -> dict[str, int]:
    """What a Pod asks of each legacy extended resource: its containers' sum, or the largest init
    container when that is more (as the scheduler counts it). Limits first: they equal requests."""

    def of(container: Mapping[str, Any]) -> dict[str, int]:
        resources = container.get("resources") or {}
        merged = {**(resources.get("requests") or {}), **(resources.get("limits") or {})}
        return {str(k): _count(v) for k, v in merged.items() if index.resource(str(k)) is not None}

    total: dict[str, int] = {}
    for container in spec.get("containers") or []:
        for key, amount in of(container).items():
            total[key] = total.get(key, 0) + amount
    for container in spec.get("initContainers") or []:
        for key, amount in of(container).items():
            total[key] = max(total.get(key, 0), amount)
    return {k: v for k, v in total.items() if v}


def top_level(obj: Mapping[str, Any], by_key: Mapping[tuple[str, str, str], Mapping[str, Any]]) -> tuple[str, str, str]:
    """Follow controller ownerReferences (Pod -> ReplicaSet -> Deployment, Pod -> Job -> CronJob)
    as far as the listed objects go."""
    current, seen = obj, set()
    while True:
        kind, namespace, name = _key(current)
        refs = (current.get("metadata") or {}).get("ownerReferences") or []
        owner = next((r for r in refs if r.get("controller")), None)
        if owner is None or (kind, namespace, name) in seen:
            return kind, namespace, name
        seen.add((kind, namespace, name))
        parent = by_key.get((str(owner.get("kind")), namespace, str(owner.get("name"))))
        if parent is None:
            return str(owner.get("kind")), namespace, str(owner.get("name"))
        current = parent


def _key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return str(obj.get("kind") or ""), str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _attribute(device: Mapping[str, Any], driver: str, name: str | None) -> str | None:
    """A device attribute's value, written plain (``productName``) or qualified (``driver/productName``)."""
    if not name:
        return None
    attributes = device.get("attributes") or {}
    value = attributes.get(name) or attributes.get(f"{driver}/{name}")
    if not isinstance(value, Mapping):
        return None
    for kind in ("string", "version", "int", "bool"):
        if kind in value:
            return str(value[kind])
    return None


def _count(value: Any) -> int:
    try:
        amount = parse_quantity(value)
    except QuantityError:
        return 0
    return int(amount) if amount >= 0 else 0
