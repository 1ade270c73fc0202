"""The error hierarchy, and what each error means to the caller: an admission verdict or an HTTP status.

Business code raises; what an error means is declared here and nowhere else:

- ``Denial`` subclasses -> ``allowed: false`` with a message for the user (their input or quota),
  with the admission status ``reason``/``code`` each class declares (the admission engine's
  ``_decide`` puts them in the response);
- ``MalformedReview``   -> HTTP 400 (the request itself is not an AdmissionReview we can act on);
- ``NotReady``          -> HTTP 503 (caches or policies have not synced; never answer from them);
- ``AuditWriteError``   -> HTTP 500 (a decision that cannot be recorded is not given);
- anything else         -> HTTP 500 (``failure_of``); the cluster's failurePolicy decides.

Every error also has a short machine code (``code_of``) for metrics and the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass


class BridgeError(Exception):
    """Base of every error dra-bridge raises on purpose."""


class MalformedReview(BridgeError):
    """The HTTP body is not an AdmissionReview this server can act on."""


class Denial(BridgeError):
    """The object is refused; ``reason`` and ``code`` go into the AdmissionResponse status."""

    reason = "Invalid"
    code = 422


class TranslationError(Denial):
    """A legacy GPU request that means nothing; names the container, the resource and the value."""

    def __init__(
        self, message: str, *, container: str | None = None, resource: str | None = None, value: str | None = None
    ) -> None:
        self.container = container
        self.resource = resource
        self.value = value
        self.detail = message
        where = []
        if container is not None:
            where.append(f"container {container!r}")
        if resource is not None:
            shown = f"{resource}={value!r}" if value is not None and value not in message else resource
            where.append(shown)
        super().__init__(": ".join([*where, message]))


class TemplateConflict(Denial):
    """A ResourceClaimTemplate of the derived name exists but is not ours or differs."""

    reason = "AlreadyExists"
    code = 409


class Unconverted(Denial):
    """A Pod reached validation still carrying legacy GPU requests the mutating webhook converts."""

    reason = "Forbidden"
    code = 403


class TemplateTampered(Denial):
    """A managed ResourceClaimTemplate whose spec no longer matches the hash it is named after."""

    reason = "Forbidden"
    code = 403


class TenantMove(Denial):
    """A namespace would move between tenants (its tenant labels change) by a user who is not an admin."""

    reason = "Forbidden"
    code = 403


class InvalidPolicy(Denial):
    """A policy or catalogue ConfigMap an admin is saving does not parse or does not check."""

    reason = "Invalid"
    code = 422


class TooLarge(Denial):
    """An object past the work one review may cost (say, a Pod of thousands of containers)."""

    reason = "RequestEntityTooLarge"
    code = 413


class ClusterError(BridgeError):
    """The cluster could not be read or written; the failurePolicy decides."""


class NotReady(BridgeError):
    """Caches or policies have not synced; never answer from them."""


class AuditWriteError(BridgeError):
    """The decision could not be recorded: the request must fail (500) so the failurePolicy decides."""


@dataclass(frozen=True)
class Failure:
    """An error answered without a verdict: the HTTP status, a machine code, the message sent back."""

    status: int
    code: str
    message: str


_CODES: dict[type[BaseException], str] = {TranslationError: "invalid-request", MalformedReview: "malformed-review"}


def code_of(error: BaseException) -> str:
    """The machine code of an error: ``TemplateConflict`` -> ``template-conflict``."""
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    name = type(error).__name__ if isinstance(error, BridgeError) else "InternalError"
    return "".join(f"-{ch.lower()}" if ch.isupper() else ch for ch in name).lstrip("-")


def failure_of(error: BaseException) -> Failure:
    """How an error that is not a ``Denial`` is answered over HTTP."""
    if isinstance(error, MalformedReview):
        return Failure(400, code_of(error), str(error))
    if isinstance(error, NotReady):
        return Failure(503, "not-ready", f"not ready: {error}; the webhook's failurePolicy applies")
    if isinstance(error, AuditWriteError):
        return Failure(
            500, "audit-write-failed", "the decision could not be recorded; the webhook's failurePolicy applies"
        )
    return Failure(500, "internal-error", "internal error; the webhook's failurePolicy applies")
