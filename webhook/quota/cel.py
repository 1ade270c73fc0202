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

A rule runs once per distinct input. Its syntax tree says which paths it reads (``claim.charge.memory``;
an index, a method or a macro reads the value it applies to whole), and its value or error is kept
keyed on exactly the values at those paths, so of a tenant's rules only those reading what changes
every admission (the tenant's usage, the claim's name) run; a miss converts only the fields the rule
reads. The memo is bounded (per rule and for all rules together) and never answers for a variable
CEL cannot hold whole: a rule on a variable holding an integer beyond 64 bits fails closed, naming
the field, whichever field it reads.
"""

from __future__ import annotations

import functools
import operator
import re
import threading
import types
import weakref
from collections.abc import Callable, Mapping
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


MEMO_ENTRIES = 256  # results a rule keeps, one per distinct input it reads; the oldest goes first
MEMO_KEY_CHARS = 1024  # an input longer than this (written out) is not memoised
MEMO_TOTAL_CHARS = 4 * 1024 * 1024  # the inputs kept by all rules together; beyond, a rule evicts its own
Path = tuple[str, ...]  # a variable and the fields read from it: ``("claim", "charge", "memory")``


@dataclass(frozen=True)
class Program:
    expression: str
    nodes: int
    _runner: Any
    uses: frozenset[str] = frozenset()  # the variables the expression reads
    _transpiled: Any = None  # celpy's Transpiler for the same expression, or None
    # What the rule reads: one path per access to a variable, as far as its fields are named
    # (``claim.spec.devices.requests.all(...)`` reads ``claim.spec.devices.requests`` whole). The
    # rule's value is a function of the values at these paths, so it is memoised on them. None where
    # the paths cannot be told from the syntax tree (then every evaluation runs the rule).
    paths: tuple[Path, ...] | None = None
    # How often the transpiled code answered and failed: a rule whose transpiled code keeps failing
    # (``pod == null || has(pod.metadata)`` for claims) goes to the interpreter directly.
    _record: list[int] = field(default_factory=lambda: [0, 0], compare=False, repr=False)
    # Input key -> (True, value, key size) or (False, error message, key size), oldest first.
    _memo: dict[Any, tuple[bool, Any, int]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        weakref.finalize(self, _release, self._memo)  # a policy reload drops rules: their memo's share back

    def evaluate(self, activation: Mapping[str, Any] | Activation) -> Any:
        """Evaluate with plain-Python data (dicts, lists, str, int, bool, None), or with an
        ``Activation`` shared by several rules so each input is read once per decision.

        A rule runs once per distinct input: its value (or its error) is kept keyed on exactly the
        values at the paths it reads, so rules whose inputs repeat (the request's kind, the claim's
        charge) cost a lookup, and those reading what changes every admission (the tenant's usage)
        still run. Only the fields a rule reads are converted to CEL values."""
        shared = activation if isinstance(activation, Activation) else Activation(activation)
        key = shared.key(self) if self.paths is not None else None
        if key is None:  # not memoisable: the whole variables, as they are
            return self._run(shared, shared.for_names(self.uses))
        found = self._memo.get(key)
        if found is not None:
            ok, value, _ = found
            if ok:
                return value
            raise CelEvaluationError(value)
        try:
            value = self._run(shared, shared.partial(self))
        except CelEvaluationError as err:
            self._remember(key, False, str(err))
            raise
        self._remember(key, True, value)
        return value

    def _remember(self, key: tuple[tuple[int, str], ...], ok: bool, value: Any) -> None:
        """Keep an outcome, the oldest of this rule's going first when it holds ``MEMO_ENTRIES`` or
        when all rules' inputs together would exceed ``MEMO_TOTAL_CHARS``."""
        size = sum(len(text) for _, text in key) + 64
        memo = self._memo
        with _memo_lock:
            while memo and (len(memo) >= MEMO_ENTRIES or _memo_room[0] < size):
                _memo_room[0] += memo.pop(next(iter(memo)))[2]
            if _memo_room[0] >= size:
                memo[key] = (ok, value, size)
                _memo_room[0] -= size

    def _run(self, shared: Activation, cel_activation: Mapping[str, Any]) -> Any:
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


_ACTIVATION_ATTRIBUTES = frozenset(dir(celpy.evaluation.Activation()))  # never shadowed by a variable
_memo_lock = threading.Lock()
_memo_room = [MEMO_TOTAL_CHARS]  # what all rules' memos may still take


def _release(memo: dict[Any, tuple[bool, Any, int]]) -> None:
    with _memo_lock:
        _memo_room[0] += sum(size for _, _, size in memo.values())
        memo.clear()


class Activation:
    """Rule variables for one decision, read once and shared by its rules: a variable converted to
    a CEL value at most once, a path walked and its value made a memo key at most once."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = values
        self._converted: dict[str, Any] = {}
        self._transpiler: Any = None  # celpy's activation for transpiled rules, shared by the decision's rules
        self._plain: dict[str, bool] = {}  # variable -> holds only JSON values CEL can hold
        self._walked: dict[Path, tuple[int, str | None]] = {}  # path -> (fields walked, the value there written out)
        self._partials: dict[tuple[Path, ...], dict[str, Any]] = {}

    def transpiler_activation(self, transpiled: Any, cel_values: Mapping[str, Any]) -> Any:
        """One celpy activation for every transpiled rule of the decision (rules compiled alike
        share their base), cloned once; each run loads the values its rule reads.

        Transpiled code reads a variable as ``activation.claim``; celpy answers through
        ``__getattr__``, a name resolution that costs more than most rules (it formats debug
        messages and builds ``typing`` unions on every call). The values are set as attributes too,
        so that read finds them directly: the same values, as ``__getattr__`` would return them.
        Comprehension bodies run in nested activations and resolve names as celpy does."""
        activation = self._transpiler
        if activation is None:
            activation = self._transpiler = transpiled.base_activation.clone()
        if cel_values:
            activation.identifiers.load_values(cel_values)
            attributes = vars(activation)
            for name, value in cel_values.items():
                if name not in _ACTIVATION_ATTRIBUTES:
                    attributes[name] = value
        return activation

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

    def key(self, program: Program) -> Any:
        """The memo key of ``program`` on this decision's values: what is at each path it reads.
        None where it cannot be memoised: a variable CEL cannot hold whole (``for_names`` then
        raises, as it does without the memo: a rule on a variable with an integer beyond 64 bits
        fails whatever field it reads), a variable the decision lacks (celpy's error then prints
        every variable), or an input too large to keep."""
        parts = []
        walked_paths = self._walked
        for path in program.paths or ():  # every variable the rule uses heads one of its paths
            walked = walked_paths.get(path)
            if walked is None:
                walked = walked_paths[path] = self._walk(path)
            if walked[1] is None:
                return None
            parts.append(walked)
        return tuple(parts)

    def _walk(self, path: Path) -> tuple[int, str | None]:
        """How many of the path's fields exist, and the value there written out (``repr``), or
        None where that is longer than ``MEMO_KEY_CHARS`` or the variable is not plain JSON.

        The values hold only dicts, lists, tuples, str, int, float, bool and None (``_plain_json``
        checked), so equal texts are equal values of equal types: ``1``, ``True`` and ``1.0`` are
        told apart (Python finds them equal, CEL does not), maps keep their order (iteration
        follows it), floats are written exactly (``-0.0``). A tuple and a list of the same items are
        the same CEL list and merely miss each other."""
        name = path[0]
        plain = self._plain.get(name)
        if plain is None:  # a variable the decision lacks is an error that prints the activation
            plain = self._plain[name] = name in self._values and _plain_json(self._values[name])
        if not plain:
            return 0, None
        node = self._values[name]
        depth = 0
        for name in path[1:]:
            if type(node) is not dict or name not in node:
                break  # the rule reads past here and fails or asks ``has``: the container decides
            node = node[name]
            depth += 1
        text = repr(node)
        return depth, (text if len(text) <= MEMO_KEY_CHARS else None)

    def partial(self, program: Program) -> dict[str, Any]:
        """CEL values of the program's variables holding only what it reads: each path's value
        whole (where a walk stopped short, the value it stopped at), its ancestors as maps of the
        named fields alone. ``key`` must have walked the paths."""
        paths = program.paths or ()
        cached = self._partials.get(paths)
        if cached is not None:
            return cached
        reached: dict[str, list[Path]] = {}
        for path in paths:
            reached.setdefault(path[0], []).append(path[1 : 1 + self._walked[path][0]])
        out = {name: _partial_cel(self._values[name], suffixes) for name, suffixes in reached.items()}
        self._partials[paths] = out
        return out


def _partial_cel(node: Any, suffixes: list[Path]) -> Any:
    """The CEL value of ``node`` with only the fields on ``suffixes``, each ending at a value
    converted whole (``_to_cel``); the fields on them exist (``Activation._walk`` went there)."""
    if len(suffixes) == 1:  # most rules read one path of a variable
        suffix = suffixes[0]
        for name in suffix:
            node = node[name]
        value = _to_cel(node)
        for name in reversed(suffix):
            value = _map({name: value})
        return value
    if any(not suffix for suffix in suffixes):
        return _to_cel(node)
    fields: dict[str, list[Path]] = {}
    for suffix in suffixes:
        fields.setdefault(suffix[0], []).append(suffix[1:])
    return _map({name: _partial_cel(node[name], rest) for name, rest in fields.items()})


def _map(items: dict[str, Any]) -> Any:
    """``MapType`` of CEL values keyed by plain strings, as ``json_to_cel`` builds it."""
    cel_map = celtypes.MapType()
    dict.update(cel_map, {str.__new__(celtypes.StringType, k): v for k, v in items.items()})
    return cel_map


_INT64 = range(-(2**63), 2**63)


def _to_cel(value: Any) -> Any:
    """``json_to_cel`` for a value ``_plain_json`` accepted, building the same CEL values without
    celpy's checks (``IntType(n)`` wraps a range check in a new function on every call)."""
    kind = type(value)
    if kind is str:
        return str.__new__(celtypes.StringType, value)
    if kind is dict:
        return _map({k: _to_cel(v) for k, v in value.items()})
    if kind is int:
        return int.__new__(celtypes.IntType, value)
    if kind is bool:
        return int.__new__(celtypes.BoolType, value)
    if kind is list or kind is tuple:
        return celtypes.ListType([_to_cel(v) for v in value])
    if kind is float:
        return float.__new__(celtypes.DoubleType, value)
    return None


def _plain_json(value: Any) -> bool:
    """True when ``value`` holds only what ``json_to_cel`` converts without error: dicts with string
    keys, lists, strings, booleans, floats, None and integers within 64 bits."""
    stack = [value]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is dict:
            items: Any = node.values()
            if any(type(k) is not str for k in node):
                return False
        elif kind is list or kind is tuple:
            items = node
        elif kind is int:
            if node not in _INT64:
                return False
            continue
        elif kind is str or kind is bool or kind is float or node is None:
            continue
        else:
            return False
        for item in items:  # scalars checked here, containers later
            kind = type(item)
            if kind is str or kind is bool or item is None:
                continue
            if kind is int:
                if item not in _INT64:
                    return False
                continue
            stack.append(item)
    return True


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


# celpy's ``result``: the message of the CEL error each Python exception of an expression becomes,
# from the exception's arguments; an exception of another class (a subclass not listed) propagates.
_RESULT_ERRORS: dict[type[BaseException], Callable[[tuple[Any, ...]], str]] = {
    ValueError: lambda _: "return error for overflow",
    KeyError: lambda args: f"no such member in mapping: {args[0]!r}",
    TypeError: lambda _: "no such overload",
    ZeroDivisionError: lambda _: "divide by zero",
    OverflowError: lambda _: "return error for overflow",
    IndexError: lambda _: "invalid_argument",
    UnicodeDecodeError: lambda _: "invalid UTF-8",
    NameError: lambda args: f"undeclared reference to {args[0]!r} (in container {args[1:]!r})",
}
_RESULT_CAUGHT = tuple(_RESULT_ERRORS)


def _checked_result(activation: Any, expression: Any) -> Any:
    """celpy's ``result`` for transpiled code: the expression's value, or the same ``CELEvalError``
    (message, exception class, arguments) for the exceptions it maps, and member access on null
    (``AttributeError``) checked as well, so ``has(pod.metadata)`` on no Pod is false there as in the
    interpreter.

    Unlike celpy's, the error carries no traceback and no cause: those held the frames of the whole
    request (each frame its caller), a reference cycle through the error in ``result``'s own frame,
    so every rule that met an error on its way (``tenant.limits.claims == null || ...``) left the
    request's objects to the cyclic garbage collector, whose passes then cost more than the rules.
    Nothing reads them: the rule's error is its message. An exception celpy would not map (a
    subclass it does not list) propagates, and the interpreter decides, as with celpy's ``result``."""
    try:
        return expression(activation)
    except AttributeError as err:
        return CELEvalError("no such member", AttributeError, err.args)
    except _RESULT_CAUGHT as err:
        message = _RESULT_ERRORS.get(type(err))
        if message is None:
            raise
        return CELEvalError(message(err.args), type(err), err.args)


def _transpiled_scope() -> dict[str, Any]:
    """Globals for transpiled code: celpy's, with the checked ``result``, and integer literals and
    comparisons that skip building a decorator per call (the same values); one set per thread."""
    scope = dict(celpy.evaluation.result.__globals__)
    # celpy's bool_lt(a, b) is ``boolean(operator.lt)(a, b)``: a wrapper built on every comparison.
    comparisons = {
        f"bool_{name}": celpy.evaluation.boolean(getattr(operator, name))
        for name in ("lt", "le", "gt", "ge", "eq", "ne")
    }
    evaluation = types.SimpleNamespace(**{**vars(celpy.evaluation), **comparisons, "result": _checked_result})
    literals = types.SimpleNamespace(**{**vars(celtypes), "IntType": _int_type})
    scope["celpy"] = types.SimpleNamespace(**{**vars(celpy), "evaluation": evaluation, "celtypes": literals})
    return scope


def _int_type(source: Any, *args: Any, **kwargs: Any) -> Any:
    """``celtypes.IntType`` as transpiled code calls it (for integer literals): the same value,
    without the range-checking wrapper celpy builds anew on every call for a plain int in range."""
    if type(source) is int and not args and not kwargs and source in _INT64:
        return int.__new__(celtypes.IntType, source)
    return celtypes.IntType(source, *args, **kwargs)


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
        expression=expression,
        nodes=nodes,
        _runner=runner,
        uses=frozenset(used & variables),
        _transpiled=transpiled,
        paths=_read_paths(ast, variables),
    )


