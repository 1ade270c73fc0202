"""The quota decision: a charge, a tenant's policy and its usage in, violations and figures out.

Pure. ``check`` returns every figure it compared (for the audit log) and the violations among them;
the message of a violation says who (tenant), what (dimension), and by how much (requested, used,
limit, excess), and which policy set the limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any, Literal

from webhook.quota.cel import Activation, CelEvaluationError
from webhook.quota.charge import Charge
from webhook.quota.figure import QuotaFigure
from webhook.quota.policy import Maxima, Tenant
from webhook.translate.quantity import format_quantity, round_up

Scope = Literal["claim", "pod", "template"]


def check(
    charge: Charge,
    *,
    tenant: Tenant,
    usage: Charge,
    scope: Scope,
    per_claim: tuple[Charge, ...] = (),
    rule_input: Mapping[str, Any] | None = None,
    pod_charge: Charge | None = None,
) -> list[QuotaFigure]:
    """Every figure compared for this admission; those with ``exceeded`` are the violations.

    ``scope``: a ResourceClaim is charged against the tenant's totals; a Pod is checked for the
    claims its templates will produce (totals, per-Pod and per-claim maxima); a template only
    statically (allowed classes and profiles, per-claim maxima).
    """
    policy = str(tenant.source)
    who = describe_tenant(tenant)
    figures: list[QuotaFigure] = []
    refused = [
        ("class", "DeviceClass", c, tenant.allowed_classes) for c in charge.devices if not tenant.allows_class(c)
    ]
    refused += [
        ("profile", "partition profile", p, tenant.allowed_profiles)
        for p in charge.profiles
        if not tenant.allows_profile(p)
    ]
    for dimension, what, name, allowed in sorted(refused):
        message = f"{who}: {what} {name} is not allowed (allowed: {', '.join(allowed or ())}) [policy {policy}]"
        figures.append(QuotaFigure(f"{dimension}/{name}", "1", "-", "not allowed", policy, True, message))
    limits = tenant.limits
    claims = per_claim or (charge,)
    if limits.per_claim is not None:
        for claim in claims:
            figures.extend(_maxima(claim, limits.per_claim, "perClaim", who=who, policy=policy))
    if scope == "pod" and limits.per_pod is not None:
        # Everything the Pod uses, claims that exist already included (they are in usage, not in ``charge``).
        figures.extend(_maxima(pod_charge or charge, limits.per_pod, "perPod", who=who, policy=policy))
    if scope != "template":
        figures.extend(_totals(charge, usage, tenant, who=who, policy=policy))
    if rule_input is not None:
        figures.extend(_rules(tenant, rule_input, who=who, policy=policy))
    return figures


def violations(figures: list[QuotaFigure]) -> list[QuotaFigure]:
    return [f for f in figures if f.exceeded]


def describe_tenant(tenant: Tenant) -> str:
    if tenant.is_default:
        return f"tenant {tenant.name} (default limits)"
    return f"tenant {tenant.name}"


def _maxima(charge: Charge, maxima: Maxima, label: str, *, who: str, policy: str) -> list[QuotaFigure]:
    out = []
    what = "per Pod" if label == "perPod" else "per claim"
    if maxima.devices is not None:
        out.append(
            _compare(
                f"{label}.devices",
                Fraction(charge.total_devices),
                Fraction(0),
                Fraction(maxima.devices),
                _count,
                who,
                policy,
                what,
            )
        )
    if maxima.memory is not None:
        out.append(_compare(f"{label}.memory", charge.memory, Fraction(0), maxima.memory, _bytes, who, policy, what))
    if maxima.compute is not None:
        out.append(
            _compare(f"{label}.compute", charge.compute, Fraction(0), maxima.compute, _percent, who, policy, what)
        )
    return out


def _totals(charge: Charge, usage: Charge, tenant: Tenant, *, who: str, policy: str) -> list[QuotaFigure]:
    limits = tenant.limits
    out = []
    for pattern, limit in sorted(limits.devices.items()):
        requested = charge.matched.get(pattern, 0)
        if not requested:
            continue
        used = usage.matched.get(pattern, 0)
        out.append(
            _compare(
                f"devices/{pattern}", Fraction(requested), Fraction(used), Fraction(limit), _count, who, policy, ""
            )
        )
    if limits.memory is not None and charge.memory:
        out.append(_compare("memory", charge.memory, usage.memory, limits.memory, _bytes, who, policy, ""))
    if limits.compute is not None and charge.compute:
        out.append(_compare("compute", charge.compute, usage.compute, limits.compute, _percent, who, policy, ""))
    if limits.claims is not None and charge.claims:
        out.append(
            _compare(
                "claims",
                Fraction(charge.claims),
                Fraction(usage.claims),
                Fraction(limits.claims),
                _count,
                who,
                policy,
                "",
            )
        )
    return out


def _compare(
    dimension: str, requested: Fraction, used: Fraction, limit: Fraction, fmt: Any, who: str, policy: str, what: str
) -> QuotaFigure:
    exceeded = used + requested > limit
    message = ""
    if exceeded:
        over = used + requested - limit
        scope = f" {what}" if what else ""
        label = dimension.split(".", 1)[1] if dimension.startswith(("perPod.", "perClaim.")) else dimension
        message = (
            f"{who}: {label}{scope}: requested {fmt(requested)}, in use {fmt(used)}, "
            f"limit {fmt(limit)}: over by {fmt(over)} [policy {policy}]"
        )
    return QuotaFigure(dimension, fmt(requested), fmt(used), fmt(limit), policy, exceeded, message)


def _rules(tenant: Tenant, rule_input: Mapping[str, Any], *, who: str, policy: str) -> list[QuotaFigure]:
    out = []
    variables = Activation(rule_input)  # each variable converted once for all the tenant's rules
    for rule in tenant.rules:
        try:
            result = rule.program.evaluate(variables)
            passed = result is True or (not isinstance(result, bool) and bool(result))
            message = "" if passed else f"{who}: rule {rule.name}: {rule.message} [policy {policy}]"
        except CelEvaluationError as err:
            passed = False  # fail closed: a rule that cannot be evaluated does not admit
            message = f"{who}: rule {rule.name} could not be evaluated: {err} [policy {policy}]"
        out.append(QuotaFigure(f"rule/{rule.name}", "-", "-", "true", policy, not passed, message))
    return out


def _count(value: Fraction) -> str:
    return str(int(value)) if value.denominator == 1 else f"{float(value):g}"


def _bytes(value: Fraction) -> str:
    return format_quantity(round_up(value, Fraction(1))) if value >= 0 else "-" + _bytes(-value)


def _percent(value: Fraction) -> str:
    whole = value / 100
    text = _count(round_up(value, Fraction(1, 100)))
    return f"{text}% ({float(whole):g} GPUs)"
