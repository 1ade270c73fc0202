"""The boundary: a request body becomes a document the core may trust, or a ``MalformedReview`` (400).

The apiserver sends AdmissionReviews of objects it has already decoded into Go types: a name is a
string, ``spec.containers`` a list of mappings, ``count`` an int64, a number finite, a string valid
UTF-8. Anything else did not come from an apiserver, and is refused here, with the field path and
the value, before the core sees it; the core may then rely on those shapes.

``parse_body`` decodes the JSON: no NaN or Infinity, integers within int64, finite floats, nesting at
most ``MAX_DEPTH`` levels (a Pod is about 12), no lone surrogates. ``check_request`` checks the fields
the core reads, for the kinds it serves (Pod, ResourceClaim, ResourceClaimTemplate, ConfigMap,
Namespace) and ``metadata`` for every kind; fields it does not read may hold anything.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from webhook.errors import MalformedReview

MAX_DEPTH = 100  # JSON nesting of the whole review; the core walks objects recursively
MIN_INT64, MAX_INT64 = -(2**63), 2**63 - 1
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")  # only such an escape can decode to a surrogate


# -- decoding ------------------------------------------------------------------------------------
def _constant(name: str) -> Any:
    raise MalformedReview(f"body holds {name}, which is not JSON")


def _integer(text: str) -> int:
    value = int(text)
    if not MIN_INT64 <= value <= MAX_INT64:
        raise MalformedReview(f"body holds the integer {shown(text)}, beyond int64")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise MalformedReview(f"body holds the number {shown(text)}, beyond a float64")
    return value


# json.loads with these hooks builds a decoder per call (a fifth of decoding a small Pod's review);
# one serves every review. It keeps no state between calls that a concurrent one could see: its
# scanner's only state is a cache interning object keys, emptied after each document.
_DECODER = json.JSONDecoder(parse_constant=_constant, parse_int=_integer, parse_float=_float)


def parse_body(body: bytes | bytearray) -> Any:
    """The JSON document in ``body``; raises ``MalformedReview`` for anything an apiserver would not send."""
    try:
        text = body.decode("utf-8")  # strict: json.loads would let encoded surrogates through
    except UnicodeDecodeError as err:
        raise MalformedReview(f"body is not JSON: not UTF-8 ({err})") from None
    try:
        if text.startswith("\ufeff"):  # as json.loads refuses it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        document = _DECODER.decode(text)
    except RecursionError:
        raise MalformedReview(f"body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as err:  # MalformedReview from the hooks is not a ValueError
        raise MalformedReview(f"body is not JSON: {err}") from None
    if body.count(b"{") + body.count(b"[") > MAX_DEPTH:  # fewer openers than that: not that deep
        _check_depth(document)
    if _ESCAPED_SURROGATE.search(body):
        _check_strings(document, "")
    return document


def _check_depth(document: Any) -> None:
    """Level by level, without recursion: a document nested deeper than ``MAX_DEPTH`` is refused."""
    level: list[Any] = [document]
    for _ in range(MAX_DEPTH):
        nodes = chain.from_iterable(node.values() if type(node) is dict else node for node in level)
        level = [node for node in nodes if type(node) is dict or type(node) is list]
        if not level:
            return
    raise MalformedReview(f"body is nested deeper than {MAX_DEPTH} levels")


def _check_strings(node: Any, where: str) -> None:
    """No string (key or value) may hold a lone surrogate: it is not Unicode text and cannot be written as UTF-8."""
    stack: list[tuple[Any, str]] = [(node, where)]
    while stack:
        value, at = stack.pop()
        if isinstance(value, str):
            _text(value, at)
        elif isinstance(value, dict):
            for key, item in value.items():
                _text(key, f"{at}.<key>")
                stack.append((item, f"{at}.{key}" if at else key))
        elif isinstance(value, list):
            stack.extend((item, f"{at}[{i}]") for i, item in enumerate(value))


def _text(value: str, where: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedReview(f"{_where(where)}: {shown(value)} holds a lone surrogate, which is not text") from None


# -- shapes --------------------------------------------------------------------------------------
# Where a value sits, built as the check descends and spelled out only for a message: the path so
# far, or (the path of the parent, a step): ".field", a list position, or (a mapping key,). Most
# reviews are fine, and spelling every key (``shown`` runs json.dumps) cost a tenth of a small
# Pod's mutation.
Where = str | tuple[Any, Any]


def spelled(where: Where) -> str:
    steps: list[str] = []
    while isinstance(where, tuple):
        where, step = where
        if isinstance(step, str):
            steps.append(step)
        elif isinstance(step, int):
            steps.append(f"[{step}]")
        else:
            steps.append(f"[{shown(step[0])}]")
    return where + "".join(reversed(steps))


class _Shape:
    def check(self, value: Any, where: Where) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class _Leaf(_Shape):
    types: tuple[type, ...]
    name: str
    # The types themselves, tested by identity before ``holds``: what a JSON decoder makes is
    # exactly str, int, float (``type(True)`` is bool, never int), and a call per field was most
    # of a small Pod's shape check.
    exact: frozenset[type] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exact", frozenset(self.types))

    def check(self, value: Any, where: Where) -> None:
        if not self.holds(value):
            _wrong(where, self.name, value)

    def holds(self, value: Any) -> bool:
        """Whether ``value`` has this shape: for the containers' checks, which build the field's
        path (``where``) only for a value that has not."""
        return isinstance(value, self.types) and (not isinstance(value, bool) or bool in self.types)


@dataclass(frozen=True)
class _Fields(_Shape):
    """A mapping whose named fields, when present, have these shapes; others are free.

    A string field may be null (Go writes an unset ``metav1.Time`` so); a list or mapping field may
    not: the apiserver leaves an empty one out (``omitempty``), and the core adds to them in place.
    """

    fields: Mapping[str, _Shape]
    _steps: tuple[tuple[str, str, _Shape, _Leaf | None], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        steps = tuple(
            (name, "." + name, shape, shape if isinstance(shape, _Leaf) else None)
            for name, shape in self.fields.items()
        )
        object.__setattr__(self, "_steps", steps)

    def check(self, value: Any, where: Where) -> None:
        if not isinstance(value, dict):
            _wrong(where, "a mapping", value)
        for name, step, shape, leaf in self._steps:
            if name not in value:
                continue
            item = value[name]
            if leaf is not None and (item is None or type(item) in leaf.exact or leaf.holds(item)):
                continue
            shape.check(item, (where, step))


@dataclass(frozen=True)
class _MapOf(_Shape):
    values: _Shape

    def check(self, value: Any, where: Where) -> None:
        if not isinstance(value, dict):
            _wrong(where, "a mapping", value)
        values = self.values
        if isinstance(values, _Leaf):  # labels, annotations, limits: no path built for a value that fits
            exact = values.exact
            for key, item in value.items():
                if type(item) not in exact and not values.holds(item):
                    values.check(item, (where, (key,)))
            return
        for key, item in value.items():
            values.check(item, (where, (key,)))


@dataclass(frozen=True)
class _ListOf(_Shape):
    items: _Shape

    def check(self, value: Any, where: Where) -> None:
        if not isinstance(value, list):
            _wrong(where, "a list", value)
        for position, item in enumerate(value):
            self.items.check(item, (where, position))


STRING = _Leaf((str,), "a string")
INTEGER = _Leaf((int,), "an integer")
QUANTITY = _Leaf((str, int, float), "a quantity (a string such as '1' or '40Gi')")
STRINGS = _MapOf(STRING)
METADATA = _Fields(
    {
        "name": STRING,
        "generateName": STRING,
        "namespace": STRING,
        "uid": STRING,
        "resourceVersion": STRING,
        "creationTimestamp": STRING,
        "labels": STRINGS,
        "annotations": STRINGS,
    }
)
CONTAINER = _Fields(
    {
        "name": STRING,
        "resources": _Fields(
            {
                "limits": _MapOf(QUANTITY),
                "requests": _MapOf(QUANTITY),
                "claims": _ListOf(_Fields({"name": STRING, "request": STRING})),
            }
        ),
    }
)
DEVICE_SUBREQUEST = _Fields(
    {
        "name": STRING,
        "deviceClassName": STRING,
        "allocationMode": STRING,
        "count": INTEGER,
        "selectors": _ListOf(_Fields({"cel": _Fields({"expression": STRING})})),
        "capacity": _Fields({"requests": _MapOf(QUANTITY)}),
    }
)
CLAIM_SPEC = _Fields(
    {
        "devices": _Fields(
            {
                "requests": _ListOf(
                    _Fields(
                        {
                            "name": STRING,
                            "exactly": DEVICE_SUBREQUEST,
                            "firstAvailable": _ListOf(DEVICE_SUBREQUEST),
                            # the pre-v1 shape: the request is its own subrequest
                            "deviceClassName": STRING,
                            "allocationMode": STRING,
                            "count": INTEGER,
                            "selectors": _ListOf(_Fields({"cel": _Fields({"expression": STRING})})),
                            "capacity": _Fields({"requests": _MapOf(QUANTITY)}),
                        }
                    )
                )
            }
        )
    }
)
SHAPES: dict[str, _Shape] = {
    "Pod": _Fields(
        {
            "metadata": METADATA,
            "spec": _Fields(
                {
                    "containers": _ListOf(CONTAINER),
                    "initContainers": _ListOf(CONTAINER),
                    "ephemeralContainers": _ListOf(CONTAINER),
                    "resourceClaims": _ListOf(
                        _Fields({"name": STRING, "resourceClaimTemplateName": STRING, "resourceClaimName": STRING})
                    ),
                }
            ),
        }
    ),
    "ResourceClaim": _Fields({"metadata": METADATA, "spec": CLAIM_SPEC}),
    "ResourceClaimTemplate": _Fields(
        {"metadata": METADATA, "spec": _Fields({"metadata": METADATA, "spec": CLAIM_SPEC})}
    ),
    "ConfigMap": _Fields({"metadata": METADATA, "data": STRINGS}),
    "Namespace": _Fields({"metadata": METADATA}),
}
ANY_OBJECT = _Fields({"metadata": METADATA})


def check_object(kind: str, obj: Mapping[str, Any], where: str = "request.object") -> None:
    """Raise ``MalformedReview`` naming the first field of ``obj`` whose type the apiserver would never send."""
    SHAPES.get(kind, ANY_OBJECT).check(obj, where)


# -- messages ------------------------------------------------------------------------------------
def _wrong(where: Where, expected: str, value: Any) -> None:
    raise MalformedReview(f"{_where(spelled(where))}: expected {expected}, got {shown(value)}")


def _where(where: str) -> str:
    return where or "body"


def shown(value: Any, limit: int = 60) -> str:
    """A short, ASCII-safe picture of a value for a message: never the whole of a large one."""
    if isinstance(value, dict):
        keys = ", ".join(shown(k, 20) for k in list(value)[:3])
        return f"a mapping ({len(value)} keys: {keys}{', ...' if len(value) > 3 else ''})"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, str):
        quoted = json.dumps(value[:limit])  # ASCII, escapes surrogates and control characters
        return quoted[:-1] + '..."' if len(value) > limit else quoted
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} digits)"
