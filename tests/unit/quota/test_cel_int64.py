"""CEL's integers are 64-bit: a rule input beyond them is an evaluation error naming the field, not a crash."""

from __future__ import annotations

import pytest

from webhook.quota.cel import Activation, CelEvaluationError, compile_rule


def test_a_value_beyond_int64_names_its_field() -> None:
    rule = compile_rule("claim.charge.memory < 10", variables=frozenset({"claim", "pod"}))
    huge = {"charge": {"memory": 2**70, "devices": {"a": 1}}}
    with pytest.raises(
        CelEvaluationError, match=r"claim\.charge\.memory is 1180591620717411303424, beyond CEL's 64-bit integers"
    ):
        rule.evaluate(Activation({"claim": huge, "pod": None}))
    assert not rule.evaluate({"claim": {"charge": {"memory": 2**63 - 1}}, "pod": None})


def test_the_edges_of_int64_convert() -> None:
    rule = compile_rule("claim.n == -9223372036854775808", variables=frozenset({"claim"}))
    assert rule.evaluate({"claim": {"n": -(2**63)}})
    with pytest.raises(CelEvaluationError, match=r"claim\.l\[1\] is -9223372036854775809"):
        compile_rule("claim.l.size() > 0", variables=frozenset({"claim"})).evaluate({"claim": {"l": [1, -(2**63) - 1]}})
