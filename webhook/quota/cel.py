"""CEL, behind one module: compile when a policy loads, only evaluate on the request path.

Rules run transpiled to Python (celpy's ``Transpiler``, about four times faster than its
``InterpretedRunner``: 20 rules cost about 0.8 ms against 2.8 ms). celpy's ``CompiledRunner`` keeps
the activation in its module's globals, which threads would share (decisions run on the event loop
or, when they need the cluster, on the HTTP layer's threads), so each thread runs the transpiled code
in globals of its own. Where the transpiled code fails (it does not short-circuit every error the
interpreter does, e.g. ``pod == null || has(pod.metadata)``), the rule is evaluated again by the
interpreter, so results and errors are the interpreter's: a differential test runs the rule corpus
through both. celpy has no runtime cost limit, so the cost is bounded statically when a rule is
compiled: a cap on the expression's length and syntax-tree size, and on how deeply comprehension
macros (``all``, ``exists``, ``map``...) nest. The data a rule sees is bounded too (at most 32
requests of 8 alternatives per claim), so a compiled rule's work is bounded.
"""

from __future__ import annotations

import functools
import re
import threading
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, cast

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError
from lark import Tree

from webhook.translate.quantity import QuantityError, parse_quantity

MAX_LENGTH = 4096
MAX_NODES = 4000
MAX_MACRO_DEPTH = 2
_MACROS = {"all", "exists", "exists_one", "map", "filter"}


class CelError(ValueError):
    """A rule that does not compile or exceeds the cost bounds; the message says which and why."""


class CelEvaluationError(RuntimeError):
    """A rule failed at evaluation time (a missing field, a type error)."""


@dataclass(frozen=True)
class Program:
    expression: str
    nodes: int
    _runner: Any
    uses: frozenset[str] = frozenset()  # the variables the expression reads
    _transpiled: Any = None  # celpy's Transpiler for the same expression, or None
    # How often the transpiled code answered and failed: a rule whose transpiled code keeps failing
    # (``pod == null || has(pod.metadata)`` for claims) goes to the interpreter directly.
    _record: list[int] = field(default_factory=lambda: [0, 0], compare=False, repr=False)

    def evaluate(self, activation: Mapping[str, Any] | Activation) -> Any:
        """Evaluate with plain-Python data (dicts, lists, str, int, bool, None), or with an
        ``Activation`` shared by several rules so each variable is converted once per decision."""
        shared = activation if isinstance(activation, Activation) else Activation(activation)
        cel_activation = shared.for_names(self.uses)
        answered, failed = self._record
        if self._transpiled is not None and failed <= 2 * answered + 2:
            fast = _run_transpiled(self._transpiled, shared.transpiler_activation(self._transpiled, cel_activation))
            if fast is not None:
                self._record[0] += 1
                return fast
            self._record[1] += 1
        return self.interpret(cel_activation)

    def interpret(self, cel_activation: Mapping[str, Any]) -> Any:
        """The interpreter's answer (the reference the transpiled code is checked against)."""
        try:
            result = self._runner.evaluate(cel_activation)
        except CELEvalError as err:
            raise CelEvaluationError(_describe_eval_error(err)) from None
        if isinstance(result, CELEvalError):
            raise CelEvaluationError(_describe_eval_error(result))
        return result


class Activation:
    """Rule variables, converted to CEL values on first use and kept: converting a whole Pod
    costs more than most rules do, so a decision converts each variable at most once."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = values
        self._converted: dict[str, Any] = {}
        self._transpiler: Any = None  # celpy's activation for transpiled rules, shared by the decision's rules
        self._loaded: set[str] = set()

    def transpiler_activation(self, transpiled: Any, cel_values: Mapping[str, Any]) -> Any:
        """One celpy activation for every transpiled rule of the decision (rules compiled alike
        share their base), cloned once and loaded with each variable once."""
        if self._transpiler is None:
            self._transpiler = transpiled.base_activation.clone()
        new = {k: v for k, v in cel_values.items() if k not in self._loaded}
        if new:
            self._transpiler.identifiers.load_values(new)
            self._loaded.update(new)
        return self._transpiler

    def for_names(self, names: frozenset[str]) -> dict[str, Any]:
        """The CEL values of ``names``; raises ``CelEvaluationError`` for one CEL cannot hold.

        CEL's integers are 64-bit: a value computed from what the apiserver accepts (a count of
        2**62 times 80 GiB of memory per device) can be larger, and a rule cannot be evaluated on it.
        """
        out = {}
        for name in names:
            if name not in self._converted and name in self._values:
                try:
                    self._converted[name] = json_to_cel(self._values[name])
                except (ValueError, OverflowError):
                    raise CelEvaluationError(
                        _beyond_int64(self._values[name], name) or f"{name} cannot be a CEL value"
                    ) from None
            if name in self._converted:
                out[name] = self._converted[name]
        return out


def _beyond_int64(value: Any, where: str) -> str | None:
    """Where in ``value`` an integer lies beyond CEL's 64-bit range, and which, or None."""
    stack = [(value, where)]
    while stack:
        node, at = stack.pop()
        if isinstance(node, bool):
            continue
        if isinstance(node, int) and not -(2**63) <= node < 2**63:
            return f"{at} is {node}, beyond CEL's 64-bit integers"
        if isinstance(node, Mapping):
            stack.extend((item, f"{at}.{key}") for key, item in node.items())
        elif isinstance(node, list | tuple):
            stack.extend((item, f"{at}[{i}]") for i, item in enumerate(node))
    return None


