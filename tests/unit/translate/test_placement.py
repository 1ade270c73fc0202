"""Where a Pod may run: node selector and required node affinity, as the scheduler reads them."""

from __future__ import annotations

from typing import Any

import pytest

from webhook.translate.placement import may_run_on

LABELS = {"pool": "a100", "zone": "z1", "gpus": "8"}


def affinity(*terms: dict[str, Any]) -> dict[str, Any]:
    required = {"nodeSelectorTerms": list(terms)}
    return {"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}}}


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": key, "operator": operator, "values": list(values)}]}


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        ({"spec": {}}, True),
        ({"spec": {"nodeSelector": {"pool": "a100"}}}, True),
        ({"spec": {"nodeSelector": {"pool": "h100"}}}, False),
        ({"spec": {"nodeName": "other"}}, False),
        ({"spec": {"nodeName": "n1"}}, True),
        (affinity(expr("pool", "In", "a100", "h100")), True),
        (affinity(expr("pool", "NotIn", "a100")), False),
        (affinity(expr("missing", "NotIn", "x")), True),
        (affinity(expr("zone", "Exists")), True),
        (affinity(expr("zone", "DoesNotExist")), False),
        (affinity(expr("gpus", "Gt", "4")), True),
        (affinity(expr("gpus", "Lt", "4")), False),
        (affinity(expr("pool", "In", "h100"), expr("zone", "In", "z1")), True),  # terms are OR-ed
        (
            affinity(
                {
                    "matchExpressions": [
                        {"key": "pool", "operator": "In", "values": ["a100"]},
                        {"key": "zone", "operator": "In", "values": ["z2"]},
                    ]
                }
            ),
            False,
        ),
        (affinity({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}), True),
        (affinity({}), False),  # an empty term matches no node
        (affinity(expr("pool", "Bogus", "a100")), False),
    ],
)
def test_may_run_on(pod: dict[str, Any], expected: bool) -> None:
    assert may_run_on(pod, "n1", LABELS) is expected
