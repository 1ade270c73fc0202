import pytest

from webhook.admission.jsonpatch import apply, diff, escape


def test_escape() -> None:
    assert escape("nvidia.com/gpu") == "nvidia.com~1gpu"
    assert escape("a~b/c") == "a~0b~1c"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"a": 1}, {"a": 1}),
        ({"a": 1}, {"a": 2}),
        ({"a": 1, "b": 2}, {"a": 1}),
        ({"limits": {"nvidia.com/gpu": "1", "cpu": "1"}}, {"limits": {"cpu": "1"}, "claims": [{"name": "gpu"}]}),
        ({"l": [1, 2]}, {"l": [1, 2, 3, 4]}),
        ({"l": [1, 2]}, {"l": [2]}),
        ({"l": [{"x": 1}, {"y": 2}]}, {"l": [{"x": 1}, {"y": 3}]}),
        ({"a/b": {"c~d": 1}}, {"a/b": {"c~d": 2}}),
        ({"a": 1}, {"a": "1"}),
        ({"a": {"b": 1}}, {"a": [1]}),
    ],
)
def test_diff_then_apply_round_trips(old: dict[str, object], new: dict[str, object]) -> None:
    patch = diff(old, new)
    assert apply(old, patch) == new
    assert (patch == []) == (old == new and type(old) is type(new))


def test_appends_use_dash() -> None:
    assert diff({"l": [1]}, {"l": [1, 2]}) == [{"op": "add", "path": "/l/-", "value": 2}]
