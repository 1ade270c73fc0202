"""One quota figure: a dimension compared for an admission, with the numbers and who set the limit.

The quota check makes them; the admission decision carries them; the audit log and the response's
``auditAnnotations`` write them. One type for all three.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuotaFigure:
    """What was asked, what was in use, the limit, the policy that set it, and whether it was exceeded."""

    dimension: str  # "devices/<class>", "memory", "compute", "claims", "perPod.memory", "rule/<name>", ...
    requested: str
    used: str
    limit: str
    policy: str  # ConfigMap name and version that set the limit
    exceeded: bool = False
    message: str = ""  # the denial sentence when exceeded: who, what, by how much
