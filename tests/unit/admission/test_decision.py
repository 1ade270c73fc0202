"""A decision answered with another response keeps every other fact."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

from webhook.admission.decision import Decision
from webhook.admission.review import AdmissionResponse, Status, allowed, with_audit_annotations
from webhook.quota.figure import QuotaFigure
from webhook.translate.rewrite import Conversion


def full_decision() -> Decision:
    figure_fields = {f.name: f for f in dataclasses.fields(QuotaFigure)}
    figure = QuotaFigure(**{name: _sample(f.type) for name, f in figure_fields.items()})
    conversion = Conversion("main", "gpu-main", "t", {"nvidia.com/gpu": "1"}, "1 GPU", 1, Fraction(0))
    return Decision(
        webhook="mutate",
        response=allowed("u1", warnings=["w"]),
        outcome="patched",
        reason="converted",
        message="m",
        conversions=(conversion,),
        templates_created=("t",),
        tenant="team",
        quota=(figure,),
        policy_version="v9",
        extra={"k": "v"},
        release=lambda: None,
    )


def _sample(kind: object) -> object:
    text = str(kind)
    if "bool" in text:
        return True
    if "int" in text or "Fraction" in text:
        return 3
    return "x"


def test_answering_keeps_every_field_but_the_response() -> None:
    decision = full_decision()
    defaults = Decision(webhook="validate", response=allowed("u0"), outcome="allowed", reason="r")
    for field in dataclasses.fields(Decision):  # the sample sets every field away from its default
        assert getattr(decision, field.name) != getattr(defaults, field.name), field.name
    response = AdmissionResponse(uid="u1", allowed=False, status=Status(403, "no", "Forbidden"))
    answered = decision.answering(response)
    assert answered == dataclasses.replace(decision, response=response)
    assert answered.release is decision.release and answered.response is response


def test_audit_annotations_keep_every_other_field_of_the_response() -> None:
    response = AdmissionResponse(
        uid="u", allowed=True, status=Status(200, "ok"), patch_type="JSONPatch", patch="W10=", warnings=["w"]
    )
    notes = {"decision": "patched"}
    assert with_audit_annotations(response, notes) == dataclasses.replace(response, audit_annotations=notes)