_environment_lock = threading.Lock()
_per_thread = threading.local()


def _checked_result(activation: Any, expression: Any) -> Any:
    """celpy's ``result`` for transpiled code, with member access on null (``AttributeError``)
    checked as well, so ``has(pod.metadata)`` on no Pod is false there as in the interpreter."""
    try:
        return celpy.evaluation.result(activation, expression)
    except AttributeError as err:
        return CELEvalError("no such member", AttributeError, err.args)


def _transpiled_scope() -> dict[str, Any]:
    """Globals for transpiled code: celpy's, with the checked ``result``; one set per thread."""
    scope = dict(celpy.evaluation.result.__globals__)
    evaluation = types.SimpleNamespace(**{**vars(celpy.evaluation), "result": _checked_result})
    scope["celpy"] = types.SimpleNamespace(**{**vars(celpy), "evaluation": evaluation})
    return scope


def _run_transpiled(transpiled: Any, activation: Any) -> Any:
    """The transpiled rule's value, or None where it failed (the interpreter decides then)."""
    scope = getattr(_per_thread, "scope", None)
    if scope is None:
        scope = _per_thread.scope = _transpiled_scope()
    scope["base_activation"] = activation
    try:
        exec(transpiled.executable_code, scope)  # the transpiler's own code object, as celpy runs it
    except Exception:
        return None
    value = scope.get("CEL")
    return None if value is None or isinstance(value, CELEvalError) else value


def _ensure_transpiling_parser() -> None:
    """celpy builds one parser per process, with the tree class of whoever asked first; the
    transpiler needs its own tree class (the interpreter reads those trees too)."""
    from celpy.celparser import CELParser
    from celpy.evaluation import TranspilerTree

    parser = CELParser.CEL_PARSER
    if parser is not None and parser.options.tree_class is not TranspilerTree:
        CELParser.CEL_PARSER = None
    if CELParser.CEL_PARSER is None:
        CELParser(tree_class=TranspilerTree)


def compile_rule(expression: str, *, variables: frozenset[str]) -> Program:
    """Compile ``expression``; raises ``CelError`` with the parse error or the bound it breaks."""
    if not expression.strip():
        raise CelError("expression is empty")
    if len(expression) > MAX_LENGTH:
        raise CelError(f"expression is {len(expression)} characters long, the limit is {MAX_LENGTH}")
    with _environment_lock:  # celpy's parser is shared state
        _ensure_transpiling_parser()
        env = celpy.Environment(runner_class=celpy.InterpretedRunner)
        try:
            ast = env.compile(expression)
        except CELParseError as err:
            raise CelError(f"does not parse: {' '.join(str(err).split())}") from None
        nodes = sum(1 for _ in ast.iter_subtrees())
        if nodes > MAX_NODES:
            raise CelError(f"expression is too complex ({nodes} syntax nodes, the limit is {MAX_NODES})")
        depth = _macro_depth(ast)
        if depth > MAX_MACRO_DEPTH:
            raise CelError(f"comprehensions nest {depth} deep, the limit is {MAX_MACRO_DEPTH}")
        used = _identifiers(ast) - _MACRO_VARIABLES(ast)
        unknown = sorted(used - variables)
        if unknown:
            raise CelError(f"unknown variable(s) {', '.join(unknown)}; rules may use {', '.join(sorted(variables))}")
        runner = env.program(ast)
        try:
            transpiled = cast(Any, celpy.Environment(runner_class=celpy.CompiledRunner).program(ast)).tp
        except Exception:  # an expression the transpiler cannot handle runs interpreted
            transpiled = None
    return Program(
        expression=expression, nodes=nodes, _runner=runner, uses=frozenset(used & variables), _transpiled=transpiled
    )


def _macro_depth(tree: Tree[Any]) -> int:
    here = 1 if tree.data == "member_dot_arg" and _method_name(tree) in _MACROS else 0
    children = [_macro_depth(child) for child in tree.children if isinstance(child, Tree)]
    return here + max(children, default=0)


