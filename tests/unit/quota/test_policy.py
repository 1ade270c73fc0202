"""The policy format: tenants, defaults, merging, and errors that name the field and the value."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from tests.conftest import POLICIES
from webhook.quota.policy import PolicyError, PolicySet, PolicySource, build_policy_set, parse_policy_document


def doc(**body: object) -> str:
    return yaml.safe_dump({"apiVersion": "dra-bridge.io/v1alpha1", "kind": "QuotaPolicy", **body})


def test_example_policy_loads_and_assigns_tenants() -> None:
    policy = parse_policy_document((POLICIES / "quota-example.yaml").read_text(), origin="example")
    policies = build_policy_set([(PolicySource("gpu-quota-example", "7"), policy)])
    assert policies.version == "gpu-quota-example@7"
    assert policies.tenant_for("ml-research", {}).name == "research"  # type: ignore[union-attr]
    assert policies.tenant_for("x", {"dra-bridge.io/tenant": "inference"}).name == "inference"  # type: ignore[union-attr]
    default = policies.tenant_for("sandbox", {})
    assert default is not None and default.is_default and default.name == "namespace:sandbox"


def test_explicit_list_wins_over_label_and_selector() -> None:
    text = doc(
        tenantLabel="team",
        tenants=[
            {"name": "a", "namespaces": ["shared"]},
            {"name": "b", "namespaceSelector": {"gpu": "b"}},
        ],
    )
    policies = build_policy_set([(PolicySource("p", "1"), parse_policy_document(text, origin="p"))])
    assert policies.tenant_for("shared", {"team": "b", "gpu": "b"}).name == "a"  # type: ignore[union-attr]
    assert policies.tenant_for("ns", {"gpu": "b"}).name == "b"  # type: ignore[union-attr]
    assert policies.tenant_for("ns", {"team": "a"}).name == "a"  # type: ignore[union-attr]
    assert policies.tenant_for("ns", {}) is None  # no default: not governed


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"tenants": [{"name": "a", "limits": {"memory": "lots"}}]}, ["tenants[a].limits.memory", "'lots'"]),
        ({"tenants": [{"name": "a", "limits": {"memory": "-1Gi"}}]}, ["tenants[a].limits.memory", "negative"]),
        ({"tenants": [{"name": "a", "limits": {"claims": -1}}]}, ["tenants[a].limits.claims", "-1"]),
        ({"tenants": [{"name": "a", "limits": {"devices": {"x": -2}}}]}, ["devices[x]", "-2 is negative"]),
        (
            {"tenants": [{"name": "a", "limits": {"perPod": {"gpus": 1}}}]},
            ["tenants[a].limits.perPod.gpus", "Extra inputs"],
        ),
        ({"tenants": [{"name": "A"}]}, ["tenants[A].name", "'A'"]),
        ({"tenants": [{"name": "a"}, {"name": "a"}]}, ["tenant names must be unique, a repeat"]),
        (
            {"tenants": [{"name": "a", "rules": [{"name": "r", "expression": "claim.x >", "message": "m"}]}]},
            ["tenants[a].rules[r].expression", "does not parse"],
        ),
        (
            {"tenants": [{"name": "a", "rules": [{"name": "r", "expression": "secrets.x == 1", "message": "m"}]}]},
            ["tenants[a].rules[r].expression", "unknown variable(s) secrets"],
        ),
        (
            {"tenants": [{"name": "a", "rules": [{"name": "r", "expression": "true", "message": ""}]}]},
            ["rules[r].message"],
        ),
        (
            {
                "default": {
                    "rules": [{"name": "r", "expression": "claim.a.all(x, x.b.all(y, y.c.all(z, z)))", "message": "m"}]
                }
            },
            ["default.rules[r].expression", "nest 3 deep"],
        ),
        ({"kind": "Quota"}, ["kind", "'Quota'"]),
    ],
)
def test_errors_name_field_and_value(body: dict[str, object], fragments: list[str]) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy_document(doc(**body), origin="cm/gpu-quota")
    text = str(caught.value)
    assert text.startswith("cm/gpu-quota: ")
    for fragment in fragments:
        assert fragment in text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a: [", "not valid YAML"),
        ("- 1", "expected a QuotaPolicy"),
        ("kind: ConfigMap\ndata: {}", "no data key 'policy.yaml'"),
    ],
)
def test_unreadable(text: str, fragment: str) -> None:
    with pytest.raises(PolicyError, match=fragment):
        parse_policy_document(text, origin="x")


def test_merging_refuses_a_tenant_defined_twice_or_a_namespace_in_two_tenants() -> None:
    a = parse_policy_document(doc(tenants=[{"name": "a", "namespaces": ["n1"]}]), origin="a")
    b = parse_policy_document(doc(tenants=[{"name": "a"}]), origin="b")
    c = parse_policy_document(doc(tenants=[{"name": "c", "namespaces": ["n1"]}]), origin="c")
    with pytest.raises(PolicyError, match="tenant 'a' is already defined in cm-a"):
        build_policy_set([(PolicySource("cm-a", "1"), a), (PolicySource("cm-b", "1"), b)])
    with pytest.raises(PolicyError, match="'n1' already belongs to tenant 'a'"):
        build_policy_set([(PolicySource("cm-a", "1"), a), (PolicySource("cm-c", "1"), c)])


def test_shipped_example_is_a_valid_configmap(tmp_path: Path) -> None:
    from tests.conftest import assert_valid

    for document in yaml.safe_load_all((POLICIES / "quota-example.yaml").read_text()):
        assert_valid(document)


def test_a_device_limit_by_an_unknown_kind_names_the_field_and_value() -> None:
    import pytest as _pytest

    from webhook.quota.policy import Limits

    with _pytest.raises(
        ValueError, match=r"devices\[kind:gpus\]: kind 'gpus' is not one of gpu, partition, shared, whole"
    ):
        Limits.model_validate({"devices": {"kind:gpus": 2}})
    assert Limits.model_validate({"devices": {"kind:whole": 2, "driver:gpu.*": 4}}).devices["kind:whole"] == 2


def _scan(policies: PolicySet, listed: dict[str, str], namespace: str, labels: dict[str, str]) -> str | None:
    """What a namespace's tenant is by the documented order, read off the tenants one by one."""
    if namespace in listed:
        return listed[namespace]
    if policies.tenant_label and labels.get(policies.tenant_label) in {t.name for t in policies.tenants}:
        return labels[policies.tenant_label]
    for tenant in policies.tenants:
        if tenant.selector and all(labels.get(k) == v for k, v in tenant.selector.items()):
            return tenant.name
    return f"namespace:{namespace}" if policies.default is not None else None


