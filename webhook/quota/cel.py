"""CEL, behind one module: compile when a policy loads, only evaluate on the request path.

Rules run with celpy's ``InterpretedRunner`` (its compiled runner is not thread-safe, and decisions
run on the event loop or, when they need the cluster, on the HTTP layer's threads). celpy has no runtime cost limit, so the cost is bounded statically when a
rule is compiled: a cap on the expression's length and syntax-tree size, and on how deeply
comprehension macros (``all``, ``exists``, ``map``...) nest. The data a rule sees is bounded too
(at most 32 requests of 8 alternatives per claim), so a compiled rule's work is bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError
from lark import Tree

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

    def evaluate(self, activation: Mapping[str, Any] | Activation) -> Any:
        """Evaluate with plain-Python data (dicts, lists, str, int, bool, None), or with an
        ``Activation`` shared by several rules so each variable is converted once per decision."""
        shared = activation if isinstance(activation, Activation) else Activation(activation)
        cel_activation = shared.for_names(self.uses)
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
                    raise CelEvaluationError(_beyond_int64(self._values[name], name) or f"{name} cannot be a CEL value") from None
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


def compile_rule(expression: str, *, variables: frozenset[str]) -> Program:
    """Compile ``expression``; raises ``CelError`` with the parse error or the bound it breaks."""
    if not expression.strip():
        raise CelError("expression is empty")
    if len(expression) > MAX_LENGTH:
        raise CelError(f"expression is {len(expression)} characters long, the limit is {MAX_LENGTH}")
    with _environment_lock:  # celpy's parser is shared state
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
    return Program(expression=expression, nodes=nodes, _runner=runner, uses=frozenset(used & variables))


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