def _method_name(tree: Tree[Any]) -> str | None:
    for child in tree.children:
        if not isinstance(child, Tree):
            return str(child)
    return None


def _identifiers(tree: Tree[Any]) -> set[str]:
    """Top-level identifiers: ``ident`` nodes and ``ident_arg`` function calls are not variables."""
    return {str(node.children[0]) for node in tree.iter_subtrees() if node.data == "ident"}


def _MACRO_VARIABLES(tree: Tree[Any]) -> set[str]:
    """Loop variables bound by comprehension macros (``r`` in ``requests.all(r, ...)``)."""
    bound: set[str] = set()
    for node in tree.iter_subtrees():
        if node.data == "member_dot_arg" and _method_name(node) in _MACROS:
            for child in node.children:
                if isinstance(child, Tree) and child.data == "exprlist" and child.children:
                    first = child.children[0]
                    if isinstance(first, Tree):
                        bound |= _identifiers(first)
    return bound


def _describe_eval_error(err: Any) -> str:
    args = getattr(err, "args", ())
    return str(args[0]) if args else str(err)


# -- device selectors: the Kubernetes DRA CEL environment -----------------------------------------
# DeviceClass and request selectors see one variable, ``device``: ``driver`` (string), ``attributes``
# and ``capacity`` (maps domain -> name -> value; an unknown domain is an empty map, an unknown name
# inside a domain a runtime error), ``allowMultipleAllocations``. Capacity values are quantities;
# attribute values int, bool, string or version (semver). The library functions below are the ones
# Kubernetes adds for selectors. A selector that calls anything else cannot be evaluated here and
# ``SelectorProgram.unsupported`` says so: the quota then assumes it may select any device.
MAX_SELECTOR_LENGTH = 10 * 1024  # the API's own limit per selector


class Quantity:
    """A Kubernetes resource quantity as a CEL value (``quantity("40Gi")``)."""

    __slots__ = ("value",)

    def __init__(self, value: Fraction) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Quantity) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"quantity({self.value})"


@functools.total_ordering
class Semver:
    """A semantic version as a CEL value (``semver("1.2.3")``); pre-release and build are ignored in
    comparisons beyond what ordering by (major, minor, patch) gives."""

    __slots__ = ("parts",)

    def __init__(self, parts: tuple[int, int, int]) -> None:
        self.parts = parts

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Semver) and other.parts == self.parts

    def __lt__(self, other: Semver) -> bool:
        return self.parts < other.parts

    def __hash__(self) -> int:
        return hash(self.parts)


_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$")


def _semver(text: Any) -> Semver:
    found = _SEMVER.match(str(text))
    if found is None:
        raise ValueError(f"not a semantic version: {text!r}")
    return Semver((int(found[1]), int(found[2]), int(found[3])))


def _is_semver(text: Any) -> celtypes.BoolType:
    return celtypes.BoolType(_SEMVER.match(str(text)) is not None)


def _quantity(text: Any) -> Quantity:
    return Quantity(parse_quantity(str(text)))


def _is_quantity(text: Any) -> celtypes.BoolType:
    try:
        parse_quantity(str(text))
    except QuantityError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _key(value: Any) -> Any:
    if isinstance(value, Quantity):
        return value.value
    if isinstance(value, Semver):
        return value.parts
    raise TypeError(f"no such overload for {type(value).__name__}")


def _compare(a: Any, b: Any) -> celtypes.IntType:
    x, y = _key(a), _key(b)
    return celtypes.IntType((x > y) - (x < y))


