"""The migration report: which workloads still use legacy GPU requests, and what they would become.

Pure: workload objects (dicts, from manifests or a live cluster) in, a ``Report`` out. Each workload
is rewritten exactly as the webhook would rewrite its Pods; the result says what it would become,
or why it cannot be converted. GPUs and GPU memory are what the claims would be charged (the
quota's own arithmetic), per Pod and times the replicas.

Only top-level workloads are reported: Pods, ReplicaSets and Jobs that a controller owns are left
out, because their owner is reported (a Deployment and its ReplicaSets and Pods are one workload).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from typing import Any

from webhook.audit.fleet import Fleet
from webhook.errors import TranslationError
from webhook.quota.charge import ZERO, Pricer, basis, charge
from webhook.quota.devices import catalogue_snapshot
from webhook.quota.policy import PolicySet
from webhook.translate.catalogue import CatalogueIndex
from webhook.translate.convert import POD_TEMPLATE_PATHS
from webhook.translate.quantity import format_quantity, round_up
from webhook.translate.rewrite import opted_out, rewrite_pod

OWNED_KINDS = {"Pod", "ReplicaSet", "Job"}  # usually created by a controller that is reported itself


@dataclass(frozen=True)
class WorkloadRow:
    kind: str
    namespace: str
    name: str
    tenant: str
    status: str  # convertible, cannot-convert, native, opted-out
    legacy: dict[str, str]  # legacy name -> value, every container and annotation
    becomes: str  # what the Pods would get, or why not
    replicas: int | None  # None: per node (DaemonSet)
    gpus_per_pod: int = 0
    memory_per_pod: int = 0  # bytes
    native: dict[str, str] = field(default_factory=dict)  # legacy name -> DeviceClass serving it natively

    @property
    def gpus(self) -> int:
        return self.gpus_per_pod * (self.replicas if self.replicas is not None else 1)

    @property
    def memory(self) -> int:
        return self.memory_per_pod * (self.replicas if self.replicas is not None else 1)


@dataclass(frozen=True)
class TenantTotal:
    tenant: str
    workloads: int
    gpus: int
    memory: int


@dataclass(frozen=True)
class Report:
    rows: tuple[WorkloadRow, ...]
    tenants: tuple[TenantTotal, ...]
    by_legacy_name: dict[str, int]  # legacy name -> workloads using it
    native_classes: dict[str, str]  # legacy name -> DeviceClass that serves it natively
    native_paths: dict[str, str] = field(default_factory=dict)  # legacy name -> native, possible, convert
    whole_only: int = 0  # workloads that ask for whole devices only: KEP-5004 could serve them natively

    def as_json(self) -> dict[str, Any]:
        return {
            "workloads": [{**asdict(r), "gpus": r.gpus, "memory": r.memory} for r in self.rows],
            "tenants": [asdict(t) for t in self.tenants],
            "byLegacyName": self.by_legacy_name,
            "nativeDeviceClasses": self.native_classes,
            "nativePaths": self.native_paths,
            "wholeDevicesOnly": self.whole_only,
        }


def build_report(
    objects: Iterable[Mapping[str, Any]],
    *,
    index: CatalogueIndex,
    policies: PolicySet,
    namespace_labels: Mapping[str, Mapping[str, str]],
    native: Mapping[str, str],
    default_namespace: str = "default",
) -> Report:
    pricer = Pricer(
        index.catalogue,
        catalogue_snapshot(index.catalogue),
        declared_memory={n: f.memory for n, f in policies.classes.items()},
    )
    rows = []
    for obj in objects:
        row = _row(
            obj,
            index=index,
            policies=policies,
            labels=namespace_labels,
            native=native,
            pricer=pricer,
            default_namespace=default_namespace,
        )
        if row is not None:
            rows.append(row)
    rows.sort(key=lambda r: (r.tenant, r.namespace, r.kind, r.name))
    totals: dict[str, list[int]] = {}
    by_name: dict[str, int] = {}
    for row in rows:
        total = totals.setdefault(row.tenant, [0, 0, 0])
        total[0] += 1
        total[1] += row.gpus
        total[2] += row.memory
        for legacy_name in row.legacy:
            by_name[legacy_name] = by_name.get(legacy_name, 0) + 1
    paths = {name: native_path(name, index=index, native=native) for name in sorted(by_name)}
    whole_only = sum(
        1 for r in rows if r.status == "convertible" and r.legacy and all(paths.get(n) == POSSIBLE for n in r.legacy)
    )
    return Report(
        rows=tuple(rows),
        tenants=tuple(TenantTotal(t, *v) for t, v in sorted(totals.items())),
        by_legacy_name=dict(sorted(by_name.items())),
        native_classes=dict(sorted(native.items())),
        native_paths=paths,
        whole_only=whole_only,
    )


NATIVE = "native"
POSSIBLE = "possible"
CONVERT = "convert"
# KEP-5004 (a DeviceClass's extendedResourceName serves a legacy name natively, whole devices only):
KEP_5004 = "alpha in 1.34 and 1.35 (feature gate DRAExtendedResource), beta and on by default in 1.36, GA in 1.37"


def native_path(name: str, *, index: CatalogueIndex, native: Mapping[str, str]) -> str:
    """``native`` when a DeviceClass serves the name natively; ``possible`` for a whole-device
    count (a DeviceClass with ``extendedResourceName`` would); ``convert`` for everything a count of
    whole devices cannot express (memory, compute, partitions, shares, annotations)."""
    if name in native:
        return NATIVE
    match = index.resource(name)
    if match is not None and match.entry.meaning == "devices":
        return POSSIBLE
    return CONVERT


def _row(
    obj: Mapping[str, Any],
    *,
    index: CatalogueIndex,
    policies: PolicySet,
    labels: Mapping[str, Mapping[str, str]],
    native: Mapping[str, str],
    pricer: Pricer,
    default_namespace: str,
) -> WorkloadRow | None:
    kind = str(obj.get("kind", ""))
    path = POD_TEMPLATE_PATHS.get(kind)
    if path is None or kind == "PodTemplate":
        return None
    metadata = obj.get("metadata") or {}
    if kind in OWNED_KINDS and any(ref.get("controller") for ref in metadata.get("ownerReferences") or []):
        return None
    template: Any = obj
    for key in path:
        template = (template or {}).get(key)
    if not isinstance(template, dict):
        return None
    namespace = str(metadata.get("namespace") or default_namespace)
    legacy = _legacy_values(template, index)
    if not legacy:
        return None
    tenant_obj = policies.tenant_for(namespace, labels.get(namespace))
    row = WorkloadRow(
        kind=kind,
        namespace=namespace,
        name=str(metadata.get("name") or metadata.get("generateName") or "?"),
        tenant=tenant_obj.name if tenant_obj is not None else "-",
        status="convertible",
        legacy=legacy,
        becomes="",
        replicas=_replicas(obj, kind),
        native={k: native[k] for k in legacy if k in native},
    )
    pod_labels = (template.get("metadata") or {}).get("labels")
    if opted_out(metadata.get("labels")) or opted_out(pod_labels) or opted_out(labels.get(namespace)):
        return replace(row, status="opted-out", becomes="left as is (dra-bridge.io/ignore)")
    try:
        plan = rewrite_pod(template, index=index, namespace=namespace, native=native)
    except TranslationError as err:
        return replace(row, status="cannot-convert", becomes=str(err))
    if not plan.conversions:
        served = ", ".join(f"{k} by {v}" for k, v in row.native.items())
        return replace(row, status="native", becomes=f"served natively: {served}")
    pod_charge = ZERO
    for conversion in plan.conversions:
        template_obj = next(t for t in plan.templates if t["metadata"]["name"] == conversion.template)
        pod_charge = pod_charge + charge(basis(template_obj["spec"]["spec"]), pricer=pricer)
    becomes = "; ".join(f"{c.container}: {c.summary}" for c in plan.conversions)
    if plan.warnings:
        becomes += " (" + "; ".join(plan.warnings) + ")"
    return replace(
        row,
        becomes=becomes,
        gpus_per_pod=pod_charge.total_devices,
        memory_per_pod=int(round_up(pod_charge.memory, Fraction(1))),
    )


def _legacy_values(template: Mapping[str, Any], index: CatalogueIndex) -> dict[str, str]:
    found: dict[str, str] = {}
    spec = template.get("spec") or {}
    for field_name in ("initContainers", "containers"):
        for container in spec.get(field_name) or []:
            resources = container.get("resources") or {}
            for section in ("limits", "requests"):
                for key, value in (resources.get(section) or {}).items():
                    if index.resource(key) is not None:
                        found.setdefault(key, str(value))
    for key, value in ((template.get("metadata") or {}).get("annotations") or {}).items():
        if index.annotation(key) is not None:
            found[key] = str(value)
    return found


def _replicas(obj: Mapping[str, Any], kind: str) -> int | None:
    spec = obj.get("spec") or {}
    if kind == "DaemonSet":
        return None
    if kind in ("Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"):
        return int(spec.get("replicas", 1))
    if kind == "Job":
        return int(spec.get("parallelism", 1))
    if kind == "CronJob":
        return int(((spec.get("jobTemplate") or {}).get("spec") or {}).get("parallelism", 1))
    return 1


# -- rendering --------------------------------------------------------------------------------------


def _mem(value: int) -> str:
    """Readable memory: exact when it is whole GiB or MiB below 1 GiB, else GiB to one decimal."""
    if value < 2**30 or value % 2**30 == 0:
        return format_quantity(round_up(Fraction(value), Fraction(2**20))) if value else "0"
    return f"{value / 2**30:.1f}Gi"


def render_table(report: Report, fleet: Fleet | None = None) -> str:
    columns = ("TENANT", "NAMESPACE", "WORKLOAD", "REPLICAS", "GPUS", "MEMORY", "STATUS", "LEGACY", "BECOMES")
    rows = [
        (
            r.tenant,
            r.namespace,
            f"{r.kind}/{r.name}",
            "per node" if r.replicas is None else str(r.replicas),
            str(r.gpus),
            _mem(r.memory),
            r.status,
            ", ".join(f"{k}={v}" for k, v in r.legacy.items()),
            r.becomes if len(r.becomes) <= 90 else r.becomes[:87] + "...",
        )
        for r in report.rows
    ]
    lines = [_aligned(columns, rows)]
    lines.append("")
    lines.append(
        _aligned(
            ("TENANT", "WORKLOADS", "GPUS", "MEMORY"),
            [(t.tenant, str(t.workloads), str(t.gpus), _mem(t.memory)) for t in report.tenants],
        )
    )
    if report.by_legacy_name:
        lines.append("")
        lines.append(_aligned(("LEGACY NAME", "WORKLOADS"), [(k, str(v)) for k, v in report.by_legacy_name.items()]))
    blocked = [r for r in report.rows if r.status == "cannot-convert"]
    if blocked:
        lines.append("")
        lines.append("Cannot be converted:")
        lines.extend(f"  {r.kind}/{r.namespace}/{r.name}: {r.becomes}" for r in blocked)
    lines.append("")
    if report.native_classes:
        lines.append("Served natively by DeviceClasses (left as is):")
        lines.extend(f"  {k}: {v}" for k, v in report.native_classes.items())
    else:
        lines.append("No DeviceClass serves a legacy name natively (extendedResourceName).")
    possible = [k for k, v in report.native_paths.items() if v == POSSIBLE]
    needed = [k for k, v in report.native_paths.items() if v == CONVERT]
    if possible:
        lines.append(
            f"Whole-device names a DeviceClass could serve natively with extendedResourceName ({KEP_5004}): "
            f"{', '.join(possible)}; {report.whole_only} workload(s) ask for whole devices only and would then "
            "need no conversion."
        )
    if needed:
        lines.append(
            f"No native path (fractional: memory, compute, partitions, shares): {', '.join(needed)}; "
            "these need dra-bridge's conversion on every release."
        )
    if fleet is not None:
        lines.append("")
        lines.extend(_fleet_table(fleet))
    return "\n".join(lines) + "\n"


def _aligned(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out.extend("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
    return "\n".join(out)


def render_html(report: Report, *, fleet: Fleet | None = None, title: str = "dra-bridge migration report") -> str:
    """One self-contained page: a bar chart of GPUs per tenant (inline SVG) and the tables; with a
    fleet, a chart of allocated against allocatable per pool and SKU and its tables."""
    esc = html.escape
    peak = max([t.gpus for t in report.tenants] + [1])
    bar_height, width = 26, 640
    bars = []
    for i, total in enumerate(report.tenants):
        length = int((width - 260) * total.gpus / peak)
        y = 10 + i * bar_height
        bars.append(
            f'<text x="0" y="{y + 17}" class="label">{esc(total.tenant)}</text>'
            f'<rect x="180" y="{y + 4}" width="{length}" height="{bar_height - 8}" class="bar"><title>{total.gpus} GPUs</title></rect>'
            f'<text x="{186 + length}" y="{y + 17}" class="value">{total.gpus} GPUs, {esc(_mem(total.memory))}</text>'
        )
    chart_height = 20 + bar_height * max(len(report.tenants), 1)
    status_class = {"convertible": "ok", "cannot-convert": "bad", "native": "info", "opted-out": "info"}
    body_rows = "\n".join(
        f'<tr class="{status_class.get(r.status, "")}"><td>{esc(r.tenant)}</td><td>{esc(r.namespace)}</td>'
        f"<td>{esc(r.kind)}/{esc(r.name)}</td><td>{'per node' if r.replicas is None else r.replicas}</td>"
        f"<td>{r.gpus}</td><td>{esc(_mem(r.memory))}</td><td>{esc(r.status)}</td>"
        f"<td>{esc(', '.join(f'{k}={v}' for k, v in r.legacy.items()))}</td><td>{esc(r.becomes)}</td></tr>"
        for r in report.rows
    )
    legacy_rows = "\n".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in report.by_legacy_name.items())
    native_rows = "\n".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in report.native_classes.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #1b1f24; }}
table {{ border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }}
th, td {{ border: 1px solid #d0d7de; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }}
th {{ background: #f6f8fa; }}
tr.bad td {{ background: #ffebe9; }} tr.info td {{ background: #ddf4ff; }}
.bar {{ fill: #2f81f7; }} .used {{ fill: #cf222e; }} .free {{ fill: #d0d7de; }} .label, .value {{ font-size: 13px; fill: #1b1f24; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p>{len(report.rows)} workloads with legacy GPU requests; {sum(t.gpus for t in report.tenants)} GPUs in total.</p>
<h2>GPUs requested per tenant</h2>
<svg role="img" aria-label="GPUs per tenant" width="{width + 200}" height="{chart_height}">{"".join(bars)}</svg>
<h2>Workloads</h2>
<table><thead><tr><th>Tenant</th><th>Namespace</th><th>Workload</th><th>Replicas</th><th>GPUs</th><th>Memory</th><th>Status</th><th>Legacy request</th><th>Becomes</th></tr></thead>
<tbody>
{body_rows}
</tbody></table>
<h2>By legacy name</h2>
<table><thead><tr><th>Legacy name</th><th>Workloads</th></tr></thead><tbody>
{legacy_rows}
</tbody></table>
<h2>DeviceClasses serving legacy names natively</h2>
<table><thead><tr><th>Legacy name</th><th>DeviceClass</th></tr></thead><tbody>
{native_rows or '<tr><td colspan="2">none</td></tr>'}
</tbody></table>
{_fleet_html(fleet) if fleet is not None else ""}</body></html>
"""


