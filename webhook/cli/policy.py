"""``dra-bridge policy``: check policy files before saving them; see tenants' usage against limits.

``policy check FILE...`` validates the schema, compiles every CEL rule and refuses references to
DeviceClasses nobody defines (the catalogue's unified classes, plus any listed with
``--classes-from``, e.g. the output of ``kubectl get deviceclasses -o yaml``).

A catalogue file among them (a ConfigMap labelled ``dra-bridge.io/catalogue`` or carrying
``catalogue.yaml``, or a bare ``TranslationCatalogue``) is checked as a catalogue, merged after the
shipped default, so ``policy check policies/*.yaml`` checks a whole folder.

``policy usage`` reads the live cluster (kubeconfig), waits for the caches to sync and prints each
tenant's limits against its current usage; ``--policies DIR`` uses the policy files there instead of
the cluster's ConfigMaps (for a dry run of a change). ``--dev`` needs no cluster: the in-memory
cluster of ``serve --dev``, seeded with the policy files and the claims of ``--claims FILE``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from webhook.cli.common import ClusterError, add_policies_flag, connect, fail, load_index, policies_dir
from webhook.cluster import ClusterPort
from webhook.labels import CATALOGUE_KEY, CATALOGUE_LABEL
from webhook.quota.charge import DRIVER_PREFIX, KIND_PREFIX, ZERO
from webhook.quota.enforcement import QuotaEnforcer
from webhook.quota.policy import PolicyError, PolicySet, PolicySource, Tenant, build_policy_set, parse_policy_document
from webhook.translate.catalogue import (
    DEVICE_KINDS,
    KIND,
    CatalogueError,
    CatalogueIndex,
    load_catalogue,
)
from webhook.translate.quantity import format_quantity, round_up


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("policy", help="check policy files; show tenants' usage against their limits")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="validate policy files (schema, CEL, DeviceClass references)",
        description="Validates quota policy files (a QuotaPolicy, or a ConfigMap carrying one under policy.yaml) "
        "together, as the server would merge them; catalogue files among them are checked as catalogues, "
        "merged after the default catalogue of --policies. Reads only the files given.",
    )
    check.add_argument("files", nargs="+", type=Path, help="policy or catalogue files, e.g. policies/*.yaml")
    check.add_argument("--classes-from", action="append", type=Path, default=[], help="YAML with more DeviceClasses")
    add_policies_flag(check)
    check.set_defaults(run=run_check)
    usage = actions.add_parser(
        "usage",
        help="each tenant's limits against its live usage",
        description="Reads the cluster of the current kubeconfig ($KUBECONFIG, else ~/.kube/config; in-cluster "
        "credentials inside a Pod): namespaces, ResourceClaims and the policy ConfigMaps of --namespace. "
        "With --policies, the quota*.yaml files there replace the cluster's policies. With --dev, no cluster: "
        "the quota*.yaml files of --policies (default ./policies) and the claims of --claims.",
    )
    usage.add_argument("--tenant", help="only this tenant")
    usage.add_argument(
        "--dev", action="store_true", help="no cluster: an in-memory one, as `serve --dev` keeps (policies from files)"
    )
    usage.add_argument(
        "--claims",
        action="append",
        default=[],
        metavar="FILE",
        help="with --dev: ResourceClaims (and Namespaces with their labels) in YAML; a file, folder or -",
    )
    usage.add_argument("--namespace", default="dra-bridge", help="where the policy ConfigMaps live")
    usage.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the caches to sync")
    usage.add_argument("-o", "--output", choices=("table", "json"), default="table")
    add_policies_flag(usage)
    usage.set_defaults(run=run_usage)


# -- check ------------------------------------------------------------------------------------------


def is_catalogue(path: Path) -> bool:
    """A catalogue file: a ConfigMap labelled or keyed as one, or a bare TranslationCatalogue."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False  # the policy check reports it
    if not isinstance(document, dict):
        return False
    if document.get("kind") == KIND:
        return True
    labels = (document.get("metadata") or {}).get("labels") or {}
    return document.get("kind") == "ConfigMap" and (
        CATALOGUE_LABEL in labels or CATALOGUE_KEY in (document.get("data") or {})
    )


