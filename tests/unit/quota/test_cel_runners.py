"""Rules run transpiled, with the interpreter as the reference: the same value or the same error."""

from __future__ import annotations

import gc
import json
import threading
import weakref
from typing import Any

import celpy
import pytest

from bench.workload import TRUE_RULES
from webhook.quota.cel import Activation, CelEvaluationError, _checked_result, compile_rule
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
    "claim.charge.totalDevices < 0x10 && claim.charge.memory > -9223372036854775808",  # integer literals
    "claim.charge.memory < 9223372036854775808",  # a literal beyond int64: an overflow error
    "claim.charge.memory + 9223372036854775807 > 0",  # arithmetic beyond int64: an overflow error
    "claim.charge.compute <= 100.0",  # int against double: no such overload
    "tenant.usage.claims != 3 && tenant.usage.claims >= 1u",  # int against uint
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


def varied() -> list[dict[str, Any]]:
    """The inputs above and variations of each on fields rules read and fields they do not: the
    memo must hit on the second and miss on the first."""
    out = []
    for n, base in enumerate(inputs()):
        out.append(base)
        claim, tenant, request = base["claim"], base["tenant"], base["request"]
        out.append({**base, "claim": {**claim, "name": f"c{n}x"}})  # read by two rules
        out.append({**base, "claim": {**claim, "labels": {"x": "b", **claim["labels"]}}})  # map order
        out.append({**base, "tenant": {**tenant, "usage": {**tenant["usage"], "claims": 99 + n}}})
        out.append({**base, "tenant": {**tenant, "limits": {**tenant["limits"], "devices": {"*": 1}}}})
        out.append({**base, "request": {**request, "groups": [*request["groups"], "system:masters"]}})
        out.append(
            {**base, "claim": {**claim, "spec": {"devices": {"requests": [{"name": "", "exactly": {"count": 200}}]}}}}
        )
        charge = claim["charge"]
        out.append({**base, "claim": {**claim, "charge": {**charge, "totalDevices": True, "compute": 100.0}}})  # types
        out.append({**base, "claim": {**claim, "charge": {**charge, "memory": 2**70}}})  # beyond int64: fails closed
        out.append({**base, "claim": {**claim, "charge": {**charge, "claims": 2**63 - 1}}})
        out.append({k: v for k, v in base.items() if k != "pod"})  # a variable the decision lacks
        out.append({**base, "pod": {"metadata": {"name": "x"}}})  # no labels
        out.append({**base, "pod": {"metadata": "not a map"}})
    return out


def reference(program: Any, values: dict[str, Any]) -> Any:
    """The interpreter on the whole variables, without the memo or the transpiled code."""
    return outcome(lambda: program.interpret(Activation(values).for_names(program.uses)))


@pytest.mark.parametrize("expression", CORPUS)
def test_the_transpiled_rule_answers_as_the_interpreter_does(expression: str) -> None:
    program = compile_rule(expression, variables=RULE_VARIABLES)
    for values in inputs():
        assert outcome(lambda v=values: program.evaluate(Activation(v))) == reference(program, values), (
            expression,
            values["request"],
        )


@pytest.mark.parametrize("expression", CORPUS)
def test_the_memoised_rule_answers_as_the_interpreter_does_on_repeated_and_varied_inputs(expression: str) -> None:
    """Every input twice, interleaved, one program: the first evaluation of each fills the memo,
    the second may answer from it; both must be the interpreter's answer on that input."""
    program = compile_rule(expression, variables=RULE_VARIABLES)
    cases = varied()
    expected = [reference(program, values) for values in cases]
    for _ in range(2):
        for values, want in zip(cases, expected, strict=True):
            assert outcome(lambda v=values: program.evaluate(Activation(v))) == want, (expression, values)
    shared = Activation(cases[0])  # one decision's activation shared by every rule, as check() does
    for other in CORPUS:
        rule = compile_rule(other, variables=RULE_VARIABLES)
        assert outcome(lambda r=rule: r.evaluate(shared)) == reference(rule, cases[0]), other


def test_most_rules_are_memoised() -> None:
    programs = [compile_rule(e, variables=RULE_VARIABLES) for e in CORPUS]
    assert all(p.paths is not None for p in programs)
    shadowed = compile_rule("request.groups.exists(claim, claim == 'a')", variables=RULE_VARIABLES)
    assert shadowed.paths is None  # a comprehension variable named as a rule variable: not memoised
    assert outcome(lambda: shadowed.evaluate(Activation(inputs()[0]))) == reference(shadowed, inputs()[0])


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


def test_a_rule_leaves_no_reference_cycle_to_the_request() -> None:
    """A rule whose evaluation meets an error on its way (``tenant.limits.claims == null || ...``)
    must not keep the request's frames alive for the cyclic garbage collector: the deciding frame's
    objects go when it returns, with the collector off."""

    class Marker:
        pass

    def decide(program: Any, values: dict[str, Any]) -> tuple[Any, weakref.ref[Marker]]:
        marker = Marker()  # one of the request's objects, in a frame below the rule's
        return outcome(lambda: program.evaluate(Activation(values))), weakref.ref(marker)

    kept = []
    gc.collect()
    gc.disable()
    try:
        for expression in CORPUS:
            program = compile_rule(expression, variables=RULE_VARIABLES)
            for values in varied():
                answer, marker = decide(program, values)
                if answer[0] == "value" and marker() is not None:
                    kept.append(expression)
                    break
    finally:
        gc.enable()
    assert kept == []


@pytest.mark.parametrize(
    "error",
    [
        ValueError("overflow"),
        KeyError("missing"),
        TypeError("no overload"),
        ZeroDivisionError("division by zero"),
        OverflowError("too big"),
        IndexError("list index out of range"),
        NameError("x", "container"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        UnboundLocalError("y"),  # a NameError celpy does not list
        json.JSONDecodeError("bad", "doc", 0),  # a ValueError celpy does not list
        AttributeError("no such member"),  # member access on null: ours maps it, celpy's raises
        RuntimeError("other"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_the_transpiled_codes_errors_are_celpys(error: BaseException) -> None:
    """The error value each exception of an expression becomes is celpy's ``result``'s (message,
    class, arguments); what celpy lets propagate propagates, so the interpreter answers."""

    def fails(_activation: Any) -> Any:
        raise error

    def answer(result: Any) -> Any:
        try:
            value = result(None, fails)
        except BaseException:  # celpy's propagates as a KeyError of its table, ours as it came
            return ("raised",)
        return ("value", value.args)

    ours = answer(_checked_result)
    if isinstance(error, AttributeError):
        assert ours == ("value", ("no such member", AttributeError, error.args))
    else:
        assert ours == answer(celpy.evaluation.result)
