"""How the HTTP layer maps failures (in-process ASGI; the TLS envelope is covered in test_server.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.admission.helpers import review
from tests.conftest import POLICIES, container, pod
from webhook.cluster.memory import InMemoryCluster
from webhook.serving.server import build_runtime
from webhook.serving.settings import Settings


class _Unsynced(InMemoryCluster):
    def ready(self) -> tuple[bool, str]:
        return False, "waiting for: resourceclaims"


def post(app: Any, path: str, body: dict[str, Any]) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, json=body)

    return asyncio.run(go())


def test_unsynced_caches_answer_503_so_the_failure_policy_decides(tmp_path: Path) -> None:
    settings = Settings(dev=True, policies_dir=POLICIES, audit_file=str(tmp_path / "audit.log"))
    runtime = build_runtime(settings, cluster=_Unsynced())
    response = post(runtime.app, "/mutate", review(pod(container(limits={"nvidia.com/gpu": "1"}))))
    assert response.status_code == 503 and "not ready" in response.json()["message"]
    assert 'outcome="error",reason="not-ready",tenant=""' in runtime.metrics.render()


def test_an_internal_error_is_a_500_never_a_denial() -> None:
    from webhook.serving.http import create_app
    from webhook.serving.metrics import Metrics

    def crash(_: Any) -> Any:
        raise RuntimeError("bug")

    metrics = Metrics()
    app = create_app(mutate=crash, validate=crash, metrics=metrics, readiness=lambda: (True, {}))
    response = post(app, "/validate", review(pod(container())))
    assert response.status_code == 500 and "failurePolicy" in response.json()["message"]
    assert 'outcome="error",reason="internal-error",tenant=""' in metrics.render()