def _read_paths(tree: Tree[Any], variables: frozenset[str]) -> tuple[Path, ...] | None:
    """Every access to a variable, as far as its fields are named: ``claim.charge.memory`` is
    ``("claim", "charge", "memory")``; an index, a method or a macro reads the value it applies to
    whole. None where that cannot be told: a comprehension variable named as a rule variable, or a
    variable reached otherwise than through these chains."""
    if _MACRO_VARIABLES(tree) & variables:
        return None
    paths: list[Path] = []

    def chain(member: Tree[Any]) -> Path | None:
        child = member.children[0]
        if not isinstance(child, Tree):
            return None
        if child.data == "primary":
            first = child.children[0] if child.children else None
            if isinstance(first, Tree) and first.data == "ident" and str(first.children[0]) in variables:
                return (str(first.children[0]),)
            return None
        if child.data == "member_dot" and len(child.children) == 2 and isinstance(child.children[0], Tree):
            base = chain(child.children[0])
            return None if base is None else (*base, str(child.children[1]))
        return None

    def visit(node: Tree[Any]) -> None:
        if node.data == "member":
            found = chain(node)
            if found is not None:
                paths.append(found)
                return
        for child in node.children:
            if isinstance(child, Tree):
                visit(child)

    visit(tree)
    reads = sum(1 for node in tree.iter_subtrees() if node.data == "ident" and str(node.children[0]) in variables)
    if reads != len(paths):
        return None
    return tuple(sorted(set(paths)))


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
