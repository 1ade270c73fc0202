"""The HTTP layer: the only module that knows FastAPI.

It caps the body, checks the content type, decodes the AdmissionReview envelope and checks the shape
of the object inside (``webhook.admission.shapes``: what no apiserver sends is a 400 naming the field
and the value, so the core can rely on shapes), echoes the uid,
times the decision and counts it. The audit record is written by the handler (``AuditLog.audited``)
before the decision comes back here, so an unrecordable decision is answered with 500; a request
answered here without a decision (400, 413, 503) is recorded here (``AuditLog.record_rejection``),
with the uid when the body shows one. Every answered review has exactly one record: a review handed to
the replica that owns its tenant's quota (``webhook.serving.peers``) is recorded there, and its answer
relayed as it came. A malformed request gets 400
with a message that names what is wrong; an internal failure gets 500 so the cluster's
failurePolicy decides; user input never causes a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from pydantic_core import to_json

from webhook.admission.decision import Decision, Webhook
from webhook.admission.review import AdmissionRequest, AdmissionReview, review_response
from webhook.admission.shapes import check_object, parse_body, shown
from webhook.audit.log import AuditLog
from webhook.errors import AuditWriteError, MalformedReview, NotReady, failure_of
from webhook.inline import DecidedElsewhere, WouldBlock, answering_by, deciding_inline, forwarding
from webhook.labels import FORWARDED_HEADER
from webhook.serving.metrics import Metrics
from webhook.serving.peers import Forwarder

log = logging.getLogger("dra_bridge.http")

_FORWARDED = FORWARDED_HEADER.lower().encode("latin-1")
_Answer = tuple[int, bytes]  # an HTTP status and a JSON body
# ASGI, as starlette spells it
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
_TIMEOUT = re.compile(rb"(?:^|&)timeout=([0-9.]+s)(?:&|$)")
DEFAULT_MAX_BODY = 3 * 1024 * 1024  # the apiserver sends objects up to ~1.5 MiB, twice for UPDATE
Handler = Callable[[AdmissionRequest], Decision]
Readiness = Callable[[], tuple[bool, dict[str, Any]]]


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str, message: str, *, uid: str | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.uid = status, reason, message, uid


class LoopLag:
    """How far behind the event loop runs: a timer due every ``interval`` seconds notes how late it
    fired. Decisions run on the loop, so when requests arrive faster than they are decided this is
    about how long a request arriving now waits before its handler starts."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.seconds = 0.0  # the lateness measured last
        self._due: float | None = None  # when the timer should fire next (loop clock = time.monotonic)

    def behind(self) -> float:
        """The lag measured last, or how overdue the timer is now if that is more: inside one long
        stretch of work the loop falls further behind before the timer can say so."""
        overdue = time.monotonic() - self._due if self._due is not None else 0.0
        return max(self.seconds, overdue)

    async def run(self, on_measure: Callable[[float], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._due = loop.time() + self.interval
                await asyncio.sleep(self.interval)
                self.seconds = max(0.0, loop.time() - self._due)
                if on_measure is not None:
                    on_measure(self.seconds)
        finally:
            self._due = None


class _ReviewEndpoint:
    """A review endpoint as an ASGI app (an instance, so starlette's ``Route`` serves it as one)."""

    def __init__(self, answer: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.answer(scope, receive, send)


class ReviewApp(FastAPI):
    """FastAPI, with ``POST`` to a review path answered by its endpoint before routing."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.reviews: dict[str, _ReviewEndpoint] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            found = self.reviews.get(scope["path"])
            if found is not None and not scope.get("root_path"):
                await found.answer(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    *,
    mutate: Handler,
    validate: Handler,
    metrics: Metrics,
    readiness: Readiness,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    threads: int = 16,
    inline: bool = True,
    shed_after: float | None = 1.0,
    lag: LoopLag | None = None,
    audit: AuditLog | None = None,
    inline_max_bytes: int | None = 256 * 1024,
    forwarder: Forwarder | None = None,
) -> ReviewApp:
    # A decision runs on the event loop first (webhook/inline.py): almost all of them are computation
    # over caches, and the hop to a thread and back cost as much CPU as a small Pod's rewrite. One that
    # needs the cluster (a template to create, the quota Lease) stops at its first API call and runs
    # again on a plain executor (starlette's run_in_threadpool cost a fifth more again: bench/).
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decide")

    # Overload: once requests wait longer than ``shed_after`` seconds for the loop, they are answered
    # 503 at once (the failurePolicy decides, as it would after the apiserver's 3-5 s timeout) so the
    # backlog drains instead of being decided after its caller gave up (bench/: an open-model rate near
    # capacity). The lag is measured while the server runs (its lifespan).
    lag = lag or LoopLag()

    def measured(seconds: float) -> None:
        metrics.loop_lag.set(value=seconds)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        monitor = asyncio.create_task(lag.run(measured))
        try:
            yield
        finally:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
            executor.shutdown(wait=False)
            if forwarder is not None:
                await forwarder.close()

    app = ReviewApp(title="dra-bridge", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    async def decide(webhook: str, handler: Handler, admission_request: AdmissionRequest, size: int) -> Decision:
        # A large object is decided on a thread from the start: the loop then keeps answering the
        # small reviews in between (the interpreter switches threads every few milliseconds) instead
        # of waiting out its whole decision.
        if inline and (inline_max_bytes is None or size <= inline_max_bytes):
            try:
                with deciding_inline():
                    return handler(admission_request)
            except WouldBlock:
                metrics.moved_to_thread.inc(webhook)
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(executor, context.run, handler, admission_request)

    def rejected(webhook: Webhook, bad: _BadRequest, started: float) -> _Answer:
        """Answer ``bad`` without a decision, recorded first (no record, no answer: then 500, a gap in seq)."""
        metrics.rejected_requests.inc(bad.reason)
        if audit is not None:
            try:
                audit.record_rejection(
                    webhook,
                    uid=bad.uid,
                    status=bad.status,
                    reason=bad.reason,
                    message=bad.message,
                    elapsed=time.perf_counter() - started,
                )
            except AuditWriteError as err:
                metrics.audit_write_failures.inc(webhook)
                failure = failure_of(err)
                return failure.status, _json({"message": failure.message})
        return bad.status, _json({"message": bad.message})

    async def review(scope: Scope, receive: Receive, webhook: Webhook, handler: Handler) -> _Answer:
        started = time.perf_counter()
        behind = lag.behind()
        try:
            body = await _read_body(scope, receive, max_body_bytes)
        except _BadRequest as bad:
            return rejected(webhook, bad, started)
        if shed_after is not None and behind > shed_after:
            message = (
                f"overloaded: requests wait {behind:.1f}s before they are decided "
                f"(limit {shed_after:g}s); the webhook's failurePolicy applies"
            )
            return rejected(webhook, _BadRequest(503, "overloaded", message, uid=uid_hint(body)), started)
        try:
            admission_request = _read_review(body, _header(scope, b"content-type") or "")
        except _BadRequest as bad:
            return rejected(webhook, bad, started)
        answer_by = _deadline(scope, time.monotonic())
        # A review forwarded by another replica is decided here, whoever this replica thinks owns it.
        forwarded = _header(scope, _FORWARDED) is not None
        if forwarded:
            metrics.forwards.inc(webhook, "received")
        try:
            try:
                with answering_by(answer_by), forwarding(forwarder is not None and not forwarded):
                    decision = await decide(webhook, handler, admission_request, len(body))
            except DecidedElsewhere as moved:
                assert forwarder is not None  # only raised where forwarding is on
                answer, outcome = await forwarder.forward(moved, scope["path"], body, answer_by)
                metrics.forwards.inc(webhook, outcome)
                if answer is not None:
                    return 200, answer
                with answering_by(answer_by):  # the owner did not answer: decided here after all
                    decision = await decide(webhook, handler, admission_request, len(body))
        except Exception as err:
            failure = failure_of(err)
            if isinstance(err, MalformedReview):
                metrics.rejected_requests.inc(failure.code)
            else:
                if failure.status >= 500 and not isinstance(err, NotReady):
                    log.exception("%s deciding %s uid=%s", failure.code, webhook, admission_request.uid)
                if isinstance(err, AuditWriteError):
                    metrics.audit_write_failures.inc(webhook)
                metrics.decisions.inc(webhook, "error", failure.code, "")
            return failure.status, _json({"message": failure.message})
        elapsed = time.perf_counter() - started
        if answer_by is not None and time.monotonic() > answer_by and decision.release is not None:
            decision.release()  # the apiserver gave up on this answer: what it reserved goes back
            metrics.rejected_requests.inc("answered-too-late")
        metrics.decisions.inc(webhook, decision.outcome, decision.reason, decision.tenant or "")
        metrics.latency.observe(elapsed, webhook)
        counter = metrics.observed if decision.reason == "observed" else metrics.conversions
        for conversion in decision.conversions:
            for legacy_name in conversion.legacy:
                counter.inc(legacy_name)
        if decision.templates_created:
            metrics.templates_created.inc(amount=len(decision.templates_created))
        return 200, _json(review_response(decision.response))

    def endpoint(webhook: Webhook, handler: Handler) -> _ReviewEndpoint:
        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                status, body = await review(scope, receive, webhook, handler)
            except Exception:  # a fault of this server, never of the input: 500, the failurePolicy decides
                log.exception("answering a %s review", webhook)
                status, body = 500, _json({"message": "internal error; see the webhook's log"})
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})

        return _ReviewEndpoint(answer)

    # The reviews are answered by plain ASGI endpoints, straight from the connection (``ReviewApp``):
    # they read the raw request and validate the envelope themselves, so starlette's routing, its
    # Request and Response objects and FastAPI's middleware would be work for nothing (together a
    # sixth of a small Pod's mutate, in process). The routes are registered too, for anything that
    # lists or mounts the app.
    reviews = {"/mutate": endpoint("mutate", mutate), "/validate": endpoint("validate", validate)}
    for path, review_endpoint in reviews.items():
        # starlette serves an endpoint that is not a function as an ASGI app
        app.router.add_route(path, review_endpoint, methods=["POST"])  # type: ignore[arg-type]
    app.reviews.update(reviews)

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        ready, detail = readiness()
        metrics.ready.set(value=1.0 if ready else 0.0)
        return JSONResponse({"ready": ready, **detail}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


def _deadline(scope: Scope, started: float) -> float | None:
    """When the apiserver stops waiting (``?timeout=5s`` on every webhook call), on the
    ``time.monotonic`` clock, a tenth of a second early; None when the request does not say."""
    # Read from the raw query string: the apiserver sends this one parameter, and parsing it into
    # starlette's QueryParams cost more than the rest of this function.
    query: bytes = scope.get("query_string", b"")
    found = _TIMEOUT.search(query) if query else None
    text = found.group(1).decode("ascii") if found else ""
    if not text.endswith("s") or not text[:-1].replace(".", "", 1).isdigit():
        return None
    return started + max(0.0, float(text[:-1]) - 0.1)


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The body, at most ``limit`` bytes; past it, 413 with the uid if the part read shows one."""
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        head = bytearray()  # enough to read the uid, which the apiserver writes near the start
        async for chunk in _chunks(receive, head):
            head.extend(chunk)
            if len(head) >= UID_WITHIN:
                break
        raise _BadRequest(
            413, "too-large", f"body of {declared} bytes is over the limit of {limit} bytes", uid=uid_hint(head)
        )
    message = await receive()  # the whole body in one message, as a small review comes
    if message["type"] == "http.request" and not message.get("more_body", False):
        first: bytes = message.get("body", b"")
        if len(first) > limit:
            raise _over(limit, first)
        return first
    body = bytearray()
    async for chunk in _chunks(receive, body, message):
        body.extend(chunk)
        if len(body) > limit:
            raise _over(limit, body)
    return bytes(body)


def _over(limit: int, read: bytes | bytearray) -> _BadRequest:
    return _BadRequest(413, "too-large", f"body is over the limit of {limit} bytes", uid=uid_hint(read))


async def _chunks(
    receive: Receive, read: bytearray, message: Message | None = None
) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; if the connection closes first, 408 with the uid of what was ``read``.

    The client left, or was closed for sending its body too slowly (webhook/serving/guard.py): no
    one hears the answer, but the record still says what happened.
    """
    while True:
        message = message or await receive()
        if message["type"] == "http.disconnect":
            raise _BadRequest(
                408, "incomplete-body", f"the connection closed after {len(read)} bytes of the body", uid=uid_hint(read)
            )
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return
        message = None


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case, as ASGI gives names), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _json(content: Any) -> bytes:
    """Compact UTF-8 JSON (pydantic's serialiser: a third of json.dumps' time for a review's answer)."""
    return to_json(content)


UID_WITHIN = 4096  # bytes read of a body too large to take, to find its uid
_UID = re.compile(rb'"request"\s*:\s*\{\s*"uid"\s*:\s*("(?:[^"\\]|\\.){1,256}?")')


def uid_hint(body: bytes | bytearray) -> str | None:
    """The review's uid read from a body that did not parse: the apiserver writes it first in ``request``."""
    found = _UID.search(body)
    if found is None:
        return None
    try:
        uid = json.loads(found.group(1))
        uid.encode("utf-8")  # a lone surrogate is no uid
    except (ValueError, UnicodeError):
        return None
    return uid if isinstance(uid, str) and uid else None


def _read_review(body: bytes, content_type: str) -> AdmissionRequest:
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise _BadRequest(
            400, "content-type", f"Content-Type must be application/json, got {content_type!r}", uid=uid_hint(body)
        )
    try:
        document = parse_body(body)
    except MalformedReview as err:
        raise _BadRequest(400, "malformed-json", str(err), uid=uid_hint(body)) from None
    if not isinstance(document, dict):
        raise _BadRequest(400, "malformed-review", "body must be a JSON object (an AdmissionReview)")
    inner = document.get("request")
    uid = inner.get("uid") if isinstance(inner, dict) else None
    uid = uid if isinstance(uid, str) and uid else None
    try:
        review = AdmissionReview.model_validate(document)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _BadRequest(
            400,
            "malformed-review",
            f"not an admission.k8s.io/v1 AdmissionReview: {where}: {first['msg']}, got {shown(first.get('input'))}",
            uid=uid,
        ) from None
    if review.request is None:
        raise _BadRequest(400, "malformed-review", "AdmissionReview has no request")
    if review.request.object is not None:
        try:
            check_object(review.request.kind.kind, review.request.object)
        except MalformedReview as err:
            raise _BadRequest(400, "malformed-object", str(err), uid=uid) from None
    return review.request
