"""A rule runs once per distinct input: the memo answers only for exactly the values the rule reads."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from webhook.quota import cel
from webhook.quota.cel import Activation, CelEvaluationError, compile_rule
from webhook.quota.policy import RULE_VARIABLES


def rule(expression: str) -> cel.Program:
    return compile_rule(expression, variables=RULE_VARIABLES)


def values(
    *, claims: int = 3, name: str = "c1", memory: Any = 10, requests: Any = None, **extra: Any
) -> dict[str, Any]:
    return {
        "claim": {
            "name": name,
            "labels": {"team": "a"},
            "spec": {"devices": {"requests": requests if requests is not None else [{"name": "gpu", "count": 1}]}},
            "charge": {"totalDevices": 1, "memory": memory},
        },
        "pod": None,
        "request": {"user": "alice", "groups": ["g"], "namespace": "t-1", "operation": "CREATE", "kind": "Pod"},
        "tenant": {"name": "t-1", "usage": {"claims": claims}, "limits": {"claims": 5}},
        **extra,
    }


def runs(program: cel.Program, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the rule's evaluations that were not answered from the memo."""
    count = [0]
    original = cel.Program._run

    def counted(self: cel.Program, shared: Activation, cel_activation: Any) -> Any:
        if self is program:
            count[0] += 1
        return original(self, shared, cel_activation)

    monkeypatch.setattr(cel.Program, "_run", counted)
    return count


def test_a_change_to_a_field_the_rule_reads_is_not_answered_from_the_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    program = rule("tenant.usage.claims < tenant.limits.claims")
    count = runs(program, monkeypatch)
    assert program.evaluate(Activation(values(claims=3)))
    assert program.evaluate(Activation(values(claims=3, name="other")))  # a field it does not read
    assert count[0] == 1
    assert not program.evaluate(Activation(values(claims=7)))  # stale would say true
    assert program.evaluate(Activation(values(claims=4)))
    assert not program.evaluate(Activation(values(claims=7)))
    assert count[0] == 3


def test_a_change_deep_inside_a_value_read_whole_is_seen() -> None:
    program = rule("claim.spec.devices.requests.all(r, r.count < 4)")
    assert program.evaluate(Activation(values(requests=[{"name": "a", "count": 1}, {"name": "b", "count": 2}])))
    assert not program.evaluate(Activation(values(requests=[{"name": "a", "count": 1}, {"name": "b", "count": 9}])))
    assert program.evaluate(Activation(values(requests=[{"name": "a", "count": 1}, {"name": "b", "count": 2}])))


def test_values_python_finds_equal_are_told_apart() -> None:
    """``1 == True == 1.0`` and ``0.0 == -0.0`` in Python, ``str(1) == str("1")``; CEL tells them apart, and so does the memo."""

    def answer(program: cel.Program, memory: Any, *, memoised: bool) -> Any:
        try:
            if memoised:
                return program.evaluate(Activation(values(memory=memory)))
            return program.interpret(Activation(values(memory=memory)).for_names(program.uses))
        except CelEvaluationError as err:
            return str(err)

    for expression in ("claim.charge.memory == 1", "string(claim.charge.memory)", "claim.charge.memory + 1 > 1"):
        program = rule(expression)
        inputs = (1, "1", True, "True", 1.0, 0.0, -0.0, 1, "1", True, "True", 0.0, -0.0)
        got = [answer(program, m, memoised=True) for m in inputs]
        assert got == [answer(program, m, memoised=False) for m in inputs], expression
    text = rule("string(claim.charge.memory)")
    assert [answer(text, m, memoised=True) for m in (1, True, 1.0, 0.0, -0.0, 1)] == [
        "1",
        "True",
        "1.0",
        "0.0",
        "-0.0",
        "1",
    ]


def test_map_order_is_part_of_the_input() -> None:
    program = rule("claim.labels.map(k, k)[0] == 'team'")
    assert program.evaluate(Activation({**values(), "claim": {"labels": {"team": "a", "x": "b"}}}))
    assert not program.evaluate(Activation({**values(), "claim": {"labels": {"x": "b", "team": "a"}}}))


def test_an_error_is_remembered_as_an_error_and_a_fix_is_seen() -> None:
    program = rule("pod.metadata.name == 'x'")
    for _ in range(2):
        with pytest.raises(CelEvaluationError):
            program.evaluate(Activation(values()))
    assert program.evaluate(Activation(values(pod={"metadata": {"name": "x"}})))
    assert not program.evaluate(Activation(values(pod={"metadata": {"name": "y"}})))


def test_an_integer_beyond_64_bits_fails_closed_even_where_the_rule_reads_another_field() -> None:
    """As before the memo: a variable CEL cannot hold fails every rule that reads it, naming the field."""
    program = rule("claim.charge.totalDevices < 4")
    assert program.evaluate(Activation(values()))
    with pytest.raises(CelEvaluationError, match=r"claim\.charge\.memory is 1180591620717411303424"):
        program.evaluate(Activation(values(memory=2**70)))
    assert program.evaluate(Activation(values(memory=2**63 - 1)))


def test_the_memo_is_bounded_and_large_inputs_are_not_kept() -> None:
    program = rule("tenant.usage.claims >= 0")
    for n in range(cel.MEMO_ENTRIES + 50):
        assert program.evaluate(Activation(values(claims=n)))
    assert len(program._memo) == cel.MEMO_ENTRIES
    assert not program.evaluate(Activation(values(claims=-1)))
    assert not program.evaluate(Activation(values(claims=-1)))
    whole = rule("size(claim.spec.devices.requests) > 0")
    large = [{"name": f"r{i}", "count": i} for i in range(cel.MEMO_KEY_CHARS // 10)]
    assert whole.evaluate(Activation(values(requests=large)))
    assert len(whole._memo) == 0
    assert not whole.evaluate(Activation(values(requests=[])))
    assert len(whole._memo) == 1


def test_all_memos_together_stay_within_their_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond the budget a rule evicts its own oldest entries, never another rule's; a rule dropped
    (a policy reload) gives its share back."""
    monkeypatch.setattr(cel, "_memo_room", [1000])  # room for about fifteen small inputs
    first, second = rule("tenant.usage.claims >= 0"), rule("tenant.usage.claims < 1000")
    for n in range(8):
        assert first.evaluate(Activation(values(claims=n)))
    for n in range(20):
        assert second.evaluate(Activation(values(claims=n)))
    assert len(first._memo) == 8  # untouched by the second rule's inputs
    assert 0 < len(second._memo) < 20
    assert sum(size for memo in (first._memo, second._memo) for _, _, size in memo.values()) <= 1000
    assert all(second.evaluate(Activation(values(claims=n))) for n in range(20))  # evicted: evaluated again
    room = cel._memo_room[0]
    del first
    gc.collect()
    assert cel._memo_room[0] > room


def test_a_rule_reads_only_its_paths() -> None:
    program = rule("pod == null || claim.charge.totalDevices < 4 || has(pod.metadata.labels)")
    assert program.paths == (("claim", "charge", "totalDevices"), ("pod",), ("pod", "metadata", "labels"))
    assert rule("tenant.usage.devices['x'] > 0").paths == (("tenant", "usage", "devices"),)
    assert rule("request.groups.exists(request, request == 'a')").paths is None
