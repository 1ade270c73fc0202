"""Hostile input through the real ASGI app: every review answered on purpose, never with a 5xx.

5,000 seeded cases (``tests/fuzz/reviews.py``) run here; ``bench/fuzz.py`` runs 100,000 and prints
the counts. A failure names the case's mutations, so it can be replayed with its seed and number.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import httpx

from tests.conftest import POLICIES
from tests.fuzz.harness import send
from tests.fuzz.reviews import Fuzzer, seeds
from webhook.audit.log import AuditLog
from webhook.serving.server import Runtime, build_runtime, dev_cluster
from webhook.serving.settings import Settings

CASES = 5_000


class ListSink:
    """An in-memory audit sink that, like the file sink, encodes each line as UTF-8."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        line.encode("utf-8")
        self.lines.append(line)

    def close(self) -> None:
        pass

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines]


def runtime(sink: ListSink) -> Runtime:
    cluster = dev_cluster(POLICIES)  # what `serve --dev` runs
    cluster.add_namespace("team-a", {"dra-bridge.io/tenant": "research"})
    return build_runtime(Settings(dev=True, policies_dir=POLICIES), cluster=cluster, audit=AuditLog(sink))


def test_every_seed_is_a_valid_review_answered_200() -> None:
    app = runtime(ListSink()).app  # the seeds themselves, unmutated

    async def go() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as client:
            out = []
            for path, review in seeds():
                out.append((await client.post(path, json=review)).status_code)
            return out

    assert set(asyncio.run(go())) == {200}


def test_five_thousand_hostile_reviews_get_no_5xx_no_hang_and_the_server_stays_healthy() -> None:
    rt = runtime(ListSink())
    outcome = asyncio.run(send(rt.app, Fuzzer(seed=14).cases(CASES)))
    shown = [f"{status} {case.mutations}: {body}" for case, status, body in outcome.failures[:5]]
    assert outcome.server_errors == 0, shown
    assert outcome.hangs == 0
    assert outcome.unreadable == []
    assert sum(outcome.statuses.values()) == CASES
    assert set(outcome.statuses) <= {200, 400}, outcome.statuses
    assert outcome.statuses[400] > CASES // 10 and outcome.statuses[200] > CASES // 10  # both paths exercised

    async def healthy() -> int:
        transport = httpx.ASGITransport(app=rt.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as client:
            path, review = seeds()[0]
            return (await client.post(path, json=review)).status_code

    assert asyncio.run(healthy()) == 200


def test_the_generator_is_seeded() -> None:
    first = [c.body for c in Fuzzer(3).cases(50)]
    assert first == [c.body for c in Fuzzer(3).cases(50)]
    assert first != [c.body for c in Fuzzer(4).cases(50)]


def test_every_answer_has_exactly_one_audit_record_and_every_readable_uid_is_in_the_log() -> None:
    sink = ListSink()
    rt = runtime(sink)
    outcome = asyncio.run(send(rt.app, Fuzzer(seed=15).cases(CASES), keep=True))
    records = sink.records()
    assert len(records) == sum(outcome.statuses.values()) == CASES  # one record per answer
    assert [r["seq"] for r in records] == list(range(1, CASES + 1))  # nothing lost, no gap
    by_uid = Counter(str(r["uid"]) for r in records)
    expected = [case.uid for case in outcome.sent if case.uid is not None]
    assert len(expected) > CASES // 2
    assert [uid for uid in expected if by_uid[uid] != 1] == []
    fuzzed = {case.uid for case in outcome.sent}
    assert all(uid in fuzzed or not uid.startswith("fuzz-") for uid in by_uid)
    rejected = [r for r in records if r["decision"] == "error"]
    assert rejected and all(r["extra"]["httpStatus"] == 400 for r in rejected)  # type: ignore[index]
