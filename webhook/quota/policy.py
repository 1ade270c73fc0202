"""Tenant quota policies: the documents admins keep in ConfigMaps, validated and compiled.

A policy ConfigMap lives in the webhook's namespace, carries the label ``dra-bridge.io/policy:
"true"`` and holds a ``QuotaPolicy`` document under the data key ``policy.yaml``. Several ConfigMaps
merge into one ``PolicySet``: tenants by name (a tenant defined twice is an error), at most one
``default``. Every limit remembers which ConfigMap (and which version of it) set it, so a denial can
name the policy. CEL rules are compiled here, once, when the policy loads.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from webhook.labels import POLICY_KEY
from webhook.quota.cel import CelError, Program, compile_rule
from webhook.translate.catalogue import describe_validation_error
from webhook.translate.quantity import QuantityError, parse_quantity

RULE_VARIABLES = frozenset({"claim", "pod", "tenant", "request"})
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class PolicyError(ValueError):
    """A policy that cannot be used; the message names the ConfigMap, the field and the value."""


def _quantity(value: object) -> Fraction:
    try:
        amount = parse_quantity(value)
    except QuantityError as err:
        raise ValueError(str(err)) from err
    if amount < 0:
        raise ValueError(f"{value!r} is negative")
    return amount


Quantity = Annotated[Fraction, BeforeValidator(_quantity)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Maxima(_Model):
    """Per-Pod or per-claim maxima."""

    devices: int | None = Field(default=None, ge=0)
    memory: Quantity | None = None
    compute: Quantity | None = Field(default=None, description="percent of one device: 200 = two whole devices")


_DEVICE_LIMIT_KINDS = frozenset({"whole", "partition", "shared", "gpu"})


class Limits(_Model):
    devices: dict[str, int] = Field(default_factory=dict, description="DeviceClass name or glob -> devices")
    memory: Quantity | None = None
    compute: Quantity | None = None
    claims: int | None = Field(default=None, ge=0)
    per_pod: Maxima | None = Field(default=None, alias="perPod")
    per_claim: Maxima | None = Field(default=None, alias="perClaim")

    @model_validator(mode="after")
    def _non_negative(self) -> Limits:
        for pattern, limit in self.devices.items():
            if limit < 0:
                raise ValueError(f"devices[{pattern}]: {limit} is negative")
            kind = pattern.removeprefix("kind:") if pattern.startswith("kind:") else None
            if kind is not None and kind not in _DEVICE_LIMIT_KINDS:
                raise ValueError(
                    f"devices[{pattern}]: kind {kind!r} is not one of {', '.join(sorted(_DEVICE_LIMIT_KINDS))}"
                )
        return self


class Rule(_Model):
    name: str = Field(pattern=_DNS_LABEL)
    expression: str
    message: str = Field(min_length=1)


Rollout = Literal["convert", "observe", "off"]


class DefaultSpec(_Model):
    """What applies to the namespaces of a tenant; also the ``default`` for namespaces in none."""

    limits: Limits = Field(default_factory=Limits)
    rollout: Rollout = Field(
        default="convert",
        description="convert: rewrite legacy GPU requests; observe: admit them unchanged, record and warn what "
        "would be converted and what quota would say; off: leave them alone",
    )
    allowed_classes: tuple[str, ...] | None = Field(default=None, alias="allowedClasses")
    allowed_profiles: tuple[str, ...] | None = Field(default=None, alias="allowedProfiles")
    rules: tuple[Rule, ...] = ()

    @model_validator(mode="after")
    def _unique_rules(self) -> DefaultSpec:
        names = [r.name for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique, {', '.join(duplicates)} repeat")
        return self


class TenantSpec(DefaultSpec):
    name: str = Field(pattern=_DNS_LABEL)
    namespaces: tuple[str, ...] = ()
    namespace_selector: dict[str, str] = Field(default_factory=dict, alias="namespaceSelector")


class ClassFacts(_Model):
    """What one device of a class counts as, for classes whose claims carry no capacity."""

    memory: Quantity | None = None
    compute: Quantity = Field(default=Fraction(100))


class QuotaPolicy(_Model):
    api_version: Literal["dra-bridge.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["QuotaPolicy"]
    tenant_label: str | None = Field(default=None, alias="tenantLabel")
    classes: dict[str, ClassFacts] = Field(default_factory=dict)
    tenants: tuple[TenantSpec, ...] = ()
    default: DefaultSpec | None = None
    rollout_namespaces: dict[str, Rollout] = Field(
        default_factory=dict, alias="rolloutNamespaces", description="namespace -> rollout, over its tenant's"
    )

    @model_validator(mode="after")
    def _unique_tenants(self) -> QuotaPolicy:
        names = [t.name for t in self.tenants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"tenant names must be unique, {', '.join(duplicates)} repeat")
        return self


# -- the compiled, merged view ----------------------------------------------------------------------


@dataclass(frozen=True)
class PolicySource:
    """Where a document came from: ConfigMap (or file) name and version."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class CompiledRule:
    name: str
    message: str
    program: Program


