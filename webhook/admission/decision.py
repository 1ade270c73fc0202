"""The decision vocabulary: what the engine decided, in the types metrics, audit and HTTP read.

A ``Decision`` is the response plus the facts behind it; its quota figures are the quota check's own
``QuotaFigure`` values, carried as they were compared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from webhook.admission.review import AdmissionResponse
from webhook.quota.figure import QuotaFigure
from webhook.translate.rewrite import Conversion

Webhook = Literal["mutate", "validate"]
Outcome = Literal["allowed", "patched", "denied"]


@dataclass(frozen=True)
class Decision:
    """What the webhook decided and why: the response plus the facts metrics and audit need.
    ``webhook.audit.log`` turns these facts into the response's ``auditAnnotations``."""

    webhook: Webhook
    response: AdmissionResponse
    outcome: Outcome
    reason: str  # a short machine code: converted, no-legacy-request, opt-out, invalid-request, ...
    message: str = ""
    conversions: tuple[Conversion, ...] = ()
    templates_created: tuple[str, ...] = ()
    tenant: str | None = None
    quota: tuple[QuotaFigure, ...] = ()
    policy_version: str | None = None  # the active policy set's version (resourceVersions or a hash)
    extra: dict[str, str] = field(default_factory=dict)
    # Undoes what deciding reserved (a quota reservation) when the decision cannot be answered.
    release: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    def answering(self, response: AdmissionResponse) -> Decision:
        """This decision with another response: ``dataclasses.replace``, as a copy of the fields
        (it is on every review's path, and a frozen dataclass's ``__init__`` sets its twelve
        fields one ``object.__setattr__`` at a time, three times the cost)."""
        other = object.__new__(type(self))
        vars(other).update(vars(self), response=response)  # frozen forbids setting fields, not this
        return other