def run_check(args: argparse.Namespace) -> int:
    from webhook.serving.server import catalogue_files

    catalogues = [path for path in args.files if is_catalogue(path)]
    try:
        shipped = catalogue_files(policies_dir(args))
        files = [*shipped, *(p for p in catalogues if p.resolve() not in {s.resolve() for s in shipped})]
        index = CatalogueIndex(load_catalogue(files))
        known = known_classes(index, extra=args.classes_from)
    except (CatalogueError, OSError, yaml.YAMLError) as err:
        return fail(str(err))
    documents = []
    problems: list[str] = []
    for path in args.files:
        if path in catalogues:
            continue
        try:
            text = path.read_text(encoding="utf-8")
            documents.append(
                (PolicySource(name=str(path), version="file"), parse_policy_document(text, origin=str(path)))
            )
        except (OSError, PolicyError) as err:
            problems.append(str(err))
    if not problems:
        try:
            policy_set = build_policy_set(documents)
            problems.extend(unknown_class_references(policy_set, known))
        except PolicyError as err:
            problems.append(str(err))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return fail(f"{len(problems)} problem(s) in {len(args.files)} file(s)")
    tenants = sum(len(p.tenants) for _, p in documents)
    rules = sum(len(t.rules) for _, p in documents for t in p.tenants)
    if catalogues:
        catalogue = index.catalogue
        print(
            f"ok: {len(catalogues)} catalogue file(s): {len(catalogue.drivers)} driver(s), "
            f"{len(catalogue.targets)} target(s), {len(catalogue.sources)} source(s)"
        )
    if documents or not catalogues:
        print(f"ok: {len(documents)} file(s), {tenants} tenant(s), {rules} CEL rule(s) compiled")
    return 0


def known_classes(index: CatalogueIndex, *, extra: Iterable[Path] = ()) -> set[str]:
    catalogue = index.catalogue
    names = {
        catalogue.class_name(kind, driver.name)
        for driver in catalogue.drivers
        for kind in DEVICE_KINDS
        if driver.kind(kind)
    }
    for path in extra:
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            items = document.get("items", [document]) if isinstance(document, dict) else []
            names |= {i["metadata"]["name"] for i in items if isinstance(i, dict) and i.get("kind") == "DeviceClass"}
    return names


def unknown_class_references(policy_set: PolicySet, known: set[str]) -> list[str]:
    problems = []
    owners: list[Tenant] = [*policy_set.tenants, *([policy_set.default] if policy_set.default else [])]
    for tenant in owners:
        where = f"{tenant.source.name}: {'default' if tenant.is_default else f'tenants[{tenant.name}]'}"
        for pattern in tenant.limits.devices:
            if pattern.startswith((KIND_PREFIX, DRIVER_PREFIX)):
                continue  # limits by what the devices are, not by class name
            if not any(fnmatch.fnmatchcase(c, pattern) for c in known):
                problems.append(f"{where}.limits.devices: {pattern!r} matches no known DeviceClass")
        for pattern in tenant.allowed_classes or ():
            if not any(fnmatch.fnmatchcase(c, pattern) for c in known):
                problems.append(f"{where}.allowedClasses: {pattern!r} matches no known DeviceClass")
    for name in policy_set.classes:
        if name not in known:
            problems.append(f"classes: {name!r} is not a known DeviceClass")
    return problems


# -- usage ------------------------------------------------------------------------------------------