# -- the fleet (report --cluster) -----------------------------------------------------------------


def _fleet_table(fleet: Fleet) -> list[str]:
    lines = ["Fleet (node pools):"]
    lines.append(
        _aligned(
            ("POOL", "NODES", "MODE", "SKUS", "TENANTS", "LEGACY GPUS", "CLAIMS", "SWITCH TO DRA"),
            [
                (
                    p.name,
                    str(p.nodes),
                    p.mode,
                    ", ".join(p.skus) or "-",
                    ", ".join(p.tenants) or "-",
                    str(p.legacy_gpus),
                    str(p.claims),
                    p.switch,
                )
                for p in fleet.pools
            ],
        )
    )
    lines.append("")
    lines.append(
        _aligned(
            ("POOL", "SKU", "SERVED BY", "VIA", "NODES", "ALLOCATED", "ALLOCATABLE", "IN USE"),
            [
                (
                    c.pool,
                    c.sku,
                    c.kind,
                    c.via,
                    str(c.nodes),
                    str(c.allocated),
                    str(c.allocatable),
                    _percent(c.allocated, c.allocatable),
                )
                for c in fleet.capacity
            ],
        )
    )
    moving = [p for p in fleet.pools if p.workloads]
    if moving:
        lines.append("")
        lines.append("Workloads a pool's switch to DRA would convert:")
        lines.extend(f"  {p.name}: {', '.join(p.workloads)}" for p in moving)
    if fleet.tenants:
        lines.append("")
        lines.append(
            _aligned(
                ("TENANT", "LEGACY WORKLOADS", "LEGACY GPUS", "CLAIMS", "DRA DEVICES"),
                [
                    (t.tenant, str(t.legacy_workloads), str(t.legacy_gpus), str(t.claims), str(t.dra_devices))
                    for t in fleet.tenants
                ],
            )
        )
    return lines


