"""``dra-bridge report``: the migration report, from manifests or from a live cluster.

From files: ``dra-bridge report -f manifests/ [--policies DIR] [--deviceclasses FILE]`` (files that
hold Nodes, as ``kubectl get -o yaml`` writes a cluster's objects, get the fleet section too). From the
cluster: ``dra-bridge report --cluster`` (kubeconfig or in-cluster), which reads workloads,
namespace labels, policy ConfigMaps and DeviceClasses, and for the fleet section (GPU SKUs, device
plugins and DRA drivers per node pool, allocated against allocatable, tenants, what a pool's switch
would change) Nodes, ResourceSlices and ResourceClaims. Output: a table, JSON, or an HTML page, on
stdout or into ``--out FILE``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from webhook.audit.fleet import POOL_LABELS, Fleet, WorkloadUse, build_fleet
from webhook.audit.report import build_report, render_html, render_table
from webhook.cli.common import ClusterError, add_policies_flag, connect, fail, load_index, policies_dir
from webhook.cli.convert import read_documents
from webhook.quota.enforcement import PolicyStore
from webhook.translate.catalogue import CatalogueError

FORMATS = ("table", "json", "html")
FLEET_KINDS = {"nodes": "Node", "slices": "ResourceSlice", "claims": "ResourceClaim"}


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "report",
        help="which workloads still use legacy GPU requests, and what they would become",
        description="Reads manifests (-f) or a live cluster (--cluster) and reports every workload with legacy "
        "GPU requests: by namespace, tenant and legacy name, what it would become, what cannot be converted "
        "and why, GPUs and GPU memory per tenant, and DeviceClasses that serve legacy names natively. "
        "With --cluster (or -f files holding Nodes, ResourceSlices, ResourceClaims and Pods, as kubectl get "
        "-o yaml writes them), also the fleet: GPU SKUs, device plugins and DRA drivers per node pool, "
        "allocated against allocatable, the tenants using GPUs and what each pool's switch to DRA would change. "
        "With -f, tenants come from the quota*.yaml files of --policies (default ./policies when it exists, else "
        "the shipped folder); with --cluster, from the policy ConfigMaps of --namespace.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-f", "--filename", action="append", help="file, folder or - for stdin")
    source.add_argument(
        "--cluster",
        action="store_true",
        help="read the cluster of the current kubeconfig ($KUBECONFIG, else ~/.kube/config)",
    )
    parser.add_argument("--deviceclasses", type=Path, help="with -f: DeviceClasses (YAML) to find native names")
    parser.add_argument("--namespace", default="dra-bridge", help="with --cluster: where policy ConfigMaps live")
    parser.add_argument(
        "--pool-label",
        metavar="LABEL",
        help="the node label naming a node's pool (default: the first of "
        + ", ".join(POOL_LABELS)
        + " a node has, else -)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="with --cluster: seconds to wait for caches")
    parser.add_argument(
        "-o", "--output", choices=FORMATS, help="table, json or html (default: from --out's suffix, else table)"
    )
    parser.add_argument("--out", type=Path, metavar="FILE", help="write the report to FILE instead of stdout")
    add_policies_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        index = load_index(args)
    except (CatalogueError, OSError) as err:
        return fail(str(err))
    policies = PolicyStore()
    fleet_objects: dict[str, list[dict[str, Any]]] | None = None
    if args.cluster:
        try:
            objects, labels, native, fleet_objects = _from_cluster(args, policies)
        except (TimeoutError, ClusterError) as err:
            return fail(str(err))
    else:
        try:
            objects = _items(read_documents(args.filename))
            native = _native_from_file(args.deviceclasses) if args.deviceclasses else {}
        except (OSError, yaml.YAMLError, ValueError) as err:
            return fail(str(err))
        labels = {}
        if any(o.get("kind") == "Node" for o in objects):  # a cluster's objects written to files
            fleet_objects = {key: [o for o in objects if o.get("kind") == kind] for key, kind in FLEET_KINDS.items()}
        from webhook.serving.server import policy_files

        for path in policy_files(policies_dir(args)):
            policies.on_configmap("ADDED", _as_configmap(path))
    for name, error in policies.errors.items():
        print(f"warning: policy {name} ignored: {error}", file=sys.stderr)
    report = build_report(objects, index=index, policies=policies.current, namespace_labels=labels, native=native)
    fleet: Fleet | None = None
    if fleet_objects is not None:
        current = policies.current

        def tenant_of(namespace: str) -> str:
            tenant = current.tenant_for(namespace, labels.get(namespace))
            return tenant.name if tenant is not None else "-"

        fleet = build_fleet(
            nodes=fleet_objects["nodes"],
            slices=fleet_objects["slices"],
            claims=fleet_objects["claims"],
            workloads=objects,
            index=index,
            tenant_of=tenant_of,
            legacy_rows=[WorkloadUse(r.tenant, r.gpus) for r in report.rows],
            pool_label=args.pool_label,
        )
    output = args.output or _format_of(args.out)
    if output == "json":
        data = report.as_json()
        if fleet is not None:
            data["fleet"] = fleet.as_json()
        text = json.dumps(data, indent=2) + "\n"
    elif output == "html":
        text = render_html(report, fleet=fleet)
    else:
        text = render_table(report, fleet)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as err:
        return fail(f"cannot write the report: {err}")
    print(f"wrote the {output} report to {args.out}", file=sys.stderr)
    return 0


def _items(documents: list[Any]) -> list[dict[str, Any]]:
    """The objects, with the items of List documents (``kubectl get -o yaml``) in their place."""
    objects: list[dict[str, Any]] = []
    for document in documents:
        if not isinstance(document, dict):
            continue
        if str(document.get("kind") or "").endswith("List") and isinstance(document.get("items"), list):
            objects.extend(i for i in document["items"] if isinstance(i, dict))
        else:
            objects.append(document)
    return objects


def _format_of(out: Path | None) -> str:
    suffix = out.suffix.lower().lstrip(".") if out is not None else ""
    return {"htm": "html", "html": "html", "json": "json"}.get(suffix, "table")


def _as_configmap(path: Path) -> dict[str, Any]:
    for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if isinstance(document, dict) and document.get("kind") == "ConfigMap":
            document.setdefault("metadata", {}).setdefault("resourceVersion", "file")
            return document
    return {"metadata": {"name": path.name, "resourceVersion": "file"}, "data": {"policy.yaml": path.read_text()}}


def _native_from_file(path: Path) -> dict[str, str]:
    native = {}
    for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        items = document.get("items", [document]) if isinstance(document, dict) else []
        for item in items:
            name = (item.get("spec") or {}).get("extendedResourceName") if isinstance(item, dict) else None
            if item.get("kind") == "DeviceClass" and name:
                native[str(name)] = str(item["metadata"]["name"])
    return native


def _from_cluster(
    args: argparse.Namespace, policies: PolicyStore
) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]], dict[str, str], dict[str, list[dict[str, Any]]]]:
    cluster = connect(args.namespace)
    cluster.watch("policy-configmaps", policies.on_configmap)
    cluster.start()
    try:
        deadline = time.monotonic() + args.timeout
        while not cluster.ready()[0]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"caches did not sync within {args.timeout:g}s: {cluster.ready()[1]}")
            time.sleep(0.2)
        objects = list(cluster.list_workloads())
        labels = {name: dict(value) for name, value in cluster.namespaces().items()}
        native = dict(cluster.native_extended_resources())
        fleet = {
            "nodes": list(cluster.list_nodes()),
            "slices": list(cluster.list_resource_slices()),
            "claims": list(cluster.list_claims()),
        }
    finally:
        cluster.stop()
    return objects, labels, native, fleet