def _ceil_int(value: Fraction) -> int:
    return -((-value.numerator) // value.denominator)


SELECTOR_FUNCTIONS: dict[str, Any] = {
    "quantity": _quantity,
    "isQuantity": _is_quantity,
    "semver": _semver,
    "isSemver": _is_semver,
    "compareTo": _compare,
    "isGreaterThan": lambda a, b: celtypes.BoolType(_key(a) > _key(b)),
    "isLessThan": lambda a, b: celtypes.BoolType(_key(a) < _key(b)),
    "asInteger": lambda q: celtypes.IntType(_ceil_int(q.value)),
    "asApproximateFloat": lambda q: celtypes.DoubleType(float(q.value)),
    "isInteger": lambda q: celtypes.BoolType(q.value.denominator == 1),
    "sign": lambda q: celtypes.IntType((q.value > 0) - (q.value < 0)),
    "add": lambda a, b: Quantity(a.value + (b.value if isinstance(b, Quantity) else Fraction(int(b)))),
    "sub": lambda a, b: Quantity(a.value - (b.value if isinstance(b, Quantity) else Fraction(int(b)))),
    "lowerAscii": lambda s: celtypes.StringType(str(s).lower()),
    "upperAscii": lambda s: celtypes.StringType(str(s).upper()),
    "replace": lambda s, old, new: celtypes.StringType(str(s).replace(str(old), str(new))),
    "major": lambda v: celtypes.IntType(v.parts[0]),
    "minor": lambda v: celtypes.IntType(v.parts[1]),
    "patch": lambda v: celtypes.IntType(v.parts[2]),
}
# What CEL itself provides and celpy implements: calls to anything outside these and the library
# above make a selector unsupported (it may select any device, as far as the quota knows).
_BUILTIN_CALLS = frozenset(
    {
        "size", "has", "int", "uint", "double", "string", "bool", "type", "matches", "contains",
        "startsWith", "endsWith", "lowerAscii", "upperAscii", "all", "exists", "exists_one", "map", "filter",
    }
)  # fmt: skip


class _Domains(celtypes.MapType):
    """``device.attributes`` / ``device.capacity``: an unknown domain is an empty map."""

    def __getitem__(self, key: Any) -> Any:
        try:
            return super().__getitem__(key)
        except KeyError:
            return celtypes.MapType({})


AttributeValue = int | bool | str | tuple[int, int, int]


def device_value(
    *,
    driver: str,
    attributes: Mapping[str, Mapping[str, AttributeValue]],
    capacity: Mapping[str, Mapping[str, Fraction]],
    allow_multiple: bool,
) -> celtypes.MapType:
    """One device as selectors see it; versions come as (major, minor, patch) tuples."""

    def attribute(value: AttributeValue) -> Any:
        if isinstance(value, bool):
            return celtypes.BoolType(value)
        if isinstance(value, int):
            return celtypes.IntType(value)
        if isinstance(value, tuple):
            return Semver(value)
        return celtypes.StringType(value)

    return celtypes.MapType(
        {
            celtypes.StringType("driver"): celtypes.StringType(driver),
            celtypes.StringType("attributes"): _Domains(
                {
                    celtypes.StringType(domain): celtypes.MapType(
                        {celtypes.StringType(k): attribute(v) for k, v in values.items()}
                    )
                    for domain, values in attributes.items()
                }
            ),
            celtypes.StringType("capacity"): _Domains(
                {
                    celtypes.StringType(domain): celtypes.MapType(
                        {celtypes.StringType(k): Quantity(v) for k, v in values.items()}
                    )
                    for domain, values in capacity.items()
                }
            ),
            celtypes.StringType("allowMultipleAllocations"): celtypes.BoolType(allow_multiple),
        }
    )


@dataclass(frozen=True)
class SelectorProgram:
    """A compiled device selector. ``unsupported`` names why it cannot be evaluated here (too large,
    a function outside the DRA library); such a selector is taken to select any device."""

    expression: str
    unsupported: str | None
    _runner: Any = None

    def matches(self, device: celtypes.MapType) -> bool:
        """True when the selector selects the device. An evaluation error is no match: the
        allocator cannot hand out a device its selector fails on."""
        if self.unsupported is not None:
            return True
        try:
            result = self._runner.evaluate({"device": device})
        except Exception:  # a runtime error in a user's expression (celpy raises several kinds)
            return False
        return isinstance(result, celtypes.BoolType) and bool(result)


def compile_selector(expression: str) -> SelectorProgram:
    """Compile a DeviceClass or request selector; never raises (see ``SelectorProgram``)."""
    if len(expression) > MAX_SELECTOR_LENGTH:
        return SelectorProgram(expression, f"longer than {MAX_SELECTOR_LENGTH} characters")
    with _environment_lock:
        env = celpy.Environment(runner_class=celpy.InterpretedRunner)
        try:
            ast = env.compile(expression)
        except CELParseError as err:
            return SelectorProgram(expression, f"does not parse: {' '.join(str(err).split())}")
        if sum(1 for _ in ast.iter_subtrees()) > MAX_NODES or _macro_depth(ast) > MAX_MACRO_DEPTH:
            return SelectorProgram(expression, "beyond the cost bounds")
        calls = _calls(ast) - _BUILTIN_CALLS - set(SELECTOR_FUNCTIONS)
        if calls:
            return SelectorProgram(expression, f"calls {', '.join(sorted(calls))}")
        unknown = _identifiers(ast) - _MACRO_VARIABLES(ast) - {"device"}
        if unknown:
            return SelectorProgram(expression, f"unknown variable(s) {', '.join(sorted(unknown))}")
        runner = env.program(ast, functions=SELECTOR_FUNCTIONS)
    return SelectorProgram(expression, None, runner)


def _calls(tree: Tree[Any]) -> set[str]:
    """Every function or method name the expression calls."""
    names: set[str] = set()
    for node in tree.iter_subtrees():
        if node.data == "member_dot_arg":
            name = _method_name(node)
            if name is not None:
                names.add(name)
        elif node.data == "ident_arg" and node.children:
            names.add(str(node.children[0]))
    return names
