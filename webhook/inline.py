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

import contextlib
import contextvars
from collections.abc import Iterator

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


@contextlib.contextmanager
def deciding_inline() -> Iterator[None]:
    """Within this block, ``may_block`` raises ``WouldBlock`` instead of letting I/O happen."""
    token = _inline.set(True)
    try:
        yield
    finally:
        _inline.reset(token)


# Whether this request may be handed to another replica (``DecidedElsewhere``): on while a replica
# that can forward decides a review that no other replica forwarded to it; off otherwise, so a
# forwarded review is decided where it lands and never travels twice.
_forwardable: contextvars.ContextVar[bool] = contextvars.ContextVar("dra_bridge_forwardable", default=False)


@contextlib.contextmanager
def forwarding(allowed: bool) -> Iterator[None]:
    token = _forwardable.set(allowed)
    try:
        yield
    finally:
        _forwardable.reset(token)


def forwardable() -> bool:
    """Whether the current request may be decided by another replica."""
    return _forwardable.get()


# The moment the apiserver stops waiting for this answer (time.monotonic), when the request said so
# (the ``timeout`` query parameter the apiserver adds to every webhook call). Work that holds shared
# state on the caller's behalf (a quota reservation) is not kept past it.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("dra_bridge_deadline", default=None)


@contextlib.contextmanager
def answering_by(deadline: float | None) -> Iterator[None]:
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def deadline() -> float | None:
    """When the current request's caller gives up (``time.monotonic``), None when unknown."""
    return _deadline.get()
