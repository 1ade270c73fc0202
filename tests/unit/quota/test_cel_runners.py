"""Rules run transpiled, with the interpreter as the reference: the same value or the same error."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from bench.workload import TRUE_RULES
from webhook.quota.cel import Activation, CelEvaluationError, compile_rule
from webhook.quota.policy import RULE_VARIABLES

CORPUS = (
    *TRUE_RULES,
    "claim.charge.totalDevices <= 2 || request.user == 'admin'",
    "claim.spec.devices.requests.all(r, r.exactly.count < 100)",
    "pod == null || claim.charge.totalDevices < 4 || (has(pod.metadata.labels) && 'team' in pod.metadata.labels)",
    "pod.metadata.name == 'x'",  # an error when there is no Pod
    "claim.charge.memory / 0 == 1",  # division by zero
    "tenant.usage.devices['whole.nvidia.dra-bridge.io'] > 0",  # a missing key
    "claim.labels.exists(k, k.startsWith('team'))",
    "claim.spec.devices.requests.map(r, r.name).size() == 1",
    "request.groups.filter(g, g.endsWith('a')).size() >= 1",
    "int(claim.charge.compute) * 2 > 100",
    "string(claim.charge.claims) + '-x' == '1-x'",
    "claim.name.matches('^c[0-9]*$')",
    "tenant.limits.devices['*'] >= claim.charge.totalDevices + tenant.usage.totalDevices",
    "request.kind == 'Pod' ? pod.spec.containers.size() < 10 : true",
    "claim.charge.totalDevices <= 2 && tenant.name.startsWith('t-') && !('system:masters' in request.groups)",
    "size(claim.charge.devices) == 0 || claim.charge.devices.all(k, claim.charge.devices[k] <= 4)",
)


def inputs() -> list[dict[str, Any]]:
    base: dict[str, Any] = {
        "claim": {
            "name": "c1",
            "labels": {"team": "a"},
            "spec": {
                "devices": {
                    "requests": [
                        {"name": "gpu", "exactly": {"deviceClassName": "whole.nvidia.dra-bridge.io", "count": 1}}
                    ]
                }
            },
            "charge": {
                "devices": {"whole.nvidia.dra-bridge.io": 1},
                "totalDevices": 1,
                "memory": 85899345920,
                "compute": 100,
                "claims": 1,
                "profiles": {},
            },
        },
        "pod": None,
        "request": {
            "user": "alice",
            "groups": ["team-a"],
            "namespace": "t-0001",
            "operation": "CREATE",
            "kind": "ResourceClaim",
        },
        "tenant": {
            "name": "t-1",
            "usage": {"devices": {}, "totalDevices": 0, "memory": 0, "compute": 0, "claims": 3, "profiles": {}},
            "limits": {"memory": 10**15, "compute": None, "claims": 100, "devices": {"*": 8}},
        },
    }
    with_pod = {**base, "pod": {"metadata": {"name": "x", "labels": {"team": "b"}}, "spec": {"containers": [{"name": "a"}]}},
                "request": {**base["request"], "kind": "Pod", "user": "admin", "groups": ["system:masters"]}}  # fmt: skip
    big = {
        **base,
        "claim": {**base["claim"], "charge": {**base["claim"]["charge"], "totalDevices": 7, "devices": {"x": 7}}},
    }
    return [base, with_pod, big]


def outcome(run: Any) -> Any:
    try:
        return ("value", run())
    except CelEvaluationError as err:
        return ("error", str(err))


@pytest.mark.parametrize("expression", CORPUS)
def test_the_transpiled_rule_answers_as_the_interpreter_does(expression: str) -> None:
    program = compile_rule(expression, variables=RULE_VARIABLES)
    for values in inputs():
        reference = outcome(lambda v=values: program.interpret(Activation(v).for_names(program.uses)))
        assert outcome(lambda v=values: program.evaluate(Activation(v))) == reference, (expression, values["request"])


def test_most_rules_run_transpiled() -> None:
    programs = [compile_rule(e, variables=RULE_VARIABLES) for e in CORPUS]
    assert sum(p._transpiled is not None for p in programs) >= len(CORPUS) - 2


def test_threads_do_not_see_each_others_activation() -> None:
    """celpy's compiled runner keeps the activation in module globals; ours are per thread."""
    program = compile_rule("request.user + '/' + request.namespace", variables=RULE_VARIABLES)
    failures: list[str] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        for n in range(300):
            values = {"request": {"user": f"u{i}", "namespace": f"n{n}"}}
            got = program.evaluate(Activation(values))
            if got != f"u{i}/n{n}":
                failures.append(f"{i}/{n}: {got}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert failures == []
