"""RFC 6902 JSON Patch from the difference of two JSON documents.

The rewrite works on a copy of the incoming object and the patch is the difference between the
raw incoming object and that copy, so fields this code does not know about are never touched.
"""

from __future__ import annotations

from typing import Any

Patch = list[dict[str, Any]]


def escape(token: str) -> str:
    """RFC 6901: ``~`` becomes ``~0`` and ``/`` becomes ``~1`` (``nvidia.com~1gpu``)."""
    if "~" not in token and "/" not in token:
        return token
    return token.replace("~", "~0").replace("/", "~1")


def diff(old: Any, new: Any, path: str = "") -> Patch:
    """Operations that turn ``old`` into ``new``: dicts key by key, lists appended where the new
    list extends the old one, replaced otherwise. A subtree shared by both (the rewrite copies only
    what it changes) is equal by identity and skipped without a walk."""
    if old is new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        ops: Patch = []
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": f"{path}/{escape(str(key))}"})
        for key, value in new.items():
            if key not in old:
                ops.append({"op": "add", "path": f"{path}/{escape(str(key))}", "value": value})
                continue
            before = old[key]
            if before is not value:  # most of a copied dict is shared: no call, no path for those
                ops.extend(diff(before, value, f"{path}/{escape(str(key))}"))
        return ops
    if isinstance(old, list) and isinstance(new, list):
        if len(new) >= len(old) and all(_same(a, b) for a, b in zip(old, new, strict=False)):
            return [{"op": "add", "path": f"{path}/-", "value": item} for item in new[len(old) :]]
        if len(new) == len(old):
            ops = []
            for position, (a, b) in enumerate(zip(old, new, strict=True)):
                ops.extend(diff(a, b, f"{path}/{position}"))
            return ops
        return [{"op": "replace", "path": path, "value": new}]
    if _same(old, new):
        return []
    return [{"op": "replace", "path": path, "value": new}]


def _same(a: Any, b: Any) -> bool:
    return a is b or (type(a) is type(b) and a == b)


def apply(document: Any, patch: Patch) -> Any:
    """Apply ``patch`` to a deep copy of ``document`` (the subset of RFC 6902 that ``diff`` emits);
    used by tests and by ``convert`` to prove a patch says what the rewrite meant."""
    import copy

    doc = copy.deepcopy(document)
    for op in patch:
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]]
        if not tokens:
            doc = copy.deepcopy(op["value"])
            continue
        parent = doc
        for token in tokens[:-1]:
            parent = parent[int(token)] if isinstance(parent, list) else parent[token]
        last = tokens[-1]
        if op["op"] == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                del parent[last]
        elif isinstance(parent, list):
            value = copy.deepcopy(op["value"])
            if last == "-":
                parent.append(value)
            elif op["op"] == "add":
                parent.insert(int(last), value)
            else:
                parent[int(last)] = value
        else:
            parent[last] = copy.deepcopy(op["value"])
    return doc
