"""Deciding on the event loop when the answer needs no cluster I/O.

Almost every decision is pure computation over caches: handing it to a worker thread and back costs
more CPU than a small Pod's whole rewrite (bench/: 0.76 against 0.41 ms per request). So the HTTP
layer first runs a decision inline, inside ``deciding_inline()``; the one place that talks to the
apiserver on the request path (``cluster.kube``'s transport) calls ``may_block`` first, which raises
``WouldBlock`` there, and the HTTP layer runs the decision again on its executor, where blocking is
fine. What a decision does before its first API call is computation and idempotent cache updates, so
running it twice changes nothing; the decision log records only the run that finishes.
"""

from __future__ import annotations

import contextvars
from typing import Generic, TypeVar

T = TypeVar("T")

_inline: contextvars.ContextVar[bool] = contextvars.ContextVar("dra_bridge_inline", default=False)


class WouldBlock(Exception):
    """The decision needs cluster I/O; run it where blocking is allowed."""


class DecidedElsewhere(Exception):
    """Another replica decides this request: the one that owns its tenant's quota (``peer``, at
    ``address``). The HTTP layer sends it the review and answers with its answer; when that replica
    cannot be reached, the request is decided here after all, with forwarding off."""

    def __init__(self, peer: str, address: str, why: str) -> None:
        super().__init__(f"decided by replica {peer} ({address}): {why}")
        self.peer = peer
        self.address = address


def may_block(what: str) -> None:
    """Declare blocking I/O (``what``, e.g. ``"GET /apis/..."``) about to happen on the current thread."""
    if _inline.get():
        raise WouldBlock(what)


class _Setting(Generic[T]):
    """Within this block, ``variable`` is ``value`` (on every review's path: a class, not a generator)."""

    __slots__ = ("_token", "_value", "_variable")

    def __init__(self, variable: contextvars.ContextVar[T], value: T) -> None:
        self._variable, self._value = variable, value

    def __enter__(self) -> None:
        self._token = self._variable.set(self._value)

    def __exit__(self, *_exc: object) -> None:
        self._variable.reset(self._token)


def deciding_inline() -> _Setting[bool]:
    """Within this block, ``may_block`` raises ``WouldBlock`` instead of letting I/O happen."""
    return _Setting(_inline, True)


# Whether this request may be handed to another replica (``DecidedElsewhere``): on while a replica
# that can forward decides a review that no other replica forwarded to it; off otherwise, so a
# forwarded review is decided where it lands and never travels twice.
_forwardable: contextvars.ContextVar[bool] = contextvars.ContextVar("dra_bridge_forwardable", default=False)


def forwarding(allowed: bool) -> _Setting[bool]:
    return _Setting(_forwardable, allowed)


def forwardable() -> bool:
    """Whether the current request may be decided by another replica."""
    return _forwardable.get()


# The moment the apiserver stops waiting for this answer (time.monotonic), when the request said so
# (the ``timeout`` query parameter the apiserver adds to every webhook call). Work that holds shared
# state on the caller's behalf (a quota reservation) is not kept past it.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("dra_bridge_deadline", default=None)


def answering_by(deadline: float | None) -> _Setting[float | None]:
    return _Setting(_deadline, deadline)


def deadline() -> float | None:
    """When the current request's caller gives up (``time.monotonic``), None when unknown."""
    return _deadline.get()
