"""Send fuzzed reviews to the ASGI app in process and count what comes back."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.fuzz.reviews import Case

HANG_SECONDS = 10.0  # the apiserver's longest webhook timeout


@dataclass
class Outcome:
    statuses: Counter[int] = field(default_factory=Counter)
    hangs: int = 0
    failures: list[tuple[Case, int, str]] = field(default_factory=list)  # 5xx: the case, status and body
    unreadable: list[Case] = field(default_factory=list)  # answers that are not JSON with a message or a response
    sent: list[Case] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)


async def send(app: Any, cases: Iterable[Case], *, keep: bool = False) -> Outcome:
    """Post every case, one at a time; a case not answered within ``HANG_SECONDS`` is a hang."""
    outcome = Outcome()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as client:
        for case in cases:
            if keep:
                outcome.sent.append(case)
            try:
                response = await asyncio.wait_for(
                    client.post(case.path, content=case.body, headers={"content-type": "application/json"}),
                    HANG_SECONDS,
                )
            except TimeoutError:
                outcome.hangs += 1
                continue
            outcome.statuses[response.status_code] += 1
            if response.status_code >= 500:
                outcome.failures.append((case, response.status_code, response.text[:300]))
            try:
                answer = response.json()
            except ValueError:
                outcome.unreadable.append(case)
                continue
            if not isinstance(answer, dict) or not ("message" in answer or "response" in answer):
                outcome.unreadable.append(case)
    return outcome
