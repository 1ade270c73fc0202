"""The ceiling: the least an AdmissionReview endpoint can do on this stack.

A bare FastAPI app that reads the body, ``json.loads`` it and allows with the uid echoed. Served by
the same ``webhook.serving.server.uvicorn_server`` over the same TLS context as dra-bridge, it measures what
uvicorn, TLS, the HTTP parser and FastAPI cost on their own, so dra-bridge's figures can be read
as a ratio to it. ``/mutate`` and ``/validate`` are the same endpoint so the same targets work.

It counts the reviews it answered per path (``GET /counts``): bench/e2e.py registers it with the
apiserver as the bare webhook and reads how often each path was called. Given a ``patch`` (a JSON
Patch), ``/mutate`` answers every review with it, unexamined: the bare cost of a webhook that
rewrites (bench/e2e.py's ``bare-patch`` arm, whose Pods all have the one shape the patch fits).
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response


def create_ceiling_app(patch: list[dict[str, Any]] | None = None) -> FastAPI:
    app = FastAPI(title="ceiling", docs_url=None, redoc_url=None, openapi_url=None)
    counts: Counter[str] = Counter()
    encoded = base64.b64encode(json.dumps(patch).encode()).decode() if patch else None

    async def review(request: Request) -> Response:
        document = json.loads(await request.body())
        uid = document["request"]["uid"]
        counts[request.url.path] += 1
        return JSONResponse(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"uid": uid, "allowed": True}}
        )

    async def mutate(request: Request) -> Response:
        document = json.loads(await request.body())
        uid = document["request"]["uid"]
        counts[request.url.path] += 1
        response = {"uid": uid, "allowed": True, "patchType": "JSONPatch", "patch": encoded}
        return JSONResponse({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})

    app.add_api_route("/mutate", mutate if encoded else review, methods=["POST"])
    app.add_api_route("/validate", review, methods=["POST"])

    @app.get("/readyz")
    async def readyz() -> Response:
        return JSONResponse({"ready": True})

    @app.get("/counts")
    async def counts_endpoint() -> Response:
        return JSONResponse(dict(counts))

    return app