def run_usage(args: argparse.Namespace, *, cluster: ClusterPort | None = None) -> int:
    try:
        index = load_index(args)
    except (CatalogueError, OSError) as err:
        return fail(str(err))
    dev, claims = getattr(args, "dev", False), getattr(args, "claims", [])
    if cluster is None and dev:
        try:
            cluster = dev_cluster(policies_dir(args), claims)
        except (OSError, ValueError) as err:
            return fail(str(err))
    elif claims:
        return fail("--claims needs --dev (a live cluster's claims are read from the cluster)")
    elif cluster is None:
        try:
            cluster = connect(args.namespace)
        except ClusterError as err:
            return fail(f"{err}; or try `policy usage --dev` without a cluster")
    enforcer = QuotaEnforcer(cluster=cluster, catalogue=lambda: index.catalogue)
    enforcer.attach()
    if args.policies is not None and not dev:
        from webhook.serving.server import policy_files

        for path in policy_files(args.policies):
            text = path.read_text(encoding="utf-8")
            enforcer.policies.put(PolicySource(name=path.name, version="file"), text)
    cluster.start()
    try:
        deadline = time.monotonic() + args.timeout
        while not cluster.ready()[0]:
            if time.monotonic() > deadline:
                return fail(f"caches did not sync within {args.timeout:g}s: {cluster.ready()[1]}")
            time.sleep(0.2)
        rows = usage_rows(enforcer, tenant_filter=args.tenant)
    finally:
        cluster.stop()
    if args.output == "json":
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_table(rows)
    return 0


def dev_cluster(folder: Path, claim_files: list[str]) -> ClusterPort:
    """The in-memory cluster of ``serve --dev`` (the quota*.yaml ConfigMaps of ``folder``), plus the
    Namespaces and ResourceClaims of ``claim_files``."""
    from webhook.cli.convert import read_documents
    from webhook.serving.server import dev_cluster as seeded

    cluster = seeded(folder)
    documents = [d for d in read_documents(claim_files) if isinstance(d, dict)] if claim_files else []
    items = [i for d in documents for i in (d.get("items") or [d] if d.get("kind", "").endswith("List") else [d])]
    for item in items:
        if item.get("kind") == "Namespace":
            cluster.add_namespace(item["metadata"]["name"], (item["metadata"].get("labels") or {}))
    known = set(cluster.namespaces())
    for item in items:
        if item.get("kind") != "ResourceClaim":
            continue
        meta = item.setdefault("metadata", {})
        namespace = meta.setdefault("namespace", "default")
        if namespace not in known:
            cluster.add_namespace(namespace)
            known.add(namespace)
        meta.setdefault("resourceVersion", "1")
        cluster.add_claim(item)
    return cluster


def usage_rows(enforcer: QuotaEnforcer, *, tenant_filter: str | None) -> list[dict[str, str]]:
    policy_set = enforcer.policies.current
    rows = []
    for tenant in policy_set.tenants:
        if tenant_filter and tenant.name != tenant_filter:
            continue
        namespaces = list(enforcer.members(tenant))
        usage = enforcer.usage(namespaces) if namespaces else ZERO
        limits = tenant.limits
        base = {"tenant": tenant.name, "namespaces": ",".join(namespaces), "policy": str(tenant.source)}
        for pattern, limit in sorted(limits.devices.items()):
            rows.append(
                {
                    **base,
                    "dimension": f"devices/{pattern}",
                    "used": str(usage.matched.get(pattern, 0)),
                    "limit": str(limit),
                }
            )
        if limits.memory is not None:
            rows.append({**base, "dimension": "memory", "used": _bytes(usage.memory), "limit": _bytes(limits.memory)})
        if limits.compute is not None:
            rows.append(
                {
                    **base,
                    "dimension": "compute",
                    "used": f"{float(usage.compute):g}%",
                    "limit": f"{float(limits.compute):g}%",
                }
            )
        if limits.claims is not None:
            rows.append({**base, "dimension": "claims", "used": str(usage.claims), "limit": str(limits.claims)})
    return rows


def _bytes(value: Any) -> str:
    from fractions import Fraction

    return format_quantity(round_up(Fraction(value), Fraction(1)))


def print_table(rows: list[dict[str, str]]) -> None:
    columns = ["tenant", "dimension", "used", "limit", "namespaces", "policy"]
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())
