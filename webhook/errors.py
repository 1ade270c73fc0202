"""The error hierarchy, and the one place that maps it to admission verdicts.

Business code raises; ``webhook.admission.engine`` turns the exception into a response:

- ``MalformedReview``  -> HTTP 400 (the request itself is not an AdmissionReview we can read)
- ``Denial`` subclasses -> ``allowed: false`` with a message for the user (their input or quota)
- anything else        -> an error response; the cluster's failurePolicy decides
"""

from __future__ import annotations


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


class ClusterError(BridgeError):
    """The cluster could not be read or written; the failurePolicy decides."""


class NotReady(BridgeError):
    """Caches or policies have not synced; never answer from them."""


class AuditWriteError(BridgeError):
    """The decision could not be recorded: the request must fail (500) so the failurePolicy decides."""