def test_the_tenant_found_is_the_first_match_in_policy_order_whatever_the_number_of_tenants() -> None:
    """The lookup is indexed (by name, by one label of each selector); it must find what a scan of
    every tenant in order finds: selectors that overlap, share labels, name labels the namespace
    lacks, a tenant label naming no tenant, explicit lists."""
    rng = random.Random(7)
    keys, values = ["team", "gpu", "env", "zone"], ["a", "b", "c"]
    for round_ in range(40):
        specs: list[dict[str, object]] = []
        listed: dict[str, str] = {}
        for i in range(rng.randint(1, 30)):
            spec: dict[str, object] = {"name": f"t{i}"}
            if rng.random() < 0.8:
                spec["namespaceSelector"] = {k: rng.choice(values) for k in rng.sample(keys, rng.randint(1, 3))}
            if rng.random() < 0.2:
                spec["namespaces"] = [f"listed-{i}"]
                listed[f"listed-{i}"] = f"t{i}"
            specs.append(spec)
        body: dict[str, object] = {"tenants": specs}
        if round_ % 2:
            body["tenantLabel"] = "owner"
        if round_ % 3:
            body["default"] = {"limits": {"devices": {"gpu.dra-bridge.io": 1}}}
        policies = build_policy_set([(PolicySource("p", "1"), parse_policy_document(doc(**body), origin="p"))])
        for _ in range(200):
            labels = {k: rng.choice(values) for k in rng.sample(keys, rng.randint(0, 4))}
            if rng.random() < 0.3:
                labels["owner"] = f"t{rng.randint(0, 40)}"
            namespace = rng.choice(["ns", *(f"listed-{i}" for i in range(len(specs)))])
            found = policies.tenant_for(namespace, labels)
            expected = _scan(policies, listed, namespace, labels)
            assert (found.name if found else None) == expected, (specs, namespace, labels)