def _percent(part: int, whole: int) -> str:
    return f"{round(Fraction(100 * part, whole))}%" if whole else "-"


def _fleet_html(fleet: Fleet) -> str:
    """A section: allocated against allocatable per pool and SKU (inline SVG), then the tables."""
    esc = html.escape
    bar_height, width, left = 26, 420, 320
    bars = []
    for i, c in enumerate(fleet.capacity):
        y = 10 + i * bar_height
        used = int(width * c.allocated / c.allocatable) if c.allocatable else 0
        label = f"{c.pool} · {c.sku} ({c.kind})"
        bars.append(
            f'<text x="0" y="{y + 17}" class="label">{esc(label)}</text>'
            f'<rect x="{left}" y="{y + 4}" width="{width}" height="{bar_height - 8}" class="free">'
            f"<title>{c.allocatable} allocatable</title></rect>"
            f'<rect x="{left}" y="{y + 4}" width="{used}" height="{bar_height - 8}" class="used">'
            f"<title>{c.allocated} allocated</title></rect>"
            f'<text x="{left + width + 6}" y="{y + 17}" class="value">{c.allocated}/{c.allocatable} '
            f"{esc(_percent(c.allocated, c.allocatable))}</text>"
        )
    chart_height = 20 + bar_height * max(len(fleet.capacity), 1)
    pool_rows = "\n".join(
        f"<tr><td>{esc(p.name)}</td><td>{p.nodes}</td><td>{esc(p.mode)}</td><td>{esc(', '.join(p.skus) or '-')}</td>"
        f"<td>{esc(', '.join(p.device_plugins) or '-')}</td><td>{esc(', '.join(p.drivers) or '-')}</td>"
        f"<td>{esc(', '.join(p.tenants) or '-')}</td><td>{p.legacy_gpus}</td><td>{p.claims}</td>"
        f"<td>{esc(p.switch)}{''.join(f'<br>{esc(w)}' for w in p.workloads)}</td></tr>"
        for p in fleet.pools
    )
    capacity_rows = "\n".join(
        f"<tr><td>{esc(c.pool)}</td><td>{esc(c.sku)}</td><td>{esc(c.kind)}</td><td>{esc(c.via)}</td>"
        f"<td>{c.nodes}</td><td>{c.allocated}</td><td>{c.allocatable}</td><td>{_percent(c.allocated, c.allocatable)}</td></tr>"
        for c in fleet.capacity
    )
    tenant_rows = "\n".join(
        f"<tr><td>{esc(t.tenant)}</td><td>{t.legacy_workloads}</td><td>{t.legacy_gpus}</td><td>{t.claims}</td>"
        f"<td>{t.dra_devices}</td></tr>"
        for t in fleet.tenants
    )
    return f"""<h2>Fleet: allocated against allocatable per pool and SKU</h2>
<svg role="img" aria-label="GPUs allocated per pool and SKU" width="{left + width + 120}" height="{chart_height}">{"".join(bars)}</svg>
<h2>Node pools</h2>
<table><thead><tr><th>Pool</th><th>Nodes</th><th>Mode</th><th>SKUs</th><th>Device plugins</th><th>DRA drivers</th><th>Tenants</th><th>Legacy GPUs</th><th>Claims</th><th>Switch to DRA</th></tr></thead><tbody>
{pool_rows or '<tr><td colspan="10">no nodes</td></tr>'}
</tbody></table>
<h2>Capacity per SKU</h2>
<table><thead><tr><th>Pool</th><th>SKU</th><th>Served by</th><th>Via</th><th>Nodes</th><th>Allocated</th><th>Allocatable</th><th>In use</th></tr></thead><tbody>
{capacity_rows or '<tr><td colspan="8">no GPUs</td></tr>'}
</tbody></table>
<h2>Tenants using GPUs</h2>
<table><thead><tr><th>Tenant</th><th>Legacy workloads</th><th>Legacy GPUs</th><th>Claims</th><th>DRA devices</th></tr></thead><tbody>
{tenant_rows or '<tr><td colspan="5">none</td></tr>'}
</tbody></table>
"""