@dataclass(frozen=True)
class Tenant:
    name: str
    limits: Limits
    allowed_classes: tuple[str, ...] | None
    allowed_profiles: tuple[str, ...] | None
    rules: tuple[CompiledRule, ...]
    source: PolicySource
    is_default: bool = False
    selector: Mapping[str, str] = field(default_factory=dict)  # namespace labels that put a namespace here
    rollout: Rollout = "convert"

    def allows_class(self, device_class: str) -> bool:
        return self.allowed_classes is None or any(fnmatch.fnmatchcase(device_class, p) for p in self.allowed_classes)

    def allows_profile(self, profile: str) -> bool:
        return self.allowed_profiles is None or profile in self.allowed_profiles


@dataclass(frozen=True)
class PolicySet:
    tenants: tuple[Tenant, ...] = ()
    default: Tenant | None = None
    classes: Mapping[str, ClassFacts] = field(default_factory=dict)
    tenant_label: str | None = None
    sources: tuple[PolicySource, ...] = ()
    _by_namespace: Mapping[str, Tenant] = field(default_factory=dict)
    rollout_namespaces: Mapping[str, Rollout] = field(default_factory=dict)
    # Derived from ``tenants`` (``__post_init__``), so that finding a namespace's tenant costs the
    # same with ten tenants as with ten thousand: by name (the tenant label), and by one label of
    # each selector (a selector matches only namespaces carrying every one of its labels).
    _by_name: Mapping[str, Tenant] = field(init=False, repr=False, compare=False)
    _by_selector_label: Mapping[tuple[str, str], tuple[tuple[int, Tenant], ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        by_name: dict[str, Tenant] = {}
        by_label: dict[tuple[str, str], list[tuple[int, Tenant]]] = {}
        for position, tenant in enumerate(self.tenants):
            by_name.setdefault(tenant.name, tenant)  # the first of a name, as a scan in order finds it
            if tenant.selector:
                by_label.setdefault(min(tenant.selector.items()), []).append((position, tenant))
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_by_selector_label", {k: tuple(v) for k, v in by_label.items()})

    def rollout_for(self, namespace: str, labels: Mapping[str, str] | None) -> Rollout:
        """What the conversion does in a namespace: its own setting, else its tenant's, else convert."""
        found = self.rollout_namespaces.get(namespace)
        if found is not None:
            return found
        tenant = self.tenant_for(namespace, labels)
        return tenant.rollout if tenant is not None else "convert"

    @property
    def version(self) -> str:
        """The policy version for audit: every source's name@version, or ``none``."""
        return ",".join(str(s) for s in self.sources) or "none"

    def tenant_for(self, namespace: str, labels: Mapping[str, str] | None) -> Tenant | None:
        """The tenant of a namespace: an explicit list first, then the tenant label, then selectors
        (the first tenant, in policy order, whose selector the labels match); namespaces in no
        tenant get the default (each namespace its own pool), else ``None``."""
        explicit = self._by_namespace.get(namespace)
        if explicit is not None:
            return explicit
        labels = labels or {}
        if self.tenant_label and self.tenant_label in labels:
            named = self._by_name.get(labels[self.tenant_label])
            if named is not None:
                return named
        if self._by_selector_label and labels:
            first: tuple[int, Tenant] | None = None
            for pair in labels.items():
                for candidate in self._by_selector_label.get(pair, ()):
                    if first is not None and candidate[0] >= first[0]:
                        break  # each list is in policy order: the rest come later still
                    if all(labels.get(k) == v for k, v in candidate[1].selector.items()):
                        first = candidate
                        break
            if first is not None:
                return first[1]
        if self.default is not None:
            return Tenant(
                name=f"namespace:{namespace}",
                limits=self.default.limits,
                allowed_classes=self.default.allowed_classes,
                allowed_profiles=self.default.allowed_profiles,
                rules=self.default.rules,
                source=self.default.source,
                is_default=True,
                rollout=self.default.rollout,
            )
        return None


def parse_policy_document(text: str, *, origin: str) -> QuotaPolicy:
    """Parse one ``policy.yaml`` (or a ConfigMap carrying it); errors name the field and value."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PolicyError(f"{origin}: not valid YAML: {' '.join(str(err).split())}") from None
    if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
        data = doc.get("data") or {}
        if POLICY_KEY not in data:
            raise PolicyError(f"{origin}: ConfigMap has no data key {POLICY_KEY!r}")
        return parse_policy_document(str(data[POLICY_KEY]), origin=f"{origin}: data.{POLICY_KEY}")
    if not isinstance(doc, dict):
        raise PolicyError(f"{origin}: expected a QuotaPolicy mapping, got {type(doc).__name__}")
    try:
        policy = QuotaPolicy.model_validate(doc)
    except ValidationError as err:
        raise PolicyError(f"{origin}: {describe_validation_error(err, doc)}") from None
    _compile_rules(policy, origin=origin)  # fail at load, not on the request path
    return policy


def _compile_rules(policy: QuotaPolicy, *, origin: str) -> dict[tuple[str, str], Program]:
    programs: dict[tuple[str, str], Program] = {}
    owners: list[tuple[str, Sequence[Rule]]] = [(f"tenants[{t.name}]", t.rules) for t in policy.tenants]
    if policy.default is not None:
        owners.append(("default", policy.default.rules))
    for owner, rules in owners:
        for rule in rules:
            try:
                programs[(owner, rule.name)] = compile_rule(rule.expression, variables=RULE_VARIABLES)
            except CelError as err:
                raise PolicyError(f"{origin}: {owner}.rules[{rule.name}].expression: {err}") from None
    return programs


def build_policy_set(documents: Sequence[tuple[PolicySource, QuotaPolicy]]) -> PolicySet:
    """Merge parsed documents (in ConfigMap name order) into one ``PolicySet``."""
    tenants: list[Tenant] = []
    seen: dict[str, PolicySource] = {}
    by_namespace: dict[str, Tenant] = {}
    namespace_owner: dict[str, str] = {}
    default: Tenant | None = None
    classes: dict[str, ClassFacts] = {}
    tenant_label: str | None = None
    rollout_namespaces: dict[str, Rollout] = {}
    for source, policy in documents:
        for namespace, mode in policy.rollout_namespaces.items():
            if namespace in rollout_namespaces and rollout_namespaces[namespace] != mode:
                raise PolicyError(
                    f"{source.name}: rolloutNamespaces[{namespace}] is already {rollout_namespaces[namespace]!r}"
                )
            rollout_namespaces[namespace] = mode
        programs = _compile_rules(policy, origin=source.name)
        if policy.tenant_label:
            if tenant_label and tenant_label != policy.tenant_label:
                raise PolicyError(
                    f"{source.name}: tenantLabel {policy.tenant_label!r} differs from {tenant_label!r} set elsewhere"
                )
            tenant_label = policy.tenant_label
        classes.update(policy.classes)
        for spec in policy.tenants:
            if spec.name in seen:
                raise PolicyError(f"{source.name}: tenant {spec.name!r} is already defined in {seen[spec.name].name}")
            seen[spec.name] = source
            tenant = Tenant(
                name=spec.name,
                limits=spec.limits,
                allowed_classes=spec.allowed_classes,
                allowed_profiles=spec.allowed_profiles,
                rules=tuple(
                    CompiledRule(r.name, r.message, programs[(f"tenants[{spec.name}]", r.name)]) for r in spec.rules
                ),
                source=source,
                selector=dict(spec.namespace_selector),
                rollout=spec.rollout,
            )
            tenants.append(tenant)
            for namespace in spec.namespaces:
                if namespace in namespace_owner:
                    raise PolicyError(
                        f"{source.name}: tenants[{spec.name}].namespaces: {namespace!r} already belongs to "
                        f"tenant {namespace_owner[namespace]!r}"
                    )
                namespace_owner[namespace] = spec.name
                by_namespace[namespace] = tenant
        if policy.default is not None:
            if default is not None:
                raise PolicyError(f"{source.name}: default is already defined in {default.source.name}")
            d = policy.default
            default = Tenant(
                name="default",
                limits=d.limits,
                allowed_classes=d.allowed_classes,
                allowed_profiles=d.allowed_profiles,
                rules=tuple(CompiledRule(r.name, r.message, programs[("default", r.name)]) for r in d.rules),
                source=source,
                is_default=True,
                rollout=d.rollout,
            )
    return PolicySet(
        tenants=tuple(tenants),
        default=default,
        classes=classes,
        tenant_label=tenant_label,
        sources=tuple(s for s, _ in documents),
        _by_namespace=by_namespace,
        rollout_namespaces=rollout_namespaces,
    )


def content_version(text: str) -> str:
    """A version for policies read from files: the content's hash."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def describe(policy_set: PolicySet) -> dict[str, Any]:
    """A summary for ``/readyz`` detail and the admin CLI."""
    return {
        "version": policy_set.version,
        "tenants": [t.name for t in policy_set.tenants],
        "default": policy_set.default is not None,
    }
